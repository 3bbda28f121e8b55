"""The ledger's record of generate runs (``generate_runs``, ``generate_plan``): what each run had to
answer, how it ended, and what `potstill cost` makes of them (cache hits, the requests still
unanswered and their projected price). A mixin of ``Ledger``, which holds the connection and lock.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from potstill.ledger_schema import LIVE_SUM, billed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _group_status(statuses: list[str]) -> str:
    """One status for a run and its steps: the first of error, stale, running, budget, errors that any
    has, else done."""
    return next((s for s in ("error", "stale", "running", "budget", "errors") if s in statuses), "done")


class GenerateRuns:
    """Generate runs and their plans; ``self._db`` and ``self._lock`` are ``Ledger``'s."""

    _db: Any
    _lock: Any
    readonly: bool = False

    def _mark_stale(self) -> set[int]:
        """Runs left ``running`` by a process that is gone (``kill -9``, a crash) become ``stale``; their ids
        (a read-only ledger, ``Ledger.reader``, is left as it is: its reader counts them stale)."""
        host = socket.gethostname()
        rows = self._db.execute("SELECT id, pid, host FROM generate_runs WHERE status='running'").fetchall()
        dead = {rid for rid, pid, h in rows if pid is None or (h == host and not process_alive(pid))}
        if not self.readonly:
            self._db.executemany("UPDATE generate_runs SET status='stale' WHERE id=?", ((rid,) for rid in dead))
        return dead

    def start_run(self, stage: str, model: str, inputs: int, hashes: list[str], cache_hits: int,
                  identity: str | None = None, current: list[str] | None = None, parent: int | None = None) -> int:
        """Record a generate run and the distinct requests it must answer.

        Earlier plans of the stage by the same teacher (``identity``, the hash of the teacher's
        identity) keep their requests still unanswered and not in this plan: a rerun with a smaller
        ``data.limit`` does not make the rest free. Plans of another teacher (or of none recorded) go:
        their requests will not be sent again. ``current``: the requests of every input now in the
        input file (``data.limit`` aside); earlier plans keep only those, as an input removed from the
        file will not be sent again either (None: the file is not known, they keep what they hold).

        ``parent``: the run this one is a step of (a tool round's), reported with it; it leaves every
        other plan be. A run without one drops the plans of earlier runs' steps: their requests came
        from answers, and this run's own rounds ask again what is still missing."""
        with self._lock, self._db:
            self._mark_stale()
            if parent is None:
                self._db.execute(
                    "DELETE FROM generate_plan WHERE run_id IN (SELECT id FROM generate_runs WHERE stage=?"
                    " AND (parent IS NOT NULL OR identity IS NULL OR ? IS NULL OR identity<>?))",
                    (stage, identity, identity))
            cur = self._db.execute(
                "INSERT INTO generate_runs (stage, model, inputs, unique_requests, cache_hits, status, started_at, pid,"
                " host, identity, parent) VALUES (?,?,?,?,?,'running',?,?,?,?,?)",
                (stage, model, inputs, len(hashes), cache_hits, time.time(), os.getpid(), socket.gethostname(),
                 identity, parent))
            run_id = int(cur.lastrowid)
            self._db.executemany("INSERT OR IGNORE INTO generate_plan VALUES (?, ?)", ((run_id, h) for h in hashes))
            if parent is not None:
                return run_id
            if current is not None:
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS current_inputs (request_hash TEXT PRIMARY KEY)"
                                 " WITHOUT ROWID")
                self._db.execute("DELETE FROM current_inputs")
                self._db.executemany("INSERT OR IGNORE INTO current_inputs VALUES (?)", ((h,) for h in current))
                self._db.execute(
                    "DELETE FROM generate_plan WHERE run_id IN (SELECT id FROM generate_runs WHERE stage=? AND id<>?)"
                    " AND request_hash NOT IN (SELECT request_hash FROM current_inputs)", (stage, run_id))
            # What is left of the earlier plans: neither answered nor planned again here (bounded by
            # what is still unanswered, so reruns do not grow the table).
            self._db.execute(
                "DELETE FROM generate_plan WHERE run_id IN (SELECT id FROM generate_runs WHERE stage=? AND id<>?)"
                " AND (EXISTS (SELECT 1 FROM calls c WHERE c.request_hash=generate_plan.request_hash AND c.status='ok')"
                " OR EXISTS (SELECT 1 FROM generate_plan q WHERE q.run_id=? AND q.request_hash=generate_plan.request_hash))",
                (stage, run_id, run_id))
        return run_id

    def finish_run(self, run_id: int, status: str, retries: int) -> None:
        """End a run: ``done``, ``budget``, ``errors`` (some calls failed) or ``error`` (an exception ended it)."""
        with self._lock, self._db:
            self._db.execute("UPDATE generate_runs SET status=?, retries=?, finished_at=? WHERE id=?",
                             (status, retries, time.time(), run_id))

    def cost_report(self, stage: str = "generate", share: float = 1.0, resend_refused: bool = False) -> dict[str, Any]:
        """Spend and tokens per teacher model, and the latest run's cache hits and projected remaining cost.

        The tokens are those billed (``ledger_schema.billed``): a served escalation that reused an earlier
        teacher answer is a call at $0 with none.

        The rest is priced at what a rerun pays: the live price of a call (a batch answer's recorded
        cost over its ``price_multiplier``) times ``share``, the rerun's share of the live price (1 for
        a live engine, ``generate.batch_price`` for engine batch). A batch run's own mean would price a
        plain (live) rerun at half. A request the teacher refused is not sent again (``label_records``),
        so it is not part of the rest unless ``resend_refused`` (``generate.retry_refusals``)."""
        with self._lock, self._db:
            dead = self._mark_stale()
            # Cache writes (Anthropic) are kept in the answer, billed above input: 1.25x, an hour's 2x.
            writes = [f"SUM({billed(f'COALESCE(json_extract(response, {path!r}), 0)')})"
                      for path in ("$.cache_write_input_tokens", "$.cache_write_1h_input_tokens")]
            models = [
                {"model": m, "calls": int(c), "ok": int(ok), "input_tokens": int(i), "cached_input_tokens": int(ci),
                 "output_tokens": int(o), "cost_usd": float(d), "batch_calls": int(b), "live_cost_usd": float(lv),
                 "reasoning_tokens": int(r or 0), "cache_write_input_tokens": int(w or 0),
                 "cache_write_1h_input_tokens": int(w1 or 0)}
                for m, c, ok, i, ci, o, d, b, lv, r, w, w1 in self._db.execute(
                    f"SELECT model, COUNT(*), SUM(status='ok'), SUM({billed('input_tokens')}),"
                    f" SUM({billed('cached_input_tokens')}), SUM({billed('output_tokens')}), SUM(cost_usd),"
                    " SUM(price_multiplier != 1),"
                    " SUM(CASE WHEN price_multiplier > 0 THEN cost_usd / price_multiplier ELSE cost_usd END),"
                    f" SUM({billed('reasoning_tokens')}), {', '.join(writes)}"
                    " FROM calls WHERE role='teacher' GROUP BY model ORDER BY model")
            ]
            run = self._db.execute(
                "SELECT id, model, inputs FROM generate_runs WHERE stage=? AND parent IS NULL ORDER BY id DESC LIMIT 1",
                (stage,)).fetchone()
            latest = None
            if run is not None:
                # The run and its steps (generate.tool_rounds), reported as one.
                steps = self._db.execute(
                    "SELECT id, cache_hits, retries, status FROM generate_runs WHERE id=? OR parent=? ORDER BY id",
                    (run[0], run[0])).fetchall()
                ids = [r[0] for r in steps]
                group = f"({','.join('?' * len(ids))})"
                unanswered = (" AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.request_hash=p.request_hash"
                              " AND c.status='ok')")
                # Refused (teachers.base.is_refusal, read as Ledger.refusals reads it: the latest failed
                # answer outside serve): billed once and not sent again unless generate.retry_refusals.
                latest_error = ("COALESCE((SELECT c.error FROM calls c WHERE c.request_hash=p.request_hash AND"
                                " c.status='error' AND c.role='teacher' AND c.stage<>'serve' ORDER BY c.id DESC"
                                " LIMIT 1), '')")
                refused = f"({latest_error} GLOB 'refusal*' OR {latest_error} GLOB 'stop_reason refusal*')"
                planned, remaining, refusals = (int(self._db.execute(
                    f"SELECT COUNT(DISTINCT p.request_hash) FROM generate_plan p WHERE p.run_id IN {group}" + extra,
                    ids).fetchone()[0]) for extra in ("", unanswered, f"{unanswered} AND {refused}"))
                if not resend_refused:
                    remaining -= refusals
                    unanswered += f" AND NOT {refused}"
                # Left by earlier runs of the same teacher (start_run keeps only those) and not in this plan.
                earlier = int(self._db.execute(
                    f"SELECT COUNT(DISTINCT p.request_hash) FROM generate_plan p WHERE p.run_id NOT IN {group} AND"
                    " p.run_id IN (SELECT id FROM generate_runs WHERE stage=?) AND NOT EXISTS (SELECT 1 FROM"
                    f" generate_plan q WHERE q.run_id IN {group} AND q.request_hash=p.request_hash)" + unanswered,
                    (*ids, stage, *ids)).fetchone()[0])
                # Priced at this run's own answers (at the live price): the model's other calls
                # (synthesize's long inputs, served escalations) are other requests, often far dearer
                # than a label. Before its first answer, the model's mean is the best guess there is.
                n, spent = self._db.execute(
                    f"{LIVE_SUM} FROM calls WHERE role='teacher' AND status='ok'"
                    f" AND request_hash IN (SELECT request_hash FROM generate_plan WHERE run_id IN {group})",
                    ids).fetchone()
                if not n:
                    n, spent = self._db.execute(
                        f"{LIVE_SUM} FROM calls WHERE role='teacher' AND status='ok' AND model=?", (run[1],)).fetchone()
                per_call = float(spent) / n if n else None
                latest = {
                    "model": run[1], "inputs": run[2], "unique_requests": planned + earlier,
                    "cache_hits": sum(r[1] for r in steps), "retries": sum(r[2] for r in steps),
                    "status": _group_status(["stale" if r[0] in dead else r[3] for r in steps]), "remaining": remaining + earlier,
                    "refused": refusals, "resend_refused": resend_refused,
                    "earlier_remaining": earlier, "cost_per_call_usd": per_call, "share": share,
                    "projected_remaining_usd": None if per_call is None else per_call * share * (remaining + earlier),
                    # Each tool round is two steps (the functions played, then the chats answered).
                    "tool_rounds": len(steps) // 2,
                }
        return {"models": models, "latest_run": latest}


def token_words(m: dict[str, Any]) -> str:
    """A ``cost_report`` model's billed tokens, with the parts priced apart: cache reads, cache writes (Anthropic:
    1.25x input, an hour's 2x) and the output's hidden reasoning (billed as output)."""
    inside = [f"{m['cached_input_tokens']} cached"]
    if m["cache_write_input_tokens"]:
        hour = m["cache_write_1h_input_tokens"]
        inside.append(f"{m['cache_write_input_tokens']} cache writes" + (f", {hour} of them for 1h" if hour else ""))
    thought = f" ({m['reasoning_tokens']} reasoning)" if m["reasoning_tokens"] else ""
    return f"{m['input_tokens']} input ({', '.join(inside)}) + {m['output_tokens']} output tokens{thought}"
