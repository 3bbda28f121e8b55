"""Hot swap: a running server picks up a promoted student while clients hammer it, with no error.

Real parts only: uvicorn on loopback, the official openai client from several threads, a real
teacher server, and the promotion done by ``potstill.redistill.promote.switch`` (a symlink
renamed over RUN/student)."""

from __future__ import annotations

import os
import threading
import time

import httpx
import openai
import pytest

from potstill.redistill.promote import switch
from tests.helpers.tiny import make_model_dir
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

TEXTS = ["the team won the match", "new phone software", "a vote in the election", "bank profit and market shares"]


@pytest.fixture()
def swap_run(tmp_path, tiny_model, teacher_server):
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    os.environ["TEACHER_KEY"], os.environ["SERVE_KEY"] = TEACHER_KEY, SERVE_KEY
    run = write_run(tmp_path, tiny_model, teacher_server.base_url, batch_wait_ms=1)
    make_model_dir(run / "students" / "b", seed=2)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    with LiveServer(build_app(service, serve_key(cfg))) as live:
        yield run, service, live
    service.close()


class Hammer:
    """Threads sending chat requests back to back; each result is (sent_at, student header, model, error)."""

    def __init__(self, url: str, threads: int = 6):
        self.url, self.stop, self.results, self.lock = url, threading.Event(), [], threading.Lock()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(threads)]

    def loop(self, i: int) -> None:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=SERVE_KEY, max_retries=0, timeout=30)
        k = i
        while not self.stop.is_set():
            t = time.time()
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="potstill", messages=[{"role": "user", "content": TEXTS[k % len(TEXTS)]}])
                c = raw.parse()
                row = (t, raw.headers["x-potstill-student"], c.model, c.model_extra["potstill"]["answered_by"], None)
            except Exception as e:  # noqa: BLE001 - every failure is counted, the test wants zero
                row = (t, None, None, None, f"{type(e).__name__}: {e}")
            with self.lock:
                self.results.append(row)
            k += 1

    def __enter__(self) -> "Hammer":
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=30)


def _wait(cond, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _check(hammer: Hammer, old: str, new: str, swapped_at: float) -> None:
    errors = [r for r in hammer.results if r[4] is not None]
    assert not errors, errors[:3]
    before = [r for r in hammer.results if r[0] < swapped_at]
    after = [r for r in hammer.results if r[0] > swapped_at + 0.05]
    assert before and after, (len(before), len(after))
    assert {r[1] for r in after} == {new}
    # A request answered by the student is labelled with the student that answered.
    assert all(r[2] == new for r in after if r[3] == "student")
    assert old in {r[1] for r in before}


def test_promotion_is_picked_up_by_polling_under_load(swap_run):
    run, service, live = swap_run
    old_live, old = service.live, service.student_name
    service.watch(0.1)
    with Hammer(live.url) as hammer:
        _wait(lambda: len(hammer.results) >= 20)
        switch(run, run / "students" / "b")
        _wait(lambda: service.swaps)
        _wait(lambda: len([r for r in hammer.results if r[0] > service.swaps[-1]["at"]]) >= 20)
    info = service.swaps[-1]
    assert info["previous"] == old and info["student"] != old
    _check(hammer, old, info["student"], info["at"])
    assert old_live.closed.wait(10), "the old batcher was not closed after it drained"
    ids = [m.id for m in openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY).models.list().data]
    assert ids[0] == info["student"]
    assert httpx.get(live.url + "/health", timeout=10).json()["student"] == info["student"]


def test_admin_reload_swaps_under_load_and_needs_the_key(swap_run):
    run, service, live = swap_run
    old = service.student_name
    url = live.url + "/admin/reload"
    r = httpx.post(url, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    auth = {"Authorization": f"Bearer {SERVE_KEY}"}
    assert httpx.post(url, headers=auth, timeout=30).json() == {"swapped": False, "student": old}
    with Hammer(live.url) as hammer:
        _wait(lambda: len(hammer.results) >= 20)
        switch(run, run / "students" / "b")
        body = httpx.post(url, headers=auth, timeout=60).json()
        _wait(lambda: len([r for r in hammer.results if r[0] > body["at"]]) >= 20)
    assert body["swapped"] and body["previous"] == old and body["student"] == service.student_name != old
    _check(hammer, old, body["student"], body["at"])
    # A promotion that points at a broken student leaves the live one serving, with a 409.
    (run / "students" / "broken").mkdir()
    (run / "students" / "broken" / "config.json").write_text("{}")
    os.symlink("students/broken", run / ".tmp-link")
    os.replace(run / ".tmp-link", run / "student")
    r = httpx.post(url, headers=auth, timeout=60)
    assert r.status_code == 409 and r.json()["error"]["message"].startswith(f"reload failed, still serving {body['student']}")
    # OpenAI's type for a client's error (it has no 'conflict_error'); the code says what failed.
    assert (r.json()["error"]["type"], r.json()["error"]["code"]) == ("invalid_request_error", "reload_failed")
    c = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY).chat.completions.create(
        model="potstill", messages=[{"role": "user", "content": TEXTS[0]}])
    assert c.choices[0].message.content


def test_a_client_that_pinned_the_listed_name_keeps_working_after_a_swap(swap_run):
    """Found by an audit: a client that took its model name from /v1/models (vLLM's idiom,
    ``client.models.list().data[0].id``: the student's versioned name) got a 404 model_not_found on
    every request after the first promotion, the hot swap that needs no restart. A name this
    server has listed still answers (by the live student, as every name does); /v1/models lists
    the live one only."""
    run, service, live = swap_run
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
    pinned = client.models.list().data[0].id
    assert pinned == service.student_name
    switch(run, run / "students" / "b")
    assert service.reload()["swapped"]
    listed = [m.id for m in client.models.list().data]
    assert pinned not in listed and listed[0] == service.student_name
    raw = client.chat.completions.with_raw_response.create(model=pinned, messages=[{"role": "user", "content": TEXTS[0]}])
    assert raw.parse().choices[0].message.content and raw.headers["x-potstill-student"] == service.student_name
    assert client.models.retrieve(pinned).id == pinned
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="potstill-student@000000000000", messages=[{"role": "user", "content": "x"}])


def test_a_request_in_flight_across_a_swap_is_answered_and_scored_by_its_own_student(swap_run, tiny_model):
    """A request asking for logprobs is checked, answered and scored on the one student it entered:
    the promoted student is swapped in while it waits in the old student's batcher (the old model
    held busy), and its answer, name and log-probs are the old student's, from a forward of the old
    weights. (The logprobs check ran in the route against whichever student was live then, apart
    from the answer's; it now runs in ``Service.answer`` on the student the request entered.)"""
    import math
    from types import SimpleNamespace

    from potstill.serve.routing import Routing
    from tests.serve.test_served_logprobs import check_against_forward

    run, service, live = swap_run
    old = service.live
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the old student answers
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": TEXTS[0]}]
    got: dict = {}

    def ask() -> None:
        got["raw"] = client.chat.completions.with_raw_response.create(model="potstill", messages=msgs, logprobs=True,
                                                                       top_logprobs=3)

    with old.engine._lock:  # the old model busy: the request waits in its batcher, entered on it
        asking = threading.Thread(target=ask)
        asking.start()
        _wait(lambda: old._inflight == 1)
        switch(run, run / "students" / "b")
        assert service.reload()["swapped"] and service.live is not old
    asking.join(timeout=60)
    raw = got["raw"]
    c = raw.parse()
    assert raw.headers["x-potstill-student"] == c.model == old.name != service.student_name
    assert c.model_extra["potstill"]["answered_by"] == "student"
    check_against_forward(tiny_model, SimpleNamespace(live=old), msgs, c.choices[0].logprobs.content,
                          c.choices[0].message.content, 3)
    assert old.closed.wait(10)
