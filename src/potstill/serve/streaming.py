"""Chat completions as server-sent events: a whole answer in one chunk (``whole_events``), and an
escalation streamed as the teacher writes it (``serve.stream_teacher``: ``LiveText``, ``live_events``).

The route is decided before the teacher is asked, so its answer can go out piece by piece in
OpenAI's chunk format; only where a client's ``stop`` string may begin is text held back
(``LiveText``). The answer is logged, metered and billed once it is whole, exactly as the
unstreamed one: the ledger row, the route object in the last chunk and the usage chunk are the
same. A teacher that fails after its first text ends the stream with an ``error`` event (what the
official SDKs raise as an ``APIError``), logged as a failed request. A client that leaves early does
not lose the row: the teacher's answer, paid for, is still awaited and logged.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from potstill.ledger import ServedCall
from potstill.serve.engine import first_stop

class LiveText:
    """An escalated answer streamed as the teacher writes it (``Service.answer``'s ``live_text``,
    made on the server's event loop). ``route`` (answered_by, reason, confidence, student) is set
    before the teacher is asked; each piece of its text then goes on ``queue``, called from the
    teacher's thread. Text where a client's ``stop`` string may begin is held back, and nothing past
    the first stop goes out, so what the queue carries is always a start of the answer sent; the
    rest (held back, or none streamed) is the client's once the answer is whole."""

    def __init__(self, stops: Sequence[str] = ()):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.route: dict[str, Any] | None = None
        self.stops = tuple(stops)
        self.first_at: float | None = None  # perf_counter() of the teacher's first piece of text
        self._hold = max((len(s) - 1 for s in self.stops), default=0)
        self._text, self._sent, self._stopped = "", 0, False

    def __call__(self, piece: str) -> None:
        if self._stopped or not piece:
            return
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self._text += piece
        at = first_stop(self._text, self.stops)
        end = at if at >= 0 else len(self._text) - self._hold
        self._stopped = at >= 0
        if end > self._sent:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, self._text[self._sent:end])
            self._sent = end


# Answers still being awaited for clients that left mid-stream (a task needs a reference to run on).
_SETTLING: set[asyncio.Task] = set()


async def live_events(task: asyncio.Future, live_text: LiveText, first: str, model: str, include_usage: bool,
                      record: Callable[[ServedCall], Awaitable[dict[str, Any]]],
                      failed: Callable[[BaseException], Awaitable[dict[str, Any]]]) -> AsyncIterator[str]:
    """The server-sent events of one live escalation: the role, ``first`` and each later piece of
    ``live_text`` as it comes, then, once ``task`` (``Service.answer``) is done, the rest of the answer
    (text held back for a stop string), the finish with the route (``record``: the ledger row and
    metrics, returning the route), the usage where asked, and ``[DONE]``; or, where ``task`` failed,
    the error body ``failed`` logs and returns."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict, finish: str | None, **extra: Any) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(obj)}\n\n"

    settled = False
    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        yield chunk({"content": first}, None)
        sent = first
        while True:
            piece = asyncio.ensure_future(live_text.queue.get())
            await asyncio.wait({task, piece}, return_when=asyncio.FIRST_COMPLETED)
            if not piece.done():
                piece.cancel()
                break
            sent += piece.result()
            yield chunk({"content": piece.result()}, None)
        # The teacher's thread put every piece before its answer returned: what is queued is all there is.
        while not live_text.queue.empty():
            more = live_text.queue.get_nowait()
            sent += more
            yield chunk({"content": more}, None)
        try:
            served: ServedCall = task.result()
            if not (served.content or "").startswith(sent):
                raise RuntimeError("the streamed text is not the start of the answer")
        except Exception as e:  # noqa: BLE001 - after the 200 a failure can only be an event
            settled = True
            try:
                body = await failed(e)
            except Exception:  # noqa: BLE001 - the client still learns the stream failed
                body = {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}
            yield f"data: {json.dumps(body)}\n\n"
            return
        settled = True
        route = await record(served)
        if served.content[len(sent):]:
            yield chunk({"content": served.content[len(sent):]}, None)
        yield chunk({}, served.finish_reason, potstill=route)
        if include_usage:
            usage = {"prompt_tokens": served.input_tokens, "completion_tokens": served.output_tokens,
                     "total_tokens": served.input_tokens + served.output_tokens}
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                   "usage": usage}
            yield f"data: {json.dumps(obj)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not settled:  # the client left (or the server is stopping): the answer is still logged
            _settle(task, record, failed)


def _settle(task: asyncio.Future, record: Callable[[ServedCall], Awaitable[Any]],
            failed: Callable[[BaseException], Awaitable[Any]]) -> None:
    async def settle() -> None:
        try:
            served = await task
        except Exception as e:  # noqa: BLE001 - logged as the failed request it is
            await failed(e)
        else:
            await record(served)

    t = asyncio.ensure_future(settle())
    _SETTLING.add(t)
    t.add_done_callback(_SETTLING.discard)


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

    yield chunk({"role": "assistant", "content": ""}, None)
    if content or not tool_calls:
        yield chunk({"content": content}, None, logprobs)
    for i, call in enumerate(tool_calls or []):
        yield chunk({"tool_calls": [{"index": i, **call}]}, None)
    yield chunk({}, finish_reason, potstill=route)
    if include_usage:
        yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"
