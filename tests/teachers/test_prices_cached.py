"""Cached input tokens are billed at the cached price (OpenAI's prompt cache, Anthropic cache reads)."""

import pytest

from potstill.config import GenerateConfig, PriceConfig
from potstill.teachers.api.prices import price_for, token_cost


def test_cached_input_tokens_cost_the_cached_price():
    table = GenerateConfig().prices
    p = price_for("gpt-4.1-mini-2025-04-14", PriceConfig(), table)
    # 2,000 input tokens of which 1,536 came from the cache, 10 output tokens
    assert token_cost(p, 2000, 10, 1536) == pytest.approx((464 * 0.40 + 1536 * 0.10 + 10 * 1.60) / 1e6)
    assert token_cost(p, 2000, 10) == pytest.approx((2000 * 0.40 + 10 * 1.60) / 1e6)
    assert price_for("claude-haiku-4-5", PriceConfig(), table).cached_input_per_mtok == 0.10
    # a price of one's own without a cached price bills cached tokens as input
    own = PriceConfig(input_per_mtok=2.0, output_per_mtok=4.0)
    assert token_cost(own, 1000, 0, 800) == pytest.approx(1000 * 2.0 / 1e6)
    assert token_cost(PriceConfig(input_per_mtok=2.0, cached_input_per_mtok=0.5), 1000, 0, 800) == \
        pytest.approx((200 * 2.0 + 800 * 0.5) / 1e6)
