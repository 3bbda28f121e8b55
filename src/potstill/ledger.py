"""The SQLite ledger: every call to a teacher or a student is one row.

It is the cache (a request whose hash has an ``ok`` row is never sent again), the bill (tokens
and dollars), and the source of latency and drift numbers. The schema evolves through numbered,
append-only migrations recorded in the ``_migrations`` table. WAL mode lets readers (``cost``,
a report) run while a generation writes.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIGRATIONS: list[str] = [
    # 1: the calls table.
    """
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_hash TEXT NOT NULL,
        role TEXT NOT NULL,            -- teacher | student
        stage TEXT NOT NULL,           -- pilot | generate | evaluate | serve | ...
        model TEXT NOT NULL,
        request TEXT NOT NULL,         -- canonical JSON of what was sent (never a key)
        response TEXT,                 -- JSON of the parsed response
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cached_input_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        status TEXT NOT NULL,          -- ok | error
        error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX calls_hash ON calls(request_hash, status);
    CREATE INDEX calls_role_stage ON calls(role, stage);
    """,
    # 2: why the model stopped; and each generate run's plan, so `potstill cost` can show cache
    # hits and price the inputs still unanswered, even for a run that was killed.
    """
    ALTER TABLE calls ADD COLUMN stop_reason TEXT;
    CREATE TABLE generate_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        stage TEXT NOT NULL,
        model TEXT NOT NULL,
        inputs INTEGER NOT NULL,       -- records in the input file
        unique_requests INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL,   -- inputs answered from the ledger at the start
        retries INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,          -- running | done | budget | errors (| error | stale: migration 3)
        started_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE generate_plan (
        run_id INTEGER NOT NULL,
        request_hash TEXT NOT NULL,
        PRIMARY KEY (run_id, request_hash)
    ) WITHOUT ROWID;
    """,
    # 3: who runs a generate run, so the next run can tell a crashed one (status stale) from a
    # live one; a run that ends by an exception is marked error.
    """
    ALTER TABLE generate_runs ADD COLUMN pid INTEGER;
    ALTER TABLE generate_runs ADD COLUMN host TEXT;
    """,
]


def apply_migrations(db: sqlite3.Connection, migrations: list[str]) -> None:
    """Apply the numbered, append-only ``migrations`` not yet recorded in ``_migrations``.

    Each runs in one transaction with its record, so a crash leaves it applied or not at all.
    A file versioned by ``PRAGMA user_version`` (review stores before they used this) counts its
    first ``user_version`` migrations as applied.
    """
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, applied_at REAL)")
    done = {r[0] for r in db.execute("SELECT id FROM _migrations")}
    if not done:
        done = set(range(1, db.execute("PRAGMA user_version").fetchone()[0] + 1))
        db.executemany("INSERT INTO _migrations VALUES (?, ?)", ((i, time.time()) for i in sorted(done)))
        db.commit()
    for i, sql in enumerate(migrations, 1):
        if i not in done:
            db.executescript(f"BEGIN;\n{sql.strip().rstrip(';')};\n"
                             f"INSERT INTO _migrations VALUES ({i}, {time.time()});\nCOMMIT;")


@dataclass
class Call:
    """One call as the ledger stores it."""

    request_hash: str
    role: str
    stage: str
    model: str
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    status: str = "ok"
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    stop_reason: str | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Ledger:
    """A thin, thread-safe wrapper over one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            apply_migrations(self._db, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def record(self, call: Call) -> None:
        self.record_many([call])

    def record_many(self, calls: list[Call]) -> None:
        rows = [
            (
                c.request_hash, c.role, c.stage, c.model, json.dumps(c.request, sort_keys=True),
                None if c.response is None else json.dumps(c.response), c.input_tokens, c.output_tokens,
                c.cached_input_tokens, c.cost_usd, c.latency_s, c.status, c.error, c.created_at, c.stop_reason,
            )
            for c in calls
        ]
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO calls (request_hash, role, stage, model, request, response, input_tokens,"
                " output_tokens, cached_input_tokens, cost_usd, latency_s, status, error, created_at, stop_reason)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    # ------------------------------------------------------------------ reads
    def lookup(self, request_hashes: list[str]) -> dict[str, dict[str, Any]]:
        """The cached ``ok`` response for each hash that has one (the latest wins)."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(request_hashes), 500):
                part = request_hashes[i : i + 500]
                q = ",".join("?" * len(part))
                for h, resp in self._db.execute(
                    f"SELECT request_hash, response FROM calls WHERE status='ok' AND request_hash IN ({q})"
                    " ORDER BY id",
                    part,
                ):
                    out[h] = json.loads(resp)
        return out

    @staticmethod
    def _where(**filters: str | None) -> tuple[str, list[str]]:
        """' WHERE col=? AND ...' for the filters that are set, and their values."""
        cols = [(col, val) for col, val in filters.items() if val is not None]
        sql = " WHERE " + " AND ".join(f"{col}=?" for col, _ in cols) if cols else ""
        return sql, [val for _, val in cols]

    def rows(self, role: str | None = None, stage: str | None = None, model: str | None = None) -> list[dict]:
        where, args = self._where(role=role, stage=stage, model=model)
        with self._lock:
            cur = self._db.execute("SELECT * FROM calls" + where + " ORDER BY id", args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def rows_for(self, request_hashes: list[str], role: str = "teacher") -> list[dict]:
        """Successful rows for the given request hashes (the first answer of each)."""
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(request_hashes), 500):
                part = request_hashes[i : i + 500]
                q = ",".join("?" * len(part))
                cur = self._db.execute(
                    f"SELECT * FROM calls WHERE role=? AND status='ok' AND request_hash IN ({q}) ORDER BY id",
                    [role, *part],
                )
                names = [d[0] for d in cur.description]
                for r in cur.fetchall():
                    row = dict(zip(names, r))
                    out.setdefault(row["request_hash"], row)
        return list(out.values())

    def count(self, role: str | None = None, status: str | None = None, stage: str | None = None) -> int:
        where, args = self._where(role=role, status=status, stage=stage)
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls" + where, args).fetchone()[0])

    def summary(self, role: str = "teacher") -> dict[str, Any]:
        """Spend, tokens and latency of one role's successful calls."""
        with self._lock:
            r = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0),"
                " COALESCE(SUM(cost_usd),0), COALESCE(SUM(latency_s),0) FROM calls WHERE role=? AND status='ok'",
                (role,),
            ).fetchone()
        n = int(r[0])
        return {
            "calls": n,
            "input_tokens": int(r[1]),
            "output_tokens": int(r[2]),
            "cost_usd": float(r[3]),
            "cost_per_call_usd": float(r[3]) / n if n else 0.0,
            "latency_total_s": float(r[4]),
        }

    # ------------------------------------------------------------------ generate runs
    def _mark_stale(self) -> None:
        """Runs left ``running`` by a process that is gone (``kill -9``, a crash) become ``stale``."""
        host = socket.gethostname()
        rows = self._db.execute("SELECT id, pid, host FROM generate_runs WHERE status='running'").fetchall()
        dead = [rid for rid, pid, h in rows if pid is None or (h == host and not _alive(pid))]
        self._db.executemany("UPDATE generate_runs SET status='stale' WHERE id=?", ((rid,) for rid in dead))

    def start_run(self, stage: str, model: str, inputs: int, hashes: list[str], cache_hits: int) -> int:
        """Record a generate run and the distinct requests it must answer (older plans of the stage go)."""
        with self._lock, self._db:
            self._mark_stale()
            self._db.execute("DELETE FROM generate_plan WHERE run_id IN (SELECT id FROM generate_runs WHERE stage=?)",
                             (stage,))
            cur = self._db.execute(
                "INSERT INTO generate_runs (stage, model, inputs, unique_requests, cache_hits, status, started_at, pid,"
                " host) VALUES (?,?,?,?,?,'running',?,?,?)",
                (stage, model, inputs, len(hashes), cache_hits, time.time(), os.getpid(), socket.gethostname()))
            run_id = int(cur.lastrowid)
            self._db.executemany("INSERT OR IGNORE INTO generate_plan VALUES (?, ?)", ((run_id, h) for h in hashes))
        return run_id

    def finish_run(self, run_id: int, status: str, retries: int) -> None:
        """End a run: ``done``, ``budget``, ``errors`` (some calls failed) or ``error`` (an exception ended it)."""
        with self._lock, self._db:
            self._db.execute("UPDATE generate_runs SET status=?, retries=?, finished_at=? WHERE id=?",
                             (status, retries, time.time(), run_id))

    def cost_report(self, stage: str = "generate") -> dict[str, Any]:
        """Spend and tokens per teacher model, and the latest run's cache hits and projected remaining cost."""
        with self._lock, self._db:
            self._mark_stale()
            models = [
                {"model": m, "calls": int(c), "ok": int(ok), "input_tokens": int(i), "cached_input_tokens": int(ci),
                 "output_tokens": int(o), "cost_usd": float(d)}
                for m, c, ok, i, ci, o, d in self._db.execute(
                    "SELECT model, COUNT(*), SUM(status='ok'), SUM(input_tokens), SUM(cached_input_tokens),"
                    " SUM(output_tokens), SUM(cost_usd) FROM calls WHERE role='teacher' GROUP BY model ORDER BY model")
            ]
            run = self._db.execute(
                "SELECT id, model, inputs, unique_requests, cache_hits, retries, status FROM generate_runs"
                " WHERE stage=? ORDER BY id DESC LIMIT 1", (stage,)).fetchone()
            latest = None
            if run is not None:
                remaining = int(self._db.execute(
                    "SELECT COUNT(*) FROM generate_plan p WHERE p.run_id=? AND NOT EXISTS"
                    " (SELECT 1 FROM calls c WHERE c.request_hash=p.request_hash AND c.status='ok')", (run[0],)
                ).fetchone()[0])
                n, spent = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(cost_usd),0) FROM calls WHERE role='teacher' AND status='ok' AND model=?",
                    (run[1],)).fetchone()
                per_call = float(spent) / n if n else None
                latest = {
                    "model": run[1], "inputs": run[2], "unique_requests": run[3], "cache_hits": run[4],
                    "retries": run[5], "status": run[6], "remaining": remaining,
                    "cost_per_call_usd": per_call,
                    "projected_remaining_usd": None if per_call is None else per_call * remaining,
                }
        return {"models": models, "latest_run": latest}
