"""A repeated escalation (the identical teacher request) against the real teacher server: answered
from serve's own earlier row where the teacher is deterministic or ``serve.reuse_escalations`` says
so, whole even when a client's stop string cut the first answer; asked again otherwise."""

from __future__ import annotations

import json
import math

from potstill.serve.routing import Routing
from tests.serve.conftest import client, rows, served_free_text


def reuse(service, value: bool | None) -> None:
    cfg = service.cfg
    service.cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"reuse_escalations": value})})


def test_a_repeated_escalation_is_answered_from_serves_own_row(served, teacher_server, force):
    """Found by an audit: the ledger lookup left out serve's own rows, so the same escalated request
    was sent to (and paid to) the teacher every time."""
    service, live = served
    force("teacher")
    msgs = [{"role": "user", "content": "the minister won the vote in the city"}]
    sent = sum(teacher_server.requests.values())
    first = client(live).chat.completions.create(model="potstill", messages=msgs)
    assert sum(teacher_server.requests.values()) == sent + 1 and rows(service)[-1]["cost_usd"] > 0
    raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=msgs)
    again = raw.parse()
    assert sum(teacher_server.requests.values()) == sent + 1  # no second teacher call
    assert raw.headers["x-potstill-reason"] == "low_confidence+cached"
    assert again.choices[0].message.content == first.choices[0].message.content
    assert (again.usage.prompt_tokens, again.usage.completion_tokens) == \
        (first.usage.prompt_tokens, first.usage.completion_tokens)
    row = rows(service)[-1]
    assert json.loads(row["response"])["teacher_cached"] is True
    assert row["request_hash"] == rows(service)[-2]["request_hash"]


def test_a_repeat_after_a_stop_cut_gets_the_whole_answer(tmp_path, tiny_model, teacher_server, monkeypatch):
    """A client's stop string cuts what is sent, not what serve keeps: a repeat without it is whole."""
    msgs = [{"role": "user", "content": "the film star and the music award"}]
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)  # the teacher
        sent = sum(teacher_server.requests.values())
        whole = client(live).chat.completions.create(model="potstill", messages=msgs, stop=["never said"])
        text = whole.choices[0].message.content
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        cut = client(live).chat.completions.create(model="potstill", messages=msgs, stop=[stop])
        assert cut.choices[0].message.content == text[: text.find(stop)] != text
        again = client(live).chat.completions.create(model="potstill", messages=msgs)
        assert again.choices[0].message.content == text and again.choices[0].finish_reason == \
            whole.choices[0].finish_reason
        assert sum(teacher_server.requests.values()) == sent + 1
        # the client's max_tokens is another teacher request: asked once, then reused
        for _ in range(2):
            short = client(live).chat.completions.create(model="potstill", messages=msgs, max_tokens=1)
        assert short.usage.completion_tokens == 1 and sum(teacher_server.requests.values()) == sent + 2


def test_a_sampling_teacher_is_asked_again_unless_the_setting_says_reuse(served, teacher_server, force):
    service, live = served
    force("teacher")
    saved_cfg, saved_temp = service.cfg, service.teacher.cfg.temperature
    msgs = [{"role": "user", "content": "the bank and the market and the election"}]
    try:
        service.teacher.cfg.temperature = 0.7  # each repeat a fresh sample, by default
        sent = sum(teacher_server.requests.values())
        for _ in range(2):
            client(live).chat.completions.create(model="potstill", messages=msgs)
        assert sum(teacher_server.requests.values()) == sent + 2
        reuse(service, True)
        raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=msgs)
        assert raw.headers["x-potstill-reason"] == "low_confidence+cached"
        assert sum(teacher_server.requests.values()) == sent + 2
        service.teacher.cfg.temperature = 0.0  # deterministic, but the setting says never
        reuse(service, False)
        for _ in range(2):
            client(live).chat.completions.create(model="potstill", messages=msgs)
        assert sum(teacher_server.requests.values()) == sent + 4
    finally:
        service.cfg = saved_cfg
        service.teacher.cfg.temperature = saved_temp


def test_a_tool_call_answered_again_gets_ids_of_its_own(served, force):
    """Found by a review: every repeat of a tool request answered from serve's row (or generate's)
    gave the client the teacher's first call id, so an agent asking the same twice in one thread
    had two tool results for one id. Each answer served again, whole or streamed, now has ids of its
    own, which its row keeps; the teacher is still asked once."""
    import re

    from tests.serve.conftest import teacher_behind
    from tests.serve.test_tool_calls import TOOLS, openai_provider, streamed

    service, live = served
    force("teacher")
    msgs = [{"role": "user", "content": "the match and the goal, look it up"}]
    seen: list = []
    with teacher_behind(service, openai_provider(seen)):
        whole = [client(live).chat.completions.create(model="potstill", messages=msgs, tools=TOOLS)
                 for _ in range(3)]
        ids = [c.choices[0].message.tool_calls[0].id for c in whole]
        logged = json.loads(rows(service)[-1]["response"])["tool_calls"][0]["id"]
        _, calls, _ = streamed(client(live), messages=msgs, tools=TOOLS)
        ids.append(calls[0]["id"])
        streamed_logged = json.loads(rows(service)[-1]["response"])["tool_calls"][0]["id"]
    assert len(seen) == 1 and ids[0] == "call_9"  # the teacher's own id for the call it was paid for
    assert len(set(ids)) == 4 and all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids[1:])
    assert (logged, streamed_logged) == (ids[2], ids[3])
    assert {c.choices[0].message.tool_calls[0].function.arguments for c in whole} == {'{"about": "match"}'}
