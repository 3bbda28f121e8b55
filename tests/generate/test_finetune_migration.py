"""The migration guide end to end: an OpenAI fine-tune's exported training JSONL and stored
completions, the ``ft:`` model as a batch teacher on the loopback batch API (playing the
fine-tune: a keyword rule), through the real CLI to a GO/NO-GO report and a GGUF file of a tiny
Llama student built from a config."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
import yaml

from potstill.errors import PotstillError
from potstill.importers import import_traffic
from potstill.records import read_records
from tests.export.conftest import make_bpe_model
from tests.generate.test_batch import SECRET, cli
from tests.helpers.batch_server import BatchLoopback

FT = "ft:gpt-4o-mini-2024-07-18:acme::9kXq2bZt"
SYSTEM = "Give the topic of the text: sports, tech or politics."
KEYWORDS = {"sports": ["match", "team", "goal", "win"], "tech": ["phone", "software", "internet", "game"],
            "politics": ["minister", "party", "vote", "election"]}
FILLER = "the a of to in and on for with by is was said that would be at home new users firm".split()


def texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(KEYWORDS)[i % 3]
        words = rng.sample(KEYWORDS[label], 2) + rng.sample(FILLER, 7)
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def write_exports(tmp: Path) -> tuple[Path, Path]:
    train = tmp / "ft_training.jsonl"
    train.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": t}, {"role": "assistant", "content": lab}]}) + "\n"
        for t, lab in texts(30, 1)))
    stored = tmp / "stored_completions.jsonl"
    stored.write_text("".join(json.dumps({
        "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1760000000 + i, "model": FT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": lab}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31}, "metadata": {"app": "router"},
        "input_messages": {"object": "list", "data": [{"id": f"m{i}-0", "role": "system", "content": SYSTEM},
                                                       {"id": f"m{i}-1", "role": "user", "content": t}]}}) + "\n"
        for i, (t, lab) in enumerate(texts(90, 2))))
    return train, stored


def test_stored_completions_import_with_provenance(tmp_path):
    _, stored = write_exports(tmp_path)
    assert import_traffic(stored, tmp_path / "out.jsonl") == 90
    recs = read_records(tmp_path / "out.jsonl")
    r = recs[0]
    assert r.messages == [{"role": "user", "content": texts(90, 2)[0][0]}] and r.output == texts(90, 2)[0][1]
    assert r.meta["format"] == "stored" and r.meta["teacher"] == FT and r.meta["system"] == SYSTEM
    assert r.meta["metadata"] == {"app": "router"} and r.meta["response_id"] == "chatcmpl-0"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"object": "chat.completion", "choices": [], "model": FT}) + "\n")
    with pytest.raises(PotstillError, match="bad.jsonl:1: a stored completion needs its input messages"):
        import_traffic(bad, tmp_path / "x.jsonl")


def test_finetune_exports_to_a_go_no_go_report_and_a_gguf(tmp_path):
    train, stored = write_exports(tmp_path)
    assert cli(["import", str(stored), "-o", "traffic.jsonl"], tmp_path).returncode == 0
    assert cli(["import", str(train), "-o", "ft-train.jsonl", "--format", "finetune"], tmp_path).returncode == 0
    student = make_bpe_model(tmp_path / "student")
    example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "openai-finetune-migration.yaml").read_text())
    with BatchLoopback(key=SECRET, keywords=json.dumps(KEYWORDS)) as srv:
        cfg = {**example, "run_dir": "run",
               "task": {**example["task"], "labels": list(KEYWORDS), "instruction": SYSTEM},
               "data": {**example["data"], "inputs": "traffic.jsonl"},
               "teacher": {**example["teacher"], "model": FT, "base_url": srv.openai_url, "api_key_env": "TEACHER_KEY"},
               "generate": {**example["generate"], "batch_poll_s": 0.05},
               "curate": {**example["curate"], "real_data": "ft-train.jsonl", "val": 10, "test": 20},
               "student": {"model": str(student), "max_length": 64},
               "pilot": {"n": 10}, "train": {"objective": "sft", "lr": 0.01, "epochs": 3, "batch_size": 8},
               "evaluate": {**example["evaluate"], "latency_samples": 2, "batch_size": 8},
               "export": {"gguf_types": ["f16"]}}
        (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        run = cli(["run", "-c", "potstill.yaml"], tmp_path)
        assert run.returncode == 0, run.stderr
        stats = srv.stats()
        cost = cli(["cost", "run"], tmp_path)
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert isinstance(ev["verdict"]["go"], bool) and (tmp_path / "run" / "report.html").exists()
    assert set(ev["models"]) >= {"teacher", "student"}
    # the fine-tune answered through batches only, each input once, at the batch share of its ft: price
    assert stats["created"].get("openai", 0) >= 1 and set(stats["submissions"].values()) == {1}
    con = sqlite3.connect(tmp_path / "run" / "calls.sqlite")
    rows = con.execute("SELECT model, price_multiplier, cost_usd, input_tokens, output_tokens FROM calls"
                       " WHERE role='teacher' AND status='ok'").fetchall()
    con.close()
    assert len(rows) == 90 and {r[0] for r in rows} == {FT} and {r[1] for r in rows} == {0.5}
    assert all(c == pytest.approx((i * 0.30 + o * 1.20) / 1e6 * 0.5) for _, _, c, i, o in rows)
    assert "90 through batches" in cost.stdout
    # the fine-tune's own training examples went into train as real data
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["counts"]["real_added"] > 0
    exported = cli(["export", "-c", "potstill.yaml", "--format", "gguf"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    ggufs = list((tmp_path / "run" / "export").rglob("*.gguf"))
    assert ggufs and all(p.stat().st_size > 10_000 for p in ggufs)
