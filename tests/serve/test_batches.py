"""OpenAI's Files and Batch APIs on ``potstill serve``, through the official openai client: a batch
file's lines answered as live requests are (same answers, same routing, a ledger row each, failures in
the error file with their status and body), a malformed file failed line by line, cancel, and a batch a
stopped server left unfinished resumed by the next one with no line lost or answered twice."""

from __future__ import annotations

import json
import os
import time

import openai
import pytest

from tests.serve.conftest import MSG, SERVE_KEY, TEXTS, client, rows
from tests.helpers.live_server import LiveServer


def _line(i: int, text: str, url: str = "/v1/chat/completions", **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": url,
            "body": {"model": "potstill", "messages": [{"role": "user", "content": text}], **body}}


def _upload(cl: openai.OpenAI, lines: list, name: str = "in.jsonl") -> str:
    data = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()
    return cl.files.create(file=(name, data), purpose="batch").id


def _wait(cl: openai.OpenAI, batch_id: str, until=("completed", "failed", "cancelled"), timeout: float = 120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        b = cl.batches.retrieve(batch_id)
        if b.status in until:
            return b
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {b.status} after {timeout} s")


def _asked(service, batch_id: str, before: int) -> list[str]:
    """The x-request-ids of the ledger rows (after the first ``before``) of the batch's lines."""
    ids = [json.loads(r["request"]).get("request_id") or "" for r in rows(service)[before:]]
    return [i for i in ids if i.startswith(batch_id)]


def _jsonl(cl: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [json.loads(x) for x in cl.files.content(file_id).text.splitlines()] if file_id else []


def test_each_line_is_answered_as_the_live_request_is(served, force):
    service, live = served
    force("student")
    cl = client(live)
    lines = [_line(i, t) for i, t in enumerate(TEXTS[:6])]
    lines.append({**_line(6, TEXTS[0]), "body": {**_line(6, TEXTS[0])["body"], "model": "no-such-model"}})
    lines.append(_line(7, TEXTS[1], stream=True))
    lines.append(_line(8, TEXTS[2], url="/v1/completions") | {"url": "/v1/chat/completions",
                                                              "body": {"model": "potstill", "prompt": "x"}})
    fid = _upload(cl, lines)
    before = len(rows(service))
    b = cl.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h",
                          metadata={"job": "nightly"})
    assert b.status == "validating" and b.metadata == {"job": "nightly"} and b.input_file_id == fid
    b = _wait(cl, b.id)
    assert b.status == "completed", b.errors
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (9, 6, 3)
    out, err = _jsonl(cl, b.output_file_id), _jsonl(cl, b.error_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(6)]
    for o, text in zip(out, TEXTS[:6]):
        live_answer = cl.chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}])
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == live_answer.choices[0].message.content
        assert body["potstill"]["answered_by"] == "student" and o["id"].startswith("batch_req_")
        assert o["response"]["request_id"] == f"{b.id}-{int(o['custom_id'][4:])}"
    codes = {e["custom_id"]: (e["response"]["status_code"], e["response"]["body"]["error"]["param"]) for e in err}
    assert codes == {"req-6": (404, "model"), "req-7": (400, "stream"), "req-8": (400, "messages")}
    assert b.usage.input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out) > 0
    assert b.model_extra["potstill"] == {"answered_by": {"student": 6}}
    # A ledger row for each line sent (the streamed one never was), named by its x-request-id.
    assert sorted(_asked(service, b.id, before)) == sorted(f"{b.id}-{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8))
    assert [x.id for x in cl.batches.list(limit=100)][:1] == [b.id]
    got = cl.files.retrieve(b.output_file_id)
    assert got.purpose == "batch_output" and got.bytes == len(cl.files.content(b.output_file_id).content)


def test_the_teacher_answers_a_line_the_router_escalates(served, force):
    service, live = served
    force("teacher")
    cl = client(live)
    b = cl.batches.create(input_file_id=_upload(cl, [_line(0, MSG[0]["content"])]),
                          endpoint="/v1/chat/completions", completion_window="24h")
    b = _wait(cl, b.id)
    [o] = _jsonl(cl, b.output_file_id)
    assert o["response"]["body"]["potstill"]["answered_by"] == "teacher"
    assert b.model_extra["potstill"] == {"answered_by": {"teacher": 1}}


def test_completions_and_responses_batches(served, force):
    _, live = served
    force("student")
    cl = client(live)
    for endpoint, body in (("/v1/completions", {"model": "potstill", "prompt": TEXTS[0]}),
                           ("/v1/responses", {"model": "potstill", "input": TEXTS[0]})):
        line = {"custom_id": "a", "method": "POST", "url": endpoint, "body": body}
        b = _wait(cl, cl.batches.create(input_file_id=_upload(cl, [line]), endpoint=endpoint,
                                        completion_window="24h").id)
        [o] = _jsonl(cl, b.output_file_id)
        assert o["response"]["status_code"] == 200, o
        kind = o["response"]["body"]["object"]
        assert kind == ("text_completion" if endpoint == "/v1/completions" else "response")


def test_a_malformed_file_fails_the_batch_naming_each_line(served):
    _, live = served
    cl = client(live)
    good = _line(0, TEXTS[0])
    lines = [good, "{not json", {**_line(1, TEXTS[1]), "custom_id": None}, {**_line(2, TEXTS[2]), "custom_id": "req-0"},
             _line(3, TEXTS[3], url="/v1/completions"), {**_line(4, TEXTS[4]), "method": "GET"}, [1, 2]]
    b = _wait(cl, cl.batches.create(input_file_id=_upload(cl, lines), endpoint="/v1/chat/completions",
                                    completion_window="24h").id)
    assert b.status == "failed" and b.failed_at and b.output_file_id is None
    assert [(e.line, e.code, e.param) for e in b.errors.data] == [
        (2, "invalid_json_line", None), (3, "missing_required_parameter", "custom_id"),
        (4, "duplicate_custom_id", "custom_id"), (5, "mismatched_url", "url"), (6, "invalid_method", "method"),
        (7, "invalid_json_line", None)]


def test_files_and_batches_refuse_what_they_cannot_do_in_openai_s_shape(served):
    _, live = served
    cl = client(live)
    with pytest.raises(openai.BadRequestError) as e:
        cl.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert e.value.body["param"] == "purpose"
    with pytest.raises(openai.NotFoundError) as e:
        cl.files.retrieve("file-nope")
    assert e.value.body["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError):
        cl.batches.retrieve("batch_nope")
    fid = _upload(cl, [_line(0, TEXTS[0])])
    for kw, param in (({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"}, "completion_window"),
                      ({"input_file_id": "file-nope"}, "input_file_id")):
        args = {"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h", **kw}
        with pytest.raises(openai.BadRequestError) as e:
            cl.batches.create(**args)
        assert e.value.body["param"] == param
    with pytest.raises(openai.AuthenticationError):
        client(live, key="wrong").files.list()
    assert fid in [f.id for f in cl.files.list(purpose="batch")]
    assert cl.files.delete(fid).deleted and fid not in [f.id for f in cl.files.list()]
    with pytest.raises(openai.NotFoundError):
        cl.files.content(fid)


def test_cancel_keeps_the_lines_answered_by_then(served, force):
    service, live = served
    force("student")
    cl = client(live)
    fid = _upload(cl, [_line(i, TEXTS[i % 10]) for i in range(400)])
    b = cl.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.APIStatusError) as e:  # its input is in use until the batch ends
        cl.files.delete(fid)
    assert e.value.status_code == 409
    _wait(cl, b.id, until=("in_progress", "completed"))
    got = cl.batches.cancel(b.id)
    assert got.status in ("cancelling", "completed")
    b = _wait(cl, b.id)
    if b.status == "completed":
        pytest.skip("the batch finished before the cancel reached it")
    assert b.status == "cancelled" and b.cancelled_at and b.request_counts.completed < 400
    out = _jsonl(cl, b.output_file_id)
    assert len(out) == b.request_counts.completed and len({o["custom_id"] for o in out}) == len(out)
    with pytest.raises(openai.APIStatusError) as e:
        cl.batches.cancel(b.id)
    assert e.value.status_code == 409


def test_a_batch_a_stopped_server_left_is_resumed_with_no_line_lost_or_answered_twice(served, force):
    from potstill.serve import serve_key
    from potstill.serve.app import build_app

    service, live = served
    force("student")
    n = 1500
    service.cfg.serve.batch_concurrency = 2  # few lines in flight when the server stops
    try:
        before = len(rows(service))
        with LiveServer(build_app(service, serve_key(service.cfg))) as first:
            cl = client(first)
            b = cl.batches.create(input_file_id=_upload(cl, [_line(i, TEXTS[i % 10]) for i in range(n)]),
                                  endpoint="/v1/chat/completions", completion_window="24h")
            t0 = time.monotonic()
            while cl.batches.retrieve(b.id).request_counts.completed < 20 and time.monotonic() - t0 < 60:
                time.sleep(0.02)
        left = client(live).batches.retrieve(b.id)  # the module's server shares the ledger: still open
        assert left.status == "in_progress" and 20 <= left.request_counts.completed < n
        with LiveServer(build_app(service, serve_key(service.cfg))) as second:  # resumes it at start
            done = _wait(client(second), b.id)
            out = _jsonl(client(second), done.output_file_id)
    finally:
        service.cfg.serve.batch_concurrency = 32
    assert done.status == "completed" and done.request_counts.completed == n
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    asked = _asked(service, b.id, before)
    assert set(asked) == {f"{b.id}-{i}" for i in range(n)}
    assert len(asked) - n <= 2  # only a line in flight when the server stopped is asked again


def test_no_key_no_files(served):
    _, live = served
    import httpx

    r = httpx.get(live.url + "/v1/files")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(live.url + "/v1/batches", headers={"authorization": f"Bearer {SERVE_KEY}"})
    assert r.status_code == 200 and r.json()["object"] == "list"


def test_a_file_has_its_own_size_limit(served):
    """serve.max_body_bytes (20,000 here) bounds a chat request; an input file may be larger, up to
    serve.max_file_bytes."""
    from potstill.serve import serve_key
    from potstill.serve.app import build_app

    service, live = served
    big = [_line(i, TEXTS[i % 10] + " x" * 40) for i in range(300)]  # about 40 kB
    assert client(live).files.retrieve(_upload(client(live), big)).bytes > 20_000
    with pytest.raises(openai.APIStatusError) as e:
        client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": "x " * 15_000}])
    assert e.value.status_code == 413
    saved = service.cfg.serve.max_file_bytes
    service.cfg.serve.max_file_bytes = 20_000
    try:
        with LiveServer(build_app(service, serve_key(service.cfg))) as small:
            with pytest.raises(openai.APIStatusError) as e:
                _upload(client(small), big)
    finally:
        service.cfg.serve.max_file_bytes = saved
    assert e.value.status_code == 413 and "over 20000 bytes" in e.value.body["message"]


# --------------------------------------------------------------------------- Anthropic's Message Batches
def _claude(live, key: str = SERVE_KEY):
    import anthropic

    return anthropic.Anthropic(base_url=live.url, api_key=key, max_retries=0)


def _params(text: str, **kw) -> dict:
    return {"model": "potstill", "max_tokens": 8, "messages": [{"role": "user", "content": text}], **kw}


def _ended(cl, batch_id: str, timeout: float = 120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        b = cl.messages.batches.retrieve(batch_id)
        if b.processing_status == "ended":
            return b
        time.sleep(0.05)
    raise AssertionError(f"message batch {batch_id} still {b.processing_status}")


def test_a_message_batch_answers_as_the_messages_api_does(served, force):
    service, live = served
    force("student")
    cl = _claude(live)
    reqs = [{"custom_id": f"m{i}", "params": _params(t)} for i, t in enumerate(TEXTS[:4])]
    reqs.append({"custom_id": "bad", "params": _params(TEXTS[0], model="no-such-model")})
    before = len(rows(service))
    b = cl.messages.batches.create(requests=reqs)
    assert b.type == "message_batch" and b.id.startswith("msgbatch_") and b.processing_status == "in_progress"
    # Anthropic counts every request as processing from the batch's creation (here it said 0 until
    # the batch's task had read its requests).
    assert (b.request_counts.processing, b.request_counts.succeeded, b.request_counts.errored) == (5, 0, 0)
    b = _ended(cl, b.id)
    assert (b.request_counts.succeeded, b.request_counts.errored, b.request_counts.processing) == (4, 1, 0)
    assert b.ended_at is not None and b.results_url.endswith(f"/v1/messages/batches/{b.id}/results")
    results = {r.custom_id: r.result for r in cl.messages.batches.results(b.id)}
    assert list(results) == [f"m{i}" for i in range(4)] + ["bad"]
    for i, text in enumerate(TEXTS[:4]):
        live_answer = cl.messages.create(**_params(text))
        assert results[f"m{i}"].type == "succeeded"
        assert results[f"m{i}"].message.content[0].text == live_answer.content[0].text
    assert results["bad"].type == "errored" and results["bad"].error.error.type == "not_found_error"
    asked = _asked(service, b.id, before)
    assert sorted(asked) == sorted(f"{b.id}-{i}" for i in range(5))
    # Anthropic's batches are not OpenAI's, nor listed among them
    assert b.id in [x.id for x in cl.messages.batches.list()]
    assert b.id not in [x.id for x in client(live).batches.list(limit=100)]
    with pytest.raises(openai.NotFoundError):
        client(live).batches.retrieve(b.id)
    assert cl.messages.batches.delete(b.id).type == "message_batch_deleted"
    import anthropic

    with pytest.raises(anthropic.NotFoundError):
        cl.messages.batches.retrieve(b.id)


def test_a_message_batch_refuses_bad_requests_in_anthropic_s_shape(served):
    import anthropic

    _, live = served
    cl = _claude(live)
    for reqs, what in (([], "requests"), ([{"custom_id": "a b", "params": _params("x")}], "custom_id"),
                       ([{"custom_id": "a", "params": _params("x")}, {"custom_id": "a", "params": _params("y")}],
                        "earlier request"), ([{"custom_id": "a", "params": "x"}], "params")):
        with pytest.raises(anthropic.BadRequestError) as e:
            cl.messages.batches.create(requests=reqs)
        assert e.value.body["type"] == "error" and what in e.value.body["error"]["message"]


def test_a_canceled_message_batch_says_which_requests_were_never_sent(served, force):
    _, live = served
    force("student")
    cl = _claude(live)
    b = cl.messages.batches.create(requests=[{"custom_id": f"m{i}", "params": _params(TEXTS[i % 10])}
                                             for i in range(400)])
    got = cl.messages.batches.cancel(b.id)
    assert got.processing_status in ("canceling", "ended")
    b = _ended(cl, b.id)
    counts = b.request_counts
    if counts.canceled == 0:
        pytest.skip("the batch ended before the cancel reached it")
    assert counts.succeeded + counts.errored + counts.canceled == 400 and b.cancel_initiated_at is not None
    kinds = [r.result.type for r in cl.messages.batches.results(b.id)]
    assert kinds.count("canceled") == counts.canceled and kinds.count("succeeded") == counts.succeeded


def test_a_batch_a_live_server_runs_is_not_resumed_beside_it_and_a_cancel_reaches_it(served, force):
    """Two servers on one run: a server starting resumed every open batch, the one a live server was
    running included, and both answered its lines (an escalation asked twice). A batch is resumed
    only where the server running it is gone (its pid and host kept beside it); a cancel sent to
    another server reaches the one running the batch through the ledger."""
    import subprocess
    import sys

    from potstill.serve import serve_key
    from potstill.serve.app import build_app

    service, live = served
    force("student")
    cl = client(live)
    b = cl.batches.create(input_file_id=_upload(cl, [_line(i, TEXTS[i % 10]) for i in range(3)]),
                          endpoint="/v1/chat/completions", completion_window="24h")
    _wait(cl, b.id)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    db = service.ledger._db
    try:
        for pid, resumed in ((sleeper.pid, False), (int(gone.stdout), True)):
            obj = {**service.ledger.get_object("serve_batches", b.id), "status": "in_progress"}
            service.ledger.put_object("serve_batches", obj)  # open again, as a running server leaves it
            db.execute("UPDATE serve_batches SET pid=? WHERE id=?", (pid, b.id))
            db.commit()
            with LiveServer(build_app(service, serve_key(service.cfg))):
                time.sleep(0.5)
                status = service.ledger.get_object("serve_batches", b.id)["status"]
            assert (status == "completed") is resumed, (pid, status)
            owner = db.execute("SELECT pid FROM serve_batches WHERE id=?", (b.id,)).fetchone()[0]
            assert owner == (os.getpid() if resumed else sleeper.pid)
    finally:
        sleeper.kill()
    # A cancel another server wrote to the ledger stops this one's sending (read once a second).
    service.cfg.serve.batch_concurrency = 1
    try:
        b = cl.batches.create(input_file_id=_upload(cl, [_line(i, TEXTS[i % 10]) for i in range(3000)]),
                              endpoint="/v1/chat/completions", completion_window="24h")
        _wait(cl, b.id, until=("in_progress",))
        obj = service.ledger.get_object("serve_batches", b.id)
        service.ledger.put_object("serve_batches", {**obj, "status": "cancelling"})
        done = _wait(cl, b.id)
    finally:
        service.cfg.serve.batch_concurrency = 32
    assert done.status == "cancelled" and done.request_counts.completed < 3000
