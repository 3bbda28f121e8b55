"""The replay teacher against the run's limits and the files `potstill import` writes: real JSONL
recordings, a real SQLite ledger, generate and curate as the CLI runs them."""

import json

import pytest

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


def _completion(text, finish, out_tokens):
    return {"object": "chat.completion", "id": "c", "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": out_tokens, "total_tokens": 9 + out_tokens}}


def test_the_records_potstill_import_writes_are_a_replay_recording(tmp_path):
    """`potstill import` writes records (user messages, output, the log's finish_reason and usage in
    meta); replay read only fine-tuning chats ending in an assistant turn and refused the file at its
    first line. It takes them as written: the logged answer, cut where the log says its model was cut
    (finish_reason length) or where the log's own token count passes max_tokens (text in a script the
    character estimate undercounts)."""
    from potstill.importers import import_traffic

    cjk = "\u6570\u636e" * 20  # 40 characters, 40 tokens by the log; 10 by characters / 4
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"request": {"messages": [{"role": "system", "content": "be brief"},
                                                                {"role": "user", "content": q}]},
                                       "response": _completion(a, finish, n)}) + "\n"
                           for q, a, finish, n in [("whole", "a whole answer", "stop", 3),
                                                   ("cut by the log", "an answer the log cut", "length", 16),
                                                   ("many tokens", cjk, "stop", 40)]))
    imported = tmp_path / "imported.jsonl"
    assert import_traffic(log, imported) == 3
    cfg = load_config(overrides={"task": {"type": "freetext"}, "curate": {"val": 0, "test": 0},
                                 "teacher": {"type": "replay", "replay_path": str(imported), "max_tokens": 32}})
    records = [Record(messages=[{"role": "user", "content": q}]) for q in ("whole", "cut by the log", "many tokens")]
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        out, stats = run_generate(cfg, records, ledger)
    assert stats.errors == 0
    assert [r.output for r in out] == ["a whole answer", "an answer the log cut", cjk]
    assert [r.meta.get("stop_reason") for r in out] == ["stop", "length", "length"]
    done = curate(cfg, out)
    assert [r.output for r in done.train] == ["a whole answer"]
    assert [r.invalid_reason.split(":")[0] for r in done.rejected] == ["truncated", "truncated"]


def test_a_replay_file_that_is_neither_chats_nor_records_is_one_line(tmp_path):
    from potstill.errors import PotstillError

    path = tmp_path / "traffic.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    teacher = ReplayTeacher(TeacherConfig(type="replay", replay_path=str(path)),
                            get_task(load_config(overrides={"task": {"type": "freetext"}}).task))
    with pytest.raises(PotstillError, match=r"traffic.jsonl:1: expected messages ending with an assistant turn, "
                                            r"or a record with an output \(the records `potstill import` writes\)$"):
        teacher.run([], lambda i, r: None)


def test_a_replayed_log_is_carded_as_the_logged_model_s_answers(tmp_path):
    """Answers replayed from an imported gpt-4o-mini log were recorded as written by "replay": the
    dataset card said 'Teacher: replay `None`' and named no model, and the model card's teacher
    line was 'replay (generated)', though the log names the model that wrote every answer."""
    from potstill.curate import card_markdown
    from potstill.export.model_card import _writers_lines, writers
    from potstill.importers import import_traffic
    from potstill.records import write_jsonl

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"request": {"messages": [{"role": "user", "content": q}]},
                                       "response": {**_completion(a, "stop", 3), "model": "gpt-4o-mini-2024-07-18"}})
                           + "\n" for q, a in [("first", "one"), ("second", "two")]))
    assert import_traffic(log, tmp_path / "imported.jsonl") == 2
    cfg = load_config(overrides={"task": {"type": "freetext"}, "curate": {"val": 0, "test": 0},
                                 "teacher": {"type": "replay", "replay_path": str(tmp_path / "imported.jsonl")}})
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        out, _ = run_generate(cfg, [Record(messages=[{"role": "user", "content": q}]) for q in ("first", "second")],
                              ledger)
    assert [(r.meta["teacher"], r.meta["teacher_type"]) for r in out] == [("gpt-4o-mini-2024-07-18", "replay")] * 2
    done = curate(cfg, out)
    assert done.card["teacher"]["records_by_model"] == {"gpt-4o-mini-2024-07-18": 2}
    md = card_markdown(done.card)
    assert "- Teacher: replay of recorded answers (`teacher.replay_path`)" in md and "`None`" not in md
    assert ("- Answers written by: `gpt-4o-mini-2024-07-18` (2 records), imported from their logs (`potstill import`) "
            "and replayed") in md and "wrote none" not in md
    write_jsonl(tmp_path / "train.jsonl", [r.model_dump() for r in done.train])
    assert writers(tmp_path / "train.jsonl")[1] == {("gpt-4o-mini-2024-07-18", "imported traffic, replayed"): 2}
    [line] = _writers_lines(cfg, done.card, tmp_path / "train.jsonl")
    assert "`gpt-4o-mini-2024-07-18` (2, imported traffic, replayed;" in line


def test_an_input_logged_twice_is_replayed_with_its_first_answer_and_said(tmp_path, capsys):
    """A log holding the same question twice (a user who asked again, a retry the app logged) was
    replayed with its last answer, silently: the answer the user got first, and the count, were lost."""
    from potstill.importers import import_traffic

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"request": {"messages": [{"role": "user", "content": q}]},
                                       "response": _completion(a, "stop", 3)}) + "\n"
                           for q, a in [("again", "first answer"), ("other", "x"), ("again", "second answer"),
                                        ("again", "third answer")]))
    assert import_traffic(log, tmp_path / "imported.jsonl") == 4  # every logged call is kept as data
    assert f"import: 2 line(s) repeat the input of an earlier line; all are written, and a replay teacher answers " \
           f"each input with the first of them, as its user got it (first at {log}:3)" in capsys.readouterr().err
    cfg = load_config(overrides={"task": {"type": "freetext"},
                                 "teacher": {"type": "replay", "replay_path": str(tmp_path / "imported.jsonl")}})
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        out, _ = run_generate(cfg, [Record(messages=[{"role": "user", "content": "again"}])], ledger)
    assert out[0].output == "first answer"
    assert "replay: 2 recording(s) in" in (err := capsys.readouterr().err) and "(first at line 3)" in err
