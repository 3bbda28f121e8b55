"""Dollars from tokens: the teacher's own price if set, else the config's table by model prefix."""

from __future__ import annotations

import re

from potstill.config import PriceConfig, TeacherConfig


def price_for(model: str, own: PriceConfig, table: dict[str, dict[str, float]]) -> PriceConfig | None:
    """``own`` when it names a token price; else the longest table key that prefixes ``model``."""
    if own.input_per_mtok or own.output_per_mtok:
        return own
    hits = [k for k in table if model == k or model.startswith(k + "-") or model.startswith(k + ":")]
    return PriceConfig.model_validate(table[max(hits, key=len)]) if hits else None


# What may follow a table entry's name in a model id of the same model: a snapshot's date
# (gpt-4o-mini-2024-07-18, claude-haiku-4-5-20251001) or an alias of the newest (-latest).
SNAPSHOT = re.compile(r"[-:](\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def sibling_priced(model: str, own: PriceConfig, table: dict[str, dict[str, float]]) -> str | None:
    """The table entry that prices ``model`` by the prefix rule where the rest of the id is no snapshot
    date (``claude-opus-4-6`` by ``claude-opus-4``, ``o3-deep-research`` by ``o3``): another model of the
    family, whose list price may well differ. None where ``teacher.price`` prices it, the entry is its
    own name, or it is no priced model at all."""
    if own.input_per_mtok or own.output_per_mtok or model in table:
        return None
    hits = [k for k in table if model.startswith(k + "-") or model.startswith(k + ":")]
    key = max(hits, key=len) if hits else None
    return key if key is not None and not SNAPSHOT.fullmatch(model[len(key):]) else None


def busy_seconds(rows: list[dict]) -> float:
    """Seconds in which at least one of ``rows``' calls (ledger rows) was in flight: the union of their
    spans [created_at - latency_s, created_at] (a row is written as its answer arrives).

    A self-hosted server (vLLM, TGI) answers concurrent requests in one batch, so summing latencies
    would bill 8 calls in flight together for 8 x 2 s when the GPU was busy 2 s; a gap between two
    generate runs is no call's either. A provider batch's answers (latency 0) take no span."""
    spans = sorted((r["created_at"] - r["latency_s"], r["created_at"]) for r in rows if r["latency_s"] > 0)
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def hourly_cost(rows: list[dict], usd_per_hour: float) -> dict[str, float]:
    """A self-hosted teacher's calls priced by the hour (``teacher.price.usd_per_hour``): the seconds its
    server was busy with ``rows`` (``busy_seconds``) x the rate, and that shared over the calls: 100 calls
    answered in 40 busy seconds at $2.50/h are $0.0278, $0.000278 a call."""
    busy = busy_seconds(rows)
    usd = busy * usd_per_hour / 3600
    return {"calls": len(rows), "busy_s": busy, "usd": usd, "usd_per_call": usd / len(rows) if rows else 0.0}


def hourly_rate(teacher: TeacherConfig) -> float | None:
    """``teacher.price.usd_per_hour`` of a teacher served from hardware of the user's own behind an API
    (vLLM, TGI) and priced by the hour alone: the ledger bills its calls no token price, so `potstill
    cost` and evaluate price them by ``hourly_cost``. None for any other: a local teacher bills its
    own seconds in the ledger, and a per-call or token price prices each call."""
    p = teacher.price
    if teacher.type == "local" or not p.usd_per_hour or p.usd_per_call is not None or p.input_per_mtok \
            or p.output_per_mtok:
        return None
    return p.usd_per_hour


# Anthropic bills a 5-minute prompt-cache write at 1.25x the input price, a 1-hour write at 2x.
CACHE_WRITE_SHARE = 1.25
CACHE_WRITE_1H_SHARE = 2.0


def token_cost(price: PriceConfig | None, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
               cache_write_input_tokens: int = 0, cache_write_1h_input_tokens: int = 0) -> float:
    """Dollars of one call. ``cached_input_tokens`` (read from the prompt cache) and
    ``cache_write_input_tokens`` (written to it) are parts of ``input_tokens``, at the cached price and
    the cache-write price; the rest at the input price. ``cache_write_1h_input_tokens`` is the part of
    the writes kept for an hour (Anthropic's ``ephemeral_1h_input_tokens``), at the 1-hour write price."""
    if price is None:
        return 0.0
    cached = min(cached_input_tokens, input_tokens)
    written = min(cache_write_input_tokens, input_tokens - cached)
    hour = min(cache_write_1h_input_tokens, written)
    cached_price = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    write_price = (price.input_per_mtok * CACHE_WRITE_SHARE if price.cache_write_input_per_mtok is None
                   else price.cache_write_input_per_mtok)
    hour_price = (price.input_per_mtok * CACHE_WRITE_1H_SHARE if price.cache_write_1h_input_per_mtok is None
                  else price.cache_write_1h_input_per_mtok)
    return ((input_tokens - cached - written) * price.input_per_mtok + cached * cached_price
            + (written - hour) * write_price + hour * hour_price + output_tokens * price.output_per_mtok) / 1e6
