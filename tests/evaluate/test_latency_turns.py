"""Batch-1 latency with a second model timed beside the student: the two take turns over the same
records, so a machine that slows down for a minute slows both (``students.measure_latency``)."""

from __future__ import annotations

import time

import pytest

from potstill.config import TaskConfig
from potstill.engines import load_engine
from potstill.records import Record
from potstill.students import TURN, Beside, measure_latency
from potstill.tasks import get_task

LABELS = ["sports", "tech"]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return load_engine("transformers", str(tiny_model))


def test_turns_interleave_the_two_models_over_the_same_records(engine):
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify"))
    records = [Record(messages=[{"role": "user", "content": f"article number {i}"}]) for i in range(2 * TURN + 10)]
    seen: list[str] = []
    real = engine.score_labels

    def score_labels(fmt, messages, *a, **kw):  # the student's calls, in order (the real engine answers)
        seen.extend(f"s:{m[0]['content']}" for m in messages)
        return real(fmt, messages, *a, **kw)

    engine.score_labels = score_labels

    def call(r: Record) -> None:  # the other model: a fixed 20 ms, so its timing is known
        seen.append(f"o:{r.messages[0]['content']}")
        time.sleep(0.02)

    beside = Beside(call, n=9)
    try:
        lat = measure_latency(engine, task, records, len(records), beside, batch_size=4)
    finally:
        del engine.score_labels
    # One warm-up call each, then 3 turns: TURN student calls, one batch of 4 (the next 4 records,
    # cyclically), then a third of the other's 9.
    assert seen[:2] == ["s:article number 0", "o:article number 0"]
    timed = seen[2:]
    kinds = "".join(x[0] for x in timed)
    assert kinds == ("s" * (TURN + 4) + "o" * 3) * 2 + "s" * (10 + 4) + "o" * 3
    assert [x[2:] for x in timed if x[0] == "o"] == [f"article number {i}" for i in range(9)]
    single = [x[2:] for k in range(3) for x in timed[k * (TURN + 7):][:TURN if k < 2 else 10]]
    assert single == [r.messages[0]["content"] for r in records]
    batch_of = [sorted(x[2:] for x in timed[k * (TURN + 7) + (TURN if k < 2 else 10):][:4]) for k in range(3)]
    assert batch_of == [sorted(f"article number {i}" for i in range(4 * k, 4 * k + 4)) for k in range(3)]
    assert lat["n"] == len(records) and lat["p50_s"] > 0
    other = beside.latency
    assert other["n"] == 9 and other["turns"] == 3
    assert 0.02 <= other["p50_s"] <= other["p95_s"] and other["mean_s"] == pytest.approx(0.02, abs=0.015)
    b = beside.student_batched
    assert b["n"] == 3 and b["batch_size"] == 4 and 0 < b["per_call_s"]


def test_without_a_second_model_nothing_else_is_called(engine):
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify"))
    records = [Record(messages=[{"role": "user", "content": f"text {i}"}]) for i in range(4)]
    lat = measure_latency(engine, task, records, 3)
    assert lat["n"] == 3 and set(lat) == {"n", "p50_s", "p95_s", "mean_s", "times_s"}
    assert len(lat["times_s"]) == 3 and lat["times_s"] == sorted(lat["times_s"])  # the verdict counts the slow ones
    assert measure_latency(engine, task, [], 3) == {"n": 0}


def test_a_teacher_that_does_not_load_falls_back_to_the_ledger_in_one_line(tmp_path, capsys, tiny_model):
    from potstill.config import load_config
    from potstill.evaluate.stage import _local_teacher

    records = [Record(messages=[{"role": "user", "content": "x"}])]
    base = {"task.type": "classification", "task.labels": LABELS, "evaluate.latency_samples": 5}
    missing = load_config(None, {**base, "teacher.type": "local", "teacher.model": str(tmp_path / "no-such-model")})
    task = get_task(missing.task)
    assert _local_teacher(missing, task, records) is None
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "did not load" in ln]
    assert len(lines) == 1 and "ledger" in lines[0]
    # An API teacher is never loaded (its latency is the ledger's); 0 samples asks for the ledger too.
    assert _local_teacher(load_config(None, {**base, "teacher.type": "openai", "teacher.model": "gpt-4.1-mini"}),
                          task, records) is None
    off = load_config(None, {**base, "teacher.type": "local", "teacher.model": str(tiny_model),
                             "evaluate.teacher_latency_samples": 0})
    assert _local_teacher(off, task, records) is None
    loaded = _local_teacher(load_config(None, {**base, "teacher.type": "local", "teacher.model": str(tiny_model)}),
                            task, records)
    assert loaded is not None and loaded.n == 1  # capped by the test inputs there are
