"""A server's escalations share one long-lived teacher session (``ApiTeacher.submit``). Its limiter
was built with the default concurrency of 1, so concurrent escalations reached the teacher one at a
time: each client waited for every escalation queued before it. They now go out together, up to
``teacher.concurrency``, as generate's requests do."""

from __future__ import annotations

import time

import pytest

from potstill.config import load_config
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.generate.loopback import Loopback, answer_for
from tests.generate.test_generate import SECRET, project


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_concurrent_escalations_reach_the_teacher_together_up_to_its_concurrency(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, pslow=1.0, slow_s=0.5) as srv:  # every answer takes half a second
        url, model = (srv.base_url, "gpt-4o-mini") if kind == "openai" else (srv.root_url, "claude-haiku-4-5-20251001")
        cfg = load_config(project(tmp_path, url, 1, {"type": kind, "model": model, "concurrency": 3}))
        teacher = get_teacher(cfg.teacher, get_task(cfg.task))
        try:
            reqs = [teacher.request(Record(messages=[{"role": "user", "content": f"item {i}"}])) for i in range(6)]
            t0 = time.perf_counter()
            futures = [teacher.submit(q) for q in reqs]
            got = [f.result(timeout=60) for f in futures]
            took = time.perf_counter() - t0
        finally:
            teacher.close()
        peak = srv.stats()["slow_peak"]
    assert [r.output for r in got] == [answer_for(f"item {i}") for i in range(6)]
    assert peak == 3  # teacher.concurrency at once, never more
    assert took < 2.5, took  # two rounds of 0.5 s, not six
