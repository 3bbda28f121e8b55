"""Anthropic's prompt cache is billed three ways: a cache write (``cache_creation_input_tokens``) at
1.25x the input price, a cache read (``cache_read_input_tokens``) at 0.1x, the rest at the input
price. A call through the official SDK to a Messages server on 127.0.0.1 is priced so in the ledger."""

import pytest
from fastapi import FastAPI

from potstill.config import GenerateConfig, PriceConfig, load_config
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.teachers.api.prices import price_for, token_cost
from tests.helpers.live_server import LiveServer


def messages_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    def create(body: dict) -> dict:
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "a summary"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 10, "cache_creation_input_tokens": 1000,
                          "cache_read_input_tokens": 2000}}

    return app


def test_cache_writes_cost_more_than_input_and_reads_less(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with LiveServer(messages_app()) as srv:
        cfg = load_config(overrides={
            "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Summarise."},
            "teacher": {"type": "anthropic", "model": "claude-haiku-4-5-20251001", "base_url": srv.url,
                        "api_key_env": "ANTHROPIC_API_KEY", "max_retries": 0}})
        with Ledger(tmp_path / "calls.sqlite") as ledger:
            run_generate(cfg, [Record(messages=[{"role": "user", "content": "a long shared document"}])], ledger)
            (row,) = ledger.rows(role="teacher")
    # claude-haiku-4-5: $1 input, $5 output, $0.10 a cache read, so a cache write is $1.25 per Mtok
    assert (row["input_tokens"], row["cached_input_tokens"]) == (3100, 2000)
    assert row["cost_usd"] == pytest.approx((100 * 1.0 + 1000 * 1.25 + 2000 * 0.10 + 10 * 5.0) / 1e6)


def test_a_cache_write_price_of_ones_own():
    p = price_for("claude-sonnet-4-5", PriceConfig(), GenerateConfig().prices)
    assert token_cost(p, 3100, 10, 2000, 1000) == pytest.approx((100 * 3 + 1000 * 3.75 + 2000 * 0.3 + 10 * 15) / 1e6)
    own = PriceConfig(input_per_mtok=2.0, cache_write_input_per_mtok=4.0)
    assert token_cost(own, 1000, 0, 0, 500) == pytest.approx((500 * 2.0 + 500 * 4.0) / 1e6)
