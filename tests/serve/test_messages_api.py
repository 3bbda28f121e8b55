"""Anthropic's Messages API on the served run through the official anthropic client: the same
router and ledger as chat completions, streaming, client tools (tool_use out, tool_result back to
the teacher as tool turns), stop sequences, count_tokens, and Anthropic-shaped errors."""

from __future__ import annotations

import json
import math

import anthropic
import httpx
import pytest

from potstill.ledger import ServedCall
from tests.serve.conftest import MSG, SERVE_KEY, client, rows, teacher_behind
from tests.serve.test_responses_tools import ASK
from tests.serve.test_tool_calls import openai_provider

TOOLS = [{"name": "lookup", "description": "Look a topic up.",
          "input_schema": {"type": "object", "properties": {"about": {"type": "string"}}, "required": ["about"]}}]


def claude(live, key: str = SERVE_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key=key, max_retries=0)


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_a_message_is_the_chat_completion_s_answer_and_is_logged(served, force, who):
    service, live = served
    force(who)
    want = client(live).chat.completions.create(model="potstill", messages=MSG)
    before = len(rows(service))
    raw = claude(live).messages.with_raw_response.create(model="potstill", max_tokens=64, messages=MSG,
                                                         system="ignored: the run's instruction stands")
    m = raw.parse()
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == want.choices[0].message.content
    cut = want.choices[0].finish_reason == "length"  # the loopback teacher's own budget is 4 tokens
    assert (m.role, m.stop_reason, m.stop_sequence) == ("assistant", "max_tokens" if cut else "end_turn", None)
    assert m.usage.input_tokens == want.usage.prompt_tokens and m.usage.output_tokens == want.usage.completion_tokens
    assert raw.headers["x-potstill-answered-by"] == who == m.model_extra["potstill"]["answered_by"]
    [row] = rows(service)[before:]
    assert row["status"] == "ok" and row["role"] == who
    assert ServedCall.from_row(row).messages == MSG and json.loads(row["request"])["endpoint"] == "/v1/messages"
    assert json.loads(row["request"])["response_id"] == m.id  # what potstill requests --id finds it by


def test_a_streamed_message_carries_the_same_answer(served, force):
    _, live = served
    force("teacher")
    want = claude(live).messages.create(model="potstill", max_tokens=64, messages=MSG)
    with claude(live).messages.stream(model="potstill", max_tokens=64, messages=MSG) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == want.content[0].text == final.content[0].text
    assert (final.stop_reason, final.usage.output_tokens) == (want.stop_reason, want.usage.output_tokens)


def test_a_tool_request_is_answered_with_tool_use_and_its_result_reaches_the_teacher(served):
    service, live = served
    seen: list = []
    cl = claude(live)
    with teacher_behind(service, openai_provider(seen)):
        m = cl.messages.create(model="potstill", max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": ASK}])
        [use] = [b for b in m.content if b.type == "tool_use"]
        assert (use.name, use.input, m.stop_reason) == ("lookup", {"about": "match"}, "tool_use")
        assert seen[0]["tools"] == [{"type": "function", "function": {
            "name": "lookup", "parameters": TOOLS[0]["input_schema"], "description": "Look a topic up."}}]
        with cl.messages.stream(model="potstill", max_tokens=64, tools=TOOLS,
                                messages=[{"role": "user", "content": ASK}]) as stream:
            streamed = stream.get_final_message()
        assert [(b.type, getattr(b, "input", None)) for b in streamed.content] == [("tool_use", {"about": "match"})]
        done = cl.messages.create(model="potstill", max_tokens=64, tools=TOOLS, tool_choice={"type": "none"}, messages=[
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "a football match"}]}])
    assert done.content[0].text == "sports" and done.model_extra["potstill"]["answered_by"] == "teacher"
    msgs = [x for x in seen[-1]["messages"] if x["role"] != "system"]
    assert msgs[1]["role"] == "assistant" and msgs[1]["tool_calls"][0]["id"] == use.id
    assert json.loads(msgs[1]["tool_calls"][0]["function"]["arguments"]) == {"about": "match"}
    assert msgs[2] == {"role": "tool", "tool_call_id": use.id, "content": "a football match"}
    assert "tools" not in seen[-1]  # tool_choice none: routed as a chat without tools


def test_stop_sequences_end_the_answer_where_claude_would(tmp_path, tiny_model, teacher_server, monkeypatch):
    from potstill.serve.routing import Routing
    from tests.serve.conftest import served_free_text

    msgs = [{"role": "user", "content": "the team won the match in the last minute"}]
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student
        whole = claude(live).messages.create(model="potstill", max_tokens=64, messages=msgs)
        text = whole.content[0].text
        assert len(text) > 4
        stop = text[2:4]
        cut = claude(live).messages.create(model="potstill", max_tokens=64, messages=msgs,
                                           stop_sequences=["never there", stop])
        at = text.index(stop)
        assert (cut.content[0].text, cut.stop_reason, cut.stop_sequence) == (text[:at], "stop_sequence", stop)
        short = claude(live).messages.create(model="potstill", max_tokens=2, messages=msgs)
        assert (short.stop_reason, short.usage.output_tokens) == ("max_tokens", 2)


def test_count_tokens_is_the_student_s_prompt(served, force):
    _, live = served
    force("student")
    n = claude(live).messages.count_tokens(model="potstill", messages=MSG).input_tokens
    assert n == client(live).chat.completions.create(model="potstill", messages=MSG).usage.prompt_tokens


def test_count_tokens_of_a_chat_with_tool_turns_is_the_student_s_prompt(served, force):
    """Found by a review: count_tokens kept each message's role and text, so a tool_use block was
    left out and a tool_result read 'Result of tool', fewer tokens than the student answering the
    chat reads (its tool turns as the text it was trained on) and messages.create reports."""
    _, live = served
    force("student")
    chat = [{"role": "user", "content": "the team won the match"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                               "input": {"about": "match"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sports"}]},
            {"role": "user", "content": "so the topic is"}]
    n = claude(live).messages.count_tokens(model="potstill", messages=chat).input_tokens
    m = claude(live).messages.create(model="potstill", max_tokens=16, messages=chat)
    assert m.model_extra["potstill"]["answered_by"] == "student"
    assert n == m.usage.input_tokens


@pytest.mark.parametrize("kwargs, error, says", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}]},
     anthropic.BadRequestError, "messages.0.content.0: a 'image' block"),
    ({"messages": MSG, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, anthropic.BadRequestError,
     "only client tools"),
    ({"messages": MSG, "thinking": {"type": "enabled", "budget_tokens": 1024}}, anthropic.BadRequestError,
     "the student does not think"),
    ({"messages": [{"role": "system", "content": "hi"}]}, anthropic.BadRequestError, "messages.0.role"),
    ({"messages": MSG, "model": "claude-9"}, anthropic.NotFoundError, "does not exist here"),
])
def test_what_it_cannot_answer_is_an_anthropic_error_and_logged(served, kwargs, error, says):
    service, live = served
    before = len(rows(service))
    with pytest.raises(error) as e:
        claude(live).messages.create(**{"model": "potstill", "max_tokens": 16, **kwargs})
    assert e.value.body["type"] == "error" and says in e.value.body["error"]["message"]
    assert e.value.body["error"]["type"] == ("not_found_error" if error is anthropic.NotFoundError
                                             else "invalid_request_error")
    [row] = rows(service)[before:]
    assert row["status"] == "error" and json.loads(row["request"])["endpoint"] == "/v1/messages"


def test_the_key_and_the_body_are_checked_as_anthropic_does(served):
    _, live = served
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(live, key="sk-wrong").messages.create(model="potstill", max_tokens=16, messages=MSG)
    assert e.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(live.url + "/v1/messages", json={"model": "potstill", "messages": MSG},
                   headers={"x-api-key": SERVE_KEY}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == {"type": "invalid_request_error",
                                                          "message": "max_tokens: Field required"}
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(live).messages.create(model="potstill", max_tokens=16, messages=MSG, stop_sequences=[""])
    assert e.value.body["error"]["message"] == "stop_sequences: a stop sequence must not be empty"


def test_an_escalation_streams_as_the_teacher_writes_it(tmp_path, tiny_model, teacher_server, monkeypatch):
    from tests.serve.test_live_stream import ASK as TICKET
    from tests.serve.test_live_stream import escalating, held

    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = claude(live).messages.create(model="potstill", max_tokens=64, messages=TICKET)
        assert whole.model_extra["potstill"]["answered_by"] == "teacher" and len(whole.content[0].text) > 1
        texts = []
        with held(teacher_server) as hold:
            for ev in claude(live).messages.create(model="potstill", max_tokens=64, messages=TICKET, stream=True):
                if ev.type == "content_block_delta":
                    if not texts:  # the teacher server still waits after its first token
                        assert teacher_server.holding.is_set() and not hold.is_set()
                        hold.set()
                    texts.append(ev.delta.text)
                if ev.type == "message_delta":
                    done = ev
        assert len(texts) > 1 and "".join(texts) == whole.content[0].text
        assert done.delta.stop_reason == whole.stop_reason and done.usage.output_tokens == whole.usage.output_tokens
        # message_start's is 0: an OpenAI-compatible teacher counts the prompt at its stream's end only
        assert done.usage.input_tokens == whole.usage.input_tokens > 0
        assert rows(service)[-1]["status"] == "ok"


def test_tool_use_streams_as_the_teacher_writes_it(tmp_path, tiny_model, teacher_server, monkeypatch):
    import threading

    from tests.serve.test_live_stream import ASK as TICKET
    from tests.serve.test_live_stream import escalating
    from tests.serve.test_live_stream_tools import LOOKUP, _tool_teacher

    tools = [{"name": "lookup_topic", "input_schema": {"type": "object"}}, {"name": "ping", "input_schema": {}}]
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold, holding, seen = threading.Event(), threading.Event(), []
        with teacher_behind(service, _tool_teacher(hold, holding, seen)):
            events = []
            for ev in claude(live).messages.create(model="potstill", max_tokens=64, messages=TICKET, tools=tools,
                                                   stream=True):
                events.append(ev)
                if ev.type == "content_block_start" and ev.content_block.type == "tool_use" and not hold.is_set():
                    # The first call's id and name reached the client while the teacher was still writing.
                    assert holding.is_set() and ev.content_block.id == "call_1"
                    hold.set()
            with claude(live).messages.stream(model="potstill", max_tokens=64, messages=TICKET, tools=tools) as s:
                final = s.get_final_message()
    assert hold.is_set() and seen[0]["stream"] is True
    parts = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert parts == [LOOKUP[:9], LOOKUP[9:], "{}"]  # as the teacher sent them
    assert [(b.type, getattr(b, "text", None), getattr(b, "name", None), getattr(b, "input", None))
            for b in final.content] == [("text", "Checking.", None, None), ("tool_use", None, "lookup_topic",
                                                                            {"about": "match"}),
                                        ("tool_use", None, "ping", {})]
    assert final.stop_reason == "tool_use"


def test_a_teacher_failing_mid_stream_ends_it_with_an_error_event(tmp_path, tiny_model, teacher_server, monkeypatch):
    import threading

    from tests.serve.test_live_stream import ASK as TICKET
    from tests.serve.test_live_stream import _broken_teacher, escalating

    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold, got = threading.Event(), []
        with teacher_behind(service, _broken_teacher(hold)):
            with pytest.raises(anthropic.APIStatusError) as e:
                for ev in claude(live).messages.create(model="potstill", max_tokens=64, messages=TICKET, stream=True):
                    if ev.type == "content_block_delta":
                        got.append(ev.delta.text)
                        hold.set()
        assert got == ["half an"] and e.value.body["error"]["type"] == "api_error"
        assert "teacher" in e.value.body["error"]["message"]
        row = rows(service)[-1]
        assert row["status"] == "error" and json.loads(row["request"])["endpoint"] == "/v1/messages"


def _claude_held(hold, holding) -> "FastAPI":
    """A Messages API streaming 'sports' then ' news', waiting after its first text until ``hold`` is set
    (``holding`` says it waits); its message_start counts 300 input tokens, 2,000 read from the prompt
    cache and 1,000 written to it: 3,300 prompt tokens, as the ledger sums them."""
    from fastapi import Body, FastAPI
    from fastapi.responses import StreamingResponse

    from tests.helpers.sse import claude_event

    app = FastAPI()

    @app.post("/v1/messages")
    def create(body: dict = Body()) -> StreamingResponse:
        assert body.get("stream") is True

        def events():
            usage = {"input_tokens": 300, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 1000,
                     "output_tokens": 1}
            yield claude_event("message_start", {"message": {
                "id": "msg_up", "type": "message", "role": "assistant", "model": body["model"], "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": usage}})
            yield claude_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            # Set before the first text goes out, not after: a generator resumes past a yield only when the
            # server asks for its next event, which a loaded machine may do after the client has read it.
            holding.set()
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "sports"}})
            hold.wait(timeout=20)
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " news"}})
            yield claude_event("content_block_stop", {"index": 0})
            yield claude_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": {"output_tokens": 5}})
            yield claude_event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def test_a_live_escalations_message_start_carries_the_teachers_input_tokens(tmp_path, tiny_model, teacher_server,
                                                                           monkeypatch):
    """An escalation streamed as an Anthropic teacher writes it opened with usage.input_tokens 0, where
    Anthropic's own stream (and the teacher's, upstream) opens with the count: the anthropic SDK's stream
    helpers read it from message_start, and a client that stopped reading early, or metered as the
    stream went, had none. It now carries the teacher's message_start count, as message_delta does."""
    import threading

    from tests.serve.conftest import claude_behind
    from tests.serve.test_live_stream import ASK as TICKET
    from tests.serve.test_live_stream import escalating

    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold, holding = threading.Event(), threading.Event()
        with claude_behind(service, _claude_held(hold, holding), max_tokens=16):
            events = []
            for ev in claude(live).messages.create(model="potstill", max_tokens=64, messages=TICKET, stream=True):
                events.append(ev)
                if ev.type == "content_block_delta" and not hold.is_set():
                    assert holding.is_set()  # the teacher is still writing: this stream is the live one
                    hold.set()
            hold.clear()
            holding.clear()
            with claude(live).messages.stream(model="potstill", max_tokens=64, messages=TICKET) as stream:
                for ev in stream:
                    if ev.type == "text" and not hold.is_set():
                        # What the SDK's helper holds before message_delta: message_start's count.
                        assert holding.is_set() and stream.current_message_snapshot.usage.input_tokens == 3300
                        hold.set()
                final = stream.get_final_message()
        row = rows(service)[-1]
    start, done = events[0], next(e for e in events if e.type == "message_delta")
    assert start.type == "message_start" and start.message.usage.input_tokens == 3300  # before: 0
    assert done.usage.input_tokens == row["input_tokens"] == 3300 and final.usage.input_tokens == 3300
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "sports news"
    assert (row["role"], row["status"]) == ("teacher", "ok")


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_a_streams_last_usage_holds_the_input_tokens_too(served, force, who):
    """A whole answer's message_delta carried output_tokens alone: a client taking the usage from the
    last event, whose counts Anthropic makes cumulative (input side repeated), saw no input tokens.
    (An escalation streamed live from an OpenAI-compatible teacher opens with 0, the teacher not having
    counted yet, and ends with them: test_an_escalation_streams_as_the_teacher_writes_it; from an
    Anthropic one it opens with the teacher's count: test_a_live_escalations_message_start_carries_...)"""
    _, live = served
    force(who)
    want = claude(live).messages.create(model="potstill", max_tokens=64, messages=MSG)
    events = list(claude(live).messages.create(model="potstill", max_tokens=64, messages=MSG, stream=True))
    start, delta = events[0], next(e for e in events if e.type == "message_delta")
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (want.usage.input_tokens, want.usage.output_tokens)
    assert delta.usage.cache_read_input_tokens == delta.usage.cache_creation_input_tokens == 0
    assert start.message.usage.input_tokens == want.usage.input_tokens
    with claude(live).messages.stream(model="potstill", max_tokens=64, messages=MSG) as stream:
        assert stream.get_final_message().usage.input_tokens == want.usage.input_tokens
