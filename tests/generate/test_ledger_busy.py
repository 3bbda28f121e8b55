"""A ledger that takes no more answers mid-run (another process holding calls.sqlite past SQLite's
30 s, a full disk): the first failed commit raised out of every worker, so the answers the provider
was still computing for the other workers, already billed, were dropped with the event loop and
paid for again on the rerun, and the answer whose commit failed was lost too."""

from __future__ import annotations

import sqlite3

import pytest

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.ledger import Ledger
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, check_output, project


def test_a_busy_ledger_stops_the_sending_and_keeps_every_answer_already_paid_for(tmp_path, monkeypatch):
    n, conc = 120, 8
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    real = Ledger.record_many
    seen = {"calls": 0, "refused": 0}

    def busy_for_a_while(self, calls):
        # The 30th to the 33rd commits find the file locked; later ones (in flight then) find it free.
        seen["calls"] += 1
        if 30 <= seen["calls"] <= 33:
            seen["refused"] += 1
            raise sqlite3.OperationalError("database is locked")
        return real(self, calls)

    monkeypatch.setattr(Ledger, "record_many", busy_for_a_while)
    with Loopback(key=SECRET, seed=4, pslow=1.0, slow_s=0.05) as srv:
        cfg_path = project(tmp_path, srv.base_url, n, {"concurrency": conc})
        with pytest.raises(PotstillError) as e:
            generate_stage(load_config(cfg_path))
        answered = sum(srv.stats()["answered"].values())
        msg = str(e.value)
        assert "\n" not in msg and "database is locked" in msg and "rerun" in msg
        assert "every answer received was written" in msg
        assert seen["refused"] >= 1 and answered < n  # it stopped sending, with inputs left
        with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
            assert ledger.count(status="ok") == answered  # every billed answer is in the ledger, once
        monkeypatch.setattr(Ledger, "record_many", real)
        summary = generate_stage(load_config(cfg_path))
        assert sum(srv.stats()["answered"].values()) == n  # the rerun paid for none of them twice
    assert summary["errors"] == 0
    check_output(tmp_path / "run" / "teacher.jsonl", n)


def test_answers_the_ledger_never_takes_are_counted_as_lost(tmp_path, monkeypatch):
    n, conc = 60, 4
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    real = Ledger.record_many
    seen = {"calls": 0}

    def full_from_the_tenth(self, calls):
        seen["calls"] += 1
        if seen["calls"] >= 10:
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, calls)

    monkeypatch.setattr(Ledger, "record_many", full_from_the_tenth)
    with Loopback(key=SECRET, seed=5, pslow=1.0, slow_s=0.05) as srv:
        with pytest.raises(PotstillError) as e:
            generate_stage(load_config(project(tmp_path, srv.base_url, n, {"concurrency": conc})))
        answered = sum(srv.stats()["answered"].values())
    msg = str(e.value)
    lost = answered - 9
    assert 1 <= lost <= conc and f"{lost} of the answers received could not be written" in msg, msg
