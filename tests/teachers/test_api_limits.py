"""The API engine's rate limiter reading server headers (``Retry-After``, ``x-ratelimit-*``)."""

from __future__ import annotations

import time

import pytest

from potstill.teachers.api.limits import RateLimiter, parse_reset, retry_after


def test_rate_limiter_follows_retry_after_and_ratelimit_headers():
    """Retry-After pauses every worker only when 429s cluster; rate-limit headers at zero always do."""
    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == pytest.approx(0.02) and parse_reset("1.5") == 1.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25 and retry_after({"retry-after": "3"}) == 3
    lim = RateLimiter()
    for _ in range(39):
        lim.observe(200, {})
    lim.observe(429, {"Retry-After": "2"})
    assert lim.pauses == 0 and lim.throttled == 1  # one 429 in 40: only its own request waits (the SDK's retry)
    for _ in range(19):
        lim.observe(429, {"Retry-After": "2"})  # now half of the last 40: every worker waits
    assert lim.paused_until - time.monotonic() == pytest.approx(2, abs=0.1)
    lim = RateLimiter(rpm=6000)
    lim.observe(200, {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
                      "x-ratelimit-reset-requests": "1.5s", "x-ratelimit-limit-tokens": "60000"})
    assert lim.requests.rate == 10 and lim.tokens.rate == 1000  # a lower server limit wins; per minute -> per second
    assert lim.paused_until - time.monotonic() == pytest.approx(1.5, abs=0.1)
    lim.observe(200, {"x-ratelimit-limit-requests": "100000"})
    assert lim.requests.rate == 10  # the server can tighten the cap, never loosen it


def test_concurrency_limit_is_aimd_on_clustered_429s():
    lim = RateLimiter(concurrency=16)
    for _ in range(30):
        lim.observe(200, {})
    for _ in range(10):
        lim.observe(429, {"retry-after": "1"})  # 10 of the last 40: slow down, once per window
    assert lim.concurrency.limit == pytest.approx(16 * 0.7) and lim.concurrency.decreases == 1 and lim.pauses == 0
    for _ in range(40):
        lim.observe(200, {})  # additive increase: +1/limit per answer, about +1 per round of `limit` answers
    assert 16 * 0.7 + 3 < lim.concurrency.limit < 16 * 0.7 + 4
    for _ in range(200):
        lim.observe(200, {})
    assert lim.concurrency.limit == 16  # never above the configured concurrency


class Clock:
    """A monotonic clock the test moves by hand: the limiter's waits are read, never slept."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _send_all(lim: RateLimiter, clock: Clock, n: int, est: int, actual: int, latency: float) -> list[tuple[float, int]]:
    """n requests through ``lim`` (each charged ``est`` when sent, settled at ``actual`` ``latency``
    seconds later, as the engine's ``send`` does), the clock moved by each wait the limiter names;
    returns (sent at, tokens) for each."""
    sent, in_flight = [], []
    for _ in range(n):
        while True:
            for due in [f for f in in_flight if f[0] <= clock.t]:
                lim.settle(due[1], actual)
                in_flight.remove(due)
            wait, ticket = lim.try_acquire(est)
            if wait <= 0:
                break
            # Sleep as asyncio would (at least a millisecond), waking early for an answer that comes in.
            clock.t = max(min([f[0] for f in in_flight] + [clock.t + wait]), clock.t + 0.001)
        sent.append((clock.t, actual))
        in_flight.append((clock.t + latency, ticket))
    return sent


def _most_in_a_minute(sent: list[tuple[float, int]]) -> int:
    return max(sum(k for t2, k in sent if t <= t2 < t + 60) for t, _ in sent)


@pytest.mark.parametrize("est, actual, latency, n", [
    (10, 10, 0.5, 1500),  # small requests: the bucket's first second's worth came on top of the minute's
    (150, 150, 5.0, 150),  # each over the 1 s capacity (100): charged only 100 until its answer came back
    (1000, 500, 10.0, 60),  # 10 s answers, half the estimate used: 10,000 tokens in the first minute
])
def test_tokens_sent_in_any_minute_never_exceed_tpm(est, actual, latency, n):
    """generate.tpm 6,000: the bucket let its first second's worth (100) through on top of a minute's
    refill (6,090 in the worst minute of small requests), and took a request over its capacity at that
    capacity until the answer's usage came back (6,150; 10,000 with 10 s answers). The limiter charges
    each request's estimate when it is sent, corrects it to the answer's usage, and never lets what
    was sent in the last 60 s pass the cap."""
    clock = Clock()
    lim = RateLimiter(tpm=6000, clock=clock)
    sent = _send_all(lim, clock, n, est, actual, latency)
    assert _most_in_a_minute(sent) <= 6000
    if est <= 100:  # still paced, not a minute's worth at once: the first 10 s send 10 s of tokens (+ 1 s burst)
        assert sum(k for t, k in sent if t < sent[0][0] + 10) <= 11 * 100 + est
    # And not starved. A send holds its estimate in the minute's log until its answer comes, so over
    # a minute each costs actual + (est - actual) x latency / 60: 500 + 500 x 10 / 60 = 583 in the
    # third case, 6,000 x 500 / 583 = 5,143 tokens used a minute; the cap itself where est = actual.
    # (Refunding the bucket's share late instead lost it, and halved the throughput.)
    span = sent[-1][0] - sent[0][0]
    per_minute = 6000 * actual / (actual + (est - actual) * latency / 60)
    assert span > 120 and sum(k for _, k in sent) >= 0.95 * per_minute * span / 60


def test_a_request_above_tpm_goes_alone_and_requests_per_minute_hold_too():
    clock = Clock()
    lim = RateLimiter(rpm=60, tpm=1000, clock=clock)
    wait, ticket = lim.try_acquire(600)
    assert wait == 0
    lim.settle(ticket, 600)
    wait, _ = lim.try_acquire(1500)  # more than a minute's tokens: only once nothing sent in the last 60 s counts
    assert wait == pytest.approx(60.0)
    clock.t += 60.0
    assert lim.try_acquire(1500)[0] == 0
    lim = RateLimiter(rpm=60, clock=clock)  # one request a second, 60 in any minute
    sent = _send_all(lim, clock, 200, 0, 0, 1.0)
    assert max(sum(1 for t2, _ in sent if t <= t2 < t + 60) for t, _ in sent) <= 60


def test_a_long_pause_the_server_asks_for_is_said_once_as_it_starts():
    """A remaining-0 header with a minute-long reset paused every worker in silence: the progress bar
    stood still and the run read as hung. A pause of LONG_PAUSE or more is said as it starts (what the
    server sent), once; a short one, or one that only extends a pause under way, is not."""
    clock = Clock()
    said: list[tuple[float, str]] = []
    lim = RateLimiter(clock=clock, on_pause=lambda s, why: said.append((s, why)))
    lim.observe(200, {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "40s"})
    lim.observe(200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"})
    assert said == [] and lim.pauses == 1
    clock.t += 3
    lim.observe(200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"})
    lim.observe(200, {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": "95"})
    assert said == [(90.0, "x-ratelimit-remaining-tokens 0, until x-ratelimit-reset-tokens")]
    assert lim.try_acquire()[0] == pytest.approx(95.0)
