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


def test_inputs_past_the_students_context_are_paid_at_the_teachers_price(tmp_path):
    """2 of 6 test inputs past the student's 64 positions: evaluate set them aside and counted them
    (n_too_long), then priced every call at the student's cost, as if it answered them too: the saving
    a call and the break-even were a third too good. A served call now costs 4/6 of the student's and
    2/6 of the teacher's $0.02, and the saving a call is 4/6 of the difference."""
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
        "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())
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
