"""A tools task with ``task.tool_choice: auto``: an agent's turns. An answer is a call or a reply in
words (``{"content": ...}``), and a chat may hold earlier calls and their results, which the student
reads as text. The teacher is asked with the tools and ``tool_choice: auto``, the tool turns whole;
a tiny student trained here on a first call and on the reply after its result serves both through
chat completions, the Responses API and the Messages API; a client that requires a call gets the
teacher's where the student replied; ``generate.tool_rounds`` has the teacher play the functions it
called, each request once in the ledger. Real servers on loopback, the official SDKs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI

from potstill.curate.stage import curate_stage
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.records import Record, read_records
from potstill.tasks import get_task
from potstill.tool_calls import TEXT_ANSWER, as_text_turns
from tests.helpers.batch_server import AGENT_REPLY, agent_answer
from tests.helpers.live_server import LiveServer
from tests.tools.trained import trained_and_served
from tests.tools.test_tools_task import project

TOOLS = [
    {"type": "function", "function": {"name": "set_unit", "parameters": {
        "type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {},
                                                                      "additionalProperties": False}}},
]
CALL = {"id": "call_a", "type": "function", "function": {"name": "set_unit", "arguments": '{"unit": "c"}'}}
ASK = {"role": "user", "content": "celsius please"}
AFTER = [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "call_a", "content": "unit is now c"}]
REPLY = AGENT_REPLY


def agent_teacher(seen: list) -> FastAPI:
    """An OpenAI-compatible teacher: after a tool result it replies in words (unless a call is
    required), else it calls set_unit c; asked without tools (playing a function,
    ``generate.tool_rounds``), it writes the function's result (``batch_server.agent_answer``)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        seen.append(body)
        return agent_answer("openai", body)

    return app


def test_the_schema_adds_a_reply_in_words_and_the_field_is_for_tools_only(tmp_path):
    schema = project(tmp_path, tool_choice="auto").task.json_schema
    assert schema["anyOf"][-1] == TEXT_ANSWER and len(schema["anyOf"]) == 3  # get_weather, get_time, a reply
    par = project(tmp_path, tool_choice="auto", parallel_tool_calls=True).task.json_schema
    assert [b.get("type") for b in par["anyOf"]] == ["array", "object"]
    assert project(tmp_path).task.json_schema["anyOf"][-1]["properties"]["name"] == {"const": "get_time"}
    with pytest.raises(PotstillError, match="task.tool_choice is for task.type tools"):
        project(tmp_path, type="extraction", tools=None, json_schema={"type": "object"}, tool_choice="auto")
    # A config written back with its defaults set loads again.
    project(tmp_path, type="extraction", tools=None, json_schema={"type": "object"}, tool_choice="required")


def test_a_reply_is_text_and_agrees_as_free_text_does(tmp_path):
    from potstill.evaluate.metrics import task_metrics
    from potstill.watch.stage import INVALID, REPLY as REPLIED, call_of

    task = get_task(project(tmp_path, tool_choice="auto").task)
    said = task.parse("  It is 12 degrees in Oslo. ")  # an API teacher's or a logged reply, as written
    assert said == {"content": "It is 12 degrees in Oslo."} and task.validate(said) is None
    assert task.parse('{"content": "it is 12  degrees in oslo."}') == {"content": "it is 12  degrees in oslo."}
    assert task.agree(said, task.parse('{"content": "it is 12  degrees in oslo."}')) == 1.0
    call = task.parse('{"name": "get_time", "arguments": {"city": "Oslo"}}')
    assert task.validate(call) is None and task.agree(call, said) == 0.0 and task.agree(said, call) == 0.0
    assert "invalid JSON" in task.validate(task.parse('{"name": "get_ti'))  # a cut call stays a broken call
    assert "schema violation" in task.validate(task.parse('{"content": ""}'))
    assert json.loads(task.target(Record(messages=[ASK], output="Sure."))) == {"content": "Sure."}
    m = task_metrics("tools", [said, call], [said, said], validate=task.validate)
    assert m["exact_match"] == 0.5
    assert call_of(task, "It is 12 degrees.") == REPLIED and call_of(task, '{"name": "nope", "arguments": {}}') == INVALID
    # A served answer (serve sends none that fails the task) that is JSON but no call is a reply.
    assert call_of(task, '{"temp": 12}') == INVALID and call_of(task, '{"temp": 12}', served=True) == REPLIED
    assert call_of(task, '[{"temp": 12}]', served=True) == REPLIED
    assert call_of(task, '{"name": "get_time", "arguments": {"city": "Oslo"}}', served=True) == "get_time"
    assert call_of(task, '{"name": "nope", "arguments": {}}', served=True) == INVALID
    required = get_task(project(tmp_path).task)  # a call every time: a reply is no answer
    assert call_of(required, '{"temp": 12}', served=True) == INVALID  # under required every answer is a call
    assert required.validate(required.parse("It is 12 degrees.")) == "no tool call: the answer is text, not a call"
    # A teacher's reply that is JSON itself (an agent answering with data) stays a reply; a local
    # teacher's call or reply written as the student writes them stays as written.
    data = task.answer_output({"output": ' {"temp": 12, "sky": "sunny"}'})
    assert json.loads(data) == {"content": '{"temp": 12, "sky": "sunny"}'} and task.validate(task.parse(data)) is None
    for kept in ('{"name": "get_time", "arguments": {"city": "Oslo"}}', '{"content": "hi"}', "Sure."):
        assert task.answer_output({"output": kept}) == kept
    assert required.answer_output({"output": '{"temp": 12}'}) == '{"temp": 12}'  # no call: set aside, as before


def test_tool_turns_are_read_as_text_in_one_form():
    from potstill.models.prompting import PromptFormat

    two = [{"id": "x", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
           {"id": "y", "type": "function", "function": {"name": "set_unit", "arguments": '{"unit": "f"}'}}]
    chat = [ASK, {"role": "assistant", "content": "Let me.", "tool_calls": two},
            {"role": "tool", "tool_call_id": "y", "content": "ok"}, {"role": "tool", "tool_call_id": "x", "content": "pong"},
            {"role": "user", "content": "and now?"}]
    assert as_text_turns(chat) == [
        ASK, {"role": "assistant", "content": '[{"name": "ping", "arguments": {}}, {"name": "set_unit", "arguments": {"unit": "f"}}]'},
        {"role": "user", "content": "Result of set_unit: ok\nResult of ping: pong"}, {"role": "user", "content": "and now?"}]
    assert as_text_turns(AFTER)[1]["content"] == '{"name": "set_unit", "arguments": {"unit": "c"}}'
    assert as_text_turns(AFTER, parallel=True)[1]["content"] == '[{"name": "set_unit", "arguments": {"unit": "c"}}]'
    assert as_text_turns([ASK]) == [ASK]
    from potstill.curate.dedup import conversation

    assert conversation(AFTER) == 'celsius please\n{"name": "set_unit", "arguments": {"unit": "c"}}\n' \
                                  "Result of set_unit: unit is now c"  # the turn after a call is its own input

    class Tok:  # a ChatML template, as SmolLM2's
        chat_template = "x"

        @staticmethod
        def apply_chat_template(chat, tokenize, add_generation_prompt):
            return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat)

    text = PromptFormat(instruction="Help.").query(Tok(), AFTER)
    assert text.endswith('<|im_start|>assistant\n{"name": "set_unit", "arguments": {"unit": "c"}}<|im_end|>\n'
                         '<|im_start|>user\nResult of set_unit: unit is now c<|im_end|>\n')
    assert "None" not in text and "tool" not in text.replace("Result of", "")


def test_generate_asks_auto_with_the_tool_turns_whole_and_learns_both_forms(tmp_path):
    seen: list = []
    with LiveServer(agent_teacher(seen)) as srv:
        cfg = project(tmp_path, srv.url + "/v1", tool_choice="auto", tools=TOOLS)
        (tmp_path / "inputs.jsonl").write_text(json.dumps({"id": "first", "messages": [ASK]}) + "\n"
                                               + json.dumps({"id": "after", "messages": AFTER}) + "\n")
        cfg = cfg.model_copy(update={"curate": cfg.curate.model_copy(update={"val": 0, "test": 0})})
        generate_stage(cfg)
        curate_stage(cfg)
    assert {b["tool_choice"] for b in seen} == {"auto"} and all(b["parallel_tool_calls"] is False for b in seen)
    after = next(b for b in seen if len(b["messages"]) > 2)
    assert after["messages"][2]["tool_calls"][0]["id"] == "call_a" and after["messages"][3]["tool_call_id"] == "call_a"
    task = get_task(cfg.task)
    train = {r.id: r for r in read_records(tmp_path / "run" / "train.jsonl")}
    assert json.loads(task.target(train["first"])) == {"name": "set_unit", "arguments": {"unit": "c"}}
    assert json.loads(task.target(train["after"])) == {"content": REPLY}
    from potstill.teachers import get_teacher

    claude = get_teacher(cfg.teacher.model_copy(update={"type": "anthropic", "model": "claude-haiku-4-5"}),
                         task).request(Record(messages=AFTER))
    assert claude["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert [b["type"] for b in claude["messages"][1]["content"]] == ["tool_use"]
    assert [b["type"] for b in claude["messages"][2]["content"]] == ["tool_result"]


def test_tool_rounds_have_the_teacher_play_the_function_and_answer_the_turn_after(tmp_path):
    from potstill.generate.tool_rounds import SIMULATE

    seen: list = []
    with LiveServer(agent_teacher(seen)) as srv:
        cfg = project(tmp_path, srv.url + "/v1", tool_choice="auto", tools=TOOLS)
        (tmp_path / "inputs.jsonl").write_text(json.dumps({"id": "first", "messages": [ASK]}) + "\n")
        cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"tool_rounds": 2})})
        generate_stage(cfg)
        asked = len(seen)
        generate_stage(cfg, force=True)  # every request is in the ledger: nothing is asked twice
        assert len(seen) == asked == 3  # the call, the function's result, the reply after it
    played = next(b for b in seen if not b.get("tools"))
    assert played["messages"][0]["content"] == SIMULATE
    declared, args = played["messages"][1]["content"].split("\n")
    assert json.loads(declared.removeprefix("Function: ")) == TOOLS[0]["function"]
    assert args == 'Arguments: {"unit": "c"}'
    first, after = read_records(tmp_path / "run" / "teacher.jsonl")
    assert (first.id, after.id, after.slice, after.meta["round"]) == ("first", "first.r1", ["tool_round:1"], 1)
    assert after.messages[1]["tool_calls"][0]["function"] == {"name": "set_unit", "arguments": '{"unit": "c"}'}
    assert after.messages[2] == {"role": "tool", "tool_call_id": "call_1_0", "content": '{"unit": "c", "ok": true}'}
    assert json.loads(get_task(cfg.task).target(after)) == {"content": REPLY}  # a reply: no second round
    with pytest.raises(PotstillError, match="generate.tool_rounds: needs task.type tools with task.tool_choice auto"):
        required = project(tmp_path, srv.url + "/v1")
        generate_stage(required.model_copy(update={"generate": required.generate.model_copy(update={"tool_rounds": 1})}))


def test_export_writes_the_tool_turns_and_the_reply(tmp_path):
    from potstill.export.check import line_problems
    from potstill.export.openai_jsonl import to_openai

    line = to_openai(AFTER, json.dumps({"content": REPLY}), TOOLS)
    assert line["messages"][-1] == {"role": "assistant", "content": REPLY}
    assert line["messages"][1]["tool_calls"] == [CALL] and line["messages"][2]["tool_call_id"] == "call_a"
    assert line_problems(json.dumps(line)) == []
    call = to_openai(AFTER, json.dumps({"name": "ping", "arguments": {}}), TOOLS)
    assert [c["id"] for c in call["messages"][-1]["tool_calls"]] == ["call_3_0"]  # apart from the input's own ids
    assert line_problems(json.dumps(call)) == []


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A run whose tiny student was trained here (potstill's train stage) on a first call and the
    reply after its result, served under the tools' schema; routing forced to the student."""
    root = tmp_path_factory.mktemp("agent")
    seen: list = []
    rows = (json.dumps({"messages": [ASK], "output": '{"name": "set_unit", "arguments": {"unit": "c"}}'}) + "\n"
            + json.dumps({"messages": AFTER, "output": REPLY}) + "\n") * 8
    task = {"type": "tools", "instruction": "Help with the display unit.", "tools": TOOLS, "tool_choice": "auto",
            "max_output_tokens": 64}
    with trained_and_served(root, agent_teacher(seen), task, rows) as (service, live):
        yield service, live, seen


def test_the_student_calls_first_then_replies_after_the_result_in_every_api(served):
    import anthropic

    from tests.serve.conftest import SERVE_KEY, client

    service, live, seen = served
    c = client(live)
    before = len(seen)
    first = c.chat.completions.create(model="potstill", messages=[ASK], tools=TOOLS)
    assert first.model_extra["potstill"]["answered_by"] == "student", first.model_extra["potstill"]["student_output"]
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.tool_calls[0].function.name == "set_unit"
    r = c.chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS)
    route = r.model_extra["potstill"]
    assert route["answered_by"] == "student", route
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (REPLY, "stop")
    assert not r.choices[0].message.tool_calls
    chunks = list(c.chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == REPLY
    resp = c.responses.create(model="potstill", tools=[{"type": "function", **t["function"]} for t in TOOLS], input=[
        {"role": "user", "content": ASK["content"]},
        {"type": "function_call", "call_id": "call_a", "name": "set_unit", "arguments": '{"unit": "c"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "unit is now c"}])
    assert resp.output_text == REPLY
    m = anthropic.Anthropic(base_url=live.url, api_key=SERVE_KEY, max_retries=0).messages.create(
        model="potstill", max_tokens=64,
        tools=[{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS],
        messages=[{"role": "user", "content": ASK["content"]},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "call_a", "name": "set_unit",
                                                     "input": {"unit": "c"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_a",
                                                "content": "unit is now c"}]}])
    assert (m.stop_reason, [b.text for b in m.content if b.type == "text"]) == ("end_turn", [REPLY])
    plain = c.chat.completions.create(model="potstill", messages=AFTER)  # no tools offered: the reply's text
    assert plain.choices[0].message.content == REPLY
    assert len(seen) == before  # the teacher was never asked


def test_a_clients_stop_and_max_tokens_end_the_students_reply(served):
    """The reply is written inside the JSON of the student's answer, and used to reach the client whole
    whatever its stop and max_tokens; it now ends there as any generated text does."""
    from tests.serve.conftest import client

    service, live, seen = served
    c, before = client(live), len(seen)
    r = c.chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS, stop=[","])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Done", "stop")
    assert r.model_extra["potstill"]["answered_by"] == "student"
    tok = live_tokenizer(service)
    two = tok.decode(tok.encode(REPLY, add_special_tokens=False)[:2])
    r = c.chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS, max_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens) == (two, "length", 2)
    chunks = list(c.chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS, max_tokens=2, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == two
    whole = c.chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS, max_tokens=64)
    assert whole.usage.completion_tokens == len(tok.encode(REPLY, add_special_tokens=False))  # the reply's tokens
    assert len(seen) == before


def live_tokenizer(service):
    return service.live.engine.engine.tokenizer


def test_a_client_requiring_a_call_gets_the_teachers_where_the_student_replied(served):
    from tests.serve.conftest import client

    service, live, seen = served
    r = client(live).chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS, tool_choice="required")
    route = r.model_extra["potstill"]
    assert (route["answered_by"], route["reason"]) == ("teacher", "tools")
    assert json.loads(route["student_output"]) == {"content": REPLY}
    assert seen[-1]["tool_choice"] == "required" and seen[-1]["messages"][-1]["role"] == "tool"
    assert r.choices[0].message.tool_calls[0].function.name == "set_unit"
    # Escalated under the client's auto, it is generate's own request (the tool turns whole).
    from potstill.serve.routing import Routing

    kept = service.routing
    service.routing = Routing(confidence_threshold=float("inf"), ood_threshold=float("inf"))
    try:
        r = client(live).chat.completions.create(model="potstill", messages=AFTER, tools=TOOLS)
    finally:
        service.routing = kept
    assert seen[-1]["tool_choice"] == "auto" and seen[-1]["tools"] == TOOLS
    assert r.choices[0].message.content == REPLY and r.choices[0].finish_reason == "stop"
    rows = service.ledger.rows(stage="serve")
    assert rows[-1]["role"] == "teacher"


def test_redistill_and_watch_read_the_served_tool_turns_from_every_api(served):
    from potstill.redistill.traffic import read_traffic
    from potstill.watch.stage import REPLY as REPLIED, call_of

    service, live, seen = served
    rows = [r for r in service.ledger.served(status=None) if r.status == "ok" and len(r.messages) == 3]
    endpoints = {r.request.get("endpoint", "chat") for r in rows}
    assert endpoints == {"chat", "/v1/responses", "/v1/messages"}, endpoints
    for r in rows:  # the chat as the client sent it: the call and its result paired by id, whatever the API
        assert r.chat[1]["tool_calls"][0]["id"] == r.chat[2]["tool_call_id"] == "call_a", r.request.get("endpoint")
        assert r.messages[1] == {"role": "assistant", "content": ""}  # the text view, as before
    traffic = read_traffic(service.ledger, service.task, 64)
    learnt = [x for x in traffic.student + traffic.escalated if len(x.messages) == 3]
    assert len(learnt) == 1 and learnt[0].messages[2]["tool_call_id"] == "call_a"  # one distinct chat
    teacher_said = [x for x in traffic.escalated if len(x.messages) == 3]
    assert [json.loads(service.task.target(x)) for x in teacher_said] == [{"content": REPLY}]
    assert call_of(service.task, rows[0].content) == REPLIED


def test_a_claude_agents_logs_import_as_its_openai_form_does(tmp_path, capsys):
    """An Anthropic agent's log holds its tool turns as blocks: an assistant turn of thinking, text and
    tool_use, then a user turn of tool_result. Import refused it, with --tool-calls too ('a part of type
    'tool_use''), where the same conversation logged by an OpenAI client imported; it is read into
    the OpenAI form (thinking left out), so both logs give the same record. A server tool's call and
    result in the history (a web search Anthropic ran) is skipped and counted: a student cannot run it."""
    from potstill.importers import import_traffic

    claude = [{"role": "user", "content": "celsius please"},
              {"role": "assistant", "content": [
                  {"type": "thinking", "thinking": "The user wants Celsius.", "signature": "sig"},
                  {"type": "tool_use", "id": "call_a", "name": "set_unit", "input": {"unit": "c"}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_a",
                                            "content": [{"type": "text", "text": "unit is now c"}]}]}]
    answer = {"type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_reason": "end_turn",
              "content": [{"type": "text", "text": REPLY}]}
    searched = [claude[0], {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "unit"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}]}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(x) + "\n" for x in [
        {"request": {"model": "claude-sonnet-4-5", "system": "Be brief.", "messages": claude, "tools": []},
         "response": answer},
        {"request": {"messages": AFTER}, "response": {"choices": [{"message": {"role": "assistant", "content": REPLY}}]}},
        {"request": {"model": "claude-sonnet-4-5", "messages": searched}, "response": answer}]))
    for keep in (False, True):
        assert import_traffic(log, tmp_path / "inputs.jsonl", "auto", None, keep) == 2
        from_claude, from_openai = read_records(tmp_path / "inputs.jsonl")
        assert from_claude.messages == from_openai.messages == AFTER and from_claude.output == from_openai.output
        assert from_claude.meta["system"] == "Be brief."
        assert "1 line(s) skipped, its request holds a server tool's call or result" in capsys.readouterr().err


def test_an_agents_logs_import_as_both_kinds_of_turn(tmp_path):
    from potstill.importers import import_traffic

    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"request": {"messages": [ASK], "tools": TOOLS},
                               "response": {"choices": [{"message": {"role": "assistant", "content": None,
                                                                     "tool_calls": [CALL]}}]}}) + "\n"
                   + json.dumps({"request": {"messages": AFTER, "tools": TOOLS},
                                 "response": {"choices": [{"message": {"role": "assistant", "content": REPLY}}]}}) + "\n")
    import_traffic(log, tmp_path / "inputs.jsonl", "auto", None, True)
    first, after = read_records(tmp_path / "inputs.jsonl")
    task = get_task(project(tmp_path, tool_choice="auto", tools=TOOLS).task)
    assert json.loads(task.target(first)) == {"name": "set_unit", "arguments": {"unit": "c"}}
    assert after.messages[1]["tool_calls"] == [CALL] and after.messages[2]["tool_call_id"] == "call_a"
    assert json.loads(task.target(after)) == {"content": REPLY} and task.validate(task.parse(after.output)) is None
    # A logged reply that is JSON itself (an agent answering with data) was read as a broken call;
    # every format keeps it as a reply, the calls as calls.
    data = '{"temp": 12, "sky": "sunny"}'
    anthropic = {"type": "message", "role": "assistant", "model": "claude", "content": [{"type": "text", "text": data}]}
    responses = {"object": "response", "status": "completed", "model": "gpt", "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": data}]}]}
    log.write_text("".join(json.dumps(x) + "\n" for x in [
        {"request": {"messages": AFTER}, "response": {"choices": [{"message": {"role": "assistant", "content": data}}]}},
        {"request": {"messages": AFTER}, "response": anthropic},
        {"request": {"messages": AFTER}, "response": responses},
        {"messages": [*AFTER, {"role": "assistant", "content": data}]},
        {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}]}]))
    import_traffic(log, tmp_path / "inputs.jsonl", "auto", None, True)
    *replies, call = read_records(tmp_path / "inputs.jsonl")
    for rec in replies:
        assert task.validate(task.parse(rec.output)) is None and json.loads(task.target(rec)) == {"content": data}
    assert json.loads(task.target(call)) == {"name": "set_unit", "arguments": {"unit": "c"}}
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:4]))
    import_traffic(log, tmp_path / "plain.jsonl", "auto", None, False)  # no --tool-calls: text as written
    # A served calls.sqlite: a reply that is JSON, and a call (its tool_calls beside the row).
    from potstill.ledger import Ledger, ServedCall

    with Ledger(tmp_path / "calls.sqlite") as ledger:
        ledger.record_served(ServedCall(request={"messages": AFTER}, answered_by="teacher", model="t", content=data))
        ledger.record_served(ServedCall(request={"messages": [ASK]}, answered_by="student", model="s", content="",
                                        extra={"tool_calls": [CALL]}, finish_reason="tool_calls"))
        # A call served as text, to a client that offered no tools: still a call.
        ledger.record_served(ServedCall(request={"messages": [ASK]}, answered_by="student", model="s",
                                        content='{"name": "set_unit", "arguments": {"unit": "c"}}'))
    import_traffic(tmp_path / "calls.sqlite", tmp_path / "served.jsonl", "auto", None, True)
    reply, *called = read_records(tmp_path / "served.jsonl")
    assert json.loads(task.target(reply)) == {"content": data} and task.validate(task.parse(reply.output)) is None
    for rec in called:
        assert json.loads(task.target(rec)) == {"name": "set_unit", "arguments": {"unit": "c"}}
    assert [r.output for r in read_records(tmp_path / "plain.jsonl")] == [data] * 4


def test_the_model_card_says_what_a_tools_student_writes_and_reads(tmp_path):
    from potstill.export.model_card import model_card

    card = model_card(project(tmp_path, tool_choice="auto"), tmp_path / "run", "x", "me/student", chat=True)
    tools = card.split("## Tools\n", 1)[1].split("\n## ", 1)[0]
    assert '`{"name": ..., "arguments": {...}}` (one call) of these functions' in tools and "`get_time`" in tools
    assert '`{"content": "..."}`' in tools and "`Result of NAME: RESULT`" in tools
    par = model_card(project(tmp_path, parallel_tool_calls=True), tmp_path / "run", "x", "me/student", chat=True)
    assert "(one or more calls)" in par and "content" not in par.split("## Tools\n", 1)[1].split("\n## ", 1)[0]
    assert "## Tools" not in model_card(project(tmp_path, type="extraction", tools=None, json_schema={"type": "object"}),
                                        tmp_path / "run", "x", "me/student", chat=True)


def test_evaluate_judges_the_turns_after_results_apart():
    from potstill.evaluate.slices import AFTER_RESULTS, slice_names

    first, after = Record(messages=[ASK], output="x"), Record(messages=AFTER, output=REPLY, slice=["tool_round:1"])
    assert AFTER_RESULTS not in slice_names(first, None, (1, 2))
    assert slice_names(after, None, (1, 2)) == ["tag:tool_round:1", "length:medium (2 words)", AFTER_RESULTS]
