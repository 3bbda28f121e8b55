"""Served traffic as `potstill watch` reads it: the answered rows of RUN/calls.sqlite.

`potstill serve` writes one ledger row per request with ``stage='serve'``; ``role`` says who
answered (``teacher``: escalated), ``request`` is the chat request's JSON and ``response`` holds
the content the client got. Rejected and failed requests (``status='error'``) carry no answer and
are skipped. The file is opened read-only: watching never writes to the ledger.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from potstill.errors import PotstillError


@dataclass
class Served:
    """One answered served request."""

    id: int
    created_at: float  # unix seconds
    messages: list[dict[str, str]]  # user-side messages, as the server routed them
    content: str  # what the client received
    escalated: bool  # the teacher answered


def user_messages(request: dict[str, Any]) -> list[dict[str, str]]:
    """The messages the server routed: system/developer ones dropped (the run's instruction
    replaces them), content parts joined into text (as ``serve.schemas.Message.text`` does)."""
    out = []
    for m in request.get("messages") or []:
        if not isinstance(m, dict) or m.get("role") in ("system", "developer"):
            continue
        c = m.get("content")
        text = "".join(p.get("text", "") for p in c if isinstance(p, dict)) if isinstance(c, list) else (c or "")
        out.append({"role": str(m.get("role")), "content": str(text)})
    return out


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, now: float | None = None) -> float:
    """Unix seconds from ``1732406400``, an ISO 8601 time (``2026-11-24T01:00``, naive = UTC), or a
    duration before now (``90m``, ``24h``, ``7d``)."""
    v = value.strip()
    rel = _RELATIVE.match(v)
    if rel:
        return (time.time() if now is None else now) - float(rel.group(1)) * _UNIT_S[rel.group(2)]
    try:
        return float(v)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise PotstillError(f"cannot read time {value!r}: use unix seconds, ISO 8601 (2026-11-24T01:00) "
                            "or a duration before now (90m, 24h, 7d)") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def read_traffic(ledger_path: Path, window: int, since: float | None = None, until: float | None = None) -> list[Served]:
    """The latest ``window`` answered served requests, or all of them between ``since`` and
    ``until`` (unix seconds) when either is given; oldest first."""
    ledger_path = Path(ledger_path)
    if not ledger_path.exists():
        raise PotstillError(f"{ledger_path} not found: no served traffic to watch (serve the run with `potstill serve`)")
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=30)
    try:
        sql = "SELECT id, created_at, role, request, response FROM calls WHERE stage='serve' AND status='ok'"
        args: list[Any] = []
        if since is not None:
            sql, args = sql + " AND created_at >= ?", [*args, since]
        if until is not None:
            sql, args = sql + " AND created_at <= ?", [*args, until]
        sql += " ORDER BY id DESC"
        if since is None and until is None:
            sql, args = sql + " LIMIT ?", [*args, window]
        try:
            rows = db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise PotstillError(f"{ledger_path}: not a potstill ledger ({e})") from None
    finally:
        db.close()
    out = []
    for rid, created, role, request, response in reversed(rows):
        msgs = user_messages(json.loads(request))
        if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
            continue
        resp = json.loads(response) if response else {}
        out.append(Served(id=rid, created_at=created, messages=msgs, content=str(resp.get("content", "")),
                          escalated=role == "teacher"))
    return out
