"""A compatible server that answers 200 with ``choices: []`` (some proxies do for a filtered or
cancelled generation), through the official SDK from a real server on 127.0.0.1."""

from __future__ import annotations

import json

from fastapi import FastAPI

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer

KEY = "sk-nochoices-51d0e7"


def test_a_completion_with_no_choices_is_an_error_row_that_says_so(tmp_path, monkeypatch):
    """It became the error 'IndexError: list index out of range', which names no cause; it says the
    server sent no choice, and keeps the tokens the server billed."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}}

    monkeypatch.setenv("NOCHOICE_KEY", KEY)
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    with LiveServer(app) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                            api_key_env="NOCHOICE_KEY", max_tokens=16, max_retries=0), task)
        try:
            (rec,), stats = label_records([Record(messages=[{"role": "user", "content": "hi"}])], task, teacher, ledger,
                                          "generate", GenerateConfig())
        finally:
            teacher.close()
        (row,) = ledger.rows(role="teacher")
    assert rec.output is None and "no choices" in rec.invalid_reason and "IndexError" not in rec.invalid_reason
    assert row["status"] == "error" and row["input_tokens"] == 12 and json.loads(row["request"])["model"] == "gpt-4o-mini"
