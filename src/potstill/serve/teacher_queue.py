"""Escalations asked anew of the teacher: at most ``teacher.concurrency`` calls in flight, at most
``serve.max_waiting_escalations`` more waiting for a slot (beyond, ``TeacherBusy``: the client's
429 with a Retry-After), and (where answers are reused) identical requests one call whose answer
every asker gets, streamed to those asking for a stream where the call streams (``Fanout``).

Each call runs as a task of its own, apart from the requests that ask it: a request whose task is
cancelled (a background response cancelled, a server stopping) leaves the call to the others
waiting on it. A call nobody waits for any more before it got a slot (every asker's client left,
or its task was cancelled) is dropped, never sent.

Which row pays for a call is settled when it is sent, before any of its text goes out: the asker
that has waited longest then (its payer); every other asker, and any that joins later, is answered
as from the ledger (``cached``), so a streamed one's route headers can say so at once. A payer
that leaves before taking the answer (its task cancelled) leaves the call's cost to the call's own
row (``unclaimed``): the provider bills the call whoever waits for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any

from potstill.progress import say
from potstill.teachers import Response

Submit = Callable[[Any], Future[Response]]  # sends the request on the teacher's worker (given the LiveText, or None)

# False where a request is queued work by its own terms (a Batch API line, a background response):
# it waits for a slot however many wait, rather than fail with a 429 nobody retries. A context
# variable, so each task reads its own.
WAIT_BOUNDED: ContextVar[bool] = ContextVar("potstill_wait_bounded", default=True)
# The openai SDK waits out a Retry-After of at most 120 s and does not retry past it (MAX_RETRY_AFTER_DELAY).
MAX_RETRY_AFTER_S = 120.0


class ClientGone(Exception):
    """The client closed its request while its escalation waited for a teacher slot: it was never
    sent (nothing asked, nothing paid), and its row says so (499, nginx's "client closed request")."""

    def __init__(self, request_hash: str):
        super().__init__("the client closed the request before the teacher was asked; nothing was sent to it")
        self.request_hash = request_hash


class TeacherBusy(Exception):
    """An escalation that would wait for a teacher slot behind ``serve.max_waiting_escalations``
    others: refused at once (the client's 429), ``retry_after_s`` the wait a retry should make."""

    def __init__(self, request_hash: str, running: int, waiting: int, retry_after_s: float):
        super().__init__(f"the teacher is busy: {running} escalations are being answered and {waiting} more wait "
                         f"for it (serve.max_waiting_escalations); try again in {retry_after_s:.1f} s")
        self.request_hash, self.retry_after_s = request_hash, retry_after_s


class Fanout:
    """The pieces of one streamed teacher call (each ``Delta``, on the teacher's thread) to the
    ``LiveText`` of every request waiting on it: one that joins late gets those so far, then the rest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[Any] = []
        self._to: list[Any] = []
        self._sent_at: float | None = None

    def __call__(self, delta: Any) -> None:
        with self._lock:
            self._seen.append(delta)
            for live_text in self._to:
                live_text(delta)

    def add(self, live_text: Any) -> None:
        with self._lock:
            if self._sent_at is not None:  # its wait for the teacher's first text starts now
                live_text.asked_at = time.perf_counter()
            for delta in self._seen:
                live_text(delta)
            self._to.append(live_text)

    def sent(self, at: float) -> None:
        with self._lock:
            self._sent_at = at
            for live_text in self._to:
                live_text.asked_at = at


def _said(logged: asyncio.Future) -> None:
    """One line where an unclaimed call's row could not be written (the ledger closed as the server
    stopped): asyncio would print a traceback, later, from the garbage collector."""
    if not logged.cancelled() and logged.exception() is not None:
        say(f"serve: a teacher call's cost could not be logged: {logged.exception()}")


class _Call:
    """One teacher request, asked or waiting for a slot: the requests waiting on it (oldest first),
    whether it was sent, which of them pays for it (``payer``, settled when it is sent) and whether
    that one took it, where its pieces go where it streams (the first asker asked for a stream),
    and ``unclaimed``, given the answer where its payer left without it."""

    def __init__(self, fanout: Fanout | None, unclaimed: Callable[[Response], None] | None) -> None:
        self.fanout = fanout
        self.unclaimed = unclaimed
        self.task: asyncio.Task | None = None
        self.waiting: list[_Asker] = []
        self.sent = False
        self.sent_at = 0.0  # perf_counter() when it took its slot
        self.payer: _Asker | None = None
        self.paid = False  # its payer took the answer, or the call's own row took its cost

    @property
    def askers(self) -> int:
        return len(self.waiting)


class _Asker:
    """One request waiting on a call, and its ``LiveText`` where it streams."""

    def __init__(self, live_text: Any) -> None:
        self.live_text = live_text


class TeacherQueue:
    """The teacher calls of one event loop (asyncio's parts belong to one) and one teacher."""

    def __init__(self, teacher: Any):
        self.teacher = teacher
        self.loop = asyncio.get_running_loop()
        self.concurrency = teacher.cfg.concurrency
        self.slots = asyncio.Semaphore(self.concurrency)
        self.calls: dict[str, _Call] = {}  # by request hash, where identical requests share one call
        self.open = 0  # calls sent or waiting for a slot
        self._running: set[_Call] = set()
        self._latencies: deque[float] = deque(maxlen=32)  # seconds from slot to answer, the latest calls'
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def ask(self, h: str, submit: Submit, merge: bool, live_text: Any, gone: asyncio.Event | None,
                  max_waiting: int, unclaimed: Callable[[Response], None] | None = None) -> tuple[Response, bool]:
        """The teacher's answer to the request ``h`` (sent by ``submit``), and whether another
        request's row pays for it (True for every asker but the call's payer: the one that had
        waited longest when it was sent; a streamed one's ``live_text.shared`` is set as soon as
        that is known). ``merge``: join an identical call in flight (never refused: it adds no
        call). ``gone``: set when this request's client leaves; before its call is sent, it then
        leaves the call (``ClientGone``). A new call that would wait behind ``max_waiting`` others
        is refused (``TeacherBusy``), unless ``WAIT_BOUNDED`` says this request waits regardless.
        ``unclaimed``: given the answer of a new call whose payer leaves without it, to log its cost."""
        if gone is not None and gone.is_set():
            raise ClientGone(h)
        call = self.calls.get(h) if merge else None
        if call is None:
            if self.open >= self.concurrency + max_waiting and WAIT_BOUNDED.get():
                running = len(self._running)
                raise TeacherBusy(h, running, self.open - running, self.retry_after_s())
            call = _Call(None if live_text is None else Fanout(), unclaimed)
            self.open += 1
            call.task = asyncio.ensure_future(self._send(call, submit))
            self._tasks.add(call.task)
            call.task.add_done_callback(self._tasks.discard)
            call.task.add_done_callback(self._closed)
            call.task.add_done_callback(lambda _: self._settle(call))
            if merge:
                self.calls[h] = call
                call.task.add_done_callback(lambda _: self.calls.pop(h, None) if self.calls.get(h) is call else None)
        me = _Asker(live_text)
        if call.sent and live_text is not None:
            live_text.shared = True  # joins a call already sent: another row pays for it
        if live_text is not None and call.fanout is not None:
            call.fanout.add(live_text)  # (a call asked unstreamed answers it whole)
        call.waiting.append(me)
        try:
            if gone is not None:
                left = asyncio.ensure_future(gone.wait())
                try:
                    await asyncio.wait({call.task, left}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    left.cancel()
                if not call.sent and not call.task.done():
                    raise ClientGone(h)
            # Shielded: a cancelled asker stops waiting; the call goes on for the others.
            r = await asyncio.shield(call.task)
            if me is call.payer:
                call.paid = True
        finally:
            call.waiting.remove(me)
            if not call.waiting and not call.sent and not call.task.done():
                call.task.cancel()  # nobody wants it before it had a slot: never sent
            self._settle(call)
        return r, me is not call.payer

    def _settle(self, call: _Call) -> None:
        """The call's own row (``unclaimed``) where it was answered and its payer left without the
        answer (a cancelled payer's ``finally`` and the call's end can come in either order, so both ask)."""
        task = call.task
        if call.paid or call.payer is None or call.payer in call.waiting or not task.done() or task.cancelled() \
                or task.exception() is not None:
            return
        call.paid = True
        if call.unclaimed is not None:  # (a ledger write: off the loop, as every other)
            logged = asyncio.ensure_future(asyncio.to_thread(call.unclaimed, task.result()))
            self._tasks.add(logged)
            logged.add_done_callback(self._tasks.discard)
            logged.add_done_callback(_said)

    def _closed(self, _: asyncio.Task) -> None:
        self.open -= 1

    def retry_after_s(self) -> float:
        """About when a waiting place frees, for a refused request's Retry-After: a place frees as a
        call ends (a waiting one then takes its slot), so when the call sent longest ago is expected
        to end, the mean latency of the latest calls past its age; at least 0.5 s (where that call
        is already overdue), 1 s before any call has ended, at most ``MAX_RETRY_AFTER_S``."""
        if not self._latencies:
            return 1.0
        mean, now = sum(self._latencies) / len(self._latencies), time.perf_counter()
        ends = [mean - (now - c.sent_at) for c in self._running]
        return min(MAX_RETRY_AFTER_S, max(0.5, min(ends, default=mean)))

    async def _send(self, call: _Call, submit: Submit) -> Response:
        async with self.slots:
            call.sent, call.sent_at = True, time.perf_counter()
            # The one that waited longest pays; the rest are answered as from the ledger, and a
            # streamed one says so in its route headers, which go out with its first text.
            call.payer = call.waiting[0] if call.waiting else _Asker(None)  # (none: its row pays)
            for asker in call.waiting[1:]:
                if asker.live_text is not None:
                    asker.live_text.shared = True
            if call.fanout is not None:
                call.fanout.sent(call.sent_at)
            self._running.add(call)
            try:
                r = await asyncio.wrap_future(submit(call.fanout))
            finally:
                self._running.discard(call)
            self._latencies.append(time.perf_counter() - call.sent_at)
            return r
