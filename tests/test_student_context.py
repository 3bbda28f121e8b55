"""Inputs longer than a model's positions, through pilot, train, evaluate and a local teacher.

Found by an audit: a student with learned positions (GPT-2, 128 here) failed pilot and evaluate with an
IndexError traceback on an input longer than 128 tokens, train's warning asked for a student.max_length
past its positions, the int8 calibration and importance matrix after training were skipped with the same
IndexError, and a local GPT-2 teacher failed generate with it; a rotary student (a tiny Llama) was scored
by evaluate on inputs serve sends to the teacher unread (reason too_long). Real parts: tiny models built
from a config, the real stages, JSONL and SQLite files on disk."""

from __future__ import annotations

import json
import random

import pytest

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.pipeline import STAGES
from potstill.records import read_json, read_records
from tests.serve.test_context import gpt2_dir, llama_dir

LABELS = ["sports", "tech", "politics"]
KEYWORDS = {"sports": ["match", "team", "goal", "win"], "tech": ["phone", "software", "internet", "computer"],
            "politics": ["minister", "party", "vote", "election"]}
FILLER = "the a of to in and on for with by is was were has have market shares bank profit film music star".split()


def write_inputs(path, long_words: int, short: int = 8, long: int = 2) -> None:
    """Per label ``short`` inputs of 8 words and ``long`` of ``long_words`` + 2 words."""
    rng = random.Random(0)
    rows = []
    for label, words in KEYWORDS.items():
        for i in range(short + long):
            text = rng.sample(words, 2) + [rng.choice(FILLER) for _ in range(6 if i < short else long_words)]
            rng.shuffle(text)
            rows.append({"input": " ".join(text), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config(tmp_path, student, max_length: int, teacher, task: dict | None = None):
    return load_config(overrides={
        "run_dir": str(tmp_path / "run"), "data": {"inputs": str(tmp_path / "inputs.jsonl")},
        "task": task or {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "teacher": {"type": "local", "model": str(teacher), "prompt_format": "chat", "batch_size": 4,
                    "max_tokens": 4, "price": {"usd_per_hour": 1.0}},
        "student": {"model": str(student), "max_length": max_length},
        "pilot": {"n": 30}, "curate": {"val": 4, "test": 10, "near_dup": False},
        "train": {"lr": 0.01, "epochs": 1, "batch_size": 4, "int8_calibration": 8},
        "export": {"imatrix_inputs": 8}, "evaluate": {"latency_samples": 2, "batch_size": 4}})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_inputs_over_the_students_context_are_set_aside_and_counted(tmp_path, tiny_model_b, capsys, kind):
    if kind == "gpt2":  # learned positions: an input past them was an IndexError
        student, positions, max_length = gpt2_dir(tmp_path / "gpt2"), 128, 128
    else:  # rotary: an input past them was scored, where serve sends it to the teacher
        student, positions, max_length = llama_dir(tmp_path / "llama", 64), 64, 48
    write_inputs(tmp_path / "inputs.jsonl", long_words=positions + 20)
    cfg = config(tmp_path, student, max_length, tiny_model_b)  # a teacher of 512 positions reads them all
    run = tmp_path / "run"

    STAGES["pilot"].run(cfg)
    pilot = read_json(run / "pilot.json")
    assert pilot["valid"] == 30 and pilot["too_long"] == 6  # the 2 long inputs of each label
    assert pilot["models"]["untrained student"]["n"] == pilot["models"]["teacher"]["n"] == 24
    err = capsys.readouterr().err
    assert f"pilot: 6 of 30 inputs are longer than the student's context ({positions} positions;" in err

    for stage in ("generate", "curate", "train"):
        STAGES[stage].run(cfg)
    err = capsys.readouterr().err
    assert "skipped" not in err and "IndexError" not in err
    summary = read_json(run / "train.json")
    assert summary["int8_calibration"]["inputs"] == 8 and summary["imatrix"]["inputs"] == 8
    # train's advice stops at the student's positions
    if kind == "gpt2":
        assert "the student has 128 positions, and serve sends longer chats to the teacher" in err
    else:
        assert "raise student.max_length to 64, the student's positions" in err
    assert not any(f"raise student.max_length to {n}" in err for n in range(positions + 1, positions + 40))

    STAGES["evaluate"].run(cfg)
    test = read_records(run / "test.jsonl")
    long = sum(len(r.text.split()) > positions for r in test)
    ev = read_json(run / "eval.json")
    assert long and ev["n_too_long"] == long and ev["n_test"] == len(test) - long  # curate's split is seeded
    assert f"evaluate: {long} of {len(test)} inputs are longer than the student's context" in capsys.readouterr().err
    # Where each number comes from no longer says the student answered every test input.
    said = f"the student answered every test input on this machine but the {long} longer than its context"
    assert ev["sources"]["student"].startswith("measured by this command: " + said)
    assert said in (run / "report.html").read_text()


def test_every_input_over_the_students_context_is_one_line(tmp_path, tiny_model_b):
    write_inputs(tmp_path / "inputs.jsonl", long_words=150, short=0, long=2)
    cfg = config(tmp_path, gpt2_dir(tmp_path / "gpt2"), 128, tiny_model_b)
    with pytest.raises(PotstillError, match=r"^pilot: every one of the 6 inputs is longer than the student's context "
                                            r"\(128 positions; record \w+: \d+ prompt tokens > 128 positions\)"):
        STAGES["pilot"].run(cfg)


@pytest.mark.parametrize("task", [None, {"type": "freetext", "instruction": "name the topic"}])
def test_a_local_teacher_answers_an_input_over_its_context_with_one_counted_error(tmp_path, tiny_model, task):
    """A local GPT-2 teacher: generate stopped with an IndexError traceback at the first long input."""
    write_inputs(tmp_path / "inputs.jsonl", long_words=150, short=3, long=1)
    cfg = config(tmp_path, tiny_model, 64, gpt2_dir(tmp_path / "gpt2"), task)
    with pytest.raises(PotstillError, match=r"^generate: 3 of 12 teacher calls failed \(teacher error: "
                                            r"context_length_exceeded: \d+ prompt tokens (\+ 4 to answer )?> 128 "
                                            r"positions of the local teacher's context\)"):
        STAGES["generate"].run(cfg)
    answered = [r for r in read_records(tmp_path / "run" / "teacher.jsonl") if r.output is not None]
    assert len(answered) == 9 and all(len(r.text.split()) == 8 for r in answered)
