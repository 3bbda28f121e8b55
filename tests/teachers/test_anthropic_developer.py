"""A developer message is OpenAI's newer name for a system message; the Messages API has no such
role (only user and assistant turns, the instruction in ``system``), so an Anthropic teacher folds
it into ``system`` as it does a system message. Through the official SDK to a server on 127.0.0.1."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from potstill.config import load_config
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import Record
from tests.helpers.live_server import LiveServer


def test_a_developer_message_goes_into_system_not_into_messages(tmp_path, monkeypatch):
    seen: list[dict] = []
    app = FastAPI()

    @app.post("/v1/messages")
    def create(body: dict):
        seen.append(body)
        roles = [m["role"] for m in body["messages"]]
        if set(roles) - {"user", "assistant"}:  # the SDK's MessageParam has these two roles only
            bad = next(r for r in roles if r not in ("user", "assistant"))
            return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message":
                                 f'messages: Unexpected role "{bad}". Allowed roles are "user" or "assistant".'}}, 400)
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "billing"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 20, "output_tokens": 1}}

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with LiveServer(app) as srv:
        cfg = load_config(overrides={
            "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Route the ticket."},
            "teacher": {"type": "anthropic", "model": "claude-haiku-4-5-20251001", "base_url": srv.url,
                        "api_key_env": "ANTHROPIC_API_KEY", "max_retries": 0}})
        rec = Record(messages=[{"role": "developer", "content": "Be terse."},
                               {"role": "user", "content": "My invoice is wrong"}])
        with Ledger(tmp_path / "calls.sqlite") as ledger:
            (out,), _ = run_generate(cfg, [rec], ledger)
    assert out.output == "billing", out.invalid_reason
    (body,) = seen
    assert body["system"] == "Route the ticket.\n\nBe terse."
    assert body["messages"] == [{"role": "user", "content": "My invoice is wrong"}]
