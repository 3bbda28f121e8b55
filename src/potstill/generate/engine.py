"""The async engine for API teachers: bounded concurrency, rate limits, budget, live counters.

``concurrency`` workers pull requests from one iterator, so a million inputs never become a
million pending tasks. Before each request a worker takes its share of the rate limits and
checks the budget; after it, the answer goes to ``on_result`` (the ledger commit) before the
worker takes the next one. At any moment at most ``concurrency`` requests are sent but not
committed: that is the most a ``kill -9`` can make a rerun send again.

Retries (429, 5xx, timeouts, dropped connections) are the SDK's: exponential backoff with jitter
that honours ``Retry-After``. The engine sees every HTTP attempt through httpx event hooks, so
it counts retries and adapts: answers raise the limit on requests in flight, 429s that cluster
lower it or pause every worker (``limits.RateLimiter``); a stray 429 delays only its request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from potstill.config import GenerateConfig
from potstill.errors import redact
from potstill.generate.limits import RateLimiter
from potstill.generate.prices import price_for, token_cost
from potstill.teachers.base import Response


@dataclass
class Counters:
    """What the progress bar shows and the stats report: updated as answers arrive."""

    started: int = 0
    done: int = 0
    errors: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    budget_stopped: bool = False
    t0: float = 0.0
    throttled: int = 0  # 429 responses, retries included
    pauses: int = 0  # times every worker was paused (clustered 429s, or a rate-limit header at zero)
    lowest_limit: float = 0.0  # the lowest the adaptive limit on requests in flight went

    @property
    def retries(self) -> int:
        # Every HTTP attempt beyond the first of each started request is a retry (the SDK's).
        return max(0, self.attempts - self.started)

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.done / dt if dt > 0 else 0.0


class ApiTeacher:
    """What an API adapter adds to ``Teacher`` so the engine can drive it (mixin)."""

    def make_client(self, http_client: Any) -> Any:
        raise NotImplementedError

    async def call(self, client: Any, request: dict[str, Any]) -> Response:
        """One request (with its n samples); raises on failure after the SDK's retries."""
        raise NotImplementedError

    def estimate_tokens(self, request: dict[str, Any]) -> int:
        """Tokens a request may use, for the TPM bucket and the budget: ~4 characters a token."""
        chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
        return chars // 4 + 4 + int(request.get("max_tokens", 0)) * int(request.get("n", 1))

    def secrets(self) -> list[str]:
        return []

    def http_module(self) -> Any:
        """The httpx-compatible package the SDK takes clients from (httpx; newer anthropic: httpx2)."""
        import httpx

        return httpx


def _hooks(limiter: RateLimiter, counters: Counters) -> dict[str, list[Callable]]:
    async def on_request(request: Any) -> None:
        counters.attempts += 1

    async def on_response(response: Any) -> None:
        limiter.observe(response.status_code, response.headers)

    return {"request": [on_request], "response": [on_response]}


async def run_requests(
    teacher: Any,
    requests: Iterable[tuple[int, dict[str, Any]]],
    on_result: Callable[[int, Response], None],
    gcfg: GenerateConfig,
    counters: Counters,
    on_tick: Callable[[], None] = lambda: None,
    http_client_factory: Callable[..., Any] | None = None,
) -> None:
    """Answer ``(index, request)`` pairs through ``teacher``, calling ``on_result`` as each completes."""
    limiter = RateLimiter(gcfg.rpm, gcfg.tpm, teacher.cfg.concurrency)
    price = price_for(teacher.cfg.model, teacher.cfg.price, gcfg.prices)
    budget = gcfg.budget_usd
    counters.t0 = counters.t0 or time.perf_counter()
    httpx = teacher.http_module()
    factory = http_client_factory or httpx.AsyncClient
    # Keep-alive pool as large as the concurrency: every worker holds one connection.
    limits = httpx.Limits(max_connections=teacher.cfg.concurrency + 8, max_keepalive_connections=teacher.cfg.concurrency + 8)
    http = factory(event_hooks=_hooks(limiter, counters), limits=limits, timeout=teacher.cfg.timeout_s)
    client = teacher.make_client(http)
    it: Iterator[tuple[int, dict[str, Any]]] = iter(requests)
    in_flight = 0
    secrets = teacher.secrets()

    def expected_cost(req: dict[str, Any]) -> float:
        # Before any answer, price the worst case (the whole max_tokens); after, the mean so far.
        if counters.done:
            return counters.cost_usd / counters.done
        est = teacher.estimate_tokens(req)
        out = int(req.get("max_tokens", 0)) * int(req.get("n", 1))
        return token_cost(price, max(0, est - out), out)

    async def worker() -> None:
        nonlocal in_flight
        while not counters.budget_stopped:
            try:
                j, req = next(it)
            except StopIteration:
                return
            if budget is not None and counters.cost_usd + (in_flight + 1) * expected_cost(req) > budget:
                counters.budget_stopped = True
                return
            est = teacher.estimate_tokens(req)
            async with limiter.concurrency:
                await limiter.acquire(est)
                in_flight += 1
                counters.started += 1
                t0 = time.perf_counter()
                try:
                    resp = await teacher.call(client, req)
                except Exception as e:  # noqa: BLE001 - every failure becomes an error row, retried next run
                    msg = redact(f"{type(e).__name__}: {e}", secrets)
                    resp = Response(output=None, error=msg[:500])
            resp.latency_s = resp.latency_s or time.perf_counter() - t0
            limiter.settle(est, resp.input_tokens + resp.output_tokens)
            if price is not None:
                resp.cost_usd = token_cost(price, resp.input_tokens, resp.output_tokens)
            counters.input_tokens += resp.input_tokens
            counters.output_tokens += resp.output_tokens
            counters.cost_usd += resp.cost_usd
            counters.done += 1
            counters.errors += resp.error is not None
            on_result(j, resp)  # the ledger commit, before this worker sends anything else
            in_flight -= 1
            on_tick()

    try:
        await asyncio.gather(*(worker() for _ in range(teacher.cfg.concurrency)))
    finally:
        counters.throttled, counters.pauses = limiter.throttled, limiter.pauses
        counters.lowest_limit = limiter.concurrency.lowest
        await client.close()
        await http.aclose()
