"""The teacher side of a served run: the request an escalated chat sends the teacher, and its answer,
from the ledger where a call already paid for it (generate's, redistill's, serve's own where the
teacher is deterministic; under another output budget where the answer ended within this one),
else from the teacher itself.

``TeacherSide`` is a mixin of ``service.Service``, which holds ``cfg``, ``task``, ``teacher``,
``ledger``, ``_identity`` (the teacher and its identity, read once) and ``_teacher_queue`` (its
calls in flight and waiting, ``TeacherQueue``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from potstill.generate.consistency import one_sample, vote
from potstill.ledger_rows import ServedCall, billed_tokens, chat_messages
from potstill.records import Record
from potstill.serve.formats import FormatError
from potstill.serve.gate import CLIENT_GONE
from potstill.serve.schemas import ChatRequest
from potstill.serve.streaming import LiveText
from potstill.serve.teacher_queue import TeacherQueue
from potstill.serve.tool_routing import named_tool, served_tools, student_calls
from potstill.teachers import Response, request_hash

_RESPONSE_FIELDS = {f.name for f in fields(Response)}
# The teacher's output budget for a tool request in a classification run when the client sets none:
# the run's teacher.max_tokens is a label's (often 4), which cuts a call's arguments. 4096 is the
# smallest output limit among current chat models (Claude 3 Haiku, gpt-3.5-turbo), so none refuses it.
TOOL_MAX_TOKENS = 4096
# The status word of the row a teacher call gets where the request that was to pay for it was
# cancelled before its answer came (``TeacherQueue``): read as the row's status by ``potstill requests``.
UNCLAIMED = "unclaimed"


class TeacherError(Exception):
    """The teacher failed to answer an escalated request: a 502 for the client, or its 400 where the
    teacher refused the chat itself (``status`` 413, or 400/422 with a ``code`` such as
    context_length_exceeded: see ``app._clients_fault``)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 request_hash: str | None = None, billed: Response | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        # request_hash: the ledger key of the request the teacher failed, for the failed row; billed:
        # the failed answer, whose tokens and cost the provider may still bill (a refusal), for that row;
        # retry_after_s: the provider's Retry-After, passed on to the client.
        self.status, self.code, self.request_hash, self.billed = status, code, request_hash, billed
        self.retry_after_s = retry_after_s


class TeacherSide:
    """How ``Service`` asks the teacher for an escalated chat (see the module's docstring)."""

    def escalation_limits(self, max_tokens: int | None, stop: Sequence[str], tools: dict[str, Any] | None,
                          response_format: dict[str, Any] | None = None) -> tuple[int | None, Sequence[str]]:
        """A client's ``max_tokens`` and ``stop`` as they apply to a routed chat: a label is whole, so
        a classifier's answers take neither (the teacher request is generate's, its answers reused).
        A tool request, or one asking for JSON (``response_format``), is no label: its calls'
        arguments or its object would be cut at the label budget (often 4 tokens), so it gets the
        client's ``max_tokens``, else ``TOOL_MAX_TOKENS``."""
        if not self.task.labels:
            return max_tokens, stop
        if tools is None and response_format is None:
            return None, ()
        return max_tokens or TOOL_MAX_TOKENS, stop

    def teacher_logprobs_unavailable(self) -> str | None:
        """Why the teacher cannot give token log-probabilities, None where it can (OpenAI-compatible
        ones other than OpenAI's reasoning models)."""
        t = self.teacher
        if not t.supports_logprobs:
            return f"the {t.type} teacher gives no token log-probabilities"
        if getattr(t, "reasoning", False):
            return f"the teacher {t.model_name} is an OpenAI reasoning model, which returns no log-probabilities"
        return None

    def teacher_request(self, messages: list[dict], max_tokens: int | None = None,
                        tools: dict[str, Any] | None = None, logprobs: int | None = None,
                        response_format: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The teacher's request for a routed chat and its ledger hash: the one generate computes,
        unless a client's ``max_tokens`` is below the teacher's own, or a classifier's tool request's
        (``escalation_limits``), (then it is the request's ``max_tokens``, and the request another one), the
        client offers ``tools`` (``Teacher.with_tools``' arguments, without the task's format) or asks
        for ``logprobs`` (top alternatives per token) beyond what the teacher's request already asks
        (``teacher.logprobs``),
        or asks for JSON (``response_format``, in the teacher's terms where it takes one)."""
        teacher = self.teacher
        if self._identity is None or self._identity[0] is not teacher:
            self._identity = (teacher, teacher.identity())
        req = teacher.request(Record(messages=messages))
        opened = (tools is not None or response_format is not None) and self.task.labels  # escalation_limits
        if max_tokens is not None and (max_tokens < teacher.cfg.max_tokens or opened):
            # The teacher's own limit field: an OpenAI reasoning model takes max_completion_tokens only.
            req = {**req, "max_completion_tokens" if "max_completion_tokens" in req else "max_tokens": max_tokens}
        # A tools task's request already offers its tools, one call required (``Teacher.task_tools``):
        # a client offering the same ones asks generate's request, whose answers the ledger holds.
        # (Not after a tool turn under task.tool_choice required: then the client's tool_choice holds.)
        # (A parallel task's generate may call several: a client allowing one asks its own way; an auto
        # task's may reply in words: a client requiring a call asks its own way.)
        own = tools is not None and student_calls(self.task, tools, messages) \
            and (named_tool(tools) is None or not teacher.supports_tools) \
            and not (self.task.cfg.parallel_tool_calls and tools.get("parallel_tool_calls") is False) \
            and not (self.task.cfg.tool_choice == "auto" and tools.get("tool_choice") == "required")
        if tools is not None and not own:
            if self.task.cfg.type == "tools":  # generate's offer (a call required) is not this request's
                req = {k: v for k, v in req.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")}
            # Nor is the task's format (teacher.structured_outputs): held to it, the teacher could not
            # call; a client's own response_format still applies, as OpenAI takes both.
            req = teacher.with_tools(teacher.unstructured(req), **tools)
        if response_format is not None:
            req = teacher.with_response_format(req, response_format) or req
        if logprobs is not None and self.teacher_logprobs_unavailable() is None \
                and not (req.get("logprobs") and (req.get("top_logprobs") or 0) >= logprobs):
            req = {**req, "logprobs": True, "top_logprobs": logprobs}
        return request_hash(self._identity[1], req), req

    def reuses_escalations(self) -> bool:
        """Whether an escalation may be answered from serve's own earlier answer to it
        (``serve.reuse_escalations``; unset: where the teacher would answer it the same again)."""
        setting = self.cfg.serve.reuse_escalations
        if setting is not None:
            return setting
        return self.teacher.cfg.temperature == 0 and not getattr(self.teacher, "reasoning", False)

    async def _ask_teacher(self, h: str, req: dict[str, Any],
                           live_text: LiveText | None = None) -> tuple[Response, bool, str]:
        """The teacher's answer, whether it came from the ledger (the cache DESIGN promises: an
        identical request already answered, by generate or redistill, is never paid twice; by serve
        itself, where ``reuses_escalations``), and the hash of the request it answers.

        With ``generate.n`` above 1 generate asked for n samples in one request (``"n"`` in it, as
        every adapter that takes samples writes it), another hash than the single-sample request
        served here: that answer is reused too, as its majority sample, the one generate kept.
        ``live_text``: a teacher asked (not the ledger) streams its text there as it writes it."""
        sampled = None
        if self.cfg.generate.n > 1 and "n" not in req and self.teacher.supports_samples:
            sampled = request_hash(self._identity[1], {**req, "n": self.cfg.generate.n})
        keys = [h] if sampled is None else [h, sampled]
        found = await asyncio.to_thread(self.ledger.lookup, keys)
        if not found:
            # A client's max_tokens below teacher.max_tokens makes another request than generate's:
            # generate's answer that ended by itself within it is this one's (``Ledger.whole_answers``).
            from potstill.teachers.api.engine import max_output

            budget = max_output(req)
            whole = budget and await asyncio.to_thread(
                self.ledger.whole_answers, {h: (self.teacher.prompt_hash(req), budget)}, max_output)
            if whole and (hit := await asyncio.to_thread(self.ledger.lookup, [whole[h]])):
                h, found = whole[h], hit
        if not found and self.reuses_escalations():
            found = await asyncio.to_thread(self.ledger.served_escalations, keys)
        for key in (h, sampled):
            if key in found:
                ans = found[key]
                if key == sampled and len(ans.get("samples") or []) > 1:
                    # Served as its one sample: that sample's text, and its tokens in the usage.
                    ans = one_sample(ans, vote(ans["samples"], self.task.parse, self.task.validate)[0])
                r = Response(**{k: v for k, v in ans.items() if k in _RESPONSE_FIELDS})
                return r, True, key
        return await self._asked(h, req, live_text)

    async def _asked(self, h: str, req: dict[str, Any], live_text: LiveText | None) -> tuple[Response, bool, str]:
        """The teacher's answer to ``req`` (hash ``h``), asked anew on its long-lived worker (an API
        client, or the one in-process model), in one of ``teacher.concurrency`` slots
        (``TeacherQueue``), or ``TeacherBusy`` where ``serve.max_waiting_escalations`` others already
        wait for one. An escalation waiting for a slot whose client has left (``CLIENT_GONE``)
        is not sent: ``ClientGone``. Where answers are reused (``reuses_escalations``), a request
        identical to one being asked is answered by that call, as if from the ledger (``cached``),
        instead of paying for it again (streamed to its ``live_text`` where the call streams); the
        call goes on while any of them waits for it. A call whose paying request left before its
        answer came (its task cancelled) gets a row of its own with what the provider billed for it."""
        teacher = self.teacher
        queue = self._teacher_queue
        if queue is None or queue.loop is not asyncio.get_running_loop() or queue.teacher is not teacher:
            queue = self._teacher_queue = TeacherQueue(teacher)

        def submit(on_delta: LiveText | None) -> Any:
            return teacher.submit(req) if on_delta is None else teacher.submit(req, on_delta=on_delta)

        def unclaimed(r: Response) -> None:
            # The request that was to pay has its own (failed) row at $0; the bill is this one's.
            self.ledger.record_served(ServedCall(
                request=req, answered_by="teacher", model=self.teacher_name, status="error", request_hash=h,
                error=f"{UNCLAIMED}: the teacher's answer came after the request that was to pay for it had been "
                      "cancelled (any others were answered by it at $0); this row keeps what the teacher billed",
                **billed_tokens(r), cost_usd=r.cost_usd, latency_s=r.latency_s))

        r, cached = await queue.ask(h, submit, self.reuses_escalations(), live_text, CLIENT_GONE.get(),
                                    self.cfg.serve.max_waiting_escalations, unclaimed)
        if not r.ok:  # a failed call's tokens and cost are in the row of the asker that took it first
            raise TeacherError(r.error or "the teacher returned no answer", r.error_status, r.error_code, h,
                               None if cached else r, r.retry_after_s)
        return (dataclasses.replace(r) if cached else r), cached, h

    def _escalation_hash(self, request: dict[str, Any]) -> str:
        """The hash a refused or failed chat request would have had escalated, as ``answer`` computes
        it: its tool turns kept (two tool chats with one text are two requests), and, where its
        fields are valid, its tools (a teacher that calls them), ``max_tokens`` and ``logprobs``."""
        msgs = chat_messages(request)
        if not msgs:
            return request_hash({"stage": "serve"}, request)
        body = _fields_of(request)
        tools = served_tools(self.task, self.teacher, body.tool_request()) \
            if body is not None and self.teacher.supports_tools else None
        try:
            fmt = body.format_request() if body is not None else None
        except FormatError:
            fmt = None
        max_tokens, _ = self.escalation_limits(body and (body.max_completion_tokens or body.max_tokens), (), tools, fmt)
        return self.teacher_request(msgs, max_tokens, tools, body.logprob_request() if body else None, fmt)[0]


def _fields_of(request: dict[str, Any]) -> ChatRequest | None:
    try:
        return ChatRequest.model_validate(request)
    except ValueError:  # pydantic's ValidationError: a request refused for its fields
        return None
