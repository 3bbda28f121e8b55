"""Client-side rate limits that also follow what the server says, and adaptive concurrency.

Two caps, requests per minute and tokens per minute, each a token bucket that refills
continuously (a 600 RPM cap lets one request through every 0.1 s, with a burst of at most one
second's worth) under a log of the last minute's sends, which never passes the cap (``_Bucket``). The
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
from typing import Callable, Mapping

# A pause this long (seconds) is said, once as it starts: a progress bar standing still for a
# minute-long reset reads as a hang.
LONG_PAUSE = 10.0
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


# The span a per-minute cap is counted over: what was sent in any MINUTE_S seconds stays under it.
MINUTE_S = 60.0


class _Bucket:
    """A per-minute cap (requests or tokens), held two ways at once.

    A token bucket paces the sends: it refills continuously and holds at most one second's worth,
    so a 600 RPM cap lets one request through every 0.1 s rather than 600 at once (servers count
    their limits over shorter spans too). A log of the last minute's sends caps them: what was sent
    in any ``MINUTE_S`` never passes the cap. The bucket alone let its first second's worth through
    on top of a minute's refill (6,090 tokens in a minute at 6,000 TPM), and took a request above
    its one-second capacity at that capacity until the answer's usage came back (10,000 tokens in
    the first minute at 6,000 TPM, with 1,000-token estimates and 10 s answers).

    The log charges each send its whole amount when sent, and ``correct`` sets it to what the send
    used once that is known: an estimate above the usage frees the difference, one below holds back
    the sends after it. The bucket takes at most its capacity when a send goes and the rest at
    ``correct`` (a debt): taking a 1,000-token estimate whole from a 100-token bucket and refunding
    the unused 500 when the bucket had refilled anyway lost the refund, halving the throughput. One
    amount above the cap goes alone, once nothing sent in the last minute counts.
    """

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.per_minute = float(per_minute) if per_minute else None
        self.level = self.capacity
        self.t = clock()
        # [sent at, amount charged, amount the bucket took, 1.0 while in the log], oldest first
        self.log: deque[list[float]] = deque()
        self.in_log = 0.0  # the log's amounts summed (kept as it changes: thousands of sends a minute at a high cap)

    @property
    def rate(self) -> float | None:
        """Units per second."""
        return self.per_minute / 60 if self.per_minute else None

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate) if self.rate else 0.0

    def refill(self) -> None:
        now = self.clock()
        if self.rate:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` may be sent (0: send it now)."""
        if not self.rate:
            return 0.0
        self.refill()
        # An amount above capacity (a huge prompt under a small TPM) goes once the bucket is full.
        need = min(amount, self.capacity)
        pace = 0.0 if self.level >= need else (need - self.level) / self.rate
        return max(pace, self._window_wait(amount))

    def _window_wait(self, amount: float) -> float:
        now = self.clock()
        while self.log and self.log[0][0] <= now - MINUTE_S:
            gone = self.log.popleft()
            self.in_log -= gone[1]
            gone[3] = 0.0
        if not self.log:
            self.in_log = 0.0  # no float residue from the additions and removals
        assert self.per_minute is not None
        over = self.in_log + min(amount, self.per_minute) - self.per_minute
        if over <= 0:
            return 0.0
        freed = 0.0  # the oldest sends leave the minute first: wait until enough of them have
        for at, a, _, _ in self.log:
            freed += a
            if freed >= over:
                return at + MINUTE_S - now
        return self.log[-1][0] + MINUTE_S - now

    def take(self, amount: float) -> list[float] | None:
        """Charge ``amount`` now; the returned entry is what ``correct`` takes (None: no cap)."""
        if not self.rate:
            return None
        taken = min(amount, self.capacity)
        self.level -= taken
        entry = [self.clock(), float(amount), taken, 1.0]
        self.log.append(entry)
        self.in_log += entry[1]
        return entry

    def correct(self, entry: list[float] | None, actual: float) -> None:
        """Charge a send what it used (``actual``) instead of what it was charged when sent."""
        if entry is not None and self.rate:
            self.level -= actual - entry[2]
            if entry[3]:  # still in the log: its total follows
                self.in_log += actual - entry[1]
            entry[1] = entry[2] = float(actual)


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

    def __init__(self, rpm: int | None = None, tpm: int | None = None, concurrency: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 on_pause: Callable[[float, str], None] | None = None):
        self.clock = clock
        self.on_pause = on_pause  # (seconds, why) of a pause of LONG_PAUSE or more, as it starts
        self.requests = _Bucket(rpm, clock)
        self.tokens = _Bucket(tpm, clock)
        self.concurrency = Concurrency(concurrency)
        self.paused_until = 0.0
        self.pauses = 0
        self.throttled = 0  # 429s seen
        self._recent: deque[bool] = deque(maxlen=WINDOW)  # True: a 429
        self._since_decrease = WINDOW
        self._lock = asyncio.Lock()

    def pause(self, seconds: float, why: str = "") -> None:
        now = self.clock()
        until = now + seconds
        if until > self.paused_until:
            starts = self.paused_until <= now
            self.paused_until = until
            self.pauses += 1
            if starts and seconds >= LONG_PAUSE and self.on_pause is not None:
                self.on_pause(seconds, why)

    def lower(self, bucket: _Bucket, per_minute: float) -> None:
        if bucket.per_minute is None or per_minute < bucket.per_minute:
            bucket.per_minute = float(per_minute)
            bucket.level = min(bucket.level, bucket.capacity)

    def try_acquire(self, tokens: float = 0.0, requests: int = 1) -> tuple[float, list[float] | None]:
        """(0, ticket) with the request's ``tokens`` (its estimate) and ``requests`` charged, or
        (seconds to wait, None) with nothing charged. ``settle`` takes the ticket."""
        wait = max(self.paused_until - self.clock(), self.requests.wait_for(requests), self.tokens.wait_for(tokens))
        if wait > 0:
            return wait, None
        self.requests.take(requests)
        return 0.0, self.tokens.take(tokens)

    async def acquire(self, tokens: float = 0.0, requests: int = 1) -> list[float] | None:
        """Wait until a request of ``tokens`` (estimated) and ``requests`` HTTP requests may go; the
        ticket it returns goes to ``settle`` with the request's real usage."""
        # One waiter at a time keeps the order fair and the arithmetic simple.
        async with self._lock:
            while True:
                wait, ticket = self.try_acquire(tokens, requests)
                if wait <= 0:
                    return ticket
                await asyncio.sleep(wait)

    def settle(self, ticket: list[float] | None, actual: float) -> None:
        """Charge a sent request (``acquire``'s ticket) its real token usage once it is known."""
        self.tokens.correct(ticket, actual)

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
            self.pause(wait if wait is not None else 1.0, f"{share:.0%} of the last {len(self._recent)} answers were 429s")

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
                        self.pause(wait, f"{prefix.format('remaining')} 0, until {prefix.format('reset')}")
