"""`potstill watch` after a hot swap: the window holds only requests the current student handled.

Before a promotion the old champion answered (or escalated) the traffic by its own thresholds; its
escalation share and its labels say nothing of the student now served, whose calibration
(RUN/serve/routing.json) the escalation share is judged against. Real parts: a tiny student on
disk, its real ledger rows as `potstill serve` writes them (the student's served name included)."""

from __future__ import annotations

import json
import shutil

import pytest

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.ledger import Ledger, ServedCall
from potstill.models.loading import load_lm
from potstill.watch import watch_run

LABELS = ["business", "sports", "tech", "politics"]
WORDS = ["market", "match", "phone", "election", "the", "a", "of", "new"]


def _run(tmp_path, tiny_model, output=lambda i: LABELS[i % 4]):
    """A served run's directory: the tiny student, 80 training records (record i answered
    ``output(i)``), a routing.json; with the texts and the name serve logs for the student."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model, run / "student")
    texts = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 6)) + f" {i}" for i in range(80)]
    (run / "train.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": t}], "output": output(i)}) + "\n"
        for i, t in enumerate(texts)))
    (run / "serve").mkdir()
    (run / "serve" / "routing.json").write_text(json.dumps({"stats": {"val_escalation": 0.05}}))
    # The name `potstill serve` logs for the student it serves (serve.engine.ServedStudent.served_name).
    current = "potstill-student@" + load_lm(str(run / "student"), device="cpu").identity.rsplit("@", 1)[-1]
    return run, texts, current


def _served(ledger: Ledger, texts, student: str, escalated: bool, t0: float) -> None:
    for i, t in enumerate(texts):
        ledger.record_served(ServedCall(
            request={"model": "potstill", "messages": [{"role": "user", "content": t}]},
            answered_by="teacher" if escalated else "student", model="m", content=LABELS[i % 4],
            reason="low confidence" if escalated else "", student=student, created_at=t0 + i))


def _cfg() -> Config:
    return Config(task={"labels": LABELS, "instruction": "classify"},
                  watch={"window": 60, "min_requests": 30, "reference_size": 40, "permutations": 299})


def test_watch_judges_only_the_current_students_traffic(tmp_path, tiny_model):
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        # The old champion escalated everything (why it was replaced); the promoted one escalates nothing.
        _served(ledger, texts[:60], "potstill-student@0123456789ab", True, 1000.0)
        _served(ledger, texts[20:60], current, False, 2000.0)
    report = watch_run(run, _cfg(), device="cpu")
    assert report["traffic"]["n"] == 40  # before: the latest 60, 20 of them the old champion's escalations
    assert report["checks"]["escalation"]["share"] == 0.0
    assert not report["checks"]["escalation"]["flagged"]
    assert report["traffic"]["earlier_student"] == 20
    assert any("earlier student" in n for n in report["notes"])

    # A time range too: what the old champion handled in it is left out, and a range it alone
    # served is refused in one line that says why.
    assert watch_run(run, _cfg(), since=0.0, device="cpu")["traffic"]["n"] == 40
    with pytest.raises(PotstillError, match=r"0 answered served request\(s\) .*current student.*60 .*earlier student"):
        watch_run(run, _cfg(), since=0.0, until=1500.0, device="cpu")


def test_rows_logged_before_the_student_was_named_still_count(tmp_path, tiny_model):
    # A ledger written before served rows named their student: nothing to tell apart, all judged.
    run, texts, _ = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:60], "", False, 1000.0)
    assert watch_run(run, _cfg(), device="cpu")["traffic"]["n"] == 60
