"""A reasoning judge (o4-mini, the run's teacher) against the loopback server (its own process),
which thinks a set number of hidden tokens inside max_completion_tokens before it answers, as
OpenAI's reasoning models do; reached through the official openai client.

evaluate.judge.max_tokens (8) went to it as max_completion_tokens 8: every answer was "" stopped at
length, read as an unreadable verdict ("bad"), and stored as an ok row that every rerun reused."""

from __future__ import annotations

from potstill.config import load_config
from potstill.evaluate.judge import judge_teacher_config, run_judge
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers.reasoning import REASONING_BUDGET
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET


def _judge(tmp_path, srv):
    cfg = load_config(overrides={
        "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Summarise."},
        "teacher": {"type": "openai", "model": "o4-mini", "base_url": srv.base_url, "api_key_env": "TEACHER_KEY",
                    "max_retries": 0, "max_tokens": 4000},
        "evaluate": {"judge": {"enabled": True}}, "report": {"bootstrap_samples": 100}})
    test = [Record(messages=[{"role": "user", "content": f"article {i}"}], output=f"summary {i}") for i in range(3)]
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        out = run_judge(cfg, get_task(cfg.task), test, [f"student {i}" for i in range(3)], [0.0] * 3,
                        [[] for _ in test], ledger)
        return cfg, out, ledger.count(role="judge", status="ok"), ledger.count(role="judge", status="error")


def test_a_reasoning_judge_gets_room_to_think_and_an_empty_answer_is_a_failed_call(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, reasoning_tokens=300) as srv:
        cfg, out, ok, errors = _judge(tmp_path / "a", srv)
        asked = srv.stats()
    judge = judge_teacher_config(cfg)
    assert judge.max_tokens == cfg.evaluate.judge.max_tokens + REASONING_BUDGET and judge.reasoning_effort == "low"
    assert asked["reasoning_effort"] == {"low": 6} and sum(asked["answered"].values()) == 6
    # Each answer came (the loopback answers a topic word, not A or B: unreadable, but an answer).
    assert ok == 6 and errors == 0 and out["failed_calls"] == 0
    assert all(e["student_first"] and e["student_second"] for e in out["examples"])
    # A judge that thinks past even that: every answer "" at length is a failed call, paid and said,
    # never an ok row a rerun would reuse as a verdict.
    with Loopback(key=SECRET, reasoning_tokens=5000) as srv:
        _, out, ok, errors = _judge(tmp_path / "b", srv)
        assert ok == 0 and errors == 6 and out["failed_calls"] == 6
        assert "spent all of its 1032 output tokens before answering" in out["first_error"]
        assert "raise evaluate.judge.max_tokens" in out["first_error"]
        assert out["cost"]["cost_usd"] > 0  # billed, as the provider bills it
        _, again, _, errors = _judge(tmp_path / "b", srv)  # nothing cached: asked again
        assert errors == 12 and again["failed_calls"] == 6
