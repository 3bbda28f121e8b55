"""Client-side rate limits that also follow what the server says, and adaptive concurrency.

Two token buckets, requests per minute and tokens per minute, refill continuously (a 600 RPM
cap lets one request through every 0.1 s, with a burst of at most one second's worth). The
server can only tighten them: an ``x-ratelimit-remaining-*`` of zero with its reset time pauses
every worker until then, and an ``x-ratelimit-limit-*`` below the configured cap lowers the cap.

A 429 alone pauses nobody but its own request (the SDK retries it after ``Retry-After``): APIs
return scattered 429s under any load, and pausing every worker on each one cut throughput to a
third at 5% of 429s (benchmarks/generate.py, mode ``throttled``). 429s that *cluster* are the
server saying "too fast": over the last ``WINDOW`` responses, a share of ``SLOW_DOWN`` or more
multiplies the concurrency limit by ``DECREASE`` (once per window), and ``STOP`` or more pauses
every worker for the ``Retry-After``. Each answered request adds ``1 / limit`` back (additive
increase: about one more request in flight per round of ``limit`` answers), up to the
configured concurrency.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from datetime import datetime
from typing import Mapping

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None, now: float | None = None) -> float | None:
    """Seconds until a rate-limit window resets: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"2.5"`` or an RFC 3339 time."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _UNIT[u] for n, u in parts)
    try:  # anthropic-ratelimit-*-reset is an RFC 3339 timestamp
        at = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, at - (time.time() if now is None else now))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait in seconds, from ``retry-after-ms`` or ``retry-after``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    return parse_reset(headers.get("retry-after"))


class _Bucket:
    def __init__(self, per_minute: float | None):
        self.rate = per_minute / 60 if per_minute else None  # units per second
        self.level = self.capacity
        self.t = time.monotonic()

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate) if self.rate else 0.0

    def refill(self) -> None:
        now = time.monotonic()
        if self.rate:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0: take it now)."""
        if not self.rate:
            return 0.0
        self.refill()
        # An amount above capacity (a huge prompt under a small TPM) goes once the bucket is full.
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        if self.rate:
            self.level -= amount


# Over the last WINDOW HTTP responses: at 5% random 429s, 8 or more of 40 happen by chance in
# about 1 window in 1,000 (binomial tail), while a server that refuses a fifth of requests gets there.
WINDOW = 40
SLOW_DOWN = 0.2
STOP = 0.5
DECREASE = 0.7


class Concurrency:
    """An AIMD limit on HTTP requests in flight: ``async with concurrency.hold(k):`` around a
    request that sends ``k`` of them at once (Anthropic's n samples; ``async with concurrency:``
    for one). ``k`` above the limit goes alone, when nothing else is in flight."""

    def __init__(self, most: int):
        self.most = most
        self.limit = float(most)
        self.lowest = float(most)
        self.in_flight = 0
        self.decreases = 0
        self._cond = asyncio.Condition()

    def hold(self, k: int = 1) -> "_Held":
        return _Held(self, max(1, k))

    async def __aenter__(self) -> None:
        await self.hold(1).__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self.hold(1).__aexit__()

    def increase(self) -> None:
        self.limit = min(float(self.most), self.limit + 1.0 / self.limit)

    def decrease(self) -> None:
        self.limit = max(1.0, self.limit * DECREASE)
        self.lowest = min(self.lowest, self.limit)
        self.decreases += 1


class _Held:
    """``k`` slots of a ``Concurrency`` for the length of an ``async with``."""

    def __init__(self, c: Concurrency, k: int):
        self.c, self.k = c, k

    async def __aenter__(self) -> None:
        c = self.c
        async with c._cond:
            await c._cond.wait_for(lambda: not c.in_flight or c.in_flight + self.k <= max(1, int(c.limit)))
            c.in_flight += self.k

    async def __aexit__(self, *exc: object) -> None:
        c = self.c
        async with c._cond:
            c.in_flight -= self.k
            c._cond.notify_all()


class RateLimiter:
    """``await acquire(tokens)`` before each request; ``observe(status, headers)`` after each HTTP response."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, concurrency: int = 1):
        self.requests = _Bucket(rpm)
        self.tokens = _Bucket(tpm)
        self.concurrency = Concurrency(concurrency)
        self.paused_until = 0.0
        self.pauses = 0
        self.throttled = 0  # 429s seen
        self._recent: deque[bool] = deque(maxlen=WINDOW)  # True: a 429
        self._since_decrease = WINDOW
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self.pauses += 1

    def lower(self, bucket: _Bucket, per_minute: float) -> None:
        rate = per_minute / 60
        if bucket.rate is None or rate < bucket.rate:
            bucket.rate = rate
            bucket.level = min(bucket.level, bucket.capacity)

    async def acquire(self, tokens: float = 0.0, requests: int = 1) -> None:
        # One waiter at a time keeps the order fair and the arithmetic simple.
        async with self._lock:
            while True:
                wait = max(self.paused_until - time.monotonic(), self.requests.wait_for(requests),
                           self.tokens.wait_for(tokens))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self.requests.take(requests)
            self.tokens.take(min(tokens, self.tokens.capacity) if self.tokens.rate else 0)

    def settle(self, estimated: float, actual: float) -> None:
        """Correct the token bucket once the real usage of a request is known."""
        if self.tokens.rate:
            self.tokens.level -= actual - min(estimated, self.tokens.capacity)

    def on_429(self, wait: float | None) -> None:
        """One 429: slow down only when they cluster (see the module docstring)."""
        self.throttled += 1
        share = sum(self._recent) / len(self._recent)
        if len(self._recent) < WINDOW // 4:
            return  # too few responses yet to tell a cluster from chance
        if share >= SLOW_DOWN and self._since_decrease >= WINDOW:
            self.concurrency.decrease()
            self._since_decrease = 0
        if share >= STOP:
            self.pause(wait if wait is not None else 1.0)

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        h = {k.lower(): v for k, v in headers.items()}
        self._recent.append(status == 429)
        self._since_decrease += 1
        if status == 429:
            self.on_429(retry_after(h))
        elif status < 300:
            self.concurrency.increase()
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            for prefix in (f"x-ratelimit-{{}}-{kind}", f"anthropic-ratelimit-{kind}-{{}}"):
                limit, remaining, reset = (h.get(prefix.format(x)) for x in ("limit", "remaining", "reset"))
                if limit and limit.isdigit() and int(limit) > 0:
                    self.lower(bucket, float(limit))  # OpenAI and Anthropic both state limits per minute
                if remaining is not None and remaining.strip() == "0":
                    wait = parse_reset(reset)
                    if wait:
                        self.pause(wait)
