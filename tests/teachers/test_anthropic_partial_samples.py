"""generate.n above 1 with an Anthropic teacher: n Messages requests per input, to a Messages
server on 127.0.0.1 (official SDK) that fails one of them once. What was answered is paid once."""

from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer


def failing_once(fail_at: set[int]) -> tuple[FastAPI, list[int]]:
    """Answers request k (counted from 1) 'answer k' with 10 input and k output tokens; the
    requests numbered in ``fail_at`` get a 500 instead (the SDK's retries are off)."""
    app, lock, seen = FastAPI(), threading.Lock(), [0]

    @app.post("/v1/messages")
    def create(body: dict) -> JSONResponse:
        with lock:
            seen[0] += 1
            k = seen[0]
        if k in fail_at:
            return JSONResponse({"type": "error", "error": {"type": "api_error", "message": "boom"}}, status_code=500)
        return JSONResponse({"id": f"msg_{k}", "type": "message", "role": "assistant", "model": body["model"],
                             "content": [{"type": "text", "text": f"answer {k}"}], "stop_reason": "end_turn",
                             "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": k}})

    return app, seen


def generate_n3(srv, ledger, task, times: int) -> list:
    """``times`` generate runs of one input at n=3 through a fresh Anthropic teacher each (as separate
    `potstill generate` commands would), on one ledger: each run's (records, stats)."""
    runs = []
    for _ in range(times):
        teacher = get_teacher(TeacherConfig(type="anthropic", model="claude-haiku-4-5-20251001", base_url=srv.url,
                                            api_key_env="ANTHROPIC_API_KEY", max_tokens=16, max_retries=0,
                                            temperature=1.0), task)
        try:
            runs.append(label_records([Record(id="r", messages=[{"role": "user", "content": "hi"}])], task,
                                      teacher, ledger, "generate", GenerateConfig(n=3)))
        finally:
            teacher.close()
    return runs


def test_a_rerun_asks_only_for_the_samples_a_failed_request_did_not_get(tmp_path, monkeypatch):
    """n=3, the second request of the first run fails: its error row billed the two answered
    samples, and the rerun sent all 3 again, so those two were paid twice. The rerun asks for
    the one missing sample, and the record holds the 3 samples; the ledger bills 3 answers."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    app, seen = failing_once({2})
    with LiveServer(app) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        runs = generate_n3(srv, ledger, task, 2)
        rows = ledger.rows(role="teacher")
    (first,), s1 = runs[0]
    (rec,), s2 = runs[1]
    assert s1.errors == 1 and first.output is None and "1 of 3 samples failed" in first.invalid_reason
    assert s2.errors == 0 and seen[0] == 4  # 3, then the missing one alone
    assert sorted(rec.samples) == ["answer 1", "answer 3", "answer 4"] and rec.valid
    assert [r["status"] for r in rows] == ["error", "ok"]
    # The bill: 4 answers were asked for and 3 answered, each 10 input tokens; out 1 + 3 + 4.
    assert sum(r["input_tokens"] for r in rows) == 30 and sum(r["output_tokens"] for r in rows) == 8
    assert sum(r["cost_usd"] for r in rows) == pytest.approx((30 * 1.0 + 8 * 5.0) / 1e6)


def test_a_record_completed_by_a_rerun_holds_what_all_its_samples_cost(tmp_path, monkeypatch):
    """The rerun's row bills only the missing sample (the error row billed the other two), and the
    record's meta took that row's cost and tokens: teacher.jsonl said one sample's price for three
    samples. The record now holds the total paid for it, from the ledger cache too, and the ledger's
    spend is unchanged (nothing counted twice)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    app, _ = failing_once({2})
    with LiveServer(app) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        runs = generate_n3(srv, ledger, task, 3)  # fails one sample, completes it, then answers from the ledger
        spent = ledger.summary()["cost_usd"]
    total = (30 * 1.0 + 8 * 5.0) / 1e6  # 3 answered samples: 10 input tokens each, out 1 + 3 + 4
    assert spent == pytest.approx(total)
    assert runs[2][1].cache_hits == 1
    for (rec,), _ in runs[1:]:
        assert rec.meta["cost_usd"] == pytest.approx(total)
        assert (rec.meta["input_tokens"], rec.meta["output_tokens"]) == (30, 8)
