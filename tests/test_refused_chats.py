"""A record whose chat the student's chat template refuses (two user turns in a row under Gemma's,
which requires alternating roles; `potstill import`'s chat logs hold such chats): each stage that
renders it stops with one line naming the record and the template's words.

Found by a review: generate and curate kept such a record, then preflight and train ended in an
84-line Jinja traceback naming no record (evaluate and pilot too); only serve answered such a chat,
with a 400. Real parts: a tiny Llama whose tokenizer carries a template that raises as Gemma's does,
the real CLI and stages on run directories on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.preflight import require, run_checks
from tests.helpers.cli import run_main
from tests.helpers.tiny import CHATML, make_model_dir, make_tokenizer

ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."
STRICT = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
          "{{ raise_exception('" + ALTERNATE + "') }}{% endif %}{% endfor %}" + CHATML)
TEXTS = ["the team won the match", "new phone software", "a vote in the election", "the film star"]
TWO = [{"role": "user", "content": "the team won"}, {"role": "user", "content": "and the match"}]
# What each stage says, after its name: the record, the template's words, what to do.
SAYS = (f"record two: the student's chat template refuses its chat ({ALTERNATE}); serve answers such a chat with "
        "a 400, so the student can neither learn nor be measured on it: join its consecutive turns of one role (or "
        "drop the record), or pick a student whose chat template takes it")


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Path:
    path = make_model_dir(tmp_path_factory.mktemp("strict") / "model")
    tok = make_tokenizer()
    tok.chat_template = STRICT
    tok.save_pretrained(path)
    return path


def rows(refused: bool) -> str:
    out = [{"id": f"r{i}", "messages": [{"role": "user", "content": t}], "output": ["sports", "tech"][i % 2]}
           for i, t in enumerate(TEXTS)]
    if refused:
        out.insert(2, {"id": "two", "messages": TWO, "output": "sports"})
    return "".join(json.dumps(r) + "\n" for r in out)


@pytest.fixture
def work(tmp_path, monkeypatch, strict) -> Path:
    monkeypatch.chdir(tmp_path)
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": ["sports", "tech"], "instruction": "topic"},
           "data": {"inputs": "inputs.jsonl"}, "teacher": {"type": "replay", "model": "x", "replay_path": "rec.jsonl"},
           "student": {"model": str(strict), "max_length": 64},
           "train": {"int8_calibration": 0, "epochs": 1, "batch_size": 2},
           "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False},
           "report": {"min_slice_n": 2, "bootstrap_samples": 100}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "run").mkdir()
    return tmp_path


def test_preflight_fails_its_prompt_check_naming_the_record(work):
    (work / "run" / "train.jsonl").write_text(rows(refused=True))
    cfg = load_config(work / "c.yaml")
    [prompt] = [c for c in run_checks(cfg) if c.name == "prompt"]
    assert (prompt.status, prompt.detail) == ("fail", SAYS)
    with pytest.raises(PotstillError) as e:
        require(cfg, "train")
    assert str(e.value) == f"preflight prompt: {SAYS}"
    (work / "run" / "train.jsonl").write_text(rows(refused=False))
    assert [c.status for c in run_checks(cfg, "train") if c.name == "prompt"] == ["ok"]


def test_train_refuses_a_record_past_preflight_in_one_line(work, monkeypatch, capsys):
    """Preflight renders the first 64 training records; train builds every example, val's too."""
    (work / "run" / "train.jsonl").write_text(rows(refused=False))
    (work / "run" / "val.jsonl").write_text(rows(refused=True))
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml")
    assert (code, err) == (2, [f"error: train: {SAYS}"])
    assert not (work / "run" / "student").exists()


def test_evaluate_refuses_a_test_record_in_one_line(work, strict, monkeypatch, capsys):
    shutil.copytree(strict, work / "run" / "student")
    (work / "run" / "test.jsonl").write_text(rows(refused=True))
    code, err = run_main(monkeypatch, capsys, "evaluate", "-c", "c.yaml")
    assert (code, err) == (2, [f"error: evaluate: {SAYS}"])
    assert not (work / "run" / "eval.json").exists()


def test_the_pilot_refuses_an_input_in_one_line(work, monkeypatch, capsys):
    from potstill.pilot.stage import pilot_stage

    (work / "inputs.jsonl").write_text(rows(refused=True))
    (work / "rec.jsonl").write_text("".join(
        json.dumps({"messages": [*json.loads(line)["messages"], {"role": "assistant", "content": "sports"}]}) + "\n"
        for line in rows(refused=True).splitlines()))
    cfg = load_config(work / "c.yaml", {"pilot.n": 5})
    with pytest.raises(PotstillError) as e:
        pilot_stage(cfg)
    assert str(e.value) == f"pilot: {SAYS}"
    assert not (work / "run" / "pilot.json").exists()


def test_curate_sets_aside_a_record_whose_chat_the_template_refuses(work, monkeypatch, capsys):
    """Curate kept such a record (and such a real example) in train, val or test, for train, evaluate or
    pilot to stop on later; now it sets them aside in rejected.jsonl with the words train stops with,
    counts them in the card among the invalid, and says so in one line. The rest are curated as before."""
    real = work / "real.jsonl"
    real.write_text(json.dumps({"id": "real-two", "messages": [{"role": "user", "content": "a vote"},
                                                               {"role": "user", "content": "in the city"}],
                                "label": "tech"}) + "\n"
                    + json.dumps({"id": "real-one", "messages": [{"role": "user", "content": "the film"}],
                                  "label": "tech"}) + "\n")
    (work / "run" / "teacher.jsonl").write_text(rows(refused=True))
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--curate.val", "1", "--curate.test", "1",
                         "--curate.real_data", str(real), "--curate.real_ratio", "1")
    assert code == 0, err
    rejected = {r["id"]: r["invalid_reason"] for r in map(json.loads, (work / "run" / "rejected.jsonl").open())}
    assert rejected == {"two": f"chat template: {SAYS.split(': ', 1)[1]}",
                        "real-two": f"real example: chat template: {SAYS.split(': ', 1)[1]}"}
    kept = [json.loads(line)["id"] for name in ("train", "val", "test")
            for line in (work / "run" / f"{name}.jsonl").open()]
    assert sorted(kept) == ["r0", "r1", "r2", "r3", "real-one"]
    card = json.loads((work / "run" / "card.json").read_text())
    assert card["rejected_reasons"]["chat template"] == 1 and card["counts"]["invalid"] == 1
    said = " ".join(" ".join(err).split())
    assert ("curate: 2 of 7 records have a chat the student's chat template refuses (record two: the student's "
            f"chat template refuses its chat ({ALTERNATE})") in said, said
