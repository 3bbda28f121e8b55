"""A lone UTF-16 surrogate escape ("\\ud800", what JavaScript's JSON.stringify writes for half an
emoji) in any field of a request: a 400 naming the field, in the shape of the path's API, and one
ledger row, whoever would have answered. No UTF-8 holds it: not the student's tokenizer, not a
request's hash, not the ledger, not an answer that echoes the field."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import SERVE_KEY, rows

LONE = "\\ud800"  # as the JSON body spells it
ASK = '[{"role": "user", "content": "the team won the match"}]'
CALL = '{"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", ' \
       '"function": {"name": "f", "arguments": "%s"}}]}'

# Each was a 500 (the responses' instructions after its row was logged ok and the response stored).
CASES = [
    ("/v1/completions", '{"model": "potstill", "prompt": "the team %s won"}' % LONE, "prompt"),
    ("/v1/completions", '{"model": "potstill", "prompt": ["a goal", "the %s team"]}' % LONE, "prompt.1"),
    ("/v1/responses", '{"model": "potstill", "input": "the team won", "instructions": "be %s brief"}' % LONE,
     "instructions"),
    ("/v1/responses", '{"model": "potstill", "input": "the team won", "previous_response_id": "resp_%s"}' % LONE,
     "previous_response_id"),
    ("/v1/responses", '{"model": "potstill", "input": "the team won", "tool_choice": "none", "tools": [{"type": '
     '"function", "name": "f", "description": "%s"}]}' % LONE, "tools.0.description"),
    ("/v1/chat/completions", '{"model": "potstill%s", "messages": %s}' % (LONE, ASK), "model"),
    ("/v1/chat/completions", '{"model": "potstill", "messages": %s, "tools": [{"type": "function", "function": '
     '{"name": "f", "description": "%s"}}]}' % (ASK, LONE), "tools.0.function.description"),
    ("/v1/chat/completions", '{"model": "potstill", "messages": [%s, %s, {"role": "tool", "tool_call_id": "call_1", '
     '"content": "2-1"}]}' % (ASK[1:-1], CALL % LONE), "messages.1.tool_calls.0.function.arguments"),
    ("/v1/messages", '{"model": "potstill", "max_tokens": 8, "messages": [%s, {"role": "assistant", "content": '
     '[{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "%s"}}]}, {"role": "user", "content": '
     '[{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]}' % (ASK[1:-1], LONE),
     "messages.1.content.0.input.a"),
]


@pytest.mark.parametrize("who", ["student", "teacher"])
@pytest.mark.parametrize("path, body, param", CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_a_lone_surrogate_in_any_field_is_a_400_naming_it(served, force, who, path, body, param):
    service, live = served
    force(who)
    before = len(rows(service))
    r = httpx.post(live.url + path, content=body, timeout=60, headers={
        "Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(f"{param}: "), error
    assert "surrogate" in error["message"] and error.get("param", param) == param
    [row] = rows(service)[before:]
    assert row["status"] == "error" and row["error"].startswith(f"400: {param}: "), row
