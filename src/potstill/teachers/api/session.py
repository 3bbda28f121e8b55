"""The engine's path for one request at a time (a server's escalations).

One event loop thread, one connection pool and one SDK client for the teacher's whole life,
instead of a new loop and client per request.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from potstill.config import GenerateConfig
from potstill.teachers.api.engine import ApiTeacher, _open, send
from potstill.teachers.api.limits import RateLimiter
from potstill.teachers.api.prices import price_for
from potstill.teachers.base import OnDelta, Response, RunStats


class ApiSession:
    """Single requests on one long-lived loop and client (a server's escalations).

    No rate limits or budget (a server answers its clients as they come, ``teacher.concurrency`` at
    once); prices are the teacher's own, else its ``prices`` table (``generate.prices``). ``submit``
    is thread-safe and returns a ``concurrent.futures.Future``.
    """

    def __init__(self, teacher: ApiTeacher):
        self.teacher = teacher
        self.stats = RunStats()
        # No rate limits, but teacher.concurrency escalations in flight at once (the limiter's default
        # of one request at a time made each client wait for every escalation queued before it).
        self.limiter = RateLimiter(concurrency=teacher.cfg.concurrency)
        # The table generate bills by (a model priced only there was once billed $0 per escalation).
        table = teacher.prices if teacher.prices is not None else GenerateConfig().prices
        self.price = price_for(teacher.cfg.model, teacher.cfg.price, table)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"potstill-{teacher.type}-session", daemon=True)
        self.thread.start()
        self._http: Any = None
        self._client: Any = None
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        except BaseException:
            self.close()
            raise

    async def _start(self) -> None:
        self._http, self._client = _open(self.teacher, self.limiter, self.stats)

    def submit(self, request: dict[str, Any], on_delta: OnDelta | None = None) -> "Future[Response]":
        return asyncio.run_coroutine_threadsafe(
            send(self.teacher, self._client, request, self.limiter, self.price, self.stats, on_delta), self.loop)

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._http is not None:
            await self._http.aclose()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
