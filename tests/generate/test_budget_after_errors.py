"""generate.budget_usd when the first answers are free errors (a 400 the provider does not bill):
the requests in flight are priced by what a paid answer costs, not by a mean that counts the free
errors. A real chat-completions server on 127.0.0.1, the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import threading

import yaml
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from potstill.config import load_config
from potstill.generate.stage import generate_stage
from potstill.ledger import Ledger
from tests.helpers.live_server import LiveServer

KEY = "sk-budget-errors-3f9a"
FREE_ERRORS = 12


def provider(seen: list[int]) -> FastAPI:
    """The first FREE_ERRORS requests get a 400 (nothing billed); later ones an answer of 1,000 tokens
    (its whole max_tokens, as a worst-case estimate prices it), after 0.1 s, so several are in flight together."""
    app, lock = FastAPI(), threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> object:
        with lock:
            seen.append(1)
            n = len(seen)
        if n <= FREE_ERRORS:
            return JSONResponse({"error": {"message": "bad request", "type": "invalid_request_error",
                                           "code": "invalid_value"}}, status_code=400)
        await asyncio.sleep(0.1)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1000, "total_tokens": 1010}}

    return app


def test_free_errors_do_not_lower_the_price_of_the_requests_in_flight(tmp_path, monkeypatch):
    """The mean cost per call counted the free errors: after twelve of them it was $0, so the requests
    in flight were priced at nothing and $5 went out on a $2.5 cap (answers of $1 each)."""
    monkeypatch.setenv("TEACHER_KEY", KEY)
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": f"item {i} text"}) + "\n" for i in range(40)))
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "run", "task": {"type": "classification", "labels": ["sports", "tech"], "instruction": "Topic?"},
        "data": {"inputs": "inputs.jsonl"}, "generate": {"budget_usd": 2.5},
        "teacher": {"type": "openai", "model": "m", "api_key_env": "TEACHER_KEY", "concurrency": 4, "max_tokens": 1000,
                    "max_retries": 0, "price": {"input_per_mtok": 0, "output_per_mtok": 1000}}}))
    seen: list[int] = []
    with LiveServer(provider(seen)) as srv:
        cfg = load_config(tmp_path / "potstill.yaml", {"teacher.base_url": srv.url + "/v1"})
        try:
            generate_stage(cfg)
        except Exception:  # noqa: BLE001 - the errors make generate exit non-zero; the spend is what is checked
            pass
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        spent = ledger.summary()["cost_usd"]
    assert len(seen) > FREE_ERRORS and spent <= 2.5, (len(seen), spent)
