"""Stored responses on ``/v1/responses``, through the official openai client: a conversation
continued with ``previous_response_id`` (the model reads the earlier turns, the ledger row holds
them), ``responses.retrieve`` (whole, or its events again), ``responses.input_items.list`` (a page
at a time), ``responses.delete``, ``store: false`` and ``serve.store_responses: false``; all kept
in the run's SQLite ledger, so a restarted server still has them."""

from __future__ import annotations

import json
import time

import openai
import pytest

from potstill.ledger import Ledger, ServedCall
from tests.serve.conftest import MSG, client, rows, teacher_behind
from tests.serve.test_responses_tools import ASK, TOOLS
from tests.serve.test_tool_calls import openai_provider

FIRST, SECOND = MSG[0]["content"], "and the election vote?"


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_a_conversation_continues_from_its_stored_response(served, force, who):
    service, live = served
    force(who)
    cl = client(live)
    r1 = cl.responses.create(model="potstill", input=FIRST)
    assert r1.store is True and r1.previous_response_id is None
    r2 = cl.responses.create(model="potstill", input=SECOND, previous_response_id=r1.id)
    assert r2.previous_response_id == r1.id and r2.id != r1.id
    conversation = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": r1.output_text},
                    {"role": "user", "content": SECOND}]
    # The answer the whole conversation gets as a chat completion: the model read the earlier turns.
    want = cl.chat.completions.create(model="potstill", messages=conversation).choices[0].message.content
    assert r2.output_text == want
    row = [r for r in rows(service) if json.loads(r["request"]).get("previous_response_id") == r1.id][-1]
    assert ServedCall.from_row(row).messages == conversation and row["role"] == who


def test_the_teacher_reads_earlier_calls_and_gets_the_output_of_its_call(served, force):
    """The Agents SDK's way with a stored conversation: the next request sends only the output of
    the call the previous response made."""
    service, live = served
    force("teacher")
    seen: list = []
    cl = client(live)
    with teacher_behind(service, openai_provider(seen)):
        r1 = cl.responses.create(model="potstill", input=ASK, tools=TOOLS)
        [call] = [item for item in r1.output if item.type == "function_call"]
        r2 = cl.responses.create(model="potstill", previous_response_id=r1.id, tools=TOOLS, tool_choice="none",
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": "a football match"}])
    assert r2.output_text == "sports"
    msgs = [m for m in seen[1]["messages"] if m["role"] != "system"]
    assert msgs[0] == {"role": "user", "content": ASK}
    assert msgs[1]["role"] == "assistant" and msgs[1]["tool_calls"][0]["id"] == call.call_id
    assert msgs[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "a football match"}
    items = list(cl.responses.input_items.list(r2.id, order="asc"))
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].id == call.id  # the earlier output item, as the first response gave it


def test_retrieve_gives_the_response_back_whole_or_as_events(served, force):
    _, live = served
    force("student")
    cl = client(live)
    r = cl.responses.create(model="potstill", input=FIRST, metadata={"ticket": "T-7"})
    got = cl.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump() and got.metadata == {"ticket": "T-7"}
    events = list(cl.responses.retrieve(r.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert events[-1].response.model_dump() == r.model_dump()
    later = list(cl.responses.retrieve(r.id, stream=True, starting_after=2))
    assert [e.sequence_number for e in later] == [e.sequence_number for e in events][3:]
    # background: queued when the call returns, answered after; a client polls retrieve until it is done.
    bg = cl.responses.create(model="potstill", input=FIRST, background=True)
    assert bg.status == "queued" and bg.background is True and bg.output == []
    t0 = time.monotonic()
    while bg.status in ("queued", "in_progress") and time.monotonic() - t0 < 30:
        time.sleep(0.02)
        bg = cl.responses.retrieve(bg.id)
    assert bg.status == "completed" and bg.output_text == r.output_text and bg.background is True
    # A streamed response is kept as its last event gave it.
    streamed = list(cl.responses.create(model="potstill", input=FIRST, stream=True))[-1].response
    assert cl.responses.retrieve(streamed.id).model_dump() == streamed.model_dump()


def test_input_items_list_the_whole_conversation_a_page_at_a_time(served, force):
    _, live = served
    force("student")
    cl = client(live)
    r1 = cl.responses.create(model="potstill", input=FIRST)
    r2 = cl.responses.create(model="potstill", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "and the "}, {"type": "input_text", "text": "election vote?"}]}],
        previous_response_id=r1.id)
    newest_first = list(cl.responses.input_items.list(r2.id))
    assert [(i.type, i.role) for i in newest_first] == [("message", "user"), ("message", "assistant"),
                                                        ("message", "user")]
    assert [p.text for p in newest_first[0].content] == ["and the ", "election vote?"]
    assert newest_first[1].id == r1.output[0].id and newest_first[1].content[0].text == r1.output_text
    assert newest_first[2].content[0].text == FIRST and newest_first[2].id.startswith("msg_")
    page = cl.responses.input_items.list(r2.id, order="asc", limit=2)
    assert [i.id for i in page.data] == [i.id for i in newest_first[::-1][:2]] and page.has_more
    # The SDK pages on with `after`: every item once, in order.
    assert [i.id for i in cl.responses.input_items.list(r2.id, order="asc", limit=1)] == \
        [i.id for i in newest_first[::-1]]
    with pytest.raises(openai.BadRequestError) as e:
        cl.responses.input_items.list(r2.id, after="msg_nothing")
    assert e.value.body["param"] == "after"


def test_delete_forgets_a_response_and_a_later_turn_keeps_its_conversation(served, force):
    _, live = served
    force("student")
    cl = client(live)
    r1 = cl.responses.create(model="potstill", input=FIRST)
    r2 = cl.responses.create(model="potstill", input=SECOND, previous_response_id=r1.id)
    assert cl.responses.delete(r1.id) is None
    with pytest.raises(openai.NotFoundError) as e:
        cl.responses.retrieve(r1.id)
    assert r1.id in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        cl.responses.delete(r1.id)
    with pytest.raises(openai.BadRequestError) as e:
        cl.responses.create(model="potstill", input=SECOND, previous_response_id=r1.id)
    assert (e.value.body["param"], e.value.body["code"]) == ("previous_response_id", "previous_response_not_found")
    r3 = cl.responses.create(model="potstill", input="and the film?", previous_response_id=r2.id)
    assert [i.content[0].text for i in cl.responses.input_items.list(r3.id, order="asc") if i.role == "user"] == \
        [FIRST, SECOND, "and the film?"]


def test_store_false_keeps_nothing(served, force):
    service, live = served
    force("student")
    cl = client(live)
    r = cl.responses.create(model="potstill", input=FIRST, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        cl.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        cl.responses.create(model="potstill", input=SECOND, previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"
    # The served request is in the ledger all the same: store speaks of the response object only.
    assert json.loads(rows(service)[-2]["request"])["store"] is False
    with pytest.raises(openai.BadRequestError) as e:
        cl.responses.create(model="potstill", input=FIRST, metadata={f"k{i}": "v" for i in range(17)})
    assert e.value.body["param"] == "metadata"


def test_a_server_that_keeps_none_says_so(served, force):
    service, live = served
    force("student")
    cl = client(live)
    kept = cl.responses.create(model="potstill", input=FIRST)
    service.cfg.serve.store_responses = False
    try:
        r = cl.responses.create(model="potstill", input=FIRST)
        assert r.store is False
        with pytest.raises(openai.BadRequestError) as e:
            cl.responses.create(model="potstill", input=SECOND, previous_response_id=kept.id)
        assert "serve.store_responses is false" in e.value.body["message"]
        with pytest.raises(openai.NotFoundError) as e:
            cl.responses.retrieve(r.id)
        assert "serve.store_responses is false" in e.value.body["message"]
    finally:
        service.cfg.serve.store_responses = True


def test_responses_live_in_the_ledger_file(served, force):
    """A restarted server reads them from the same SQLite file."""
    service, live = served
    force("student")
    r = client(live).responses.create(model="potstill", input=FIRST)
    with Ledger(service.ledger.path) as again:
        response, items = again.stored_response(r.id)
    assert response["output"][0]["content"][0]["text"] == r.output_text
    assert items == [{"type": "message", "id": items[0]["id"], "role": "user", "status": "completed",
                      "content": [{"type": "input_text", "text": FIRST}]}]


def test_an_escalation_streamed_live_is_kept_as_it_ended(served, force, teacher_server):
    from tests.serve.test_live_stream import held

    service, live = served
    force("teacher")
    service.cfg.serve.reuse_escalations = False  # asked anew: the teacher's answer streams as it writes it
    events = []
    try:
        with held(teacher_server) as hold:  # the teacher waits after its first token until a delta came
            for ev in client(live).responses.create(model="potstill", input=SECOND, stream=True):
                events.append(ev)
                if ev.type == "response.output_text.delta":
                    hold.set()
    finally:
        service.cfg.serve.reuse_escalations = None
    assert len([e for e in events if e.type == "response.output_text.delta"]) > 1  # live, not whole
    done = events[-1].response
    assert done.model_extra["potstill"]["answered_by"] == "teacher" and done.output_text
    kept = client(live).responses.retrieve(done.id)
    assert kept.model_dump() == done.model_dump() and kept.store is True


def _slow_provider(seconds: float):
    """OpenAI's chat completions on loopback, answering 'sports' after ``seconds``."""
    from fastapi import Body, FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> dict:
        time.sleep(seconds)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}}

    return app


def test_a_background_response_returns_before_its_answer_and_can_be_cancelled(served, force):
    service, live = served
    force("teacher")
    cl = client(live)
    with teacher_behind(service, _slow_provider(1.5)):
        t0 = time.monotonic()
        bg = cl.responses.create(model="potstill", input=FIRST, background=True)
        assert time.monotonic() - t0 < 1.0 and bg.status == "queued"  # not held for the teacher's 1.5 s
        done = cl.responses.create(model="potstill", input=FIRST, background=True)
        got = cl.responses.cancel(bg.id)
        assert got.status == "cancelled" and cl.responses.retrieve(bg.id).status == "cancelled"
        assert "cancelled before it was answered" in (rows(service)[-1]["error"] or "")  # its ledger row
        while done.status == "queued":
            time.sleep(0.05)
            done = cl.responses.retrieve(done.id)
    assert done.status == "completed" and done.output_text == "sports"
    assert cl.responses.cancel(done.id).status == "completed"  # answered already: comes back as it is
    with pytest.raises(openai.BadRequestError) as e:
        cl.responses.cancel(cl.responses.create(model="potstill", input=FIRST).id)
    assert "Only background responses" in e.value.body["message"]
    for kw, param in (({"stream": True}, "stream"), ({"store": False}, "store")):
        with pytest.raises(openai.BadRequestError) as e:
            cl.responses.create(model="potstill", input=FIRST, background=True, **kw)
        assert e.value.body["param"] == param


def test_a_background_response_a_stopped_server_left_queued_fails_at_the_next_start(served):
    """A server killed while answering a background response left it ``queued`` for good: a client
    polling retrieve waited forever. The next server asks it again where its request was kept
    (``test_background_resume.py``), else keeps it as ``failed``, with why, and touches no other
    response (its input items and previous response id stay)."""
    from potstill.serve import serve_key
    from potstill.serve.app import build_app
    from tests.helpers.live_server import LiveServer

    import subprocess
    import sys

    service, _ = served
    left = {"id": "resp_left0000000000000000000", "object": "response", "created_at": 1, "status": "queued",
            "background": True, "model": "potstill", "output": [], "usage": None}
    done = {**left, "id": "resp_done0000000000000000000", "status": "completed"}
    alive = {**left, "id": "resp_live0000000000000000000"}
    items = [{"id": "msg_1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}]
    service.ledger.store_response(left, items, "resp_before", answering=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    # One kept with its request, which cannot be asked again: its previous response is gone.
    refused = {**left, "id": "resp_refu0000000000000000000"}
    body = {"model": "potstill", "input": "x", "previous_response_id": "resp_deleted", "background": True, "store": True}
    service.ledger.store_response(refused, items, "resp_deleted", answering=True,
                                  request={"body": json.dumps(body), "request_id": None})
    for rid in (left["id"], refused["id"]):
        service.ledger._db.execute("UPDATE responses SET pid=? WHERE id=?", (int(gone.stdout), rid))
    service.ledger.store_response(done, items)
    service.ledger.store_response(alive, items, answering=True)  # this process: a server still answering it
    with LiveServer(build_app(service, serve_key(service.cfg))) as again:
        cl = client(again)
        got = cl.responses.retrieve(left["id"])
        assert got.status == "failed" and got.error.code == "server_error"
        assert "the server stopped before this background response was answered, and its request was not kept" \
            in got.error.message  # (kept before migration 11; test_background_resume.py asks one again)
        got = cl.responses.retrieve(refused["id"])
        assert got.status == "failed" and "Previous response with id 'resp_deleted' not found" in got.error.message
        assert cl.responses.retrieve(done["id"]).status == "completed"
        assert cl.responses.retrieve(alive["id"]).status == "queued"  # a server on this run answers it
    with Ledger(service.ledger.path, readonly=True) as ledger:
        row = ledger._db.execute("SELECT previous_id, input FROM responses WHERE id=?", (left["id"],)).fetchone()
    assert row[0] == "resp_before" and json.loads(row[1]) == items
    assert service.ledger.unfinished_background() == []
    service.ledger.delete_response(alive["id"])
