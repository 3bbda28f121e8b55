"""`potstill serve` against the official openai client: sync, async, streaming, answers cut to a
client's limits, and errors, with a real teacher server on loopback and every request checked in
the SQLite ledger. The teacher's side of a request (escalation, its failures, tool turns) is in
test_escalation.py."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import sys

import httpx
import openai
import pytest

from potstill.serve.routing import Routing
from tests.serve.conftest import MSG, SERVE_KEY, client, rows, served_free_text


def test_sync_completion_says_who_answered_and_is_logged(served):
    service, live = served
    before = len(rows(service))
    raw = client(live).chat.completions.with_raw_response.create(model="tiny-teacher", messages=MSG)
    c = raw.parse()
    route = c.model_extra["potstill"]
    assert raw.headers["x-potstill-answered-by"] == route["answered_by"]
    assert raw.headers["x-potstill-reason"] == route["reason"]
    expected = service.routing.decide(route["confidence"], route["ood_distance"], None)
    assert (route["answered_by"], route["reason"]) == expected
    assert c.choices[0].message.content
    new = rows(service)[before:]
    assert len(new) == 1 and new[0]["status"] == "ok" and new[0]["role"] == route["answered_by"]
    logged = json.loads(new[0]["response"])
    assert logged["content"] == c.choices[0].message.content and logged["reason"] == route["reason"]
    assert SERVE_KEY not in json.dumps(new[0])


def test_async_concurrent_requests_are_batched_and_all_logged(served):
    service, live = served
    before = len(rows(service))

    async def go():
        c = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
        texts = ["new phone software", "a vote in the election", "bank profit", "the film star"] * 3
        out = await asyncio.gather(*(c.chat.completions.create(
            model="potstill", messages=[{"role": "user", "content": t}]) for t in texts))
        await c.close()
        return out

    out = asyncio.run(go())
    assert len(out) == 12 and all(o.choices[0].message.content for o in out)
    assert len(rows(service)) == before + 12


def test_streaming_matches_non_streaming(served, force):
    _, live = served
    force("student")
    cl = client(live)
    full = cl.chat.completions.create(model="potstill", messages=MSG).choices[0].message.content
    chunks = list(cl.chat.completions.create(model="potstill", messages=MSG, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    force("teacher")
    with cl.chat.completions.with_streaming_response.create(model="potstill", messages=MSG, stream=True) as r:
        assert r.headers["x-potstill-answered-by"] == "teacher"
        text = "".join(ch.choices[0].delta.content or "" for ch in r.parse() if ch.choices)  # read whole: logged
    assert text == cl.chat.completions.create(model="potstill", messages=MSG).choices[0].message.content


def test_errors_are_openai_shaped_and_logged(served):
    service, live = served
    before = len(rows(service))
    with pytest.raises(openai.AuthenticationError) as e:
        client(live, key="wrong").chat.completions.create(model="potstill", messages=MSG)
    assert e.value.status_code == 401 and "API key" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=[])
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client(live).chat.completions.create(model="potstill", messages=MSG, n=2)
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=[{"role": "system", "content": "hi"}])
    assert "user message" in e.value.message
    with pytest.raises(openai.APIStatusError) as e:
        client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": "x " * 20000}])
    assert e.value.status_code == 413
    r = httpx.post(live.url + "/v1/chat/completions", content=b"{not json", timeout=10,
                   headers={"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type"}
    r = httpx.get(live.url + "/v1/nothing", headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    new = rows(service)[before:]
    # One row per rejected chat request (the 404 is not a chat request), none with a key in it.
    assert [r["status"] for r in new] == ["error"] * 6
    assert [r["error"][:3] for r in new] == ["401", "400", "400", "400", "413", "400"]
    assert all(SERVE_KEY not in json.dumps(r) and "wrong" not in (r["request"] or "") for r in new)


def test_models_health_metrics(served):
    service, live = served
    ids = [m.id for m in client(live).models.list().data]
    assert ids == [service.student_name, "potstill", "tiny-teacher"]
    h = httpx.get(live.url + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["teacher"] == "tiny-teacher"
    client(live).chat.completions.create(model="potstill", messages=MSG)
    text = httpx.get(live.url + "/metrics", headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=10).text
    assert "potstill_requests_total{" in text and "potstill_request_seconds_bucket" in text


def test_with_a_key_set_every_path_but_health_needs_it(served):
    """Found by an audit: with serve's key set, /metrics (traffic by route and outcome), /docs, /redoc
    and /openapi.json answered anyone; only /v1/* and /admin/reload asked for the key. Every path
    but /health (a load balancer's probe) needs it now: Prometheus sends it as a bearer token."""
    service, live = served
    before = len(rows(service))
    key = {"Authorization": f"Bearer {SERVE_KEY}"}
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(live.url + path, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["error"]["type"] == "invalid_request_error" and SERVE_KEY not in r.text
        assert httpx.get(live.url + path, headers=key, timeout=10).status_code == 200, path
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
    assert len(rows(service)) == before  # none of them is a chat request: no ledger row


def test_every_path_that_needs_the_key_takes_it_as_x_api_key_too(served):
    """Found by a review: POST /admin/reload asked again for a bearer token after the gate had taken
    the key as x-api-key (the anthropic SDK's header), and answered 401."""
    service, live = served
    for headers, status in (({"x-api-key": SERVE_KEY}, 200), ({"x-api-key": "sk-wrong"}, 401)):
        for path in ("/metrics", "/openapi.json", "/v1/models"):
            assert httpx.get(live.url + path, headers=headers, timeout=10).status_code == status, (path, headers)
        r = httpx.post(live.url + "/admin/reload", headers=headers, timeout=60)
        assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    ok = httpx.post(live.url + "/admin/reload", headers={"x-api-key": SERVE_KEY}, timeout=60)
    assert ok.json() == {"swapped": False, "student": service.student_name}


def test_calibration_is_cached_and_targets_met(served):
    service, _ = served
    st = service.routing.stats
    assert st["val_escalation"] <= 0.3 + 1e-9 and st["n_val"] == 20
    saved = json.loads((service.ledger.path.parent / "serve" / "routing.json").read_text())
    assert saved["stats"]["val_escalation"] == st["val_escalation"]


def test_cli_refuses_missing_key_with_one_line(served, monkeypatch, capsys):
    from potstill.cli import main

    service, _ = served
    monkeypatch.delenv("SERVE_KEY")
    monkeypatch.setattr(sys, "argv", ["potstill", "serve", str(service.ledger.path.parent)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: environment variable SERVE_KEY is not set (it holds the key clients must send; set it, or pass "
        "--api-key-env '' to serve without auth)"]


def test_unknown_model_is_a_404_model_not_found_and_every_listed_name_answers(served):
    service, live = served
    cl = client(live)
    before = len(rows(service))
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as e:
            cl.chat.completions.create(model="gpt-4o", messages=MSG, stream=stream)
        assert e.value.status_code == 404 and e.value.code == "model_not_found" and e.value.body["param"] == "model"
        assert "'gpt-4o'" in e.value.message and "potstill" in e.value.message
    new = rows(service)[before:]
    assert [(r["status"], r["error"][:3]) for r in new] == [("error", "404")] * 2
    listed = [m.id for m in cl.models.list().data]
    assert service.student_name in listed and "potstill" in listed  # the versioned name and its alias
    for name in listed:
        assert cl.chat.completions.create(model=name, messages=MSG).choices[0].message.content


def test_malformed_json_body_says_what_is_missing_without_a_byte_offset(served):
    _, live = served
    body = b'{"model": "potstill", "messages": [{"role": "user", "content": "hi"}]'  # the last brace is missing
    r = httpx.post(live.url + "/v1/chat/completions", content=body, timeout=10,
                   headers={"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] is None and err["type"] == "invalid_request_error"
    assert err["message"] == ("the request body is not valid JSON: the text ends inside the object opened at "
                              "column 1: missing '}' at the end")


@pytest.mark.parametrize("body, content_type, said", [
    (b"", "application/json", "the request body is empty: send a JSON object with model and messages"),
    (b"[]", "application/json", "the request body must be a JSON object, not an array"),
    # curl -d sends application/x-www-form-urlencoded unless told otherwise
    (b'{"model": "potstill", "messages": []}', "application/x-www-form-urlencoded",
     "the request body must be JSON sent with Content-Type: application/json, not "
     "'application/x-www-form-urlencoded'"),
    (b'{"model": "potstill", "messages": []}', None, "the request body must be JSON sent with Content-Type: "
     "application/json, and the request has no Content-Type"),
])
def test_a_body_that_is_no_json_object_says_what_it_is(served, body, content_type, said):
    """Found by an audit: these were 400s saying 'Field required' or 'Input should be a valid
    dictionary or object to extract fields from' and naming no field, which tells a curl user
    (whose -d sends a form content type) nothing about what to change."""
    service, live = served
    headers = {"Authorization": f"Bearer {SERVE_KEY}", **({"Content-Type": content_type} if content_type else {})}
    r = httpx.post(live.url + "/v1/chat/completions", content=body, headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == {"message": said, "type": "invalid_request_error",
                                                          "param": None, "code": None}
    assert rows(service)[-1]["error"] == f"400: {said}"


def test_an_answer_cut_at_its_token_budget_finishes_with_length(tmp_path, tiny_model, teacher_server, monkeypatch):
    """OpenAI's ``finish_reason``: ``length`` where the answer ran to its budget (the student at the
    task's ``max_output_tokens``, the teacher at its ``max_tokens``), ``stop`` where it ended by
    itself; the same in the stream's last chunk and in the ledger row."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    budget = 2
    run = write_run(tmp_path, tiny_model, teacher_server.base_url,
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": budget})
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    seen = {}
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            for who, limit in (("student", budget), ("teacher", cfg.teacher.max_tokens)):
                inf = math.inf if who == "teacher" else -math.inf
                service.routing = Routing(confidence_threshold=inf, ood_threshold=math.inf)
                for text in ("the team won the match", "new phone software", "a vote"):
                    msgs = [{"role": "user", "content": text}]
                    c = client(live).chat.completions.create(model="potstill", messages=msgs)
                    assert c.model_extra["potstill"]["answered_by"] == who
                    want = "length" if c.usage.completion_tokens >= limit else "stop"
                    assert c.choices[0].finish_reason == want, (who, c.usage)
                    last = list(client(live).chat.completions.create(model="potstill", messages=msgs, stream=True))[-1]
                    assert last.choices[0].finish_reason == want
                    assert rows(service)[-1]["stop_reason"] == want
                    seen.setdefault(who, set()).add(want)
    finally:
        service.close()
    assert "length" in seen["student"] and "length" in seen["teacher"], seen  # the budgets were met


def test_a_student_answer_cut_at_the_tasks_budget_goes_to_the_teacher(tmp_path, teacher_server, monkeypatch):
    """``serve.escalate_truncated`` (on by default): a generated student answer that ran to the task's
    ``max_output_tokens`` without ending escalates with reason ``truncated``, however confident,
    and calibration counts it as forced; one that ended by itself stays with the student.

    The student answers every chat ``{ }`` and then ends its turn (``braces_model``): two tokens,
    so a budget of 2 cuts it before its end and a budget of 4 does not."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import TEACHER_KEY, write_run
    from tests.serve.test_response_format import braces_model

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    student = braces_model(tmp_path / "braces")
    got = {}
    for budget, escalate in ((2, True), (4, True), (2, False)):
        run = write_run(tmp_path / f"{budget}-{escalate}", student, teacher_server.base_url, escalate_truncated=escalate,
                        task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": budget})
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        stats = service.routing.stats
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # confident enough
        try:
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                c = client(live).chat.completions.create(model="potstill", messages=MSG)
                last = list(client(live).chat.completions.create(model="potstill", messages=MSG, stream=True))
                got[budget, escalate] = c, last, rows(service)[-2:], stats
        finally:
            service.close()
    c, last, logged, stats = got[2, True]
    route = c.model_extra["potstill"]
    assert (route["answered_by"], route["reason"]) == ("teacher", "truncated"), route
    assert route["student_output"].replace(" ", "") == "{}" and route["confidence"] is not None
    streamed = [ch.model_extra["potstill"] for ch in last if "potstill" in ch.model_extra]
    # The stream repeats the request: the teacher's answer comes from serve's own earlier escalation.
    assert c.model == "tiny-teacher" and [r["reason"] for r in streamed] == ["truncated+cached"]
    assert [(r["role"], json.loads(r["response"])["reason"]) for r in logged] == \
        [("teacher", "truncated"), ("teacher", "truncated+cached")]
    assert stats["n_val_truncated"] == 20 and stats["val_escalation"] == 1.0  # every val answer forced
    for key in ((4, True), (2, False)):
        c, last, logged, stats = got[key]
        route = c.model_extra["potstill"]
        assert (route["answered_by"], route["reason"]) == ("student", "confident"), (key, route)
        assert c.choices[0].message.content.replace(" ", "") == "{}"
        assert c.choices[0].finish_reason == last[-1].choices[0].finish_reason == ("stop" if key[0] == 4 else "length")
        assert stats["n_val_truncated"] == 0
        assert [r["role"] for r in logged] == ["student"] * 2


def test_a_clients_max_tokens_and_stop_cut_the_answer_of_either_model(tmp_path, tiny_model, teacher_server,
                                                                      monkeypatch):
    """``max_tokens`` / ``max_completion_tokens`` from the openai client: the student's answer is the
    first that many tokens of its greedy answer (what greedy with that budget gives), the teacher is
    asked for no more; ``finish_reason`` ``length`` and ``completion_tokens`` that many, in the
    response and the ledger row (which keeps the request's ``max_tokens``). ``stop``: the answer
    ends before the first stop string (``finish_reason`` ``stop``). A classifier's label stays whole."""
    msgs = [{"role": "user", "content": "the team won the match"}]
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student
        whole = client(live).chat.completions.create(model="potstill", messages=msgs)
        assert whole.usage.completion_tokens > 2
        served = service.live.engine
        for kw in ({"max_tokens": 2}, {"max_completion_tokens": 2}):
            c = client(live).chat.completions.create(model="potstill", messages=msgs, **kw)
            assert c.model_extra["potstill"]["answered_by"] == "student"
            assert (c.choices[0].finish_reason, c.usage.completion_tokens) == ("length", 2)
            assert c.choices[0].message.content == served.engine.generate(served.fmt, [msgs], 2).texts[0]
            assert c.model_extra["potstill"]["student_output"] == whole.choices[0].message.content
            row = rows(service)[-1]
            assert (row["stop_reason"], row["output_tokens"]) == ("length", 2)
            assert json.loads(row["request"])[next(iter(kw))] == 2
        last = list(client(live).chat.completions.create(model="potstill", messages=msgs, max_tokens=2,
                                                          stream=True))[-1]
        assert last.choices[0].finish_reason == "length"
        # stop: the text before the first stop string, as generation stopping at it gives
        text = whole.choices[0].message.content
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        want = served.engine.generate(served.fmt, [msgs], 6, stop=[stop])
        for kw in ({"stop": stop}, {"stop": ["never said", stop]}, {"stop": stop, "max_tokens": 6}):
            c = client(live).chat.completions.create(model="potstill", messages=msgs, **kw)
            assert c.choices[0].message.content == text[: text.find(stop)] == want.texts[0][: want.texts[0].find(stop)]
            assert (c.choices[0].finish_reason, c.usage.completion_tokens) == ("stop", want.output_tokens[0])
        c = client(live).chat.completions.create(model="potstill", messages=msgs, stop=stop, max_tokens=1)
        assert (c.choices[0].finish_reason, c.usage.completion_tokens) == ("length", 1)  # before the stop
        with pytest.raises(openai.BadRequestError) as e:
            client(live).chat.completions.create(model="potstill", messages=msgs, stop=list("abcde"))
        assert e.value.body["param"] == "stop" and "at most 4" in e.value.body["message"]

        service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)  # the teacher
        asked = sum(teacher_server.requests.values())
        c = client(live).chat.completions.create(model="potstill", messages=msgs, max_tokens=1)
        assert c.model_extra["potstill"]["answered_by"] == "teacher"
        assert (c.choices[0].finish_reason, c.usage.completion_tokens) == ("length", 1)
        assert sum(teacher_server.requests.values()) == asked + 1
        full = client(live).chat.completions.create(model="potstill", messages=msgs)
        assert full.usage.completion_tokens > 1  # the teacher's own budget (4) when the client sets none
        text = full.choices[0].message.content
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        c = client(live).chat.completions.create(model="potstill", messages=msgs, stop=[stop])
        assert (c.choices[0].message.content, c.choices[0].finish_reason) == (text[: text.find(stop)], "stop")
        assert c.usage.completion_tokens == full.usage.completion_tokens  # what the teacher was paid for


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_max_tokens_leaves_a_label_whole(served, force, who):
    from tests.serve.conftest import LABELS

    service, live = served
    force(who)
    c = client(live).chat.completions.create(model="potstill", max_tokens=1,
                                             messages=[{"role": "user", "content": "new phone software"}])
    assert c.model_extra["potstill"]["answered_by"] == who
    if who == "student":
        assert c.choices[0].message.content in LABELS and c.choices[0].finish_reason == "stop"
    else:  # the (tiny, untrained) teacher was asked with its own max_tokens, 4, not the client's 1
        assert c.usage.completion_tokens > 1


def _raw(live, body: bytes) -> httpx.Response:
    return httpx.post(live.url + "/v1/chat/completions", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})


def test_requests_that_once_got_a_500_are_400s_and_logged(served):
    """Found by an audit: a lone UTF-16 surrogate escape in the content (the tokenizer raised, and the
    error's ledger row could not be stored: a bare-text 500), ``messages`` as a number (logging it
    raised) and JSON nested deeper than Python parses (logging re-parsed it): each a 400 with an
    OpenAI-style body, and a ledger row each."""
    service, live = served
    before = len(rows(service))
    bodies = [b'{"model": "potstill", "messages": [{"role": "user", "content": "the \\ud800 team"}]}',
              b'{"model": "potstill", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
              b'{"model": "potstill", "messages": 5}',
              b'{"model": "potstill", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"]
    for body in bodies:
        r = _raw(live, body)
        assert r.status_code == 400, (body[:80], r.status_code, r.text[:200])
        assert set(r.json()["error"]) >= {"message", "type", "param"}
    assert "surrogate" in _raw(live, bodies[0]).json()["error"]["message"]
    new = rows(service)[before:]
    assert [r["error"][:3] for r in new] == ["400"] * (len(bodies) + 1)


def test_one_request_that_fails_its_batch_does_not_fail_the_others(served, monkeypatch):
    """The batcher answers a failed batch's requests again one by one: only the one whose own forward
    fails gets the error (before, all 16 requests batched with it got a 500)."""
    from potstill.serve.engine import Batcher

    service, _ = served
    engine = service.engine
    real = engine.answer

    def answer(messages):
        if any("poison" in m[-1]["content"] for m in messages):
            raise TypeError("this input breaks the tokenizer")
        return real(messages)

    monkeypatch.setattr(engine, "answer", answer)
    batcher = Batcher(engine, batch_size=8, wait_ms=200)
    try:
        msgs = [[{"role": "user", "content": f"the team won match {i}"}] for i in range(5)]
        msgs.insert(2, [{"role": "user", "content": "poison"}])
        futs = [batcher.submit(m) for m in msgs]
        outcomes = []
        for f in futs:
            try:
                f.result(timeout=60)
                outcomes.append("ok")
            except TypeError:
                outcomes.append("failed")
    finally:
        batcher.close()
    assert outcomes == ["ok", "ok", "failed", "ok", "ok", "ok"]


def test_a_chat_request_by_another_method_is_a_405_and_logged(served):
    service, live = served
    before = len(rows(service))
    for method in ("GET", "PUT", "DELETE"):
        r = httpx.request(method, live.url + "/v1/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {SERVE_KEY}"})
        assert r.status_code == 405 and set(r.json()["error"]) >= {"message", "type"}
    assert [r["error"][:3] for r in rows(service)[before:]] == ["405"] * 3


def test_values_of_another_type_are_400s_not_coerced(served):
    """``stream: "yes"`` once streamed and ``max_tokens: "10"`` became 10 (pydantic's lax mode);
    OpenAI's API refuses both."""
    service, live = served
    for field, value in (("stream", "yes"), ("stream", 1), ("max_tokens", "10"), ("max_tokens", True), ("n", "1")):
        body = {"model": "potstill", "messages": [{"role": "user", "content": "the match"}], field: value}
        r = _raw(live, json.dumps(body).encode())
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, value, r.text[:200])
    ok = {"model": "potstill", "messages": [{"role": "user", "content": "the match"}], "max_tokens": 10,
          "stream": False, "temperature": 1}
    assert _raw(live, json.dumps(ok).encode()).status_code == 200


def test_nan_and_infinity_are_not_json_and_the_ledger_stays_standard_json(served):
    """Python's parser takes NaN and Infinity, so a request with one was served and its ledger row
    held non-standard JSON that other tools cannot read. A 400 now, as OpenAI's API answers, and
    the row's request is standard JSON."""
    service, live = served
    before = len(rows(service))
    for value in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"model": "potstill", "metadata_score": ' + value + \
            b', "messages": [{"role": "user", "content": "the team won"}]}'
        r = _raw(live, body)
        assert r.status_code == 400 and value.decode().lstrip("-") in r.json()["error"]["message"], r.text
    # the word in a text is fine
    ok = _raw(live, b'{"model": "potstill", "messages": [{"role": "user", "content": "NaN and Infinity"}]}')
    assert ok.status_code == 200, ok.text
    new = rows(service)[before:]
    assert len(new) == 4 and [r["error"][:3] for r in new[:3]] == ["400"] * 3
    db = sqlite3.connect(service.ledger.path)
    stored = [q for (q,) in db.execute("SELECT request FROM calls WHERE stage='serve' ORDER BY id DESC LIMIT 4")]

    def refuse(c):
        raise ValueError(c)

    for q in stored:
        json.loads(q, parse_constant=refuse)  # standard JSON


def test_a_content_part_that_is_not_text_is_a_400_that_names_it(served):
    """Found by an audit: an image part (the openai SDK sends them for vision models) or a content
    of another type was refused as 'messages.0.content.str: Input should be a valid string', with
    param 'messages.0.content.str' (pydantic's name for the first branch of the union). Now it
    names the part and what the server takes, and param is the content."""
    service, live = served
    before = len(rows(service))
    image = [{"role": "user", "content": [{"type": "text", "text": "the team won"},
                                          {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=image)
    assert e.value.body["param"] == "messages.0.content"
    assert e.value.body["message"] == ("messages.0.content: part 1 is of type 'image_url': this server answers text, so "
                                       "content is a string or a list of parts of type 'text'")
    r = _raw(live, json.dumps({"model": "potstill", "messages": [{"role": "user", "content": 5}]}).encode())
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages.0.content", err
    assert "string or a list of text parts" in err["message"], err
    ok = [{"role": "user", "content": [{"type": "text", "text": "the team"}, {"type": "text", "text": " won"}]}]
    assert client(live).chat.completions.create(model="potstill", messages=ok).choices[0].message.content
    assert [(r["error"] or "ok")[:3] for r in rows(service)[before:]] == ["400", "400", "ok"]


def test_a_listed_model_can_be_retrieved_by_name(served, monkeypatch):
    """Found by an audit: ``client.models.retrieve(name)`` (GET /v1/models/{model}, which OpenAI's
    API serves) was a bare 404 'Not Found' for every name /v1/models lists."""
    service, live = served
    monkeypatch.setattr(service.cfg.serve, "model_aliases", ["potstill", "org/classifier"])  # a hub-style name
    cl = client(live)
    assert "org/classifier" in [m.id for m in cl.models.list().data]
    for m in cl.models.list().data:
        got = cl.models.retrieve(m.id)
        assert (got.id, got.owned_by, got.object) == (m.id, m.owned_by, "model")
    with pytest.raises(openai.NotFoundError) as e:
        cl.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found" and "'gpt-4o'" in e.value.message and e.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        client(live, key="wrong").models.retrieve("potstill")


def test_stream_options_without_stream_is_a_400(served):
    """Found by an audit: ``stream_options`` on a request that does not stream was taken and ignored;
    OpenAI's API and vLLM refuse it with a 400 (a client asking for usage chunks it will never get)."""
    service, live = served
    before = len(rows(service))
    for stream in (False, None):
        kw = {} if stream is None else {"stream": stream}
        with pytest.raises(openai.BadRequestError) as e:
            client(live).chat.completions.create(model="potstill", messages=MSG, stream_options={"include_usage": True},
                                                 **kw)
        assert e.value.body["param"] == "stream_options" and "stream" in e.value.message
    assert [(r["status"], r["error"][:3]) for r in rows(service)[before:]] == [("error", "400")] * 2
    chunks = list(client(live).chat.completions.create(model="potstill", messages=MSG, stream=True,
                                                       stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None


def test_error_types_and_codes_are_openais(served):
    """Found by an audit: a bad key's 401 had type 'authentication_error' and a 404 'not_found_error'
    (Anthropic's words); OpenAI's API answers both with type 'invalid_request_error', code
    'invalid_api_key' for a wrong key and 'model_not_found' for an unknown model, which clients read
    from the SDK's error (``e.code``, ``e.type``)."""
    service, live = served
    with pytest.raises(openai.AuthenticationError) as e:
        client(live, key="wrong").chat.completions.create(model="potstill", messages=MSG)
    assert (e.value.type, e.value.code) == ("invalid_request_error", "invalid_api_key")
    assert json.loads(rows(service)[-1]["response"])["error"] == e.value.body  # the ledger keeps the body the client got
    r = httpx.post(live.url + "/v1/chat/completions", json={"model": "potstill", "messages": MSG}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:
        client(live).chat.completions.create(model="gpt-4o", messages=MSG)
    assert (e.value.type, e.value.code) == ("invalid_request_error", "model_not_found")
    assert json.loads(rows(service)[-1]["response"])["error"] == e.value.body
    with pytest.raises(openai.NotFoundError) as e:
        client(live).models.retrieve("gpt-4o")
    assert (e.value.type, e.value.code) == ("invalid_request_error", "model_not_found")
    r = httpx.get(live.url + "/v1/nothing", headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("bad", ["s3rve-key\r", " s3rve-key", "s3rve-kéy"])
def test_a_serve_key_with_a_stray_character_is_one_line_not_a_401_for_everyone(monkeypatch, bad):
    """Found by an audit: POTSTILL_SERVE_KEY read from a CRLF .env file ends in '\\r', so the server
    expected 'Bearer s3rve-key\\r' and every client, sending the clean key, got a 401. It is refused at
    start, naming the variable and never the key."""
    from potstill.config import Config
    from potstill.errors import PotstillError
    from potstill.serve import serve_key

    monkeypatch.setenv("POTSTILL_SERVE_KEY", bad)
    cfg = Config.model_validate({"task": {"type": "classification", "labels": ["a", "b"]},
                                 "serve": {"api_key_env": "POTSTILL_SERVE_KEY"}})
    with pytest.raises(PotstillError, match="POTSTILL_SERVE_KEY") as e:
        serve_key(cfg)
    assert "s3rve" not in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("POTSTILL_SERVE_KEY", "s3rve-key")
    assert serve_key(cfg) == "s3rve-key"


def test_legacy_function_calling_and_audio_output_are_400s_that_name_the_field(served):
    """Found by a review: ``functions`` / ``function_call`` (the legacy function calling the openai SDK
    still sends) and ``modalities: ["audio"]`` / ``audio`` were taken as unknown fields and ignored:
    the student answered a forced function call, or a request for speech, with a label and
    finish_reason stop. Each is now a 400 naming the field, and one ledger row."""
    service, live = served
    before = len(rows(service))
    fn = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    cases = [("functions", {"functions": [fn]}),
             ("function_call", {"function_call": {"name": "get_weather"}}),
             ("modalities", {"modalities": ["text", "audio"]}),
             ("audio", {"audio": {"voice": "alloy", "format": "wav"}})]
    for param, extra in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client(live).chat.completions.create(model="potstill", messages=MSG, **extra)
        assert (e.value.body["param"], e.value.body["type"]) == (param, "invalid_request_error"), e.value.body
        assert e.value.body["message"].startswith(f"{param}: ") and "not served here" in e.value.body["message"]
    assert client(live).chat.completions.create(model="potstill", messages=MSG, modalities=["text"]).choices
    assert [(r["status"], (r["error"] or "")[:3]) for r in rows(service)[before:]] == [("error", "400")] * 4 + [("ok", "")]
