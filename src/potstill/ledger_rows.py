"""The ledger's two typed rows: ``Call`` (a teacher or student call from generate, pilot, evaluate,
redistill...) and ``ServedCall`` (one request to ``potstill serve``, ``stage='serve'``), with the
JSON of a served row read and written here and in ``potstill.ledger`` only."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


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
    #: Share of the live price billed (provider batches: ``generate.batch_price``).
    price_multiplier: float = 1.0
    #: A teacher request's key whatever its output budget (``Teacher.prompt_hash``; None elsewhere).
    prompt_hash: str | None = None
    #: A served request the teacher answered: the student's compute on it before it escalated (its
    #: seconds at ``student.usd_per_hour``), which ``cost_usd``, the teacher's bill, leaves out.
    student_cost_usd: float = 0.0
    #: The part of ``output_tokens`` spent on hidden reasoning (OpenAI's reasoning models), where the provider says.
    reasoning_tokens: int = 0


def user_messages(request: dict[str, Any]) -> list[dict[str, str]]:
    """The chat as the server routed it: system/developer messages dropped (the run's instruction
    replaces them), content parts joined into text (as ``serve.schemas.Message.text`` does)."""
    out = []
    messages = request.get("messages")
    for m in messages if isinstance(messages, list) else []:  # a rejected request may hold anything here
        if not isinstance(m, dict) or m.get("role") in ("system", "developer"):
            continue
        c = m.get("content")
        text = "".join(str(p.get("text", "")) for p in c if isinstance(p, dict)) if isinstance(c, list) else c
        out.append({"role": str(m.get("role")), "content": str(text or "")})
    return out


def with_tool_fields(msg: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """``msg`` (a client's message as role and text) as the teacher gets it, from the message as
    ``sent``: an assistant turn keeps its ``tool_calls`` (and a null content), a tool turn its
    ``tool_call_id``. An OpenAI teacher refuses a tool turn that no tool_calls precede."""
    out = dict(msg)
    if msg["role"] == "assistant" and sent.get("tool_calls"):
        out["content"] = None if sent.get("content") is None else out["content"]
        out["tool_calls"] = sent["tool_calls"]
    if msg["role"] == "tool" and sent.get("tool_call_id") is not None:
        out["tool_call_id"] = sent["tool_call_id"]
    return out


def chat_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """``user_messages`` with each message's tool fields as the client sent them (``with_tool_fields``):
    the chat as the teacher got it and a tools task's student read it."""
    sent = request.get("messages")
    sent = [m for m in sent if isinstance(m, dict) and m.get("role") not in ("system", "developer")] \
        if isinstance(sent, list) else []  # the messages user_messages keeps, in its order
    return [with_tool_fields(m, raw) for m, raw in zip(user_messages(request), sent)]


# What a served row's response JSON holds besides ``extra`` (teacher latency, soft label...).
_ROUTE = ("answered_by", "reason", "confidence", "ood_distance", "student_output", "student")
# A teacher's prompt-cache writes (Anthropic), kept in a served row's response JSON under the names
# generate's rows keep them (``Response.to_json``), an error row's too: the calls table has no column
# for them, and they are billed above the input price (``token_cost``).
_CACHE_WRITES = ("cache_write_input_tokens", "cache_write_1h_input_tokens")


def billed_tokens(r: Any) -> dict[str, int]:
    """A teacher's answer's (``teachers.Response``) tokens as a served row keeps them: input, output,
    cached input and cache writes (the provider's bill is these at the teacher's price)."""
    return {k: getattr(r, k) for k in ("input_tokens", "output_tokens", "cached_input_tokens", *_CACHE_WRITES)}


@dataclass
class ServedCall:
    """One request to ``potstill serve``: the request, who answered it and why, what it cost.

    ``answered_by`` is the row's role (``teacher``: escalated). A failed or rejected request has
    ``status='error'``, no ``content``, and the OpenAI-style error body the client got in ``error_body``.
    """

    request: dict[str, Any]  # the chat request as the client sent it (never a header or key)
    answered_by: str
    model: str
    content: str | None = None
    reason: str = ""
    confidence: float | None = 0.0  # None: the student never scored it (an input over its context)
    ood_distance: float | None = 0.0
    student_output: str = ""
    student: str = ""  # the student that handled it (answered or escalated): after a hot swap, the new one
    extra: dict[str, Any] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # the part of input_tokens read from the teacher's prompt cache
    cache_write_input_tokens: int = 0  # the part written to it (Anthropic), and of those kept an hour
    cache_write_1h_input_tokens: int = 0
    cost_usd: float = 0.0  # what the one who answered cost: the teacher's bill, or the student's seconds
    student_cost_usd: float = 0.0  # escalated: the student's seconds on it first (``Call.student_cost_usd``)
    latency_s: float = 0.0
    status: str = "ok"
    error: str | None = None
    error_body: dict[str, Any] | None = None
    request_hash: str = ""
    id: int | None = None
    created_at: float = field(default_factory=time.time)
    finish_reason: str = "stop"  # "length": the answer ran to its token budget (what the client is told)
    # Asked with logprobs: OpenAI's logprobs.content the client gets, or why there are none. Not kept
    # in the row (a teacher's, which an escalation may be answered from again, are: extra).
    logprobs: list[dict[str, Any]] | None = None
    logprobs_unavailable: str | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        return user_messages(self.request)

    @property
    def chat(self) -> list[dict[str, Any]]:
        """``messages`` with their tool fields (``chat_messages``)."""
        return chat_messages(self.request)

    @property
    def escalated(self) -> bool:
        return self.answered_by == "teacher"

    @property
    def total_cost_usd(self) -> float:
        """What the request cost: the answer's, and the student's seconds on it where it escalated."""
        return self.cost_usd + self.student_cost_usd

    def response_json(self) -> dict[str, Any] | None:
        writes = {k: getattr(self, k) for k in _CACHE_WRITES if getattr(self, k)}
        if self.status != "ok":
            # A failed escalation names the student whose seconds on it the row keeps (student_cost_usd):
            # `potstill cost` puts them under that student, as an answered escalation's.
            named = {"student": self.student} if self.student else {}
            return {**(self.error_body or {}), **writes, **named} if writes or named else self.error_body
        route = {k: getattr(self, k) for k in _ROUTE if k != "student" or self.student}
        return {"content": self.content, **route, **writes, **self.extra}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ServedCall":
        resp = json.loads(row["response"]) if row["response"] else None
        request = json.loads(row["request"])
        common = dict(request=request if isinstance(request, dict) else {"body": request}, answered_by=row["role"],
                      model=row["model"], input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                      cached_input_tokens=row.get("cached_input_tokens") or 0, cost_usd=row["cost_usd"],
                      # A ledger opened read-only before migration 13 has no such column.
                      student_cost_usd=row.get("student_cost_usd") or 0.0,
                      latency_s=row["latency_s"], status=row["status"], error=row["error"],
                      request_hash=row["request_hash"], id=row["id"], created_at=row["created_at"],
                      finish_reason=row.get("stop_reason") or "stop")
        if isinstance(resp, dict):
            resp = dict(resp)
            common.update({k: int(resp.pop(k) or 0) for k in _CACHE_WRITES if k in resp})
        if row["status"] != "ok" or not isinstance(resp, dict):
            named = {"student": str(resp.pop("student"))} if isinstance(resp, dict) and "student" in resp else {}
            return cls(error_body=resp if isinstance(resp, dict) and resp else None, **common, **named)
        route = {k: resp.pop(k) for k in _ROUTE if k in resp}
        route.pop("answered_by", None)  # the role column says it
        content = resp.pop("content", None)
        return cls(content="" if content is None else str(content), extra=resp, **route, **common)
