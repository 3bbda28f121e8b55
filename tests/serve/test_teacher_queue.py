"""Escalations waiting for one of the teacher's ``teacher.concurrency`` slots, against a served
free-text run on loopback whose teacher (an OpenAI-compatible server on loopback) holds its first
answer: a request whose client has left before it gets a slot is never sent (its row says so),
identical requests in flight together are one teacher call, which outlives a cancelled asker.
Official openai client."""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import contextmanager

import openai
from fastapi import Body, FastAPI

from potstill.serve.routing import Routing
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import client, rows, served_free_text


def _holding_teacher(asked: list[str], release: threading.Event) -> FastAPI:
    """An OpenAI-compatible server that notes each chat's question and answers once ``release`` is set."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> dict:
        asked.append(body["messages"][-1]["content"])
        release.wait(timeout=30)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}}

    return app


@contextmanager
def one_slot_teacher(service):
    """The served run's teacher: ``_holding_teacher`` behind one slot (``teacher.concurrency`` 1),
    every request routed to it. Yields (the questions it was asked, its release)."""
    asked, release = [], threading.Event()
    saved = service.teacher
    with LiveServer(_holding_teacher(asked, release)) as fake:
        service.teacher = get_teacher(saved.cfg.model_copy(update={"base_url": fake.url + "/v1", "concurrency": 1}),
                                      service.task)
        service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)
        try:
            yield asked, release
        finally:
            release.set()
            service.teacher.close()
            service.teacher = saved


def wait_for(check, timeout_s: float = 20.0) -> None:
    deadline = time.time() + timeout_s
    while not check() and time.time() < deadline:
        time.sleep(0.05)
    assert check()


def ask(live, text: str, out: list, **kw) -> threading.Thread:
    def run() -> None:
        try:
            c = client(live).with_options(**kw) if kw else client(live)
            out.append(c.chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}]))
        except openai.APIError as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_an_escalation_whose_client_left_while_it_waited_for_a_slot_is_not_sent(tmp_path, tiny_model, teacher_server,
                                                                               monkeypatch):
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch, reuse_escalations=False) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            first, second = [], []
            t1 = ask(live, "the first one takes the slot", first)
            wait_for(lambda: asked)
            t2 = ask(live, "the second one waits and leaves", second, timeout=0.5)
            t2.join()
            assert isinstance(second[0], openai.APITimeoutError)  # its client gave up while it waited
            release.set()
            t1.join()
            wait_for(lambda: len(rows(service)) == 2)
        assert asked == ["the first one takes the slot"]  # before, the second was sent (and paid) after its client left
        by_text = {json.loads(r["request"])["messages"][-1]["content"]: r for r in rows(service)}
        assert by_text["the first one takes the slot"]["status"] == "ok"
        gone = by_text["the second one waits and leaves"]
        assert (gone["status"], gone["role"], gone["cost_usd"]) == ("error", "teacher", 0)
        assert gone["error"].startswith("499: the client closed the request before the teacher was asked")


def test_identical_escalations_in_flight_together_are_one_teacher_call(tmp_path, tiny_model, teacher_server,
                                                                      monkeypatch):
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            out: list = []
            threads = [ask(live, "the same question", out)]
            wait_for(lambda: asked)
            threads += [ask(live, "the same question", out) for _ in range(3)]
            time.sleep(0.5)  # the three are waiting on the first's call
            release.set()
            for t in threads:
                t.join()
        assert asked == ["the same question"]  # before, one teacher call each (4 paid)
        assert [c.choices[0].message.content for c in out] == ["an answer"] * 4
        logged = rows(service)
        assert len(logged) == 4 and {r["status"] for r in logged} == {"ok"}
        # One row pays the teacher's call; the others were answered by it, as from the ledger.
        assert sorted(json.loads(r["response"])["reason"] for r in logged) == \
            ["low_confidence"] + ["low_confidence+cached"] * 3


def _queued(service) -> int:
    """How many requests are waiting on the teacher calls in flight (``TeacherQueue``)."""
    queue = service._teacher_queue
    return 0 if queue is None else sum(c.askers for c in queue.calls.values())


def test_a_cancelled_asker_leaves_the_shared_call_to_the_others(tmp_path, tiny_model, teacher_server, monkeypatch):
    """The first asker of a call a chat shares is a background response, then cancelled (its task
    cancelled by the server): before, the shared call was cancelled with it and the chat failed."""
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            bg = client(live).responses.create(model="potstill", input="the same question", background=True)
            wait_for(lambda: asked)
            out: list = []
            t = ask(live, "the same question", out)
            wait_for(lambda: _queued(service) == 2)  # the chat waits on the background response's call
            assert client(live).responses.cancel(bg.id).status == "cancelled"
            time.sleep(0.3)  # the chat's wait outlives the cancel
            release.set()
            t.join()
            wait_for(lambda: len(rows(service)) == 3)
        assert asked == ["the same question"]
        assert not isinstance(out[0], Exception) and out[0].choices[0].message.content == "an answer"
        # One row per request, and the call's own (written as the call ends, the chat's row as it is answered).
        call, = [r for r in rows(service) if (r["error"] or "").startswith("unclaimed:")]
        cancelled, chat = [r for r in rows(service) if r is not call and r["id"] != call["id"]]
        assert cancelled["status"] == "error" and cancelled["cost_usd"] == 0
        # The chat joined a call sent for the background response, which was to pay: the chat is
        # answered as from the ledger, and the call, its payer gone, pays in its own row, once.
        assert chat["status"] == "ok" and json.loads(chat["response"])["teacher_cached"] is True  # (its cost: the student's)
        assert json.loads(chat["response"])["reason"] == "low_confidence+cached"
        assert call["cost_usd"] > 0


def test_a_call_whose_every_asker_was_cancelled_after_it_was_sent_still_has_its_cost_logged(
        tmp_path, tiny_model, teacher_server, monkeypatch):
    """A background response escalated, then cancelled while the teacher answers: the teacher
    finishes and bills the call (20 + 2 tokens at $2 / $8 per million), and the ledger is the bill.
    Before, the only row was the cancelled request's, at $0."""
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            bg = client(live).responses.create(model="potstill", input="asked, then cancelled", background=True)
            wait_for(lambda: asked)
            assert client(live).responses.cancel(bg.id).status == "cancelled"
            wait_for(lambda: len(rows(service)) == 1)  # the cancelled request's row
            release.set()
            wait_for(lambda: len(rows(service)) == 2)
        cancelled, call = rows(service)
        assert (cancelled["status"], cancelled["cost_usd"]) == ("error", 0)
        assert (call["status"], call["role"], call["input_tokens"], call["output_tokens"]) == ("error", "teacher", 20, 2)
        assert math.isclose(call["cost_usd"], (20 * 2.0 + 2 * 8.0) / 1e6)
        assert call["error"].startswith("unclaimed: the teacher's answer came after")


def test_identical_escalations_waiting_for_a_slot_are_sent_for_those_still_there(tmp_path, tiny_model,
                                                                                teacher_server, monkeypatch):
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            first, stays, leaves = [], [], []
            t1 = ask(live, "the first one takes the slot", first)
            wait_for(lambda: asked)
            gone = [ask(live, "both leave", leaves, timeout=0.5) for _ in range(2)]
            t2 = ask(live, "one stays", stays)
            t3 = ask(live, "one stays", leaves, timeout=0.5)
            for t in (*gone, t3):
                t.join()
            wait_for(lambda: len(rows(service)) == 3)  # the three that left are logged at once, not at the slot
            release.set()
            t1.join()
            t2.join()
            wait_for(lambda: len(rows(service)) == 5)
        assert asked == ["the first one takes the slot", "one stays"]  # "both leave" is never sent
        assert all(isinstance(e, openai.APITimeoutError) for e in leaves)
        assert stays[0].choices[0].message.content == "an answer"
        by_status = sorted((json.loads(r["request"])["messages"][-1]["content"], r["status"], r["error"][:4] if r["error"] else None)
                           for r in rows(service))
        assert by_status == [("both leave", "error", "499:"), ("both leave", "error", "499:"),
                             ("one stays", "error", "499:"), ("one stays", "ok", None),
                             ("the first one takes the slot", "ok", None)]


def _text(row: dict) -> str:
    return json.loads(row["request"])["messages"][-1]["content"]


def test_past_the_waiting_limit_an_escalation_is_a_429_the_sdk_retries_after_its_retry_after(
        tmp_path, tiny_model, teacher_server, monkeypatch):
    """Before, escalations waited for a teacher slot without bound, each up to teacher.timeout_s."""
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch,
                          max_waiting_escalations=1) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            first, waits, joins, retried = [], [], [], []
            threads = [ask(live, "the first one takes the slot", first)]
            wait_for(lambda: asked)
            threads.append(ask(live, "this one waits", waits))
            wait_for(lambda: service._teacher_queue.open == 2)
            threads.append(ask(live, "this one waits", joins))  # joins the waiting call: no place taken
            raw = client(live).chat.completions.with_raw_response
            try:
                raw.create(model="potstill", messages=[{"role": "user", "content": "one too many"}])
                raise AssertionError("no 429")
            except openai.RateLimitError as e:
                refused = e
            assert refused.status_code == 429
            assert refused.body["type"] == "requests" and refused.body["code"] == "rate_limit_exceeded"
            assert "serve.max_waiting_escalations" in refused.body["message"]
            # No teacher call has ended yet: 1 s (the openai SDK reads retry-after-ms first).
            assert (refused.response.headers["retry-after"], refused.response.headers["retry-after-ms"]) == ("1", "1000")
            # The SDK's own retries (2 by default) wait out the Retry-After; the teacher is free by then.
            threads.append(ask(live, "retried by the sdk", retried, max_retries=2))
            wait_for(lambda: [r for r in rows(service) if _text(r) == "retried by the sdk"])
            release.set()
            for t in threads:
                t.join()
        assert [c.choices[0].message.content for c in first + waits + joins + retried] == ["an answer"] * 4
        assert asked == ["the first one takes the slot", "this one waits", "retried by the sdk"]
        logged = rows(service)
        refusal = next(r for r in logged if _text(r) == "one too many")
        assert (refusal["status"], refusal["role"], refusal["cost_usd"]) == ("error", "teacher", 0)
        assert refusal["error"].startswith("429: the teacher is busy")
        sdk = [r["status"] for r in logged if _text(r) == "retried by the sdk"]
        assert sdk[0] == "error" and sdk[-1] == "ok"  # one row per HTTP request: the 429s, then the answer


def test_batch_lines_wait_for_the_teacher_past_the_waiting_limit(tmp_path, tiny_model, teacher_server, monkeypatch):
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch,
                          max_waiting_escalations=0) as (service, live):
        with one_slot_teacher(service) as (asked, release):
            cl = client(live)
            data = "".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "potstill", "messages": [{"role": "user", "content": f"line {i}"}]}})
                           + "\n" for i in range(3)).encode()
            fid = cl.files.create(file=("in.jsonl", data), purpose="batch").id
            b = cl.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
            wait_for(lambda: asked)
            release.set()
            wait_for(lambda: cl.batches.retrieve(b.id).status == "completed", timeout_s=60)
        b = cl.batches.retrieve(b.id)
        assert (b.request_counts.completed, b.request_counts.failed) == (3, 0)
        assert sorted(asked) == ["line 0", "line 1", "line 2"]


def _streamed(live, out: dict) -> threading.Thread:
    """A streamed chat of QUESTION in a thread: ``out`` gets ``first`` (set at its first text), its
    route header ``reason``, its whole text and its last chunk's ``route``."""
    out["first"] = threading.Event()

    def run() -> None:
        with client(live).chat.completions.with_streaming_response.create(
                model="potstill", messages=[{"role": "user", "content": QUESTION}], stream=True) as r:
            out["reason"] = r.headers["x-potstill-reason"]
            text = []
            for ch in r.parse():
                if ch.choices and ch.choices[0].delta.content:
                    text.append(ch.choices[0].delta.content)
                    out["first"].set()
                out["route"] = (ch.model_extra or {}).get("potstill") or out.get("route")
            out["text"] = "".join(text)

    t = threading.Thread(target=run)
    t.start()
    return t


QUESTION = "the minister said the party will vote"


def test_a_streamed_request_joining_an_identical_streamed_call_streams_it_too(tmp_path, tiny_model, teacher_server,
                                                                             monkeypatch):
    """Before, the request that joined got the teacher's answer in one chunk once it was whole."""
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)
        sent = sum(teacher_server.requests.values())
        teacher_server.hold = hold = threading.Event()  # its streams wait after their first token
        try:
            first, joined = {}, {}
            threads = [_streamed(live, first)]
            assert first["first"].wait(20)
            threads.append(_streamed(live, joined))
            # the teacher is still writing: the text so far, then the rest as it comes
            assert joined["first"].wait(20) and teacher_server.holding.is_set() and not hold.is_set()
        finally:
            hold.set()
            for t in threads:
                t.join()
            teacher_server.hold = None
        assert sum(teacher_server.requests.values()) == sent + 1
        assert joined["text"] == first["text"] != ""
        # The first asker's row pays the call; the one that joined is answered as from the ledger.
        by_reason = {json.loads(r["response"])["reason"]: r for r in rows(service)}
        assert sorted(by_reason) == ["low_confidence", "low_confidence+cached"]
        assert [json.loads(by_reason[k]["response"]).get("teacher_cached") for k in sorted(by_reason)] == [None, True]
        # Its route headers say so as its row and last chunk do (before, the headers said low_confidence).
        assert (joined["reason"], joined["route"]["reason"]) == ("low_confidence+cached",) * 2
        assert (first["reason"], first["route"]["reason"]) == ("low_confidence",) * 2
