"""Test inputs longer than the student's context in evaluate's cost per call and break-even: serve
sends them to the teacher (reason too_long), so after the switch that share of calls is still paid
at the teacher's price. A rotary student of 64 positions built from a config, the real evaluate
stage, a replay teacher priced per call, JSONL and SQLite files on disk."""

import json

import pytest

from potstill.config import load_config
from potstill.evaluate.stage import evaluate_stage
from potstill.ledger import Call, Ledger
from tests.serve.test_context import llama_dir


def _evaluated(tmp_path, serve: dict) -> dict:
    """eval.json of 6 test inputs, 2 past the student's 64 positions, its answers cut at 2 tokens."""
    run = tmp_path / "run"
    run.mkdir()
    long = " ".join(["the market and the bank"] * 30)  # 150 words: past 64 positions
    texts = [f"text {i}" for i in range(4)] + [f"{long} {i}" for i in range(2)]
    recs = [{"input": t, "output": f"summary {i}", "meta": {"request_hash": f"h{i}"}} for i, t in enumerate(texts)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    llama_dir(run / "student", 64)
    with Ledger(run / "calls.sqlite") as ledger:
        for i in range(6):
            ledger.record(Call(request_hash=f"h{i}", role="teacher", stage="generate", model="gpt-4o",
                               request={"i": i}, response={"output": f"summary {i}"}, cost_usd=0.01))
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                                {"role": "assistant", "content": "y"}]}) + "\n")
    cfg = load_config(overrides={
        "run_dir": str(run), "task": {"type": "freetext", "instruction": "answer", "max_output_tokens": 2},
        "teacher": {"type": "replay", "model": "gpt-4o", "replay_path": str(traffic), "price": {"usd_per_call": 0.02}},
        "student": {"model": str(run / "student"), "usd_per_hour": 0.01},
        "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False, "monthly_calls": 100000},
        "report": {"min_slice_n": 2, "bootstrap_samples": 100}, "serve": serve})
    evaluate_stage(cfg)
    return json.loads((run / "eval.json").read_text())


def test_inputs_past_the_students_context_are_paid_at_the_teachers_price(tmp_path):
    """2 of 6 test inputs past the student's 64 positions: evaluate set them aside and counted them
    (n_too_long), then priced every call at the student's cost, as if it answered them too: the saving
    a call and the break-even were a third too good. A served call now costs 4/6 of the student's and
    2/6 of the teacher's $0.02, and the saving a call is 4/6 of the difference. (Its answers cut at the
    token budget are served cut here, serve.escalate_truncated false: the next test escalates them.)"""
    ev = _evaluated(tmp_path, {"escalate_truncated": False})
    run = tmp_path / "run"
    assert ev["break_even"]["escalated_share"] == 0 and ev["break_even"]["escalated_by_reason"] == {}
    assert (ev["n_test"], ev["n_too_long"]) == (4, 2)
    be, t = ev["break_even"], 0.02
    alone = ev["models"]["student"]["cost_per_1k_calls_usd"] / 1000  # measured on the 4 it reads
    assert be["saving_per_call_usd"] == pytest.approx(4 / 6 * (t - alone))  # before: t - alone
    assert be["calls"] == pytest.approx(be["one_time_usd"] / (4 / 6 * (t - alone)))
    assert be["student_cost_per_call_usd"] == pytest.approx(4 / 6 * alone + 2 / 6 * t)
    assert be["too_long_share"] == pytest.approx(2 / 6)
    assert be["student_alone_cost_per_call_usd"] == pytest.approx(alone)
    assert be["batch1"]["student_cost_per_call_usd"] == pytest.approx(4 / 6 * alone + 2 / 6 * t)
    batched = ev["models"]["student"]["cost_per_1k_calls_batched_usd"] / 1000
    assert be["batched"]["student_cost_per_call_usd"] == pytest.approx(4 / 6 * batched + 2 / 6 * t)
    # The verdict's cost check compares the same served call, and says so.
    cheaper = ev["verdict"]["checks"][1]
    assert cheaper["check"].startswith("student cheaper") and cheaper["pass"]
    assert "with the 33.3% of inputs longer than its context at the teacher's price" in cheaper["value"]
    assert "the 2 of 6 test inputs longer than its context go to the teacher" in ev["sources"]["quality_bar"]
    html = (run / "report.html").read_text()
    section = html[html.index("<section id='break-even'>"):]
    assert "a call served after the switch costs" in section and "the teacher's on the 33.3% longer than its context" in section


def test_answers_serve_escalates_are_paid_at_the_teachers_price_on_top_of_the_students(tmp_path):
    """Serve sends an answer cut at task.max_output_tokens to the teacher (serve.escalate_truncated, on
    by default) after the student wrote it, and evaluate warned of such answers, yet priced each of them
    at the student's cost alone: here every one of the 4 answers it reads runs to its 2-token budget, so
    each served call pays the student's seconds and the teacher's $0.02, and the student that read as
    cheaper is dearer. The report says what the served call counts and what it leaves out (the
    low-confidence and out-of-distribution escalations serve calibrates when it starts)."""
    ev = _evaluated(tmp_path, {})
    be, t = ev["break_even"], 0.02
    assert ev["models"]["student"]["cut_at_budget"] == 1.0
    assert be["escalated_by_reason"] == {"truncated": 4} and be["escalated_share"] == 1.0
    alone = ev["models"]["student"]["cost_per_1k_calls_usd"] / 1000
    assert be["student_cost_per_call_usd"] == pytest.approx(4 / 6 * (alone + t) + 2 / 6 * t)  # before: 4/6 alone
    assert be["student_alone_cost_per_call_usd"] == pytest.approx(alone)
    batched = ev["models"]["student"]["cost_per_1k_calls_batched_usd"] / 1000
    assert be["batched"]["student_cost_per_call_usd"] == pytest.approx(4 / 6 * (batched + t) + 2 / 6 * t)
    assert be["calls"] is None  # dearer than the teacher: never repaid
    cheaper = ev["verdict"]["checks"][1]
    assert not cheaper["pass"] and ev["verdict"]["decision"] == "NO-GO"
    assert ("the 100.0% of its answers serve escalates (failing the task's check, cut at the token budget) at "
            "the teacher's price on top of its own") in cheaper["why"]
    said = ev["sources"]["served_call"]
    assert said.startswith("of the 4 test inputs it reads, the 4 answers serve escalates whatever its thresholds "
                           "(4 cut at task.max_output_tokens) cost the student's seconds and the teacher's price; "
                           "left out: the low-confidence and out-of-distribution escalations"), said
    assert "(serve.target_escalation, serve.target_agreement)" in said and "adds the teacher's $0.2 per 1,000 calls" in said
    assert said in ev["sources"]["quality_bar"]
    html = (tmp_path / "run" / "report.html").read_text()
    section = html[html.index("<section id='break-even'>"):]
    assert "the teacher's on the 33.3% longer than its context and the 100.0% of its answers serve escalates" in section
    assert "left out: the low-confidence and out-of-distribution escalations" in section
