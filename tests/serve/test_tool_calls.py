"""A client's ``tools`` and ``tool_choice`` through the official openai client: the student cannot
call tools, so a request that lets the model call one goes to the teacher, which gets the tools in
its own API's form (OpenAI's as sent, Anthropic's as ``input_schema`` tools); its tool calls come
back as OpenAI ``tool_calls`` with ``finish_reason: tool_calls``, streamed or not, and are logged."""

from __future__ import annotations

import json

import openai
import pytest

from potstill.config import TeacherConfig
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import MSG, client, rows, teacher_behind

TOOLS = [{"type": "function", "function": {
    "name": "lookup_topic", "description": "Find the topic of a text.",
    "parameters": {"type": "object", "properties": {"about": {"type": "string"}}, "required": ["about"]}}},
    {"type": "function", "function": {"name": "ping"}}]  # no parameters: any object


def openai_provider(seen: list, finish_call: str = "tool_calls"):
    """OpenAI's chat completions on loopback: with tools it calls the one tool_choice names, else
    the first (content null), finishing with ``finish_call``."""
    from fastapi import Body, FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> dict:
        seen.append(body)
        usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
        if body.get("tools") and body.get("tool_choice") != "none":
            named = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else body["tools"][0]
            call = {"id": "call_9", "type": "function",
                    "function": {"name": named["function"]["name"], "arguments": '{"about": "match"}'}}
            message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, finish_call
        else:
            message, finish = {"role": "assistant", "content": "sports"}, "stop"
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}

    return app


def anthropic_provider(seen: list):
    """The Messages API on loopback, holding its rules for tools: each has a name and an object
    ``input_schema``; ``tool_choice`` is {auto, any, tool (naming a declared tool), none}. With
    tools it may call, it answers a short text and a ``tool_use`` block (stop_reason tool_use)."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    def bad(msg: str) -> JSONResponse:
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": msg}},
                            status_code=400)

    @app.post("/v1/messages")
    def messages(body: dict = Body()) -> JSONResponse:
        seen.append(body)
        tools = body.get("tools") or []
        for i, t in enumerate(tools):
            if set(t) - {"name", "description", "input_schema", "cache_control"} or not t.get("name"):
                return bad(f"tools.{i}: Extra inputs are not permitted: {sorted(t)}")
            if not isinstance(t.get("input_schema"), dict) or t["input_schema"].get("type") != "object":
                return bad(f"tools.{i}.input_schema.type: Input should be 'object'")
        choice = body.get("tool_choice", {"type": "auto"})
        if choice.get("type") not in ("auto", "any", "tool", "none"):
            return bad(f"tool_choice.type: Input tag '{choice.get('type')}' does not match any of the expected tags")
        if choice.get("type") == "tool" and choice.get("name") not in [t["name"] for t in tools]:
            return bad("tool_choice.name: Tool not found")
        usage = {"input_tokens": 30, "output_tokens": 12}
        if tools and choice["type"] != "none":
            name = choice.get("name") or tools[0]["name"]
            content = [{"type": "text", "text": "Let me look that up."},
                       {"type": "tool_use", "id": "toolu_1", "name": name, "input": {"about": "match"}}]
            stop = "tool_use"
        else:
            content, stop = [{"type": "text", "text": "sports"}], "end_turn"
        return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                             "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage})

    return app


def streamed(cl: openai.OpenAI, **kw) -> tuple[str | None, list[dict], str | None]:
    """The content, tool calls and finish reason a streamed answer adds up to (deltas joined by index)."""
    content, calls, finish = None, {}, None
    for ch in cl.chat.completions.create(model="potstill", stream=True, **kw):
        for choice in ch.choices:
            d = choice.delta
            if d.content:
                content = (content or "") + d.content
            for tc in d.tool_calls or []:
                got = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                got["id"] = tc.id or got["id"]
                got["name"] += (tc.function.name or "") if tc.function else ""
                got["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_a_tool_request_goes_to_an_openai_teacher_and_its_tool_call_comes_back(served, force):
    """Found as a known gap: tools and tool_choice were accepted and dropped, so a tool-calling
    request got a plain text answer, from the student or from a teacher that never saw the tools."""
    service, live = served
    force("student")  # the student would answer this chat; it cannot call tools, so the teacher does
    seen: list = []
    with teacher_behind(service, openai_provider(seen)):
        raw = client(live).chat.completions.with_raw_response.create(
            model="potstill", messages=MSG, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False)
        c = raw.parse()
        row = rows(service)[-1]
        content, calls, finish = streamed(client(live), messages=MSG, tools=TOOLS,
                                          tool_choice={"type": "function", "function": {"name": "ping"}})
    assert seen[0]["tools"] == TOOLS and seen[0]["tool_choice"] == "auto" and seen[0]["parallel_tool_calls"] is False
    assert (raw.headers["x-potstill-answered-by"], raw.headers["x-potstill-reason"]) == ("teacher", "tools")
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_9", "function", "lookup_topic")
    assert json.loads(call.function.arguments) == {"about": "match"}
    assert c.model_extra["potstill"]["confidence"] is None  # the student never ran
    assert row["status"] == "ok" and row["role"] == "teacher" and row["stop_reason"] == "tool_calls"
    assert json.loads(row["response"])["tool_calls"][0]["function"]["name"] == "lookup_topic"
    assert row["cost_usd"] > 0
    # streamed: the same call, named by the client's tool_choice
    assert seen[1]["tool_choice"] == {"type": "function", "function": {"name": "ping"}}
    assert content is None and finish == "tool_calls"
    assert calls == [{"id": "call_9", "name": "ping", "arguments": '{"about": "match"}'}]


def test_a_tool_call_cut_at_the_teachers_token_budget_finishes_with_length(served, force):
    """As OpenAI answers a call cut mid-arguments: finish_reason length, not tool_calls, so a client
    does not run a call whose arguments may be cut short."""
    service, live = served
    with teacher_behind(service, openai_provider([], finish_call="length")):
        c = client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
    assert c.choices[0].finish_reason == "length" and c.choices[0].message.tool_calls


def test_tool_choice_none_is_routed_as_a_chat_without_tools(served, force):
    service, live = served
    seen: list = []
    with teacher_behind(service, openai_provider(seen)):
        force("student")
        c = client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="none")
        assert c.model_extra["potstill"]["answered_by"] == "student" and not seen
        assert c.choices[0].finish_reason == "stop" and c.choices[0].message.tool_calls is None
        force("teacher")
        c = client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="none")
    # the request generate would send: its answer may come from the ledger, never a tool call
    assert "tools" not in seen[0] and c.choices[0].message.content == "sports"


def test_an_anthropic_teacher_gets_the_tools_as_input_schema_tools_and_its_tool_use_is_a_tool_call(served, force):
    """Found as a known gap: an Anthropic teacher never got the client's tools, and an answer of
    tool_use blocks came back as its text alone (empty where the answer was only the call)."""
    service, live = served
    force("teacher")
    seen: list = []
    saved = service.teacher
    with LiveServer(anthropic_provider(seen)) as fake:
        cfg = TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=fake.url, api_key_env="TEACHER_KEY",
                            max_tokens=64, max_retries=0, timeout_s=10)
        service.teacher = get_teacher(cfg, service.task)
        try:
            c = client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
            forced = [client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice=tc,
                                                           parallel_tool_calls=False)
                      for tc in ("required", {"type": "function", "function": {"name": "ping"}})]
            # a chat that called a tool earlier, now with the client's tools: both are declared
            calls = [{"id": "call_1", "type": "function", "function": {"name": "score", "arguments": "{}"}}]
            chat = [{"role": "user", "content": "the team won the match"},
                    {"role": "assistant", "content": None, "tool_calls": calls},
                    {"role": "tool", "tool_call_id": "call_1", "content": "2-1"},
                    {"role": "user", "content": "and the topic?"}]
            later = client(live).chat.completions.create(model="potstill", messages=chat, tools=TOOLS)
            content, streamed_calls, finish = streamed(client(live), messages=MSG, tools=TOOLS)
        finally:
            service.teacher.close()
            service.teacher = saved
    assert seen[0]["tools"] == [
        {"name": "lookup_topic", "description": "Find the topic of a text.",
         "input_schema": {"type": "object", "properties": {"about": {"type": "string"}}, "required": ["about"]}},
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}}]
    assert seen[0].get("tool_choice", {"type": "auto"}) == {"type": "auto"}
    assert seen[1]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert seen[2]["tool_choice"] == {"type": "tool", "name": "ping", "disable_parallel_tool_use": True}
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look that up."
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_1", "lookup_topic",
                                                                                  {"about": "match"})
    assert forced[1].choices[0].message.tool_calls[0].function.name == "ping"
    assert [t["name"] for t in seen[3]["tools"]] == ["lookup_topic", "ping", "score"]
    assert seen[3].get("tool_choice", {"type": "auto"}) == {"type": "auto"}
    assert later.choices[0].finish_reason == "tool_calls"
    assert content == "Let me look that up." and finish == "tool_calls"
    # The first request again, answered from serve's own row: the same call under an id of its own.
    (again,) = streamed_calls
    assert (again["name"], again["arguments"]) == ("lookup_topic", '{"about": "match"}') and again["id"] != "toolu_1"
    assert json.loads(rows(service)[-1]["response"])["tool_calls"][0]["id"] == again["id"]


@pytest.mark.parametrize("kw, param, words", [
    ({"tool_choice": "required"}, "tool_choice", "only allowed when tools are given"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name", "pattern"),
    ({"tools": []}, "tools", "at least 1"),
])
def test_a_bad_tool_request_is_a_400_naming_the_field(served, kw, param, words):
    service, live = served
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=MSG, **kw)
    assert e.value.param == param and words in e.value.message, e.value.body
    row = rows(service)[-1]
    assert row["status"] == "error" and row["error"].startswith("400")


def test_a_teacher_that_cannot_call_tools_refuses_a_forced_tool_call(served, force, tmp_path):
    """A replay teacher answers with recorded text: a request that must call a tool is the client's
    400 saying so; one that may (auto) is answered in text, as any model may answer it."""
    service, live = served
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"messages": [*MSG, {"role": "assistant", "content": "sports"}]}) + "\n")
    saved = service.teacher
    service.teacher = get_teacher(TeacherConfig(type="replay", replay_path=str(replay)), service.task)
    force("teacher")
    try:
        with pytest.raises(openai.BadRequestError) as e:
            client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="required")
        c = client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
    finally:
        service.teacher.close()
        service.teacher = saved
    assert e.value.param == "tool_choice" and "replay" in e.value.message
    assert c.choices[0].message.content == "sports" and c.choices[0].finish_reason == "stop"


def test_an_escalation_answered_with_tool_calls_is_not_distilled(served, force, tmp_path):
    """Its text (none, or the words before the call) is not the teacher's answer to the chat:
    redistill would teach the student to answer a question with nothing."""
    from potstill.ledger import Ledger
    from potstill.redistill.traffic import read_traffic

    service, live = served
    force("teacher")
    seen: list = []
    with teacher_behind(service, openai_provider(seen)):
        for text in ("the goalkeeper saved twice", "the goalkeeper saved three times"):
            client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}],
                                                 tools=TOOLS if "twice" in text else None)
    with Ledger(tmp_path / "copy.sqlite") as ledger:  # the two rows alone: the shared one holds others' traffic
        for served_row in service.ledger.served()[-2:]:
            ledger.record_served(served_row)
        traffic = read_traffic(ledger, service.task, teacher_max_tokens=4)
    assert [r.messages[0]["content"] for r in traffic.escalated] == ["the goalkeeper saved three times"]
    assert traffic.counts["escalated_tool_calls"] == 1


def refusing_provider(seen: list):
    """OpenAI's chat completions on loopback, refusing as OpenAI does a tool message that answers no
    call of the assistant message before it (a 400); else it answers 'sports'."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    from tests.helpers.chat_server import tool_turn_problem

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> JSONResponse:
        seen.append(body)
        refused = tool_turn_problem(body["messages"])
        if refused:
            return JSONResponse({"error": {"message": refused, "type": "invalid_request_error",
                                           "param": "messages", "code": None}}, status_code=400)
        return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}})

    return app


def _orphan_result(live, api: str) -> Exception:
    """The error a chat whose tool result answers no call (id call_nope) gets through ``api``'s client."""
    import anthropic

    from tests.serve.conftest import SERVE_KEY

    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as e:
        if api == "chat":
            client(live).chat.completions.create(model="potstill", messages=[
                *MSG, {"role": "tool", "tool_call_id": "call_nope", "content": "sunny"}])
        elif api == "responses":
            client(live).responses.create(model="potstill", input=[
                *MSG, {"type": "function_call_output", "call_id": "call_nope", "output": "sunny"}])
        else:
            anthropic.Anthropic(base_url=live.url, api_key=SERVE_KEY, max_retries=0).messages.create(
                model="potstill", max_tokens=8, messages=[{"role": "user", "content": [
                    {"type": "text", "text": MSG[0]["content"]},
                    {"type": "tool_result", "tool_use_id": "call_nope", "content": "sunny"}]}])
    return e.value


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_a_tool_result_that_answers_no_call_is_a_400_before_the_teacher_is_asked(served, force, api):
    """Found by a review: it went to the teacher, whose 400 was the client's 502, which the openai SDK
    retries twice (3 client calls, 7 teacher calls). OpenAI and Anthropic answer it with a 400."""
    service, live = served
    force("teacher")
    seen: list = []
    before = len(rows(service))
    with teacher_behind(service, refusing_provider(seen)):
        error = _orphan_result(live, api)
        # a result that answers the call before it still reaches the teacher
        calls = [{"id": "call_1", "type": "function", "function": {"name": "score", "arguments": "{}"}}]
        fine = client(live).chat.completions.create(model="potstill", messages=[
            *MSG, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "2-1"}])
    assert error.status_code == 400 and "call_nope" in str(error.body), error.body
    if api == "messages":
        assert error.body["error"]["type"] == "invalid_request_error"
    else:
        assert (error.body["type"], error.body["param"]) == ("invalid_request_error",
                                                             "input" if api == "responses" else "messages")
    assert len(seen) == 1 and fine.choices[0].message.content == "sports"
    refused, answered = rows(service)[before:]
    assert refused["status"] == "error" and refused["error"].startswith("400") and answered["status"] == "ok"


@pytest.mark.parametrize("calls", [
    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},  # an object, not a list
    [{"id": "call_1", "type": "function", "function": "f"}],
    ["call_1"],
    [{"id": "call_1", "type": "function", "function": {"arguments": "{}"}}],
    [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
    [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
])
def test_a_malformed_assistant_tool_calls_is_a_400_naming_it(served, calls):
    """Found by a review: tool_calls was taken unchecked, and the student's reading of it as text
    failed with a 500 (AttributeError), which the openai SDK retries; OpenAI answers a 400."""
    service, live = served
    chat = [*MSG, {"role": "assistant", "content": None, "tool_calls": calls}, {"role": "user", "content": "and?"}]
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=chat)
    assert e.value.body["type"] == "invalid_request_error" and e.value.param == "messages.1.tool_calls", e.value.body
    row = rows(service)[-1]
    assert row["status"] == "error" and row["error"].startswith("400: messages.1.tool_calls")


def test_an_extraction_runs_task_format_stays_off_a_clients_tool_request(tmp_path, tiny_model, teacher_server,
                                                                         monkeypatch):
    """Found by a review: with teacher.structured_outputs on, a client's tool request reached the
    teacher held to the task's json_schema (a vLLM teacher decodes the whole answer under it, so it
    could never call) and came back as task JSON with finish_reason stop. A tool request now goes
    without the task's format, to an OpenAI-compatible teacher and to Claude alike; the client's own
    response_format still goes beside its tools, and a plain escalation keeps the task's format."""
    import math

    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, claude_behind, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    schema = {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}
    run = write_run(tmp_path, tiny_model, teacher_server.base_url,
                    task={"type": "extraction", "instruction": "Answer in JSON.", "json_schema": schema})
    cfg = run_config(run, None).model_copy(deep=True)
    cfg.teacher.structured_outputs = "on"
    service = load_service(run, cfg, device="cpu")
    service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)  # all to the teacher
    own_fmt = {"type": "json_object"}
    seen: list = []
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            with teacher_behind(service, openai_provider(seen)):
                call = client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
                client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS,
                                                     response_format=own_fmt)
                client(live).chat.completions.create(model="potstill", messages=MSG)
            with claude_behind(service, anthropic_provider(seen), max_tokens=50, structured_outputs="on"):
                client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
                client(live).chat.completions.create(model="potstill", messages=MSG)
    finally:
        service.close()
    assert call.choices[0].finish_reason == "tool_calls" and call.choices[0].message.tool_calls
    assert "response_format" not in seen[0] and seen[0]["tools"] == TOOLS
    assert seen[1]["response_format"] == own_fmt and seen[1]["tools"] == TOOLS
    assert seen[2]["response_format"]["json_schema"]["schema"] == schema and "tools" not in seen[2]
    assert "output_config" not in seen[3] and seen[3]["tools"]
    assert seen[4]["output_config"]["format"]["schema"] == schema
