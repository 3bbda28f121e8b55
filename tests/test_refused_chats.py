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
