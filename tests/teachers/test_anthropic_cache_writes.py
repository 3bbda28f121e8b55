"""Anthropic's prompt cache is billed three ways: a cache write (``cache_creation_input_tokens``) at
1.25x the input price (2x for a 1-hour write), a cache read (``cache_read_input_tokens``) at 0.1x, the rest at the input
price. A call through the official SDK to a Messages server on 127.0.0.1 is priced so in the ledger."""

import pytest
from fastapi import FastAPI

from potstill.config import GenerateConfig, PriceConfig, TaskConfig, load_config
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.report import measure_teacher
from potstill.tasks import get_task
from potstill.teachers.api.prices import price_for, token_cost
from tests.helpers.live_server import LiveServer


def messages_app(cache_creation: dict | None = None) -> FastAPI:
    """A Messages API whose every answer wrote 1,000 tokens to the prompt cache and read 2,000;
    ``cache_creation``: the usage's split of those writes by cache lifetime (5 minutes, 1 hour)."""
    app = FastAPI()

    @app.post("/v1/messages")
    def create(body: dict) -> dict:
        usage = {"input_tokens": 100, "output_tokens": 10, "cache_creation_input_tokens": 1000,
                 "cache_read_input_tokens": 2000}
        if cache_creation is not None:
            usage["cache_creation"] = cache_creation
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "a summary"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": usage}

    return app


def _one_call(tmp_path, monkeypatch, app: FastAPI, price: dict | None = None) -> tuple[dict, Ledger, list]:
    """One generate call to ``app`` through the official SDK: its ledger row, the ledger, the records."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with LiveServer(app) as srv:
        cfg = load_config(overrides={
            "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Summarise."},
            "teacher": {"type": "anthropic", "model": "claude-haiku-4-5-20251001", "base_url": srv.url,
                        "api_key_env": "ANTHROPIC_API_KEY", "max_retries": 0, **({"price": price} if price else {})}})
        ledger = Ledger(tmp_path / "calls.sqlite")
        records, _ = run_generate(cfg, [Record(messages=[{"role": "user", "content": "a long shared document"}])],
                                  ledger)
        (row,) = ledger.rows(role="teacher")
    return row, ledger, records


def test_cache_writes_cost_more_than_input_and_reads_less(tmp_path, monkeypatch):
    row, ledger, _ = _one_call(tmp_path, monkeypatch, messages_app())
    ledger.close()
    # claude-haiku-4-5: $1 input, $5 output, $0.10 a cache read, so a cache write is $1.25 per Mtok
    assert (row["input_tokens"], row["cached_input_tokens"]) == (3100, 2000)
    assert row["cost_usd"] == pytest.approx((100 * 1.0 + 1000 * 1.25 + 2000 * 0.10 + 10 * 5.0) / 1e6)


def test_a_cache_write_price_of_ones_own():
    p = price_for("claude-sonnet-4-5", PriceConfig(), GenerateConfig().prices)
    assert token_cost(p, 3100, 10, 2000, 1000) == pytest.approx((100 * 3 + 1000 * 3.75 + 2000 * 0.3 + 10 * 15) / 1e6)
    own = PriceConfig(input_per_mtok=2.0, cache_write_input_per_mtok=4.0)
    assert token_cost(own, 1000, 0, 0, 500) == pytest.approx((500 * 2.0 + 500 * 4.0) / 1e6)


def test_one_hour_cache_writes_are_billed_at_twice_the_input_price(tmp_path, monkeypatch):
    """Anthropic bills a 1-hour cache write at 2x input, a 5-minute one at 1.25x; its usage splits
    ``cache_creation_input_tokens`` in ``cache_creation``. Here 400 + 600 of the 1,000 written tokens:
    the ledger's cost, and evaluate's repricing of the recorded tokens, bill each at its own rate."""
    app = messages_app({"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600})
    row, ledger, records = _one_call(tmp_path, monkeypatch, app)
    # claude-haiku-4-5: $1 input, $5 output, $0.10 a cache read, $1.25 a 5-minute write, $2 a 1-hour write
    assert row["cost_usd"] == pytest.approx((100 * 1.0 + 400 * 1.25 + 600 * 2.0 + 2000 * 0.10 + 10 * 5.0) / 1e6)
    with ledger:
        price = PriceConfig(input_per_mtok=3, output_per_mtok=15, cached_input_per_mtok=0.3)
        task = get_task(TaskConfig(type="freetext", instruction="Summarise."))
        t = measure_teacher(task, records, ledger, price=price)
    assert t["cost_per_1k_calls_usd"] == pytest.approx(
        1000 * (100 * 3 + 400 * 3.75 + 600 * 6 + 2000 * 0.3 + 10 * 15) / 1e6)
    own = PriceConfig(input_per_mtok=2.0, cache_write_input_per_mtok=3.0, cache_write_1h_input_per_mtok=5.0)
    assert token_cost(own, 1000, 0, 0, 500, 200) == pytest.approx((500 * 2.0 + 300 * 3.0 + 200 * 5.0) / 1e6)


def test_cost_shows_the_cache_writes_beside_the_reads(tmp_path, monkeypatch, capsys):
    """`potstill cost` said '3100 input (2000 cached)': the 1,000 tokens billed at 1.25x and 2x read as full-price ones."""
    import sys

    from potstill.cli import main

    app = messages_app({"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600})
    _, ledger, _ = _one_call(tmp_path, monkeypatch, app)
    ledger.close()
    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert "1 calls (0 errors), 3100 input (2000 cached, 1000 cache writes, 600 of them for 1h) + 10 output tokens" in out
