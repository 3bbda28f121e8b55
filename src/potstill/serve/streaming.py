"""Served answers as server-sent events: a chat completion's whole answer in one chunk
(``whole_events``), and an escalation streamed as the teacher writes it (``serve.stream_teacher``:
``LiveText``, ``first_piece``, and ``relay``, which each API's live events run on: chat
completions' ``live_events`` here, the Responses API's and text completions' beside their routes).

The route is decided before the teacher is asked, so its answer can go out piece by piece (text,
its tokens' log-probs, tool-call fragments); only where a client's ``stop`` string may begin is
text held back (``LiveText``). What went out is checked against the whole answer (``Sent``). The answer is logged,
metered and billed once it is whole, exactly as the unstreamed one: the ledger row, the route object
in the last chunk and the usage chunk are the same. A teacher that fails after its first text ends
the stream with an ``error`` event (what the official SDKs raise as an ``APIError``), logged as a
failed request. A client that leaves early does not lose the row: the teacher's answer, paid for,
is still awaited and logged (``settle_later``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from potstill.ledger import ServedCall
from potstill.serve.engine import first_stop
from potstill.teachers.base import Delta, join_fragment, token_bytes
from potstill.tool_calls import fresh_ids


class Piece(NamedTuple):
    """What one event of a live stream carries: new text, the OpenAI ``logprobs.content`` entries of
    the tokens it completes, and tool-call fragments in OpenAI's chunk form."""

    text: str = ""
    logprobs: tuple[dict[str, Any], ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()


def openai_logprob(entry: dict[str, Any], top: int) -> dict[str, Any]:
    """One token's log-probs as a teacher adapter keeps them ({token, logprob, top}, rounded to 1e-4
    nats) as an entry of OpenAI's ``logprobs.content``, with ``top`` alternatives."""
    return {"token": entry["token"], "logprob": entry["logprob"], "bytes": list(token_bytes(entry)),
            "top_logprobs": [{"token": a["token"], "logprob": a["logprob"], "bytes": list(token_bytes(a))}
                             for a in entry.get("top", [])[:top]]}


class LiveText:
    """An escalated answer streamed as the teacher writes it (``Service.answer``'s ``live_text``,
    made on the server's event loop). ``route`` (answered_by, reason, confidence, student) is set
    before the teacher is asked; each piece the teacher writes (a ``Delta``, called from the
    teacher's thread) then goes on ``queue`` as a ``Piece``. Text where a client's ``stop`` string
    may begin is held back, and nothing past the first stop goes out, so the text the queue carries
    is always a start of the answer sent; a token's log-probs (``top_logprobs``: the client's, None
    where it asked for none) go out with the text that completes it; tool-call fragments go out as
    they come. The rest (held back, or none streamed) is the client's once the answer is whole."""

    def __init__(self, stops: Sequence[str] = (), top_logprobs: int | None = None):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Piece] = asyncio.Queue()
        self.route: dict[str, Any] | None = None
        self.stops = tuple(stops)
        self.top = top_logprobs
        self.asked_at = 0.0  # perf_counter() when the teacher was asked (``TeacherSide._ask_teacher``)
        self.first_at: float | None = None  # perf_counter() of the teacher's first piece (text or tool call)
        # The prompt's tokens where the teacher counted them before writing (``Delta.input_tokens``), set
        # before the first piece is queued: the Messages API's message_start carries them.
        self.input_tokens: int | None = None
        # Answered by a teacher call another request's row pays for (``TeacherQueue``): its route
        # is ``+cached``, as the row and the last chunk will say.
        self.shared = False
        # A shared call's tool-call ids as this client gets them (``tool_calls.fresh_ids``): the
        # same in its fragments and in its whole answer (``Service.answer``).
        self.call_ids: dict[str, str] = {}
        self._hold = max((len(s) - 1 for s in self.stops), default=0)
        self._text, self._sent, self._stopped = "", 0, False
        self._tokens: list[dict[str, Any]] = []  # log-probs whose text has not all gone out yet
        self._spelled = ""  # the text of the tokens whose log-probs went out

    def __call__(self, delta: Delta) -> None:
        if self.first_at is None and (delta.text or delta.tool_calls):
            self.first_at = time.perf_counter()
        if delta.input_tokens is not None:
            self.input_tokens = delta.input_tokens
        text = ""
        if delta.text and not self._stopped:
            self._text += delta.text
            at = first_stop(self._text, self.stops)
            end = at if at >= 0 else len(self._text) - self._hold
            self._stopped = at >= 0
            if end > self._sent:
                text, self._sent = self._text[self._sent:end], end
        if self.top is not None and delta.logprobs:
            self._tokens.extend(delta.logprobs)
        out = self._text[:self._sent]
        tokens = []
        while self._tokens and out.startswith(self._spelled + self._tokens[0]["token"]):
            self._spelled += self._tokens[0]["token"]
            tokens.append(openai_logprob(self._tokens.pop(0), self.top or 0))
        calls = delta.tool_calls or ()
        if self.shared and calls:
            calls = fresh_ids(calls, self.call_ids)
        if text or tokens or calls:
            piece = Piece(text, tuple(tokens), tuple(calls))
            self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)


class Sent:
    """What a live stream has sent so far: text, log-probs entries, and each tool call (by index:
    id, name, arguments) as the client's SDK puts its fragments together."""

    def __init__(self) -> None:
        self.text = ""
        self.logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, piece: Piece) -> None:
        self.text += piece.text
        self.logprobs.extend(piece.logprobs)
        for f in piece.tool_calls:
            join_fragment(self.calls, f)

    def rest(self, served: ServedCall) -> Piece:
        """What the whole ``served`` answer holds past what went out (its text and log-probs); an
        error where what went out is not its start, or where a tool call went out otherwise or not at all."""
        if not (served.content or "").startswith(self.text):
            raise RuntimeError("the streamed text is not the start of the answer")
        logprobs = served.logprobs or []
        if logprobs[:len(self.logprobs)] != self.logprobs:
            raise RuntimeError("the streamed log-probabilities are not the start of the answer's")
        calls = [{"id": c.get("id"), "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in served.extra.get("tool_calls") or []]
        if calls != [self.calls[i] for i in sorted(self.calls)]:
            raise RuntimeError("the streamed tool calls are not the answer's")
        return Piece(served.content[len(self.text):], tuple(logprobs[len(self.logprobs):]))


# Answers still being awaited for clients that left mid-stream (a task needs a reference to run on).
_SETTLING: set[asyncio.Task] = set()

OnAnswer = Callable[[ServedCall], Awaitable[Any]]
OnFailure = Callable[[BaseException], Awaitable[dict[str, Any]]]


async def first_piece(answering: Awaitable[ServedCall], live_text: LiveText) -> tuple[asyncio.Future, Piece | None]:
    """``answering`` (``Service.answer`` given ``live_text``) started, and the teacher's first piece
    (text or a tool call) where it comes before the answer is done; None where the answer came first
    (the student's, the ledger's, or a failure, which the caller then raises as it would unstreamed)."""
    task = asyncio.ensure_future(answering)
    first = asyncio.ensure_future(live_text.queue.get())
    await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        first.cancel()
        return task, None
    return task, first.result()


async def pieces(task: asyncio.Future, live_text: LiveText) -> AsyncIterator[Piece]:
    """Each later piece of ``live_text`` as it comes, until ``task`` is done. The teacher's thread
    put every piece before its answer returned, so what is queued then is all there is."""
    while True:
        piece = asyncio.ensure_future(live_text.queue.get())
        try:
            await asyncio.wait({task, piece}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            got = piece.done()
            if not got:  # a cancelled get leaves its item in the queue
                piece.cancel()
        if not got:
            break
        yield piece.result()
    while not live_text.queue.empty():
        yield live_text.queue.get_nowait()


class ServerStopped(Exception):
    """The server stopped before the teacher's answer to a client that had left came: its request's
    failed row (``settle_later``), as the teacher was asked and may still bill it."""


def settle_later(task: asyncio.Future, record: OnAnswer, failed: OnFailure) -> None:
    """A live stream ended before its answer was logged (the client left, the server is stopping):
    the answer, paid for, is still awaited and logged, or its failure. A server stopping waits for
    it (``settle_pending``); one it stops waiting for is logged as failed (``ServerStopped``)."""
    async def settle() -> None:
        try:
            served = await task
        except asyncio.CancelledError:
            # Cancelled where the server stopped waiting (or the event loop is closing): without this
            # row the request left no trace in the ledger, the bill, though the teacher was asked.
            await failed(ServerStopped("the server stopped before the teacher's answer came (the client had "
                                       "left; the teacher was asked and may bill it)"))
            raise
        except Exception as e:  # noqa: BLE001 - logged as the failed request it is
            await failed(e)
        else:
            await record(served)

    t = asyncio.ensure_future(settle())
    _SETTLING.add(t)
    t.add_done_callback(_SETTLING.discard)


def unsettled() -> int:
    """How many answers to clients that left are still awaited (``settle_later``)."""
    return len(_SETTLING)


async def settle_pending(timeout_s: float) -> tuple[int, int]:
    """At shutdown, before the teacher's client and the ledger close: wait up to ``timeout_s`` for
    the answers of clients that left (``settle_later``) to be logged, then cancel the rest, each
    then logged as failed. Returns (how many there were, how many were cancelled)."""
    pending = set(_SETTLING)
    if not pending:
        return 0, 0
    _, left = await asyncio.wait(pending, timeout=timeout_s)
    for t in left:
        t.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    return len(pending), len(left)


async def failure_body(failed: OnFailure, e: BaseException) -> dict[str, Any]:
    """The error body of a live stream's failure, logged by ``failed``; a generic one where that fails too."""
    try:
        return await failed(e)
    except Exception:  # noqa: BLE001 - the client still learns the stream failed
        return {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}


async def relay(task: asyncio.Future, live_text: LiveText, first: Piece, record: OnAnswer, failed: OnFailure,
                opening: Iterable[str], delta: Callable[[Piece], str],
                closing: Callable[[ServedCall, Any, Piece], Iterable[str]],
                failure: Callable[[dict[str, Any]], str]) -> AsyncIterator[str]:
    """One live escalation's events in any API's form: ``opening``, ``delta`` of ``first`` and of
    each later piece of ``live_text`` as it comes; once ``task`` (``Service.answer``) is done,
    ``closing(answer, what record returned, the rest of it)`` (text held back for a stop string,
    and its log-probs, are that rest); where it failed, ``failure`` of the error body ``failed``
    logs and returns. A stream that ends before the answer is logged (the client left) leaves it to
    ``settle_later``."""
    settled = False
    try:
        for event in opening:
            yield event
        sent = Sent()
        yield delta(first)
        sent.add(first)
        async for piece in pieces(task, live_text):
            yield delta(piece)
            sent.add(piece)
        settled = True
        try:
            served = task.result()
            rest = sent.rest(served)
        except Exception as e:  # noqa: BLE001 - after the 200 a failure can only be an event
            yield failure(await failure_body(failed, e))
            return
        for event in closing(served, await record(served), rest):
            yield event
    finally:
        if not settled:
            settle_later(task, record, failed)


def live_events(task: asyncio.Future, live_text: LiveText, first: Piece, model: str, include_usage: bool,
                record: OnAnswer, failed: OnFailure) -> AsyncIterator[str]:
    """A chat completion's server-sent events for one live escalation (``relay``): the role, each
    piece as a delta (its text as content with its tokens' ``logprobs``, its tool-call fragments as
    ``tool_calls``), the rest of the answer, the finish with the route (``record``: the ledger row
    and metrics, returning the route), the usage where asked, and ``[DONE]``; or the error body
    ``failed`` logs and returns."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict, finish: str | None = None, logprobs: Sequence[dict] = (), **extra: Any) -> str:
        choice = {"index": 0, "delta": delta,
                  **({"logprobs": {"content": list(logprobs), "refusal": None}} if logprobs else {}),
                  "finish_reason": finish}
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [choice], **extra}
        return f"data: {json.dumps(obj)}\n\n"

    def piece_chunk(piece: Piece) -> str:
        delta: dict[str, Any] = {"content": piece.text} if piece.text or not piece.tool_calls else {}
        if piece.tool_calls:
            delta["tool_calls"] = list(piece.tool_calls)
        return chunk(delta, logprobs=piece.logprobs)

    def closing(served: ServedCall, route: dict[str, Any], rest: Piece) -> Iterator[str]:
        if rest.text or rest.logprobs:
            yield piece_chunk(rest)
        yield chunk({}, served.finish_reason, potstill=route)
        if include_usage:
            usage = {"prompt_tokens": served.input_tokens, "completion_tokens": served.output_tokens,
                     "total_tokens": served.input_tokens + served.output_tokens}
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                   "usage": usage}
            yield f"data: {json.dumps(obj)}\n\n"
        yield "data: [DONE]\n\n"

    return relay(task, live_text, first, record, failed, [chunk({"role": "assistant", "content": ""})],
                 piece_chunk, closing, lambda body: f"data: {json.dumps(body)}\n\n")


def whole_events(cid: str, created: int, model: str, content: str, usage: dict, route: dict, include_usage: bool,
         finish_reason: str = "stop", tool_calls: list[dict] | None = None, logprobs: dict | None = None):
    """Server-sent events in OpenAI's chunk format. The route is decided on the whole answer (it
    must be validated before anyone sees it), so the content arrives as one delta (with its tokens'
    ``logprobs`` where asked), and each tool call as one delta holding its id, name and whole arguments."""
    def chunk(delta: dict, finish: str | None, lps: dict | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, **({"logprobs": lps} if lps is not None else {}), "finish_reason": finish}
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [choice], **extra}
        return f"data: {json.dumps(obj)}\n\n"

    # OpenAI's first delta of an answer that is only tool calls has content null, as its whole message does.
    yield chunk({"role": "assistant", "content": "" if content or not tool_calls else None}, None)
    if content or not tool_calls:
        yield chunk({"content": content}, None, logprobs)
    for i, call in enumerate(tool_calls or []):
        yield chunk({"tool_calls": [{"index": i, **call}]}, None)
    yield chunk({}, finish_reason, potstill=route)
    if include_usage:
        yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"
