"""`potstill serve` against the official openai client: sync, async, streaming and errors, with
a real teacher server on loopback and every request checked in the SQLite ledger."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import sys
from contextlib import contextmanager

import httpx
import openai
import pytest

from potstill.serve.routing import Routing
from potstill.teachers import get_teacher
from tests.serve.conftest import SERVE_KEY

MSG = [{"role": "user", "content": "the team won the match"}]


def client(live, key: str = SERVE_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0)


def rows(service, **kw) -> list[dict]:
    return service.ledger.rows(stage="serve", **kw)


@contextmanager
def teacher_behind(service, provider):
    """The served teacher pointed at ``provider`` (a FastAPI app on loopback) for the with block."""
    from tests.helpers.live_server import LiveServer

    saved = service.teacher
    with LiveServer(provider) as fake:
        service.teacher = get_teacher(saved.cfg.model_copy(update={"base_url": fake.url + "/v1"}), service.task)
        try:
            yield
        finally:
            service.teacher.close()
            service.teacher = saved


@pytest.fixture()
def force(served):
    """Swap the calibrated routing for one that sends everything to the student or the teacher."""
    service, _ = served
    saved = service.routing

    def to(who: str) -> None:
        inf = math.inf if who == "teacher" else -math.inf
        service.routing = Routing(confidence_threshold=inf, ood_threshold=math.inf)

    yield to
    service.routing = saved


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


def test_student_and_teacher_paths(served, teacher_server, force):
    service, live = served
    force("student")
    c = client(live).chat.completions.create(model="potstill", messages=MSG)
    assert c.model_extra["potstill"]["answered_by"] == "student"
    assert c.choices[0].message.content in service.task.labels
    assert c.model.startswith("potstill-student")
    sent = sum(teacher_server.requests.values())
    force("teacher")
    c = client(live).chat.completions.create(model="potstill", messages=MSG)
    assert c.model_extra["potstill"] == {**c.model_extra["potstill"], "answered_by": "teacher", "reason": "low_confidence"}
    assert c.model == "tiny-teacher"
    assert sum(teacher_server.requests.values()) == sent + 1  # the real teacher answered
    row = rows(service)[-1]
    assert row["role"] == "teacher" and row["cost_usd"] > 0 and row["input_tokens"] > 0


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


def test_teacher_failure_is_a_502_and_logged(served, force):
    service, live = served
    force("teacher")
    # The service keeps one teacher client for its life: swap in a teacher whose server is gone
    # (nothing listens on the discard port).
    saved = service.teacher
    service.teacher = get_teacher(saved.cfg.model_copy(update={"base_url": "http://127.0.0.1:9/v1"}), service.task)
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(live).chat.completions.create(model="potstill", messages=MSG)
    finally:
        service.teacher.close()
        service.teacher = saved
    # Found by an audit: the type was 'upstream_error', which OpenAI's API never sends; a 5xx is its
    # 'server_error', and the code says the teacher failed.
    assert e.value.status_code == 502 and (e.value.type, e.value.code) == ("server_error", "teacher_failed")
    row = rows(service)[-1]
    assert row["status"] == "error" and row["role"] == "teacher" and row["error"].startswith("502")
    assert json.loads(row["response"])["error"] == e.value.body


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


def test_escalation_reuses_an_identical_teacher_answer_from_the_ledger(served, teacher_server, force):
    """Issue 16.5: an escalated request that generate already paid for is answered from the ledger."""
    from potstill.generate import label_records
    from potstill.records import Record

    service, live = served
    cached_msg = [{"role": "user", "content": "the striker scored twice in the cup final"}]
    fresh_msg = [{"role": "user", "content": "the chancellor raised the interest rate"}]
    # generate (the real path: the same teacher, its hash, one ledger row) answers one input first
    (rec,), stats = label_records([Record(messages=cached_msg)], service.task, service.teacher, service.ledger,
                                  stage="generate")
    assert stats.calls == 1 and rec.output is not None
    force("teacher")
    sent = sum(teacher_server.requests.values())
    raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=cached_msg)
    c = raw.parse()
    assert raw.headers["x-potstill-answered-by"] == "teacher"
    assert raw.headers["x-potstill-reason"] == "low_confidence+cached"
    assert c.choices[0].message.content == rec.output
    assert sum(teacher_server.requests.values()) == sent  # no teacher call
    row = rows(service)[-1]
    assert row["role"] == "teacher" and json.loads(row["response"])["teacher_cached"] is True
    assert row["request_hash"] == rec.meta["request_hash"]  # one request hash for serve and generate
    # a request the ledger has no answer for still goes to the teacher
    raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=fresh_msg)
    assert raw.headers["x-potstill-reason"] == "low_confidence"
    assert sum(teacher_server.requests.values()) == sent + 1


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


def test_a_clients_max_tokens_and_stop_cut_the_answer_of_either_model(tmp_path, tiny_model, teacher_server,
                                                                      monkeypatch):
    """``max_tokens`` / ``max_completion_tokens`` from the openai client: the student's answer is the
    first that many tokens of its greedy answer (what greedy with that budget gives), the teacher is
    asked for no more; ``finish_reason`` ``length`` and ``completion_tokens`` that many, in the
    response and the ledger row (which keeps the request's ``max_tokens``). ``stop``: the answer
    ends before the first stop string (``finish_reason`` ``stop``). A classifier's label stays whole."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, tiny_model, teacher_server.base_url,
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 6})
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    msgs = [{"role": "user", "content": "the team won the match"}]
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
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
    finally:
        service.close()


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


def test_a_teacher_failure_does_not_hand_the_providers_message_to_the_client(served, force):
    """Found by an audit: the 502 of a failed escalation carried the teacher provider's own error
    text to whoever called the server: OpenAI's 401 shows the start and end of the operator's key,
    its 429 the organization id and quota. The client now gets the failure's kind; the ledger row
    (the operator's) keeps the provider's message."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    upstream = {
        401: "Incorrect API key provided: sk-tea************95e. You can find your API key at "
             "https://platform.openai.com/account/api-keys.",
        429: "Rate limit reached for gpt-4o in organization org-Zx81QwErTy on tokens per min (TPM): Limit 30000, "
             "Used 29876, Requested 512. Please try again in 1.1s.",
    }
    provider = FastAPI()
    status = {"code": 401}

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        return JSONResponse({"error": {"message": upstream[status["code"]], "type": "invalid_request_error",
                                       "param": None, "code": None}}, status_code=status["code"])

    service, live = served
    force("teacher")
    with teacher_behind(service, provider):
        for code, kind, secret in ((401, "AuthenticationError", "sk-tea"), (429, "RateLimitError", "org-Zx81QwErTy")):
            status["code"] = code
            with pytest.raises(openai.APIStatusError) as e:
                client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": f"the vote {code}"}])
            assert e.value.status_code == 502 and (e.value.type, e.value.code) == ("server_error", "teacher_failed")
            assert kind in e.value.body["message"] and secret not in json.dumps(e.value.body), e.value.body
            row = rows(service)[-1]
            assert row["status"] == "error" and row["role"] == "teacher" and secret in row["error"]
            assert secret not in row["response"]  # the body the client got


def test_a_teacher_refusing_the_clients_chat_is_a_400_not_a_502(served, force):
    """Found by an audit: a teacher refusing the client's input (its 400 for a chat over its context)
    reached the client as a 502, as if the server had failed: the status was lost
    in the Response's error text. It is the client's 400 with the provider's error code, and the
    provider's own text (which may name the organization) stays in the ledger; a teacher failing
    for the operator's reasons (its 401) is still a 502."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    secret = "org-Zx81QwErTy"
    provider = FastAPI()
    status = {"code": 400, "error": "context_length_exceeded"}

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        return JSONResponse({"error": {"message": f"This model's maximum context length is 8192 tokens ({secret}). "
                                                  "However, your messages resulted in 9000 tokens.",
                                       "type": "invalid_request_error", "param": "messages",
                                       "code": status["error"]}}, status_code=status["code"])

    service, live = served
    force("teacher")
    with teacher_behind(service, provider):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                client(live).chat.completions.create(model="potstill", stream=stream,
                                                     messages=[{"role": "user", "content": f"the vote {stream}"}])
            err = e.value
            assert (err.status_code, err.type, err.code, err.param) == (400, "invalid_request_error",
                                                                      "context_length_exceeded", "messages")
            assert "teacher" in err.message and secret not in json.dumps(err.body), err.body
            row = rows(service)[-1]
            assert row["status"] == "error" and row["role"] == "teacher" and row["error"].startswith("400")
            assert secret in row["error"] and secret not in row["response"]
        # The operator's failures stay a 502: a bad key, and a 400 about the server's own settings
        # (OpenAI's unsupported_parameter for max_tokens on a reasoning model), not about the chat.
        for code, error in ((401, None), (400, "unsupported_parameter")):
            status.update(code=code, error=error)
            with pytest.raises(openai.APIStatusError) as e:
                client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": f"goal {code}"}])
            assert e.value.status_code == 502, (code, error)


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


def test_an_escalated_chat_with_tool_turns_keeps_them_for_the_teacher(served, teacher_server, force):
    """Found by an audit: escalation cut every message to role and content, so an assistant turn's
    tool_calls and a tool turn's tool_call_id were lost and an OpenAI teacher (the loopback one holds
    its rule) refused the chat: 'messages with role tool must be a response to a preceeding message
    with tool_calls'. The teacher gets the tool turns as the client sent them; the student reads
    their text as before."""
    service, live = served
    force("teacher")
    calls = [{"id": "call_1", "type": "function", "function": {"name": "topic", "arguments": "{}"}}]
    chat = [{"role": "user", "content": "the team won the match"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "sports"},
            {"role": "user", "content": "so the topic is"}]
    sent = sum(teacher_server.requests.values())
    c = client(live).chat.completions.create(model="potstill", messages=chat)
    assert c.model_extra["potstill"]["answered_by"] == "teacher" and c.model == "tiny-teacher"
    assert sum(teacher_server.requests.values()) == sent + 1
    got = [k for k in teacher_server.requests if "call_1" in k][-1]
    assert "'tool_call_id': 'call_1'" in got and "'tool_calls': [{" in got
    row = rows(service)[-1]
    assert row["status"] == "ok" and row["role"] == "teacher"


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


def test_a_failed_tool_chat_escalation_is_hashed_as_the_request_the_teacher_got(served, force):
    """Found by an audit: the ledger row of a failed escalation hashed the chat cut to role and text,
    so two tool chats that differ only in their tool turns (tool_calls, tool_call_id) shared one
    request hash, unlike the hash the same chat gets when the teacher answers it. A failed row now
    carries the hash of the request the teacher got: the one an answered row of the same request has."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    provider = FastAPI()
    fail = {"now": True}

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        if fail["now"]:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error", "param": None,
                                           "code": None}}, status_code=500)
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny-teacher",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})

    def tool_chat(call_id: str, args: str) -> list[dict]:
        calls = [{"id": call_id, "type": "function", "function": {"name": "topic", "arguments": args}}]
        return [{"role": "user", "content": "the team won the match"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": call_id, "content": "sports"},
                {"role": "user", "content": "so the topic is"}]

    service, live = served
    force("teacher")
    chats = [tool_chat("call_1", "{}"), tool_chat("call_2", "{}"), tool_chat("call_1", '{"x": 1}')]
    hashes = {}
    with teacher_behind(service, provider):
        for ok in (False, True):
            fail["now"] = not ok
            for i, chat_ in enumerate(chats):
                if ok:
                    client(live).chat.completions.create(model="potstill", messages=chat_)
                else:
                    with pytest.raises(openai.InternalServerError):
                        client(live).chat.completions.create(model="potstill", messages=chat_)
                row = rows(service)[-1]
                assert (row["status"], row["role"]) == ("ok" if ok else "error", "teacher")
                hashes[ok, i] = row["request_hash"]
        for i, chat_ in enumerate(chats):  # a tool chat refused before routing: hashed the same way
            with pytest.raises(openai.BadRequestError):
                client(live).chat.completions.create(model="potstill", messages=chat_,
                                                     stream_options={"include_usage": True})
            hashes["refused", i] = rows(service)[-1]["request_hash"]
    assert len({hashes[False, i] for i in range(3)}) == 3, hashes  # three requests, three hashes
    assert all(hashes[False, i] == hashes[True, i] == hashes["refused", i] for i in range(3)), hashes


def anthropic_provider(seen: list):
    """A Messages API on loopback that holds Anthropic's rules for a chat: roles user and assistant
    only, content never null, each assistant tool_use answered by a tool_result at the start of the
    next (user) turn, each tool_result answering a tool_use of the turn before, tool_use input an object."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    def bad(msg: str) -> JSONResponse:
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": msg}},
                            status_code=400)

    @app.post("/v1/messages")
    def messages(body: dict = Body()) -> JSONResponse:
        seen.append(body)
        pending: list[str] = []
        for i, m in enumerate(body["messages"]):
            if m.get("role") not in ("user", "assistant"):
                return bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            blocks = m.get("content")
            if isinstance(blocks, str):
                blocks = [{"type": "text", "text": blocks}]
            if not isinstance(blocks, list):
                return bad(f"messages.{i}.content: Input should be a valid list")
            results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            if pending and [b.get("type") for b in blocks[:len(pending)]] != ["tool_result"] * len(pending):
                return bad(f"messages.{i}: Did not find {len(pending)} `tool_result` block(s) at the beginning")
            if sorted(results) != sorted(pending):
                return bad(f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {results}")
            if any(b.get("type") == "text" and not b.get("text") for b in blocks):
                return bad(f"messages.{i}: text content blocks must be non-empty")
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            if any(not isinstance(b.get("input"), dict) or not b.get("name") for b in uses):
                return bad(f"messages.{i}: tool_use.input: Input should be a valid dictionary")
            pending = [b["id"] for b in uses]
        return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                             "content": [{"type": "text", "text": "sports"}], "stop_reason": "end_turn",
                             "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}})

    return app


def test_an_anthropic_teacher_gets_openai_tool_turns_as_tool_use_and_tool_result_blocks(served, force):
    """Found by an audit: an escalated tool chat reached an Anthropic teacher as OpenAI messages, a
    'tool' role and an assistant turn of null content with tool_calls, which the Messages API refuses
    (a 502 for the client). The assistant's tool_calls are tool_use blocks (arguments parsed to
    input), the tool turns tool_result blocks at the start of one user turn, the user's text after them."""
    from potstill.config import TeacherConfig
    from tests.helpers.live_server import LiveServer

    seen: list = []
    calls = [{"id": "call_1", "type": "function", "function": {"name": "topic", "arguments": '{"about": "match"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "score", "arguments": "{}"}}]
    chat = [{"role": "user", "content": "the team won the match"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "sports"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "2-1"}]},
            {"role": "user", "content": "so the topic is"}]
    service, live = served
    force("teacher")
    saved = service.teacher
    with LiveServer(anthropic_provider(seen)) as fake:
        cfg = TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=fake.url, api_key_env="TEACHER_KEY",
                            max_tokens=4, max_retries=0, timeout_s=10)
        service.teacher = get_teacher(cfg, service.task)
        try:
            c = client(live).chat.completions.create(model="potstill", messages=chat)
            plain = client(live).chat.completions.create(model="potstill", messages=MSG)
        finally:
            service.teacher.close()
            service.teacher = saved
    assert c.choices[0].message.content == "sports" and c.model == "claude-haiku-4-5"
    assert seen[0]["messages"] == [
        {"role": "user", "content": "the team won the match"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "call_1", "name": "topic", "input": {"about": "match"}},
                                          {"type": "tool_use", "id": "call_2", "name": "score", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sports"},
                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "2-1"},
                                     {"type": "text", "text": "so the topic is"}]}]
    assert seen[1]["messages"] == MSG and plain.choices[0].message.content == "sports"  # a chat without tools as before
