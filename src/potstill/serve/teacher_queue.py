"""Escalations asked anew of the teacher: at most ``teacher.concurrency`` calls in flight, the rest
waiting for a slot, and (where answers are reused) identical requests one call whose answer every
asker gets.

Each call runs as a task of its own, apart from the requests that ask it: a request whose task is
cancelled (a background response cancelled, a server stopping) leaves the call to the others
waiting on it, and one of theirs pays for it. A call nobody waits for any more before it got a
slot (every asker's client left, or its task was cancelled) is dropped, never sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from potstill.teachers import Response

Submit = Callable[[Any], Future[Response]]  # sends the request on the teacher's worker (given the LiveText, or None)


class ClientGone(Exception):
    """The client closed its request while its escalation waited for a teacher slot: it was never
    sent (nothing asked, nothing paid), and its row says so (499, nginx's "client closed request")."""

    def __init__(self, request_hash: str):
        super().__init__("the client closed the request before the teacher was asked; nothing was sent to it")
        self.request_hash = request_hash


class _Call:
    """One teacher request, asked or waiting for a slot: how many requests wait on it, whether it
    was sent, and whether one of their rows has taken its cost."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.askers = 0
        self.sent = False
        self.paid = False


class TeacherQueue:
    """The teacher calls of one event loop (asyncio's parts belong to one) and one teacher."""

    def __init__(self, teacher: Any):
        self.teacher = teacher
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(teacher.cfg.concurrency)
        self.calls: dict[str, _Call] = {}  # by request hash, where identical requests share one call
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def ask(self, h: str, submit: Submit, merge: bool, live_text: Any,
                  gone: asyncio.Event | None) -> tuple[Response, bool]:
        """The teacher's answer to the request ``h`` (sent by ``submit``), and whether another
        request's row pays for it (True for every asker but the first to take the answer). ``merge``:
        join an identical call in flight. ``gone``: set when this request's client leaves; before its
        call is sent, it then leaves the call (``ClientGone``)."""
        if gone is not None and gone.is_set():
            raise ClientGone(h)
        call = self.calls.get(h) if merge else None
        if call is None:
            call = _Call()
            call.task = asyncio.ensure_future(self._send(call, submit, live_text))
            self._tasks.add(call.task)
            call.task.add_done_callback(self._tasks.discard)
            if merge:
                self.calls[h] = call
                call.task.add_done_callback(lambda _: self.calls.pop(h, None) if self.calls.get(h) is call else None)
        call.askers += 1
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
        finally:
            call.askers -= 1
            if call.askers == 0 and not call.sent and not call.task.done():
                call.task.cancel()  # nobody wants it before it had a slot: never sent
        cached, call.paid = call.paid, True
        return r, cached

    async def _send(self, call: _Call, submit: Submit, live_text: Any) -> Response:
        async with self.slots:
            call.sent = True
            if live_text is not None:
                live_text.asked_at = time.perf_counter()
            return await asyncio.wrap_future(submit(live_text))
