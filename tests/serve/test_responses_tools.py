"""Function tools on ``POST /v1/responses`` through the official openai client, as the OpenAI
Agents SDK sends them: routed to the teacher as chat completions' tool requests are, its calls
back as ``function_call`` items (streamed too), and a conversation's calls and their outputs
handed to the teacher as chat tool turns."""

from __future__ import annotations

import json

import openai
import pytest

from tests.serve.conftest import client, rows, teacher_behind
from tests.serve.test_tool_calls import openai_provider

TOOLS = [{"type": "function", "name": "lookup", "description": "Look a topic up.",
          "parameters": {"type": "object", "properties": {"about": {"type": "string"}}, "required": ["about"]}}]
ASK = "the team won the match"


def test_a_tool_request_is_answered_with_function_call_items(served):
    service, live = served
    seen: list = []
    before = len(rows(service))
    with teacher_behind(service, openai_provider(seen)):
        r = client(live).responses.create(model="potstill", input=ASK, tools=TOOLS)
    [call] = [item for item in r.output if item.type == "function_call"]
    assert (call.name, call.call_id, json.loads(call.arguments)) == ("lookup", "call_9", {"about": "match"})
    assert r.output_text == "" and r.model_extra["potstill"]["reason"] == "tools"
    # The teacher got chat completions' tools, the function nested.
    assert seen[0]["tools"] == [{"type": "function", "function": {k: TOOLS[0][k] for k in
                                                                  ("name", "description", "parameters")}}]
    assert r.tools[0].name == "lookup"
    [row] = rows(service)[before:]
    assert row["role"] == "teacher" and json.loads(row["response"])["tool_calls"][0]["id"] == "call_9"


def test_a_conversation_s_calls_and_outputs_reach_the_teacher_as_tool_turns(served, force):
    service, live = served
    force("teacher")
    seen: list = []
    conversation = [{"role": "user", "content": ASK},
                    {"type": "function_call", "call_id": "call_9", "name": "lookup", "arguments": '{"about": "match"}'},
                    {"type": "function_call_output", "call_id": "call_9", "output": "a football match"}]
    with teacher_behind(service, openai_provider(seen)):
        r = client(live).responses.create(model="potstill", input=conversation, tools=TOOLS, tool_choice="none")
    assert r.output_text == "sports" and r.model_extra["potstill"]["answered_by"] == "teacher"
    msgs = [m for m in seen[0]["messages"] if m["role"] != "system"]
    assert msgs[1]["role"] == "assistant" and msgs[1]["tool_calls"][0]["id"] == "call_9"
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"about": "match"}'}
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_9", "content": "a football match"}
    assert "tools" not in seen[0]  # tool_choice none: routed as a chat without tools


def test_a_streamed_tool_call_arrives_as_function_call_events(served):
    service, live = served
    with teacher_behind(service, openai_provider([])):
        events = list(client(live).responses.create(model="potstill", input=ASK, tools=TOOLS, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"about": "match"}
    [call] = [item for item in events[-1].response.output if item.type == "function_call"]
    assert call.call_id == "call_9"
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("kwargs, param, says", [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type", "only function tools are served here"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "other"}}, "tool_choice",
     "names the function 'other', which is not in tools"),
    ({"tool_choice": "required"}, "tool_choice", "only allowed when tools are given"),
    ({"input": [{"role": "user", "content": ASK}, {"type": "function_call", "call_id": "c", "name": "lookup"}]},
     "input.1.arguments", "required, a string"),
])
def test_a_tool_it_cannot_serve_is_an_openai_400(served, kwargs, param, says):
    _, live = served
    with pytest.raises(openai.BadRequestError) as e:
        client(live).responses.create(model="potstill", **{"input": ASK, **kwargs})
    assert e.value.body["param"] == param and says in e.value.body["message"]


def test_a_response_has_every_field_the_sdk_s_own_type_requires(served, force):
    """The client builds responses without validating them, so a missing required field passes
    unnoticed there (usage.input_tokens_details.cache_write_tokens did): read strictly here."""
    from openai.types.responses import Response

    service, live = served
    force("teacher")
    with teacher_behind(service, openai_provider([])):
        for kwargs in ({}, {"tools": TOOLS}):
            raw = client(live).responses.with_raw_response.create(model="potstill", input=ASK, **kwargs)
            Response.model_validate(json.loads(raw.text))


def test_a_lone_surrogate_in_input_is_a_400(served):
    import httpx

    from tests.serve.conftest import SERVE_KEY

    _, live = served
    body = '{"model": "potstill", "input": [{"role": "user", "content": "a \\ud800 b"}]}'
    r = httpx.post(live.url + "/v1/responses", content=body, headers={"authorization": f"Bearer {SERVE_KEY}",
                                                                       "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input.0.content"
