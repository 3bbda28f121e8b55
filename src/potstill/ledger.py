"""The SQLite ledger: every call to a teacher or a student is one row.

It is the cache (a request whose hash has an ``ok`` teacher row is never sent again), the bill
(tokens and dollars), and the source of latency and drift numbers. The schema evolves through
numbered, append-only migrations (``ledger_schema``) recorded in the ``_migrations`` table. WAL mode lets readers
(``cost``, a report, ``watch``) run while a generation or a server writes.

Two typed rows (``potstill.ledger_rows``): ``Call`` (a teacher call from generate, pilot, redistill...)
and ``ServedCall`` (one request to ``potstill serve``, ``stage='serve'``). Served traffic is written
and read only through ``record_served`` and ``served``; nothing outside these two modules parses its JSON.
Generate runs and their plans, which `potstill cost` reads, are ``ledger_runs``' (a mixin).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from potstill.errors import PotstillError
from potstill.ledger_rows import Call, ServedCall, user_messages  # noqa: F401 (re-exported: potstill.ledger's rows)
from potstill.ledger_runs import GenerateRuns, process_alive
from potstill.ledger_schema import BATCH_CLOSED, MIGRATIONS, NATURAL_STOPS, billed  # noqa: F401 (MIGRATIONS: re-export)
from potstill.sqlite_migrations import apply_migrations, behind, read_as_migrated


class _Guard:
    """The ledger's lock. A SQLite error raised under it leaves carrying the ledger's path as
    ``filename`` (sqlite3's errors name no file), so the CLI's one line says which file it was."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def __enter__(self) -> "_Guard":
        self._lock.acquire()
        return self

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> None:
        self._lock.release()
        if isinstance(e, sqlite3.DatabaseError) and not getattr(e, "filename", None):
            e.filename = str(self.path)  # type: ignore[attr-defined]


class Ledger(GenerateRuns):
    """A thin, thread-safe wrapper over one SQLite file."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """Open (and migrate) the ledger; ``readonly`` opens an existing file without ever writing to it."""
        self.path = Path(path)
        self.readonly = readonly
        self._lock = _Guard(self.path)
        if readonly:
            if not self.path.exists():
                raise PotstillError(f"{self.path} not found")
            self._open_readonly()
            with self._lock:  # one from an earlier potstill reads as if migrated, what it lacks empty or at defaults
                read_as_migrated(self._db, MIGRATIONS) if behind(self._db, MIGRATIONS) else None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect(self.path)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:  # another file in its place: say so, and leave it as it is
            self._db.close()
            if isinstance(e, sqlite3.OperationalError):  # locked, disk full, ...: not about what the file is
                raise
            raise PotstillError(f"{self.path}: not a potstill ledger (SQLite: {e}); move it aside") from None

    @classmethod
    def reader(cls, path: str | Path) -> "Ledger":
        """The ledger for a command that only reads it (`cost`): read-only, so a run on a read-only mount,
        an archived artifact or another account's run can be read; one written by an earlier potstill
        is brought up to date first where it may be written, and else read as if it were."""
        ledger = cls(path, readonly=True)
        with ledger._lock:
            if not behind(ledger._db, MIGRATIONS):
                return ledger
        try:
            writable = cls(path)
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_READONLY:
                raise
            return ledger
        ledger.close()
        return writable

    def _open_readonly(self) -> None:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        self._db = self._connect(uri, uri=True)
        try:  # SQLite reads a file only at the first query: make that here, where the file is known
            self._probe()
        except sqlite3.OperationalError as e:
            name, wal, shm = self.path.name, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
            if e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_CANTOPEN and wal.exists() and not shm.exists():
                raise PotstillError(  # not read as immutable (below): that leaves out the calls only in the -wal
                    f"{self.path}: the ledger has writes not yet merged into it, in {name}-wal, which SQLite reads only"
                    f" through a {name}-shm file it may not make in this read-only folder; copy the folder somewhere "
                    f"writable ({name} and {name}-wal together) and read it there") from None
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_READONLY:  # locked, ...
                raise
            # A WAL ledger is read through its -shm file, which a reader makes where there is none: in a
            # folder it may not write to (a read-only mount, an archived or another account's run),
            # 'attempt to write a readonly database'. It is read there as a file that does not change.
            self._db.close()
            self._db = self._connect(uri + "&immutable=1", uri=True)
            self._probe()

    def _probe(self) -> None:
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM calls LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            self._db.close()
            if isinstance(e, sqlite3.OperationalError) and "no such table" not in str(e):  # locked, ...
                raise
            raise PotstillError(f"{self.path}: not a potstill ledger (SQLite: {e}); move it aside") from None

    def _connect(self, target: str | Path, uri: bool = False) -> sqlite3.Connection:
        try:
            return sqlite3.connect(target, uri=uri, check_same_thread=False, timeout=30)
        except sqlite3.DatabaseError as e:  # a folder in the file's place: name it, as the _Guard does
            e.filename = str(self.path)  # type: ignore[attr-defined]
            raise

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
                c.price_multiplier, c.prompt_hash, c.student_cost_usd, c.reasoning_tokens,
            )
            for c in calls
        ]
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO calls (request_hash, role, stage, model, request, response, input_tokens,"
                " output_tokens, cached_input_tokens, cost_usd, latency_s, status, error, created_at, stop_reason,"
                " price_multiplier, prompt_hash, student_cost_usd, reasoning_tokens) VALUES (" + ",".join("?" * 19) + ")",
                rows,
            )

    def record_served(self, call: ServedCall) -> None:
        self.record(Call(
            request_hash=call.request_hash, role=call.answered_by, stage="serve", model=call.model,
            request=call.request, response=call.response_json(), input_tokens=call.input_tokens,
            output_tokens=call.output_tokens, cached_input_tokens=call.cached_input_tokens, cost_usd=call.cost_usd,
            student_cost_usd=call.student_cost_usd, latency_s=call.latency_s, status=call.status, error=call.error,
            created_at=call.created_at,
            stop_reason=call.finish_reason if call.status == "ok" else None,
        ))

    # ------------------------------------------------------------------ reads
    def served(self, since: float | None = None, until: float | None = None, limit: int | None = None,
               status: str | None = "ok", student: str | None = None, role: str | None = None,
               request_id: str | None = None, after_id: int | None = None,
               first: int | None = None) -> list[ServedCall]:
        """Served requests created between ``since`` and ``until`` (unix seconds), oldest first;
        with ``limit``, the latest ``limit`` of them; with ``first``, the oldest ``first`` of them
        (a page, for a reader going forward with ``after_id``). ``status=None``: failed ones too.

        ``student``: only the requests handled by a student whose served name starts so, and those
        whose row names no student (logged before rows named theirs). ``role``: the rows of that
        role (teacher: escalated); ``request_id``: the rows of the request with that ``x-request-id``
        (several for a completions request of several prompts), or of the Responses API response
        with that id; ``after_id``: only rows logged after that row."""
        sql, args = "SELECT * FROM calls WHERE stage='serve'", []
        for cond, val in (("status=?", status), ("created_at>=?", since), ("created_at<=?", until),
                          ("role=?", role), ("id>?", after_id)):
            if val is not None:
                sql, args = f"{sql} AND {cond}", [*args, val]
        if request_id is not None:
            sql += " AND ? IN (json_extract(request, '$.request_id'), json_extract(request, '$.response_id'))"
            args.append(request_id)
        if student is not None:
            sql += (" AND (coalesce(json_extract(response, '$.student'), '') = ''"
                    " OR substr(json_extract(response, '$.student'), 1, ?) = ?)")
            args += [len(student), student]
        if first is not None:
            sql, args = f"SELECT * FROM ({sql} ORDER BY id LIMIT ?)", [*args, first]
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit is not None else "")
        args += [limit] if limit is not None else []
        try:
            with self._lock:
                cur = self._db.execute(sql, args)
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r)) for r in cur.fetchall()]
        except sqlite3.DatabaseError as e:
            raise PotstillError(f"{self.path}: not a potstill ledger ({e})") from None
        return [ServedCall.from_row(r) for r in reversed(rows)]

    def last_row_id(self) -> int:
        """The newest row's id (0 for an empty ledger)."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()[0]

    def lookup(self, request_hashes: list[str], role: str = "teacher") -> dict[str, dict[str, Any]]:
        """The cached answer of ``role`` (teacher, judge) for each hash that has an ``ok`` one (the latest wins).

        Served rows are not answers to reuse: their response is what a client got, routing included.
        """
        return {h: json.loads(resp) for h, resp in self._by_hash("response", "status='ok'", role, request_hashes)}

    def whole_answers(self, wanted: dict[str, tuple[str, int]], budget_of: Any) -> dict[str, str]:
        """For each request hash mapped to ``(prompt hash, output budget)``: the hash of an earlier
        request with that prompt hash (the same request under another budget, ``Teacher.prompt_hash``)
        whose answer, ``ok`` outside serve, ended by itself (every sample) under a budget no larger
        (``budget_of(request)``, the teachers' ``max_output``), or under a larger one in no more
        output tokens than this budget (all samples together, as the provider counted them, those a
        failed earlier attempt paid for included: ``earlier_paid``; a row without a count is not
        taken): either way this budget would have answered it alike. The latest such row wins. Rows
        logged before migration 8 have no prompt hash and are not found."""
        by_prompt: dict[str, list[str]] = {}
        for h, (p, _) in wanted.items():
            by_prompt.setdefault(p, []).append(h)
        keys, out = list(by_prompt), {}
        rows = []
        with self._lock:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                try:
                    rows += self._db.execute(
                        "SELECT request_hash, prompt_hash, request, stop_reason, output_tokens, response FROM calls"
                        " INDEXED BY calls_prompt WHERE status='ok' AND"  # not calls_role_stage: see _by_hash
                        f" role='teacher' AND stage<>'serve' AND prompt_hash IN ({','.join('?' * len(part))})"
                        " ORDER BY id", part).fetchall()
                except sqlite3.OperationalError:  # a ledger opened read-only before migration 8: no such column
                    return {}
        for old, p, request, stop, used, response in rows:
            if not stop or any(s not in NATURAL_STOPS for s in stop.split(",")):
                continue
            if used and response and '"earlier_paid"' in response:
                # A row that completed its n samples with a failed attempt's counts only its own tokens.
                used += int((json.loads(response).get("earlier_paid") or {}).get("output_tokens") or 0)
            budget = budget_of(json.loads(request))
            for h in by_prompt[p]:
                if h != old and budget and (budget <= wanted[h][1] or 0 < (used or 0) <= wanted[h][1]):
                    out[h] = old
        return out

    def _by_hash(self, column: str, where: str, role: str, request_hashes: list[str]) -> list[tuple[str, Any]]:
        """``(request_hash, column)`` of the non-serve rows of ``role`` matching ``where`` for these
        hashes, oldest first (so a dict built from them keeps the latest), 500 hashes a query.

        INDEXED BY: given 2 or more hashes and no ANALYZE statistics, SQLite (3.40) picks
        calls_role_stage for ``role=?``, and role teacher is nearly every row, so each query read the
        whole ledger: generate's lookup of n hashes was n/500 full scans (90k hashes in a ledger of 100k
        rows: 14.3 s, against 0.42 s by the hash index; ``benchmarks/ledger_lookup.py``). By the hash
        index a query costs its ~500 index searches whatever the ledger's size; and should that index
        ever go, SQLite raises instead of quietly scanning."""
        out: list[tuple[str, Any]] = []
        with self._lock:
            for i in range(0, len(request_hashes), 500):
                part = request_hashes[i : i + 500]
                q = ",".join("?" * len(part))
                out += self._db.execute(
                    f"SELECT request_hash, {column} FROM calls INDEXED BY calls_hash WHERE {where} AND role=?"
                    " AND stage<>'serve'"
                    f" AND request_hash IN ({q}) ORDER BY id", [role, *part]).fetchall()
        return out

    def refusals(self, request_hashes: list[str], role: str = "teacher") -> dict[str, str]:
        """The refusal (its error text) of each hash whose latest failed answer is the model refusing
        it (``teachers.base.is_refusal``), outside serve. Answered hashes are the caller's to leave out."""
        from potstill.teachers.base import is_refusal

        out: dict[str, str] = {}
        for h, error in self._by_hash("error", "status='error'", role, request_hashes):
            if is_refusal(error):
                out[h] = error
            else:
                out.pop(h, None)  # a later failure of another kind: that one is retried
        return out

    def served_escalations(self, request_hashes: list[str]) -> dict[str, dict[str, Any]]:
        """The teacher's answer as serve kept it, for each hash one of serve's escalations answered
        (the latest wins): its whole output (``teacher_output`` where a client's stop cut what was
        sent), stop reason, soft label, tool calls and log-probs, and its tokens. Only rows that keep
        the whole answer (``teacher_stop_reason``, written since 2026-12) count: an older row's text
        may be cut by a stop string it does not name."""
        out: dict[str, dict[str, Any]] = {}
        if not request_hashes:
            return out
        q = ",".join("?" * len(request_hashes))
        with self._lock:
            found = self._db.execute(
                # Else calls_role_stage (role, stage), every escalation, even for one hash: see _by_hash.
                "SELECT request_hash, response, input_tokens, output_tokens, cached_input_tokens FROM calls"
                " INDEXED BY calls_hash"
                " WHERE stage='serve' AND "
                f"role='teacher' AND status='ok' AND request_hash IN ({q}) AND "
                "json_extract(response, '$.teacher_stop_reason') IS NOT NULL ORDER BY id", request_hashes).fetchall()
        for h, resp, n_in, n_out, n_cached in found:
            r = json.loads(resp)
            out[h] = {"output": r.get("teacher_output", r.get("content") or ""), "stop_reason": r["teacher_stop_reason"],
                      "label_probs": r.get("teacher_label_probs"), "tool_calls": r.get("tool_calls"),
                      "logprobs": r.get("teacher_logprobs"), "input_tokens": n_in, "output_tokens": n_out,
                      "cached_input_tokens": n_cached, "cache_write_input_tokens": r.get("cache_write_input_tokens", 0),
                      "cache_write_1h_input_tokens": r.get("cache_write_1h_input_tokens", 0)}
        return out

    def partial(self, request_hashes: list[str], role: str = "teacher") -> dict[str, dict[str, Any]]:
        """The samples of a failed n-sample request that did answer (and were billed in its error
        row), for each hash whose latest such row holds some: a rerun asks only for the others."""
        out: dict[str, dict[str, Any]] = {}
        for h, resp in self._by_hash("response", "status='error' AND response IS NOT NULL", role, request_hashes):
            answer = json.loads(resp)
            if isinstance(answer, dict) and answer.get("samples"):
                out[h] = answer
        return out

    def spend_for(self, request_hashes: list[str], role: str = "teacher") -> dict[str, Any]:
        """Every row recorded for these hashes outside serve (failed attempts too) and their dollars: what
        asking them has cost so far, whichever run asked (evaluate's judge line on a rerun)."""
        rows = self._by_hash("cost_usd", "1=1", role, list(dict.fromkeys(request_hashes)))
        return {"calls": len(rows), "cost_usd": float(sum(c or 0.0 for _, c in rows))}

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

    def spans(self, role: str, model: str, served: bool = True) -> list[dict]:
        """Each answered call's ``created_at`` and ``latency_s`` (``prices.busy_seconds`` reads them), without
        its request and response: `potstill cost` on a million calls holds two numbers a call.
        ``served=False`` leaves out the ``stage='serve'`` rows, as ``summary`` does."""
        serve = "" if served else " AND stage<>'serve'"
        with self._lock:
            return [{"created_at": c, "latency_s": s} for c, s in self._db.execute(
                "SELECT created_at, latency_s FROM calls WHERE role=? AND model=? AND status='ok'" + serve
                + " ORDER BY id", (role, model)).fetchall()]

    def rows_for(self, request_hashes: list[str], role: str = "teacher") -> list[dict]:
        """Successful rows for the given request hashes (the first answer of each; served rows aside)."""
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(request_hashes), 500):
                part = request_hashes[i : i + 500]
                q = ",".join("?" * len(part))
                cur = self._db.execute(
                    "SELECT * FROM calls INDEXED BY calls_hash"  # not calls_role_stage: see _by_hash
                    f" WHERE role=? AND status='ok' AND stage<>'serve' AND request_hash IN ({q})"
                    " ORDER BY id",
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

    def summary(self, role: str = "teacher", served: bool = True) -> dict[str, Any]:
        """One role's successful calls and their latency, and its spend and tokens (``served=False``:
        leaving out the ``stage='serve'`` rows, e.g. a served request escalated to the teacher).

        Spend and tokens count the error rows too: one holds a cost only where the provider billed it
        (Anthropic's samples answered beside a failed one, a refusal), and the ledger equals the bill;
        a served escalation that reused an earlier teacher answer (``+cached``) counts at $0 and no tokens.
        The student's spend holds its seconds on the served requests it escalated (``student_cost_usd``
        of the teacher's rows), apart as ``escalated_cost_usd``; its calls are those it answered."""
        serve = "" if served else " AND stage<>'serve'"
        with self._lock:
            r = self._db.execute(
                f"SELECT COALESCE(SUM(status='ok'),0), COALESCE(SUM({billed('input_tokens')}),0),"
                f" COALESCE(SUM({billed('output_tokens')}),0),"
                " COALESCE(SUM(cost_usd),0), COALESCE(SUM(CASE WHEN status='ok' THEN latency_s ELSE 0 END),0)"
                " FROM calls WHERE role=?" + serve,
                (role,),
            ).fetchone()
            share = 0.0 if role != "student" else float(self._db.execute(
                "SELECT COALESCE(SUM(student_cost_usd),0) FROM calls WHERE role<>'student'" + serve).fetchone()[0])
        n, cost = int(r[0]), float(r[3]) + share
        return {
            "calls": n,
            "input_tokens": int(r[1]),
            "output_tokens": int(r[2]),
            "cost_usd": cost,
            "cost_per_call_usd": cost / n if n else 0.0,
            "latency_total_s": float(r[4]),
            "escalated_cost_usd": share,
        }

    def spend_by_stage(self, role: str = "student") -> list[dict[str, Any]]:
        """One role's calls (student, teacher, judge) per model and stage (pilot, generate, evaluate,
        serve...), sorted so: count, errors, billed tokens, spend (an error row's too: it holds a cost only
        where it was billed; a batch answer's at the price it was billed at). Summed by SQLite, so
        `potstill cost` holds one row per group, not every call with its request and response.

        A student's serve spend holds its seconds on the requests it escalated (the teacher's rows'
        ``student_cost_usd``, under the student their response names): such a group also says how many
        (``escalated``) and what they cost (``escalated_cost_usd``); its calls are those it answered."""
        with self._lock:
            found = self._db.execute(
                f"SELECT model, stage, COUNT(*), SUM(status<>'ok'), SUM({billed('input_tokens')}),"
                f" SUM({billed('output_tokens')}), SUM(cost_usd) FROM calls WHERE role=? GROUP BY model, stage"
                " ORDER BY model, stage", (role,)).fetchall()
            shares = self._db.execute(
                "SELECT COALESCE(json_extract(response, '$.student'), 'student'), stage, COUNT(*),"
                " SUM(student_cost_usd) FROM calls WHERE role<>'student' AND student_cost_usd<>0 GROUP BY 1, 2"
            ).fetchall() if role == "student" else []
        out = {(m, st): {"model": m, "stage": st, "calls": int(n), "errors": int(e), "input_tokens": int(i),
                         "output_tokens": int(o), "cost_usd": float(c)} for m, st, n, e, i, o, c in found}
        for m, st, n, c in shares:
            g = out.setdefault((m, st), {"model": m, "stage": st, "calls": 0, "errors": 0, "input_tokens": 0,
                                         "output_tokens": 0, "cost_usd": 0.0})
            g.update(cost_usd=g["cost_usd"] + float(c), escalated=int(n), escalated_cost_usd=float(c))
        return [out[k] for k in sorted(out)]

    # ------------------------------------------------------------------ provider batches
    def batch_new(self, key: str, provider: str, model: str, stage: str, attempt: int,
                  items: list[tuple[str, dict[str, Any]]]) -> None:
        """Record a batch and its requests before anything is uploaded (state ``preparing``)."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO batches (key, provider, model, stage, attempt, state, requests, created_at, updated_at)"
                " VALUES (?,?,?,?,?,'preparing',?,?,?)", (key, provider, model, stage, attempt, len(items), now, now))
            self._db.executemany("INSERT INTO batch_items VALUES (?,?,?)",
                                 ((key, h, json.dumps(q, sort_keys=True)) for h, q in items))

    def batch_update(self, key: str, **fields: Any) -> None:
        cols = sorted(fields)
        with self._lock, self._db:
            self._db.execute(f"UPDATE batches SET {', '.join(c + '=?' for c in cols)}, updated_at=? WHERE key=?",
                             [*(fields[c] for c in cols), time.time(), key])

    def batches(self, provider: str | None = None, model: str | None = None, open_only: bool = True) -> list[dict]:
        """Batch rows, oldest first; ``open_only``: those not yet collected or refused."""
        where, args = self._where(provider=provider, model=model)
        if open_only:
            where += (" AND " if where else " WHERE ") + f"state NOT IN ({','.join('?' * len(BATCH_CLOSED))})"
            args += list(BATCH_CLOSED)
        with self._lock:
            cur = self._db.execute("SELECT * FROM batches" + where + " ORDER BY created_at, key", args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def batch_items(self, key: str) -> dict[str, dict[str, Any]]:
        """The requests a batch holds, by request hash."""
        with self._lock:
            rows = self._db.execute("SELECT request_hash, request FROM batch_items WHERE batch_key=?", (key,)).fetchall()
        return {h: json.loads(q) for h, q in rows}

    # ------------------------------------------------------------------ stored Responses
    def store_response(self, response: dict[str, Any], input_items: list[dict[str, Any]],
                       previous_id: str | None = None, answering: bool = False,
                       request: dict[str, Any] | None = None) -> None:
        """Keep a Responses API ``response`` and the ``input_items`` its model read (``potstill serve``).
        ``answering``: this process is still answering it (a background response queued), so its
        pid and host are kept beside it (``unfinished_background``), and ``request``, what a server
        needs to ask it again should this one die first (``background_request``)."""
        owner = (os.getpid(), socket.gethostname()) if answering else (None, None)
        kept = json.dumps(request) if answering and request is not None else None
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses (id, previous_id, input, response, created_at, pid, host,"
                             " request) VALUES (?,?,?,?,?,?,?,?)",
                             (response["id"], previous_id, json.dumps(input_items), json.dumps(response), time.time(),
                              *owner, kept))

    def background_request(self, response_id: str) -> dict[str, Any] | None:
        """The request a background response still being answered was created with (``store_response``),
        or None (answered, or kept before migration 11)."""
        with self._lock:
            row = self._db.execute("SELECT request FROM responses WHERE id=?", (response_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def stored_response(self, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A stored response and its input items, or None (never stored, or deleted)."""
        with self._lock:
            row = self._db.execute("SELECT response, input FROM responses WHERE id=?", (response_id,)).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def unfinished_background(self) -> list[dict[str, Any]]:
        """Stored background responses still ``queued`` or ``in_progress`` whose server is gone: it
        stopped or was killed while answering them. One a live server on this host is answering (two
        servers on one run), or a server on another host, whose process cannot be looked at, is left be."""
        host = socket.gethostname()
        with self._lock:
            rows = self._db.execute(
                "SELECT response, pid, host FROM responses WHERE json_extract(response, '$.background')"
                " AND json_extract(response, '$.status') IN ('queued', 'in_progress')").fetchall()
        return [json.loads(r) for r, pid, h in rows if pid is None or (h == host and not process_alive(pid))]

    def update_response(self, response: dict[str, Any]) -> None:
        """Replace a stored response's object, keeping its input items and previous id (and no longer
        the request of one that was being answered)."""
        with self._lock, self._db:
            self._db.execute("UPDATE responses SET response=?, request=NULL WHERE id=?",
                             (json.dumps(response), response["id"]))

    # ------------------------------------------------------------------ Files and Batch API (serve)
    def put_object(self, table: str, obj: dict[str, Any]) -> None:
        """Keep a File (``serve_files``) or Batch (``serve_batches``) object, replacing its earlier state."""
        assert table in ("serve_files", "serve_batches")
        with self._lock, self._db:  # a batch's pid and host (``claim``) stay as they are
            self._db.execute(f"INSERT INTO {table} (id, object, created_at) VALUES (?,?,?) ON CONFLICT(id) DO UPDATE"
                             " SET object=excluded.object, created_at=excluded.created_at",
                             (obj["id"], json.dumps(obj), obj["created_at"]))

    def update_object(self, table: str, object_id: str, change: Any) -> dict[str, Any] | None:
        """Read a kept object, ``change(obj)`` it in place and keep it, in one write transaction, so a
        change another server on the run makes between the read and the write is never written over
        (a batch's periodic counts over a cancel). The object back, or None where none is kept."""
        assert table in ("serve_files", "serve_batches")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(f"SELECT object FROM {table} WHERE id=?", (object_id,)).fetchone()
                obj = None if row is None else json.loads(row[0])
                if obj is not None:
                    change(obj)
                    self._db.execute(f"UPDATE {table} SET object=? WHERE id=?", (json.dumps(obj), object_id))
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        return obj

    def claim(self, batch_id: str) -> int | None:
        """Make this process the one running the kept batch ``batch_id``: None when it is (the batch
        had no server, this one, or one on this host that is gone), else the pid of the live server
        running it, or -1 for a server on another host, whose process cannot be looked at. Two servers
        claiming one batch at once: the row changes only if its owner is still the one read, so one wins."""
        me, host = os.getpid(), socket.gethostname()
        with self._lock, self._db:
            row = self._db.execute("SELECT pid, host FROM serve_batches WHERE id=?", (batch_id,)).fetchone()
            if row is None:
                return None
            pid, h = row
            if pid is not None and (pid, h) != (me, host):
                if h != host:
                    return -1
                if process_alive(pid):
                    return pid
            cur = self._db.execute("UPDATE serve_batches SET pid=?, host=? WHERE id=? AND pid IS ? AND host IS ?",
                                   (me, host, batch_id, pid, h))
        return None if cur.rowcount else self.claim(batch_id)

    def get_object(self, table: str, object_id: str) -> dict[str, Any] | None:
        assert table in ("serve_files", "serve_batches")
        with self._lock:
            row = self._db.execute(f"SELECT object FROM {table} WHERE id=?", (object_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def list_objects(self, table: str) -> list[dict[str, Any]]:
        """Every kept object of ``table``, newest first."""
        assert table in ("serve_files", "serve_batches")
        with self._lock:
            rows = self._db.execute(f"SELECT object FROM {table} ORDER BY created_at DESC, id DESC").fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_object(self, table: str, object_id: str) -> bool:
        assert table in ("serve_files", "serve_batches")
        with self._lock, self._db:
            return self._db.execute(f"DELETE FROM {table} WHERE id=?", (object_id,)).rowcount > 0

    def delete_response(self, response_id: str) -> bool:
        """Forget a stored response; False where there was none. Responses that continued it keep
        their own copy of the conversation."""
        with self._lock, self._db:
            return self._db.execute("DELETE FROM responses WHERE id=?", (response_id,)).rowcount > 0
