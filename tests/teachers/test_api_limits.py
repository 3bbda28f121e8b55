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
