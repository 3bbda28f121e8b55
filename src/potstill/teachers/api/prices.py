"""Dollars from tokens: the teacher's own price if set, else the config's table by model prefix."""

from __future__ import annotations

from potstill.config import PriceConfig


def price_for(model: str, own: PriceConfig, table: dict[str, dict[str, float]]) -> PriceConfig | None:
    """``own`` when it names a token price; else the longest table key that prefixes ``model``."""
    if own.input_per_mtok or own.output_per_mtok:
        return own
    hits = [k for k in table if model == k or model.startswith(k + "-") or model.startswith(k + ":")]
    return PriceConfig.model_validate(table[max(hits, key=len)]) if hits else None


def token_cost(price: PriceConfig | None, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
    """Dollars of one call; ``cached_input_tokens`` (a part of ``input_tokens``) at the cached price."""
    if price is None:
        return 0.0
    cached = min(cached_input_tokens, input_tokens)
    cached_price = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    return ((input_tokens - cached) * price.input_per_mtok + cached * cached_price
            + output_tokens * price.output_per_mtok) / 1e6
