"""Each teacher answer ``generate`` logs keeps the provider's id of the HTTP request that answered it
(OpenAI's ``x-request-id``, Anthropic's ``request-id``), read by the official SDKs from a real
server on 127.0.0.1: what the provider's support asks for about one answer or one charge."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer


def _provider() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> JSONResponse:
        return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}},
                            headers={"x-request-id": "req_openai_42"})

    @app.post("/v1/messages")
    def messages(body: dict) -> JSONResponse:
        return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                             "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
                             "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}},
                            headers={"request-id": "req_anthropic_42"})

    return app


def test_each_logged_teacher_answer_keeps_the_provider_s_request_id(tmp_path, monkeypatch):
    monkeypatch.setenv("IDS_KEY", "sk-ids-0d1e")
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    with LiveServer(_provider()) as srv:
        for kind, base, want in (("openai", srv.url + "/v1", "req_openai_42"),
                                 ("anthropic", srv.url, "req_anthropic_42")):
            with Ledger(tmp_path / f"{kind}.sqlite") as ledger:
                teacher = get_teacher(TeacherConfig(type=kind, model="m", base_url=base, api_key_env="IDS_KEY",
                                                    max_tokens=16, max_retries=0), task)
                try:
                    (rec,), _ = label_records([Record(messages=[{"role": "user", "content": "hi"}])], task, teacher,
                                              ledger, "generate", GenerateConfig())
                finally:
                    teacher.close()
                (row,) = ledger.rows(role="teacher")
            assert rec.output == "hello" and json.loads(row["response"])["provider_request_id"] == want, kind
