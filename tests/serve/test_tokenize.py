"""vLLM's ``/tokenize`` and ``/detokenize`` on the served run, over HTTP on loopback: the
student's prompt tokens as it reads a chat (the run's instruction in, a client's system prompt
out), the count its chat completion reports as prompt_tokens, and OpenAI-shaped errors."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import MSG, SERVE_KEY, client


def post(live, path: str, body: dict, key: str | None = SERVE_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(live.url + path, json=body, headers=headers, timeout=30)


def test_tokenize_gives_the_student_s_prompt_tokens(served, force):
    service, live = served
    force("student")
    r = post(live, "/tokenize", {"model": "potstill", "messages": MSG, "return_token_strs": True})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["count"] == len(got["tokens"]) == len(got["token_strs"]) > 0
    assert got["max_model_len"] == service.engine.context
    # What the student answers from: its chat completion counts the same prompt tokens.
    chat = client(live).chat.completions.create(model="potstill", messages=MSG)
    assert chat.usage.prompt_tokens == got["count"]
    text = post(live, "/detokenize", {"tokens": got["tokens"]}).json()["prompt"]
    # The tiny test tokenizer knows few words ("won" is <unk>): the run's instruction, the user's turn.
    assert "classify the text" in text and "user the team" in text and "the match" in text
    # A client's system prompt is replaced by the run's instruction, as on chat completions; a
    # prompt is one user message, as on /v1/completions.
    with_system = post(live, "/tokenize", {"messages": [{"role": "system", "content": "be a pirate"}, *MSG]}).json()
    as_prompt = post(live, "/tokenize", {"prompt": MSG[0]["content"]}).json()
    assert with_system["tokens"] == got["tokens"] == as_prompt["tokens"]
    parts = post(live, "/tokenize", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "the team won "}, {"type": "text", "text": "the match"}]}]}).json()
    assert parts["tokens"] == got["tokens"]


def test_a_chat_with_tool_turns_counts_what_the_student_reads(served, force):
    """Found by a review: /tokenize kept each message's role and text, so an assistant turn's
    tool_calls were left out (an empty turn) and a tool result read 'Result of tool', where the
    student answering the chat reads the call's JSON and 'Result of NAME': a count of 60 where chat
    completions reported prompt_tokens 80. Both now build the one prompt (``student_turns``)."""
    _, live = served
    force("student")
    calls = [{"id": "call_1", "type": "function", "function": {"name": "topic", "arguments": '{"about": "match"}'}}]
    chat = [{"role": "user", "content": "the team won the match"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "sports"},
            {"role": "user", "content": "so the topic is"}]
    got = post(live, "/tokenize", {"messages": chat}).json()
    c = client(live).chat.completions.create(model="potstill", messages=chat)
    assert c.model_extra["potstill"]["answered_by"] == "student"
    assert got["count"] == c.usage.prompt_tokens
    text = post(live, "/detokenize", {"tokens": got["tokens"]}).json()["prompt"]
    # (The tiny test tokenizer spaces its tokens and knows few words.)
    assert '" name " : " topic "' in text and "of topic : sports" in text, text


@pytest.mark.parametrize("path, body, status, param", [
    ("/tokenize", {"prompt": "hi", "messages": MSG}, 400, "messages"),
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "hi", "model": "gpt-9"}, 404, "model"),
    ("/tokenize", {"prompt": "hi", "chat_template": "{{ messages }}"}, 400, "chat_template"),
    ("/tokenize", {"messages": [{"role": "user", "content": 7}]}, 400, "messages.0.content"),
    ("/tokenize", {"messages": [{"role": "banana", "content": "hi"}]}, 400, "messages.0.role"),
    ("/detokenize", {"tokens": [1, 10**9]}, 400, "tokens.1"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
    ("/tokenize", {"prompt": "x" * 30_000}, 413, None),
])
def test_what_it_cannot_tokenize_is_an_openai_error(served, path, body, status, param):
    _, live = served
    r = post(live, path, body)
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text


def test_tokenize_needs_the_key(served):
    _, live = served
    assert post(live, "/tokenize", {"prompt": "hi"}, key=None).status_code == 401
    assert post(live, "/detokenize", {"tokens": [1]}, key="sk-wrong").status_code == 401


def test_a_lone_surrogate_is_a_400(served):
    _, live = served
    for path, raw in (("/tokenize", b'{"prompt": "a \\ud800 b"}'), ("/tokenize", b'{"messages": [{"role": "user", '
                                                                             b'"content": "\\udfff"}]}')):
        r = httpx.post(live.url + path, content=raw, timeout=30, headers={
            "Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
        assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"], r.text
