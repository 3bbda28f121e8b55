"""Free text is scored by chrF, not only by exact match: pilot and evaluate show it on the terminal.

A summary almost never equals the teacher's word for word, so the one figure the pilot printed for a
free-text task, "agrees with the teacher on 0.0%", said nothing about how far the untrained student
was (and the evaluate table's agreement column read 0.0% for a trained student whose chrF had doubled).
The teacher is a real OpenAI-compatible server on 127.0.0.1 (a tiny model), the student a tiny model.
"""

from __future__ import annotations

import json

import pytest

from potstill.config import load_config
from potstill.evaluate.metrics import chrf
from potstill.ledger import Ledger
from potstill.pilot.stage import pilot_stage
from tests.helpers.chat_server import ChatServer

TEXTS = ["the team won the match with a late goal", "new phone software for the internet",
         "the minister said the party will vote", "bank profit and market shares rose this year"]


def test_pilot_prints_and_records_chrf_for_free_text(tmp_path, tiny_model, tiny_model_b, capsys):
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in TEXTS))
    with ChatServer(str(tiny_model_b)) as teacher:
        cfg = load_config(overrides={
            "run_dir": str(tmp_path / "run"), "data": {"inputs": str(tmp_path / "inputs.jsonl")},
            "task": {"type": "freetext", "instruction": "Summarise the text.", "max_output_tokens": 6},
            "teacher": {"type": "openai", "model": "tiny", "base_url": teacher.base_url, "api_key_env": ""},
            "student": {"model": str(tiny_model), "max_length": 64}, "pilot": {"n": len(TEXTS)},
            "evaluate": {"latency_samples": 2, "batch_size": 2}})
        pilot_stage(cfg)
    student = json.loads((tmp_path / "run" / "pilot.json").read_text())["models"]["untrained student"]
    # The student's answers as the ledger holds them, against the teacher's.
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        said = {json.loads(r["request"])["messages"][-1]["content"]: json.loads(r["response"])["output"]
                for r in ledger.rows(role="student", stage="pilot")}
        answers = {json.loads(r["request"])["messages"][-1]["content"]: json.loads(r["response"])["output"]
                   for r in ledger.rows(role="teacher")}
    want = sum(chrf(" ".join(said[t].split()), " ".join(answers[t].split())) for t in TEXTS) / len(TEXTS)
    assert student["chrf_with_teacher"] == pytest.approx(want)
    captured = capsys.readouterr()
    assert "chrF" in captured.out  # a column of the table
    line = [ln for ln in captured.err.splitlines() if ln.startswith("pilot: the untrained student")]
    assert line and f"chrF {want:.3f}" in line[0], line
