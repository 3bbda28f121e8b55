"""Request ids, as OpenAI's API gives them, through the official openai client: every response of
the server carries ``x-request-id`` (the client's own where it sent a usable one, else a new
``req_`` one), the same id is in the request's ledger row, answered or refused, and an escalation's
row keeps the provider's id of the teacher request that answered it (OpenAI's ``x-request-id``,
Anthropic's ``request-id``), streamed or not."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from tests.helpers.sse import claude_event, openai_chunk
from tests.serve.conftest import MSG, SERVE_KEY, claude_behind, client, rows, teacher_behind
from tests.serve.test_live_stream import ASK, escalating


def test_every_response_carries_a_request_id_and_its_row_keeps_it(served, force):
    service, live = served
    force("student")
    r = client(live).chat.completions.with_raw_response.create(model="potstill", messages=MSG)
    rid = r.headers["x-request-id"]
    assert rid.startswith("req_") and r.parse()._request_id == rid  # what the SDK shows as _request_id
    assert json.loads(rows(service)[-1]["request"])["request_id"] == rid
    # The client's own trace id comes back and finds its row.
    mine = client(live).with_options(default_headers={"X-Request-ID": "trace-7f3a.b:1"})
    got = mine.chat.completions.with_raw_response.create(model="potstill", messages=MSG)
    assert got.headers["x-request-id"] == "trace-7f3a.b:1"
    assert json.loads(rows(service)[-1]["request"])["request_id"] == "trace-7f3a.b:1"
    # One that is no token (a space, too long) is replaced, not echoed.
    for bad in ("two words", "x" * 129):
        h = httpx.post(live.url + "/v1/chat/completions", json={"model": "potstill", "messages": MSG},
                       headers={"Authorization": f"Bearer {SERVE_KEY}", "X-Request-ID": bad})
        assert h.status_code == 200 and h.headers["x-request-id"].startswith("req_")
    # Refused requests, streams and the other endpoints carry one too; a refused one's row keeps it.
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": ""}])
    assert e.value.request_id.startswith("req_")
    assert json.loads(rows(service)[-1]["request"])["request_id"] == e.value.request_id
    with pytest.raises(openai.AuthenticationError) as e:
        client(live, key="sk-wrong").models.list()
    assert e.value.request_id.startswith("req_")
    with client(live).chat.completions.with_streaming_response.create(model="potstill", messages=MSG,
                                                                     stream=True) as s:
        assert s.headers["x-request-id"].startswith("req_")
    assert httpx.get(live.url + "/health").headers["x-request-id"].startswith("req_")


def _openai_with_ids(seen: list) -> FastAPI:
    """OpenAI's chat completions on loopback, giving each answer an ``x-request-id``, whole or streamed."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()):
        seen.append(body)
        rid = f"req_teacher{len(seen)}"
        if not body.get("stream"):
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}},
                                headers={"x-request-id": rid})

        def chunks():
            for delta, finish in (({"role": "assistant", "content": "spo"}, None), ({"content": "rts"}, None),
                                  ({}, "stop")):
                yield openai_chunk(body["model"], delta, finish)
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"x-request-id": rid})

    return app


def _claude_with_id() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    def messages(body: dict = Body()):
        msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
               "content": [{"type": "text", "text": "sports"}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 30, "output_tokens": 2}}
        if not body.get("stream"):
            return JSONResponse(msg, headers={"request-id": "req_claude_whole"})

        def events():
            yield claude_event("message_start", {"message": {**msg, "content": [], "stop_reason": None}})
            yield claude_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "sports"}})
            yield claude_event("content_block_stop", {"index": 0})
            yield claude_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": {"output_tokens": 2}})
            yield claude_event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"request-id": "req_claude_live"})

    return app


def test_an_escalation_s_row_keeps_the_provider_s_request_id(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        seen: list = []
        with teacher_behind(service, _openai_with_ids(seen)):
            client(live).chat.completions.create(model="potstill", messages=ASK)
            assert json.loads(rows(service)[-1]["response"])["teacher_request_id"] == "req_teacher1"
            list(client(live).chat.completions.create(model="potstill", messages=ASK, stream=True))
            assert json.loads(rows(service)[-1]["response"])["teacher_request_id"] == "req_teacher2"
        with claude_behind(service, _claude_with_id(), max_tokens=50):
            client(live).chat.completions.create(model="potstill", messages=ASK)
            assert json.loads(rows(service)[-1]["response"])["teacher_request_id"] == "req_claude_whole"
            list(client(live).chat.completions.create(model="potstill", messages=ASK, stream=True))
            assert json.loads(rows(service)[-1]["response"])["teacher_request_id"] == "req_claude_live"
