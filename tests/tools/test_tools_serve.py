"""A tools task served: a request offering the task's own tools is answered by the student with an
OpenAI tool call (chat completions, streamed or not, the Responses API; a tool_use block through
the Messages API), decoded under the
tools' schema (``serve.guided_json``) by a random tiny student with a byte-level tokenizer; other
tools, a tool turn already in the chat, or a forced function it did not call go to the teacher, which
is asked generate's own request where the client offered the task's tools. A real teacher server
on loopback, the official openai client, the run's ledger."""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI

from tests.export.conftest import make_bpe_model
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, client, write_run

# Every choice in these is the guide's: which function, which unit. A random student writes a call.
TOOLS = [
    {"type": "function", "function": {"name": "set_unit", "description": "Set the display unit.", "parameters": {
        "type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {},
                                                                      "additionalProperties": False}}},
]
MSG = [{"role": "user", "content": "the team won the match"}]


def one_call(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The call tool_choice names, else set_unit."""
    named = body["tool_choice"]["function"]["name"] if isinstance(body.get("tool_choice"), dict) else "set_unit"
    return [(named, '{"unit": "f"}' if named == "set_unit" else "{}")]


def teacher_app(seen: list, calls: Any = one_call) -> FastAPI:
    """An OpenAI-compatible teacher: offered tools, it makes the ``calls(body)`` (name, arguments)
    pairs (``one_call``: the one tool_choice names, else set_unit); else it answers in words."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        seen.append(body)
        if body.get("tools") and body.get("tool_choice") != "none":
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_t{i}", "type": "function", "function": {"name": n, "arguments": a}}
                for i, (n, a) in enumerate(calls(body))]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": "no tools here"}, "stop"
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}

    return app


@pytest.fixture(scope="module")
def tools_served(tmp_path_factory):
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service

    os.environ["TEACHER_KEY"] = TEACHER_KEY
    os.environ["SERVE_KEY"] = SERVE_KEY
    root = tmp_path_factory.mktemp("tools")
    seen: list = []
    with LiveServer(teacher_app(seen)) as teacher:
        run = write_run(root, make_bpe_model(root / "bpe"), teacher.url + "/v1",
                        task={"type": "tools", "instruction": "Call the tool the user needs.", "tools": TOOLS,
                              "max_output_tokens": 160}, guided_json=True)
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        calibrated = service.routing
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            def route(who: str) -> None:  # everything to one side, as routing decides it
                inf = float("inf")
                service.routing = Routing(confidence_threshold=inf if who == "teacher" else -inf, ood_threshold=inf)
            yield service, live, seen, route
            service.routing = calibrated
        service.close()


def check_call(call: Any) -> dict:
    """One OpenAI tool call of one of TOOLS, its arguments valid under that function's parameters."""
    assert call.type == "function" and call.id.startswith("call_")
    fn = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.function.name]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, fn)
    return {"name": call.function.name, "arguments": args}


def test_the_student_answers_the_tasks_tools_with_a_call(tools_served):
    service, live, seen, route = tools_served
    route("student")
    c = client(live)
    before = len(seen)
    r = c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = check_call(choice.message.tool_calls[0])
    assert r.model_extra["potstill"]["answered_by"] == "student"
    # The call is the student's own answer, as it wrote it.
    assert json.loads(r.model_extra["potstill"]["student_output"]) == call
    # Streamed: the call in a delta, then finish_reason tool_calls.
    chunks = list(c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="required",
                                            stream=True))
    deltas = [d for ch in chunks for d in ch.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas] == [call["name"]]
    assert json.loads(deltas[0].function.arguments) == call["arguments"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Its first delta says the role, and content null as OpenAI's does (it was "").
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None and "content" in first.model_fields_set
    # The Responses API: a function_call output item.
    resp = c.responses.create(model="potstill", input="the team won the match",
                              tools=[{"type": "function", **t["function"]} for t in TOOLS])
    item = resp.output[0]
    assert item.type == "function_call" and item.name == call["name"]
    assert json.loads(item.arguments) == call["arguments"]
    # The Messages API (the anthropic SDK): a tool_use block, stop_reason tool_use.
    import anthropic

    m = anthropic.Anthropic(base_url=live.url, api_key=SERVE_KEY, max_retries=0).messages.create(
        model="potstill", max_tokens=64, messages=MSG,
        tools=[{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS])
    assert m.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in m.content if b.type == "tool_use"] == [(call["name"], call["arguments"])]
    assert len(seen) == before  # the teacher was never asked
    row = service.ledger.rows(stage="serve")[-1]
    assert row["role"] == "student"
    # Without tools the student's call is its text: the JSON it wrote.
    plain = c.chat.completions.create(model="potstill", messages=MSG)
    assert json.loads(plain.choices[0].message.content) == call and plain.choices[0].message.tool_calls is None


def test_other_tools_a_tool_turn_or_another_forced_function_go_to_the_teacher(tools_served):
    service, live, seen, route = tools_served
    route("student")
    c = client(live)
    student = check_call(c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
                         .choices[0].message.tool_calls[0])
    other = [TOOLS[0], {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    r = c.chat.completions.create(model="potstill", messages=MSG, tools=other)
    assert r.model_extra["potstill"] | {"student_output": ""} == r.model_extra["potstill"] | {
        "answered_by": "teacher", "reason": "tools", "student_output": ""}
    assert seen[-1]["tools"] == other and "tool_choice" not in seen[-1]  # the client's tools, as it sent them
    turn = MSG + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "set_unit", "arguments": '{"unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}]
    r = c.chat.completions.create(model="potstill", messages=turn, tools=TOOLS)
    assert r.model_extra["potstill"]["reason"] == "tools" and seen[-1]["messages"][-1]["role"] == "tool"
    assert "tool_choice" not in seen[-1]  # the client's (none), not generate's "required": it may answer in words
    # A forced function: the student's call where it names it, else the teacher's.
    for name in ("set_unit", "ping"):
        r = c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS,
                                      tool_choice={"type": "function", "function": {"name": name}})
        assert r.choices[0].message.tool_calls[0].function.name == name
        route_ = r.model_extra["potstill"]
        assert (route_["answered_by"], route_["reason"]) == (
            ("student", "confident") if name == student["name"] else ("teacher", "tools"))
    assert seen[-1]["tool_choice"] == {"type": "function", "function": {"name": "ping" if student["name"] == "set_unit"
                                                                         else "set_unit"}}
    # tool_choice none: the student only calls, so the teacher answers, told to call none.
    r = c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="none")
    assert (r.model_extra["potstill"]["reason"], r.choices[0].message.content) == ("tools", "no tools here")
    assert seen[-1]["tool_choice"] == "none" and seen[-1]["tools"] == TOOLS
    from tests.serve.conftest import claude_behind
    from tests.serve.test_tool_calls import anthropic_provider

    asked: list = []
    with claude_behind(service, anthropic_provider(asked), 64):  # Claude told so in its own terms
        r = c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="none")
    assert asked[-1]["tool_choice"] == {"type": "none"} and r.choices[0].message.tool_calls is None


def test_an_escalation_of_the_tasks_tools_is_generates_request_and_comes_back_as_a_call(tools_served):
    service, live, seen, route = tools_served
    route("teacher")
    c = client(live)
    r = c.chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, tool_choice="auto")
    call = r.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("set_unit", {"unit": "f"})
    assert r.choices[0].finish_reason == "tool_calls" and r.model_extra["potstill"]["answered_by"] == "teacher"
    # generate's request: the task's tools, one call required; the client's "auto" not sent.
    asked = seen[-1]
    assert asked["tools"] == TOOLS and asked["tool_choice"] == "required"
    assert asked["messages"][0] == {"role": "system", "content": "Call the tool the user needs."}
    # The same chat again is answered from the ledger, without tools too: the call as its text.
    n = len(seen)
    plain = c.chat.completions.create(model="potstill", messages=MSG)
    assert json.loads(plain.choices[0].message.content) == {"name": "set_unit", "arguments": {"unit": "f"}}
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "stop"
    assert len(seen) == n and plain.model_extra["potstill"]["reason"].endswith("+cached")
    route("student")


def test_redistill_learns_the_teachers_calls_for_the_tasks_tools_only(tools_served):
    from potstill.redistill.traffic import read_traffic

    service, live, seen, route = tools_served
    route("teacher")
    c = client(live)
    own, other = "the film star", "a goal to win the game"
    c.chat.completions.create(model="potstill", messages=[{"role": "user", "content": own}], tools=TOOLS)
    c.chat.completions.create(model="potstill", messages=[{"role": "user", "content": other}],
                              tools=[{"type": "function", "function": {"name": "lookup"}}])
    route("student")
    traffic = read_traffic(service.ledger, service.task, service.cfg.teacher.max_tokens)
    learnt = {r.messages[-1]["content"]: r.output for r in traffic.escalated}
    assert json.loads(learnt[own]) == {"name": "set_unit", "arguments": {"unit": "f"}}
    assert other not in learnt and traffic.counts["escalated_tool_calls"] >= 1
