"""Escalations streamed as the teacher writes them (``serve.stream_teacher``), through the official
openai client against a served free-text run whose teacher is a real OpenAI-compatible server (or
an Anthropic Messages API) on loopback: the first text reaches the client while the teacher is
still writing, a stop string never streams past itself, a teacher failing mid-answer ends the
stream with an error event, a client that leaves still gets its ledger row."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from contextlib import contextmanager

import openai
import pytest
from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

from potstill.serve.routing import Routing
from potstill.serve.streaming import LiveText
from potstill.teachers.base import Delta
from tests.helpers.live_server import LiveServer
from tests.helpers.sse import claude_event, claude_start, openai_chunk
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, claude_behind, client, rows, teacher_behind, write_run

ASK = [{"role": "user", "content": "the minister said the party will vote"}]


@contextmanager
def escalating(tmp_path, tiny_model, teacher_server, monkeypatch, **serve):
    """A free-text run served on loopback whose every request goes to the teacher, asked anew each time
    (unless ``serve`` says ``reuse_escalations``)."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, tiny_model, teacher_server.base_url, **{"reuse_escalations": False, **serve},
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 6})
    service = load_service(run, run_config(run, None), device="cpu")
    service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)
    try:
        with LiveServer(build_app(service, serve_key(run_config(run, None)))) as live:
            yield service, live
    finally:
        service.close()


@contextmanager
def held(teacher_server):
    """The teacher server's streams wait after their first token until the test lets them go on."""
    teacher_server.hold = threading.Event()
    try:
        yield teacher_server.hold
    finally:
        teacher_server.hold.set()
        teacher_server.hold = None


def test_an_escalation_streams_while_the_teacher_is_still_writing(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = client(live).chat.completions.create(model="potstill", messages=ASK)
        assert whole.model_extra["potstill"]["answered_by"] == "teacher" and len(whole.choices[0].message.content) > 1
        with held(teacher_server) as hold:
            with client(live).chat.completions.with_streaming_response.create(
                    model="potstill", messages=ASK, stream=True, stream_options={"include_usage": True}) as r:
                assert (r.headers["x-potstill-answered-by"], r.headers["x-potstill-reason"]) == ("teacher", "low_confidence")
                chunks = r.parse()
                pieces = []
                for ch in chunks:
                    if ch.choices and ch.choices[0].delta.content:
                        pieces.append(ch.choices[0].delta.content)
                        break
                # The teacher server is still waiting after its first token: the text came before the answer was whole.
                assert teacher_server.holding.is_set() and not hold.is_set() and pieces
                hold.set()
                rest = list(chunks)
        text = "".join(pieces + [ch.choices[0].delta.content or "" for ch in rest if ch.choices])
        assert text == whole.choices[0].message.content
        last = [ch for ch in rest if ch.choices and ch.choices[0].finish_reason][-1]
        assert last.choices[0].finish_reason == whole.choices[0].finish_reason
        assert last.model_extra["potstill"]["answered_by"] == "teacher"
        assert rest[-1].usage.total_tokens == whole.usage.total_tokens > 0
        row = rows(service)[-1]
        logged = json.loads(row["response"])
        assert (row["role"], row["status"], logged["content"]) == ("teacher", "ok", text)
        assert row["cost_usd"] > 0 and row["output_tokens"] == whole.usage.completion_tokens
        # The first text came while the teacher server was held: well before the request's end.
        assert 0 < logged["teacher_first_text_s"] < row["latency_s"]


def test_a_stop_string_never_streams_past_itself(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = client(live).chat.completions.create(model="potstill", messages=ASK).choices[0].message.content
        stop = whole[2:4]
        assert len(stop) == 2
        chunks = list(client(live).chat.completions.create(model="potstill", messages=ASK, stream=True, stop=[stop]))
        texts = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
        assert "".join(texts) == whole[:whole.find(stop)] and all(stop not in t for t in texts)
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["stop"]


def _broken_teacher(hold: threading.Event) -> FastAPI:
    """An OpenAI-compatible server whose stream breaks after its first piece of text."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> StreamingResponse:
        def chunks():
            yield openai_chunk(body["model"], {"role": "assistant", "content": "half an"})
            hold.wait(timeout=20)
            raise ConnectionResetError("the teacher's machine went away")

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_a_teacher_failing_mid_stream_ends_it_with_an_error_event(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold = threading.Event()
        with teacher_behind(service, _broken_teacher(hold)):
            stream = client(live).chat.completions.create(model="potstill", messages=ASK, stream=True)
            got = []
            with pytest.raises(openai.APIError) as e:
                for ch in stream:
                    if ch.choices and ch.choices[0].delta.content:
                        got.append(ch.choices[0].delta.content)
                        hold.set()
        assert got == ["half an"]
        assert "the teacher failed to answer" in e.value.message and "went away" not in e.value.message
        row = rows(service)[-1]
        assert (row["role"], row["status"]) == ("teacher", "error") and row["error"].startswith("502")
        assert "Connection error" in row["error"]  # the SDK's words for the broken stream, kept for the operator


def test_a_client_that_leaves_mid_stream_still_gets_its_row(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = client(live).chat.completions.create(model="potstill", messages=ASK).choices[0].message.content
        before = len(rows(service))
        with held(teacher_server) as hold:
            with client(live).chat.completions.with_streaming_response.create(model="potstill", messages=ASK,
                                                                             stream=True) as r:
                for ch in r.parse():
                    if ch.choices and ch.choices[0].delta.content:
                        break  # and leave
            hold.set()
            deadline = time.time() + 15
            while len(rows(service)) == before and time.time() < deadline:
                time.sleep(0.1)
        row = rows(service)[-1]
        assert len(rows(service)) == before + 1 and (row["status"], json.loads(row["response"])["content"]) == ("ok", whole)


def _streaming_claude(hold: threading.Event) -> FastAPI:
    """Anthropic's Messages API streaming 'sports' in two pieces, waiting for ``hold`` between them."""
    app = FastAPI()

    @app.post("/v1/messages")
    def messages(body: dict = Body()) -> StreamingResponse:
        assert body.get("stream") is True

        def events():
            yield claude_start(body["model"])
            yield claude_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "spo"}})
            hold.wait(timeout=20)
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "rts"}})
            yield claude_event("content_block_stop", {"index": 0})
            yield claude_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": {"output_tokens": 12}})
            yield claude_event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def test_an_anthropic_teacher_streams_too(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold = threading.Event()
        with claude_behind(service, _streaming_claude(hold), max_tokens=50):
            stream = client(live).chat.completions.create(model="potstill", messages=ASK, stream=True)
            pieces = []
            for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    pieces.append(ch.choices[0].delta.content)
                    if len(pieces) == 1:
                        assert not hold.is_set()
                        hold.set()
            hold.set()
        assert pieces == ["spo", "rts"]
        row = rows(service)[-1]
        assert (json.loads(row["response"])["content"], row["input_tokens"], row["output_tokens"]) == ("sports", 30, 12)
        assert row["cost_usd"] > 0


def test_off_an_escalation_arrives_whole(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch, stream_teacher=False) as (service, live):
        chunks = list(client(live).chat.completions.create(model="potstill", messages=ASK, stream=True))
        assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) == 1


def test_live_text_holds_back_what_may_start_a_stop_string():
    async def feed(stops, pieces):
        live = LiveText(stops)
        for p in pieces:
            live(Delta(p))
        await asyncio.sleep(0)
        out = []
        while not live.queue.empty():
            out.append(live.queue.get_nowait().text)
        return out

    assert asyncio.run(feed([], ["ab", "c"])) == ["ab", "c"]
    assert asyncio.run(feed(["XY"], ["ab", "cX", "Yd"])) == ["a", "bc"]  # 'c' then the stop: nothing past it
    assert asyncio.run(feed(["XY", "Q"], ["abX", "Z", "Q", "more"])) == ["ab", "X", "Z"]


def test_the_responses_api_streams_an_escalation_too(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = client(live).responses.create(model="potstill", input=ASK[0]["content"]).output_text
        assert len(whole) > 1
        with held(teacher_server) as hold:
            stream = client(live).responses.create(model="potstill", input=ASK[0]["content"], stream=True)
            kinds, deltas = [], []
            for ev in stream:
                kinds.append(ev.type)
                if ev.type == "response.output_text.delta":
                    if not deltas:  # the teacher server still waits after its first token
                        assert teacher_server.holding.is_set() and not hold.is_set()
                        hold.set()
                    deltas.append(ev)
                if ev.type in ("response.completed", "response.incomplete"):  # incomplete: the teacher's budget
                    done = ev.response
        assert len(deltas) > 1 and "".join(d.delta for d in deltas) == whole == done.output_text
        assert {d.item_id for d in deltas} == {done.output[0].id}
        assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"] and kinds[-1] in ("response.completed", "response.incomplete")
        assert done.model_extra["potstill"]["answered_by"] == "teacher" and done.usage.output_tokens > 0
        row = rows(service)[-1]
        assert json.loads(row["response"])["content"] == whole and json.loads(row["request"])["endpoint"] == "/v1/responses"
        hold = threading.Event()
        with teacher_behind(service, _broken_teacher(hold)):
            kinds = []
            for ev in client(live).responses.create(model="potstill", input=ASK[0]["content"], stream=True):
                kinds.append(ev.type)
                if ev.type == "response.output_text.delta":
                    hold.set()
                if ev.type == "response.failed":
                    assert ev.response.error.code == "teacher_failed"
                    failed = ev.response
        assert kinds[-1] == "response.failed" and "response.output_text.delta" in kinds
        assert rows(service)[-1]["status"] == "error"
        # Kept as OpenAI keeps a failed response: retrieve finds it, failed, with its error.
        kept = client(live).responses.retrieve(failed.id)
        assert (kept.status, kept.error.code, kept.store) == ("failed", "teacher_failed", True)
        assert done.store is True and client(live).responses.retrieve(done.id).output_text == whole


def test_a_one_prompt_completion_streams_an_escalation(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        prompt = ASK[0]["content"]
        whole = client(live).completions.create(model="potstill", prompt=prompt).choices[0].text
        with held(teacher_server) as hold:
            got = []
            for ch in client(live).completions.create(model="potstill", prompt=prompt, stream=True):
                if not got:  # the teacher server still waits after its first token
                    assert teacher_server.holding.is_set() and not hold.is_set()
                    hold.set()
                got.append(ch)
        assert len(got) > 2 and "".join(ch.choices[0].text for ch in got) == whole
        assert got[-1].choices[0].finish_reason in ("stop", "length")
        assert got[-1].choices[0].model_extra["potstill"]["answered_by"] == "teacher"
        assert json.loads(rows(service)[-1]["response"])["content"] == whole
        # Two prompts: each choice streams too, under its own index. The teacher server holds each
        # stream after its first token until the client has both first pieces: each choice is live.
        before = len(rows(service))
        two = []
        with held(teacher_server) as hold:
            for ch in client(live).completions.create(model="potstill", prompt=[prompt, prompt + " again"],
                                                      stream=True):
                two.append(ch)
                if {c.choices[0].index for c in two if c.choices[0].text} == {0, 1}:
                    hold.set()
        texts = {i: "".join(ch.choices[0].text for ch in two if ch.choices[0].index == i) for i in (0, 1)}
        alone = client(live).completions.create(model="potstill", prompt=prompt + " again").choices[0].text
        assert texts == {0: whole, 1: alone}
        assert all(sum(ch.choices[0].index == i for ch in two) > 2 for i in (0, 1))  # in pieces, not whole
        assert [ch.choices[0].model_extra["potstill"]["answered_by"] for ch in two if ch.choices[0].finish_reason] \
            == ["teacher", "teacher"]
        assert len(rows(service)) == before + 3


def test_several_streamed_prompts_fail_as_one_request(tmp_path, tiny_model, teacher_server, monkeypatch):
    """A prompt failing before anything went out is the request's error, as unstreamed (a 502); one
    failing after another's text went out ends the stream with an error event."""
    prompts = ["the team won the match", "a new phone was released"]
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        app = FastAPI()

        @app.post("/v1/chat/completions")
        def down(body: dict = Body()):
            from fastapi.responses import JSONResponse

            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503)

        with teacher_behind(service, app):
            with pytest.raises(openai.InternalServerError) as e:
                list(client(live).completions.create(model="potstill", prompt=prompts, stream=True))
        assert e.value.status_code == 502
        hold = threading.Event()
        with teacher_behind(service, _broken_teacher(hold)):
            got = []
            with pytest.raises(openai.APIError) as e:
                for ch in client(live).completions.create(model="potstill", prompt=prompts, stream=True):
                    got.append(ch.choices[0].text)
                    hold.set()
        assert got and got[0] == "half an" and "the teacher failed to answer" in e.value.message


def _no_streams_teacher(seen: list[dict]) -> FastAPI:
    """An OpenAI-compatible server that refuses streamed requests, as a server without
    ``stream_options`` does, and answers others whole."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()):
        from fastapi.responses import JSONResponse

        seen.append(body)
        if body.get("stream"):
            return JSONResponse({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                           "type": "invalid_request_error", "param": None, "code": None}},
                                status_code=400)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a whole answer"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}

    return app


def test_a_server_that_refuses_streams_answers_whole(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        seen: list[dict] = []
        with teacher_behind(service, _no_streams_teacher(seen)):
            for _ in range(2):
                chunks = list(client(live).chat.completions.create(model="potstill", messages=ASK, stream=True))
                assert [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content] \
                    == ["a whole answer"]
                assert rows(service)[-1]["status"] == "ok" and rows(service)[-1]["output_tokens"] == 3
        # Asked streamed once, then whole, and never streamed again.
        assert [bool(b.get("stream")) for b in seen] == [True, False, False]


def test_concurrent_streamed_escalations_each_get_their_own_text(tmp_path, tiny_model, teacher_server, monkeypatch):
    """16 streamed escalations at once (the async openai client): each stream carries exactly its
    own answer, the one the same chat gets unstreamed, and each is one ledger row."""
    asks = [[{"role": "user", "content": f"{t} number {i}"}] for i, t in
            enumerate(["the team won", "a new phone", "the vote", "the film"] * 4)]
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = [client(live).chat.completions.create(model="potstill", messages=m).choices[0].message.content
                 for m in asks]
        before = len(rows(service))

        async def streamed(hold: threading.Event):
            c = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)

            async def one(m):
                texts = []
                async for ch in await c.chat.completions.create(model="potstill", messages=m, stream=True):
                    if ch.choices and ch.choices[0].delta.content:
                        texts.append(ch.choices[0].delta.content)
                        if len(texts) == 1:
                            hold.set()  # a stream got its first piece while the teacher was held: live
                return texts

            try:
                return await asyncio.gather(*(one(m) for m in asks))
            finally:
                await c.close()

        # The teacher server holds the streams after their first token until a client has its first
        # piece, so at least that escalation is relayed live whatever the machine's load (the
        # teacher client's concurrency caps how many are in flight at once: not all 16 can be held).
        with held(teacher_server) as hold:
            got = asyncio.run(streamed(hold))
        assert ["".join(t) for t in got] == whole
        assert sum(len(t) > 1 for t in got) >= 1  # streamed in pieces, not whole
        new = rows(service)[before:]
        assert len(new) == 16 and all(r["status"] == "ok" and r["role"] == "teacher" for r in new)


def test_a_server_that_ignores_stream_is_read_whole_and_paid_once(tmp_path, tiny_model, teacher_server, monkeypatch):
    """A server that answers a streamed request in plain JSON: that answer is read (not asked again)."""
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        seen: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        def chat(body: dict = Body()):
            seen.append(body)
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "json all the same"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}}

        with teacher_behind(service, app):
            chunks = list(client(live).chat.completions.create(model="potstill", messages=ASK, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "json all the same"
        assert len(seen) == 1 and seen[0]["stream"] is True
        row = rows(service)[-1]
        assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", 21, 4) and row["cost_usd"] > 0
