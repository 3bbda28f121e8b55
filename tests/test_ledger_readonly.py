"""A run this account may not write to (a read-only mount, an archived CI artifact, a teammate's run):
`potstill cost` and `watch` read its ledger without writing a byte. Every open switched the journal
mode (and created WAL's -shm file), so both stopped at 'SQLite: attempt to write a readonly database'."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from potstill.cli import main
from potstill.hashing import hash_file
from potstill.ledger import MIGRATIONS, Call, Ledger
from potstill.sqlite_migrations import apply_migrations, behind
from tests.helpers.accounts import shared_dir, without_root

DEAD_PID = 4_194_305  # past Linux's largest pid_max: no process has it


def _cost_read_only(run, monkeypatch, capsys) -> tuple[int, str, str]:
    """`potstill cost RUN` on ``run`` made read-only, as an account without root: (exit code, stdout, stderr)."""
    run.chmod(0o555)
    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(run)])
    with without_root(), pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cost_reads_a_run_it_may_not_write(monkeypatch, capsys):
    with shared_dir() as d:
        run = d / "run"
        run.mkdir()
        with Ledger(run / "calls.sqlite") as led:
            hashes = [f"g{i}" for i in range(4)]
            led.start_run("generate", "m", 4, hashes, 0)
            led.record_many([Call(h, "teacher", "generate", "m", {"g": h}, {"output": "a"}, 20, 1, cost_usd=0.001)
                             for h in hashes[:3]])
            # Killed: its status is 'running', its process gone; the report calls it stale.
            led._db.execute("UPDATE generate_runs SET pid=?", (DEAD_PID,))
            led._db.commit()
        before = hash_file(run / "calls.sqlite")
        code, out, err = _cost_read_only(run, monkeypatch, capsys)
        assert code == 0, err
        assert "teacher m: 3 calls (0 errors)" in out and "last generate (stale): 4 inputs" in out, out
        with without_root(), Ledger(run / "calls.sqlite", readonly=True) as led:  # as watch reads served traffic
            assert led.served() == []
        assert sorted(p.name for p in run.iterdir()) == ["calls.sqlite"] and hash_file(run / "calls.sqlite") == before


def test_a_ledger_of_an_earlier_potstill_is_brought_up_to_date_where_it_may_be_written(tmp_path):
    """Reading it as it is, a report would ask for columns it does not have yet."""
    db = sqlite3.connect(tmp_path / "calls.sqlite")
    apply_migrations(db, MIGRATIONS[:3])
    db.close()
    with Ledger.reader(tmp_path / "calls.sqlite") as led:
        assert not led.readonly and not behind(led._db, MIGRATIONS)
        assert led.cost_report()["models"] == []


@pytest.mark.parametrize("applied", [1, len(MIGRATIONS) - 1])
def test_a_ledger_of_an_earlier_potstill_it_may_not_write_is_read_as_if_brought_up_to_date(applied, monkeypatch,
                                                                                           capsys):
    """Read as it was, `potstill cost` printed the teacher's line and then stopped at 'SQLite: no such column:
    student_cost_usd' (rc 2): an archived CI artifact is most often one an earlier potstill wrote. What the
    later migrations add reads as empty tables and columns at their defaults, and the file is not written."""
    with shared_dir() as d:
        run = d / "run"
        run.mkdir()
        db = sqlite3.connect(run / "calls.sqlite")
        apply_migrations(db, MIGRATIONS[:applied])
        db.executemany("INSERT INTO calls (request_hash, role, stage, model, request, response, input_tokens,"
                       " output_tokens, cost_usd, status, created_at) VALUES (?, 'teacher', 'generate', 'm', '{}',"
                       " '{\"output\": \"a\"}', 20, 1, 0.001, 'ok', 1.0)", [("g1",), ("g2",)])
        db.commit()
        db.close()
        before = hash_file(run / "calls.sqlite")
        code, out, err = _cost_read_only(run, monkeypatch, capsys)
        assert code == 0, err
        assert "teacher m: 2 calls (0 errors), 40 input (0 cached) + 2 output tokens, $0.0020" in out, out
        assert "student: 0 calls" in out
        with without_root(), Ledger(run / "calls.sqlite", readonly=True) as led:  # as watch and requests read it
            assert led.rows()[0]["student_cost_usd"] == 0 and led.rows()[0]["price_multiplier"] == 1
            assert led.served() == [] and led.batches() == []
        assert sorted(p.name for p in run.iterdir()) == ["calls.sqlite"] and hash_file(run / "calls.sqlite") == before


def test_a_ledger_with_unmerged_writes_in_a_folder_it_may_not_write_says_so(monkeypatch, capsys):
    """The db and -wal of a writer that had not checkpointed (copied while running, or killed), with no
    -shm, in a read-only folder: SQLite cannot read the -wal without making a -shm there, and cost said only
    'SQLite: unable to open database file'. It is not read as immutable: that would leave the -wal's calls out."""
    with shared_dir() as d:
        src, run = d / "src", d / "run"
        run.mkdir()
        with Ledger(src / "calls.sqlite") as led:
            led._db.execute("PRAGMA wal_autocheckpoint=0")
            led.record_many([Call(f"g{i}", "teacher", "generate", "m", {"g": i}, {"output": "a"}, 20, 1)
                             for i in range(3)])
            for name in ("calls.sqlite", "calls.sqlite-wal"):  # as the writer left them, before it closes
                (run / name).write_bytes((src / name).read_bytes())
        code, out, err = _cost_read_only(run, monkeypatch, capsys)
        assert code == 2 and out == ""
        assert err == (f"error: {run / 'calls.sqlite'}: the ledger has writes not yet merged into it, in "
                       "calls.sqlite-wal, which SQLite reads only through a calls.sqlite-shm file it may not make in "
                       "this read-only folder; copy the folder somewhere writable (calls.sqlite and calls.sqlite-wal "
                       "together) and read it there\n")
