"""``potstill requests``: the served requests a run's ledger holds, as an operator reads them: the
latest as a table (or each new one as it is logged), one request in full by its ``x-request-id``
or its response's id, or JSON lines.

Rows hold what the client sent and got and how it was routed, never a header or a key."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from collections.abc import Callable
from typing import Any

from potstill.errors import PotstillError
from potstill.ledger import Ledger, ServedCall
from potstill.terminal import printable

CHAT = "/v1/chat/completions"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str, now: float | None = None) -> float:
    """``--since``: a span back from now (``90s``, ``15m``, ``2h``, ``7d``) or a date / time
    (ISO 8601, local time where it names no zone), as unix seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNITS[m[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise PotstillError(f"--since {text!r}: a span like 15m, 2h or 7d, or a date like 2026-12-06T09:30") from None


def record(c: ServedCall) -> dict[str, Any]:
    """One served row as the operator reads it."""
    ok = c.status == "ok"
    status = "ok" if ok else (c.error or "").split(":", 1)[0].strip() or "error"
    answer = c.content if ok else None
    extra = c.extra or {}
    return {
        "row": c.id, "time": datetime.fromtimestamp(c.created_at).isoformat(timespec="seconds"),
        "request_id": c.request.get("request_id"), "endpoint": c.request.get("endpoint") or CHAT, "status": status,
        "response_id": c.request.get("response_id"),
        # A refused request was answered by no one; a failed escalation names the teacher.
        "answered_by": c.answered_by if ok or c.answered_by == "teacher" else None,
        "reason": c.reason or None, "confidence": c.confidence if ok else None,
        "ood_distance": c.ood_distance if ok else None, "student": c.student or None, "model": c.model,
        "latency_ms": round(c.latency_s * 1e3, 1), "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
        # The request's whole cost: an escalation's teacher bill and the student's seconds before it.
        "cost_usd": c.total_cost_usd, "finish_reason": c.finish_reason if ok else None,
        "messages": c.messages, "answer": answer,
        "tool_calls": extra.get("tool_calls"), "student_output": c.student_output or None,
        "teacher_request_id": extra.get("teacher_request_id"),
        "error": None if ok else (c.error_body or {}).get("error", {}).get("message") or c.error,
    }


def find(ledger: Ledger, *, request_id: str | None = None, since: float | None = None, limit: int | None = 20,
         who: str | None = None, errors: bool = False, after: int | None = None) -> list[dict[str, Any]]:
    """Served rows, oldest first: those of one request (its ``x-request-id``, or its Responses
    ``resp_`` or Messages ``msg_`` id), else the latest ``limit`` since ``since``, of ``who``
    answered (student, teacher), only failed ones with ``errors``, logged after row ``after``."""
    if request_id is not None:
        rows = ledger.served(status=None, limit=None, request_id=request_id)
        if not rows:
            raise PotstillError(f"no served request with id {request_id!r} in {ledger.path}")
        return [record(c) for c in rows]
    rows = ledger.served(status="error" if errors else None, since=since, limit=limit, role=who, after_id=after)
    return [record(c) for c in rows]


def _cut(text: Any, n: int) -> str:
    """``text`` on one line of at most ``n`` characters: newlines folded, control characters shown as
    ``\\uXXXX`` (a client's ESC sequences erased the operator's rows), cut with an ellipsis."""
    s = printable(" ".join(str(text).split())) if text is not None else ""
    return s if len(s) <= n else s[: n - 1] + "…"


HEAD = ("time", "request_id", "endpoint", "status", "by", "reason", "conf", "ms", "usd", "input")
#: Column widths of a followed table, whose later rows are not known when its head is printed.
FOLLOW_WIDTHS = (19, 36, 16, 6, 7, 22, 5, 6, 9, 0)  # a request id is cut at 36 characters


def table(records: list[dict[str, Any]], widths: tuple[int, ...] | None = None, head: bool = True) -> str:
    """The rows as a fixed-width table: when, the request id, where, who answered and why, how
    sure, how long, what it cost, and the start of the user's last message. ``widths``: the
    columns' (else the widest cell's); ``head``: with the column names."""
    lines = []
    for r in records:
        said = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
        conf = "" if r["confidence"] is None else f"{r['confidence']:.3f}"
        lines.append((r["time"].replace("T", " "), _cut(r["request_id"] or "", 36),
                      r["endpoint"].removeprefix("/v1/"), r["status"], r["answered_by"] or "-", r["reason"] or "-",
                      conf, f"{r['latency_ms']:.0f}", f"{r['cost_usd']:.6f}", _cut(said, 48)))
    widths = widths or tuple(max(len(x) for x in col) for col in zip(HEAD, *lines))
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
                     for row in ([HEAD] if head else []) + lines)


def detail(records: list[dict[str, Any]]) -> str:
    """One request's rows in full, as indented JSON."""
    return "\n".join(json.dumps(r, indent=2, ensure_ascii=False) for r in records)


def render(records: list[dict[str, Any]], as_json: bool, widths: tuple[int, ...] | None = None,
           head: bool = True) -> str:
    """The rows as JSON lines, or as a table (``table``)."""
    if as_json:
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    return table(records, widths, head)


def follow(ledger: Ledger, found: list[dict[str, Any]], echo: Callable[[str], Any], *, who: str | None,
           errors: bool, as_json: bool, interval: float) -> None:
    """``potstill requests --follow``: the rows ``found``, then each new one (of ``who``, failed
    with ``errors``) as it is logged, every ``interval`` seconds, until Ctrl-C, which ends it as it
    ends every command (exit 130 and one line, ``potstill.cli``: a script can tell it was stopped)."""
    first = render(found, as_json, FOLLOW_WIDTHS)
    if first:
        echo(first)
    last = found[-1]["row"] if found else ledger.last_row_id()
    while True:
        time.sleep(interval)
        new = find(ledger, who=who, errors=errors, after=last, limit=None)
        if new:
            echo(render(new, as_json, FOLLOW_WIDTHS, head=False))
            last = new[-1]["row"]
