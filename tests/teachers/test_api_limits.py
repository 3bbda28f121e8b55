"""The API engine's rate limiter reading server headers (``Retry-After``, ``x-ratelimit-*``)."""

from __future__ import annotations

import time

import pytest

from potstill.teachers.api.limits import RateLimiter, parse_reset, retry_after


def test_rate_limiter_follows_retry_after_and_ratelimit_headers():
    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == pytest.approx(0.02) and parse_reset("1.5") == 1.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25 and retry_after({"retry-after": "3"}) == 3
    lim = RateLimiter()
    lim.observe(429, {"Retry-After": "2"})
    assert lim.paused_until - time.monotonic() == pytest.approx(2, abs=0.1)
    lim = RateLimiter(rpm=6000)
    lim.observe(200, {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
                      "x-ratelimit-reset-requests": "1.5s", "x-ratelimit-limit-tokens": "60000"})
    assert lim.requests.rate == 10 and lim.tokens.rate == 1000  # a lower server limit wins; per minute -> per second
    assert lim.paused_until - time.monotonic() == pytest.approx(1.5, abs=0.1)
    lim.observe(200, {"x-ratelimit-limit-requests": "100000"})
    assert lim.requests.rate == 10  # the server can tighten the cap, never loosen it
