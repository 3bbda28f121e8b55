"""The async engine for API teachers: bounded concurrency, rate limits, budget, live counters.

``concurrency`` workers pull requests from one iterator, so a million inputs never become a
million pending tasks. Before each request a worker takes its share of the rate limits and
checks the budget; after it, the answer goes to ``on_result`` (the ledger commit) before the
worker takes the next one. At any moment at most ``concurrency`` requests are sent but not
committed: that is the most a ``kill -9`` can make a rerun send again.

Retries (429, 5xx, timeouts, dropped connections) are the SDK's: exponential backoff with jitter
that honours ``Retry-After``. The engine sees every HTTP attempt through httpx event hooks, so
it counts retries and lets one 429's ``Retry-After`` pause all workers, not just the one that
got it.

``ApiSession`` is the same path for one request at a time (a server's escalations): one event
loop thread, one connection pool and one SDK client for the teacher's whole life.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from potstill.config import GenerateConfig, PriceConfig
from potstill.errors import redact
from potstill.teachers.api.limits import RateLimiter
from potstill.teachers.api.prices import price_for, token_cost
from potstill.teachers.base import OnResult, Response, RunStats

if TYPE_CHECKING:
    from potstill.teachers.api import ApiTeacher


def _hooks(limiter: RateLimiter, stats: RunStats) -> dict[str, list[Callable]]:
    async def on_request(request: Any) -> None:
        stats.attempts += 1
        # Every HTTP attempt beyond the first of each started request is a retry (the SDK's).
        stats.retries = max(0, stats.attempts - stats.started)

    async def on_response(response: Any) -> None:
        limiter.observe(response.status_code, response.headers)

    return {"request": [on_request], "response": [on_response]}


def _open(teacher: "ApiTeacher", limiter: RateLimiter, stats: RunStats,
          http_client_factory: Callable[..., Any] | None = None) -> tuple[Any, Any]:
    """An HTTP pool (hooked for counting and rate limits) and the SDK client over it."""
    httpx = teacher.http_module()
    factory = http_client_factory or httpx.AsyncClient
    # Keep-alive pool as large as the concurrency: every worker holds one connection.
    size = teacher.cfg.concurrency + 8
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    http = factory(event_hooks=_hooks(limiter, stats), limits=limits, timeout=teacher.cfg.timeout_s)
    try:
        return http, teacher.make_client(http)
    except BaseException:
        asyncio.get_running_loop().create_task(http.aclose())
        raise


async def send(teacher: "ApiTeacher", client: Any, req: dict[str, Any], limiter: RateLimiter,
               price: PriceConfig | None, stats: RunStats) -> Response:
    """One request through the limits; a failure (after the SDK's retries) becomes an error response."""
    est = teacher.estimate_tokens(req)
    await limiter.acquire(est)
    stats.started += 1
    t0 = time.perf_counter()
    try:
        resp = await teacher.call(client, req)
    except Exception as e:  # noqa: BLE001 - every failure becomes an error row, retried next run
        msg = redact(f"{type(e).__name__}: {e}", teacher.secrets())
        resp = Response(output=None, error=msg[:500])
    resp.latency_s = resp.latency_s or time.perf_counter() - t0
    limiter.settle(est, resp.input_tokens + resp.output_tokens)
    if price is not None:
        resp.cost_usd = token_cost(price, resp.input_tokens, resp.output_tokens)
    return resp


async def run_requests(
    teacher: "ApiTeacher",
    requests: Iterable[tuple[int, dict[str, Any]]],
    on_result: OnResult,
    gcfg: GenerateConfig,
    stats: RunStats,
    on_tick: Callable[[], None] = lambda: None,
    http_client_factory: Callable[..., Any] | None = None,
) -> None:
    """Answer ``(index, request)`` pairs through ``teacher``, calling ``on_result`` as each completes.

    The budget reads ``stats.calls`` and ``stats.cost_usd``, which ``on_result`` counts
    (``RunStats.count``) before this worker sends anything else.
    """
    limiter = RateLimiter(gcfg.rpm, gcfg.tpm)
    price = price_for(teacher.cfg.model, teacher.cfg.price, gcfg.prices)
    budget = gcfg.budget_usd
    http, client = _open(teacher, limiter, stats, http_client_factory)
    it: Iterator[tuple[int, dict[str, Any]]] = iter(requests)
    in_flight = 0

    def expected_cost(req: dict[str, Any]) -> float:
        # Before any answer, price the worst case (the whole max_tokens); after, the mean so far.
        if stats.calls:
            return stats.cost_usd / stats.calls
        est = teacher.estimate_tokens(req)
        out = int(req.get("max_tokens", 0)) * int(req.get("n", 1))
        return token_cost(price, max(0, est - out), out)

    async def worker() -> None:
        nonlocal in_flight
        while not stats.budget_stopped:
            try:
                j, req = next(it)
            except StopIteration:
                return
            if budget is not None and stats.cost_usd + (in_flight + 1) * expected_cost(req) > budget:
                stats.budget_stopped = True
                return
            in_flight += 1
            resp = await send(teacher, client, req, limiter, price, stats)
            on_result(j, resp)  # the ledger commit, before this worker sends anything else
            in_flight -= 1
            on_tick()

    try:
        await asyncio.gather(*(worker() for _ in range(teacher.cfg.concurrency)))
    finally:
        await client.close()
        await http.aclose()


class ApiSession:
    """Single requests on one long-lived loop and client (a server's escalations).

    No rate limits or budget (a server answers its clients as they come); prices are the
    teacher's own. ``submit`` is thread-safe and returns a ``concurrent.futures.Future``.
    """

    def __init__(self, teacher: "ApiTeacher"):
        self.teacher = teacher
        self.stats = RunStats()
        self.limiter = RateLimiter()
        self.price = price_for(teacher.cfg.model, teacher.cfg.price, {})
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

    def submit(self, request: dict[str, Any]) -> "Future[Response]":
        return asyncio.run_coroutine_threadsafe(
            send(self.teacher, self._client, request, self.limiter, self.price, self.stats), self.loop)

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
