"""Served traffic as `potstill watch` reads it: the answered ``ServedCall`` rows of RUN/calls.sqlite.

Rejected and failed requests (``status='error'``) carry no answer and are skipped. The file is
opened read-only: watching never writes to the ledger.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from potstill.errors import PotstillError
from potstill.ledger import Ledger, ServedCall
from potstill.models.loading import model_identity


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
UNIX_FLOOR = 1e9  # 2001-09-09: a bare number below it is no time anyone serves traffic at


def parse_time(value: str, now: float | None = None) -> float:
    """Unix seconds from ``1732406400`` (after 2001: a bare ``2026`` is refused as a year), an ISO 8601
    time (``2026-11-24T01:00`` or ``20261124``, naive = UTC), or a
    duration before now (``90m``, ``24h``, ``7d``)."""
    v = value.strip()
    unreadable = PotstillError(f"cannot read time {value!r}: use unix seconds, ISO 8601 (2026-11-24T01:00) "
                               "or a duration before now (90m, 24h, 7d)")
    rel = _RELATIVE.match(v)
    if rel:
        t = (time.time() if now is None else now) - float(rel.group(1)) * _UNIT_S[rel.group(2)]
    else:
        try:
            t = float(v)
        except ValueError:
            t = None
        if t is None or (len(v) == 8 and v.isdigit()):  # 20261124: ISO 8601's basic date, not 1970's seconds
            try:
                d = datetime.fromisoformat(v)
            except ValueError:
                raise unreadable from None
            t = (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
        elif math.isfinite(t) and t < UNIX_FLOOR:
            # `--since 2026` read as unix seconds is 00:33 on 1 January 1970: a year meant as a date.
            raise PotstillError(f"cannot read time {value!r}: as unix seconds it is "
                                f"{datetime.fromtimestamp(t, timezone.utc):%Y-%m-%dT%H:%M}, before any served "
                                "traffic; give a date (2026-11-24), a time (2026-11-24T01:00) or a duration (24h)")
    # float() reads nan and inf too: `created_at >= nan` matches no row, and reads as a quiet time range.
    if not math.isfinite(t):
        raise unreadable
    return t


def read_traffic(ledger_path: Path, window: int, since: float | None = None, until: float | None = None,
                 student: str | None = None) -> list[ServedCall]:
    """The latest ``window`` answered served requests, or all of them between ``since`` and
    ``until`` (unix seconds) when either is given; oldest first. ``student``: only those handled
    by the student of that served name (``served_name``) or by none named (``Ledger.served``)."""
    ledger_path = Path(ledger_path)
    if not ledger_path.exists():
        raise PotstillError(f"{ledger_path} not found: no served traffic to watch (serve the run with `potstill serve`)")
    def usable(rows: list[ServedCall]) -> list[ServedCall]:
        return [s for s in rows if any(m["role"] == "user" and m["content"].strip() for m in s.messages)]

    with Ledger(ledger_path, readonly=True) as ledger:
        if since is not None or until is not None:
            return usable(ledger.served(since, until, student=student))
        # The window counts requests with user text: rows without any (nothing to embed) are dropped
        # after the query, so it reads further back until it has the window or the ledger's start.
        limit = window
        while True:
            rows = ledger.served(limit=limit, student=student)
            kept = usable(rows)
            if len(kept) >= window or len(rows) < limit:
                return kept[-window:]
            limit += window + (limit - len(kept))


def served_name(student_dir: Path) -> str:
    """The start of the name ``potstill serve`` logs for the student in ``student_dir``
    (``serve.engine.ServedStudent.served_name``: ``potstill-student@`` and its weights' digest, whatever engine
    or dtype serves it)."""
    return served_name_of(model_identity(str(student_dir), Path(student_dir)))


def served_name_of(identity: str) -> str:
    """``served_name`` from a model identity (the weights' digest after its last ``@``)."""
    return "potstill-student@" + re.match(r"[0-9a-zA-Z]*", identity.rsplit("@", 1)[-1]).group(0)
