"""A streamed Messages answer's input tokens, whichever event carries them: Anthropic sends them in
``message_start`` and repeats them in ``message_delta`` (whose counts are cumulative); endpoints that
total usage at the end of the stream (gateways, some Anthropic-compatible servers) send 0 or an
estimate in ``message_start`` and the real count only in ``message_delta``. The Anthropic teacher
streams (serve's escalations, ``serve.stream_teacher``) through the official SDK against a Messages
server on 127.0.0.1. The SDK releases that read only ``output_tokens`` from ``message_delta`` (0.40,
the oldest potstill accepts) kept message_start's: the ledger recorded those calls with 0 input tokens,
priced as free input. Under such a release (``pip install --target DIR anthropic==0.40.0``, DIR first
on PYTHONPATH) these tests fail without the teacher's own reading of the events."""

from __future__ import annotations

import pytest
from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

from potstill.config import TaskConfig, TeacherConfig
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer
from tests.helpers.sse import claude_event, claude_start


def _streaming(start: int, delta: dict[str, int]) -> FastAPI:
    """'sports' streamed, ``start`` input tokens in message_start and ``delta`` as message_delta's usage."""
    app = FastAPI()

    @app.post("/v1/messages")
    def messages(body: dict = Body()) -> StreamingResponse:
        assert body.get("stream") is True

        def events():
            yield claude_start(body["model"], input_tokens=start)
            yield claude_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "sports"}})
            yield claude_event("content_block_stop", {"index": 0})
            yield claude_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": delta})
            yield claude_event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.mark.parametrize("start, delta", [
    (120, {"output_tokens": 12}),  # in message_start only
    (120, {"input_tokens": 120, "output_tokens": 12}),  # in both, as Anthropic sends them
    (0, {"input_tokens": 120, "output_tokens": 12}),  # in message_delta only
    (40, {"input_tokens": 120, "output_tokens": 12}),  # an estimate first, the count at the end
], ids=["start", "both", "delta", "estimate-then-count"])
def test_a_streamed_answer_records_its_input_tokens_from_whichever_event_has_them(monkeypatch, start, delta):
    monkeypatch.setenv("TEACHER_KEY", "sk-ant-stream-5c7e")
    task = get_task(TaskConfig(type="freetext", instruction="Name the topic."))
    pieces: list[str] = []
    with LiveServer(_streaming(start, delta)) as srv:
        # claude-haiku-4-5: $1 input and $5 output per Mtok
        teacher = get_teacher(TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=srv.url,
                                            api_key_env="TEACHER_KEY", max_retries=0, timeout_s=10), task)
        try:
            req = teacher.request(Record(messages=[{"role": "user", "content": "the match went to extra time"}]))
            resp = teacher.submit(req, on_delta=lambda d: pieces.append(d.text)).result(timeout=20)
        finally:
            teacher.close()
    assert pieces == ["sports"] and resp.output == "sports"
    assert (resp.input_tokens, resp.output_tokens) == (120, 12)
    assert resp.cost_usd == pytest.approx((120 * 1.0 + 12 * 5.0) / 1e6)


def test_cache_reads_counted_only_at_the_end_are_priced_as_cache_reads(monkeypatch):
    """An endpoint that totals usage at the end sends the cache split in message_delta alone."""
    monkeypatch.setenv("TEACHER_KEY", "sk-ant-stream-5c7e")
    task = get_task(TaskConfig(type="freetext", instruction="Name the topic."))
    delta = {"input_tokens": 100, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 1000,
             "output_tokens": 10}
    with LiveServer(_streaming(0, delta)) as srv:
        teacher = get_teacher(TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=srv.url,
                                            api_key_env="TEACHER_KEY", max_retries=0, timeout_s=10), task)
        try:
            req = teacher.request(Record(messages=[{"role": "user", "content": "a long shared document"}]))
            resp = teacher.submit(req, on_delta=lambda d: None).result(timeout=20)
        finally:
            teacher.close()
    assert (resp.input_tokens, resp.cached_input_tokens, resp.cache_write_input_tokens) == (3100, 2000, 1000)
    # $1 input, $1.25 a cache write, $0.10 a cache read, $5 output per Mtok
    assert resp.cost_usd == pytest.approx((100 * 1.0 + 1000 * 1.25 + 2000 * 0.10 + 10 * 5.0) / 1e6)
