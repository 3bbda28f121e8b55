"""The replay teacher against the run's limits and the files `potstill import` writes: real JSONL
recordings, a real SQLite ledger, generate and curate as the CLI runs them."""

import json

from potstill.config import TeacherConfig, load_config
from potstill.curate import curate
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers.replay import ReplayTeacher

LONG = " ".join(f"word{i}" for i in range(60))  # 60 words, ~120 tokens by any count


def _recording(path, pairs):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in pairs))
    return path


def test_a_recording_longer_than_max_tokens_is_cut_marked_length_and_set_aside_by_curate(tmp_path):
    """A live teacher stops at teacher.max_tokens (finish_reason length) and curate sets the half
    answer aside as truncated; replay returned a recording of any length whole, marked as a whole
    answer, so a free-text student was trained on answers four times the run's budget. Raising
    max_tokens then must not answer from the ledger's cut copy."""
    traffic = _recording(tmp_path / "traffic.jsonl", [("short", "a short answer"), ("long", LONG)])
    over = {"task": {"type": "freetext"}, "run_dir": str(tmp_path / "run"), "curate": {"val": 0, "test": 0},
            "teacher": {"type": "replay", "replay_path": str(traffic), "max_tokens": 16}}
    cfg = load_config(overrides=over)
    records = [Record(messages=[{"role": "user", "content": q}]) for q in ("short", "long")]
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        out, _ = run_generate(cfg, records, ledger)
        short, long = out
        assert short.output == "a short answer" and short.meta.get("stop_reason") != "length"
        assert long.meta["stop_reason"] == "length"
        assert LONG.startswith(long.output) and 0 < len(long.output) < len(LONG) / 2
        done = curate(cfg, out)
        assert [r.output for r in done.train] == ["a short answer"]
        assert [r.invalid_reason.split(":")[0] for r in done.rejected] == ["truncated"]

        wider = load_config(overrides={**over, "teacher": {**over["teacher"], "max_tokens": 512}})
        again, stats = run_generate(wider, records, ledger)
        assert again[1].output == LONG and again[1].meta.get("stop_reason") != "length"


def test_a_served_clients_max_tokens_cuts_a_recorded_answer(tmp_path):
    """Serve asks the teacher with the client's max_tokens where it is below the teacher's: replay
    ignored it, so the client got the whole recording with finish_reason stop."""
    traffic = _recording(tmp_path / "traffic.jsonl", [("long", LONG)])
    teacher = ReplayTeacher(TeacherConfig(type="replay", replay_path=str(traffic), max_tokens=512),
                            get_task(load_config(overrides={"task": {"type": "freetext"}}).task))
    got = {}
    teacher.run([{"messages": [{"role": "user", "content": "long"}], "max_tokens": 5},
                 {"messages": [{"role": "user", "content": "long"}]}], lambda i, r: got.update({i: r}))
    assert got[0].stop_reason == "length" and LONG.startswith(got[0].output) and len(got[0].output.split()) <= 5
    assert got[1].output == LONG and got[1].stop_reason == "stop"

