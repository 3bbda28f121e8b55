"""The one-time cost of distilling in eval.json: the teacher's spend on building the dataset, read
from the ledger, and never the teacher's answers to served traffic (an operating cost)."""

import json
import shutil

import pytest

from potstill.config import load_config
from potstill.evaluate.stage import evaluate_stage
from potstill.ledger import Call, Ledger, ServedCall


def test_served_escalations_are_not_a_one_time_cost(tmp_path, tiny_model):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"input": f"text {i}", "output": f"summary {i}"} for i in range(4)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, run / "student")
    with Ledger(run / "calls.sqlite") as ledger:
        # What distilling paid: two generate calls, $0.01 each.
        for i in range(2):
            ledger.record(Call(request_hash=f"g{i}", role="teacher", stage="generate", model="t", request={"i": i},
                               cost_usd=0.01))
        # A month of serving later: 3 requests escalated to the teacher at $2 each, logged as served.
        for i in range(3):
            ledger.record_served(ServedCall(request={"messages": [{"role": "user", "content": f"q{i}"}]},
                                            answered_by="teacher", model="t", content="a", cost_usd=2.0,
                                            request_hash=f"s{i}"))
    cfg = load_config(overrides={"run_dir": str(run), "task": {"type": "freetext", "instruction": "answer",
                                                                "max_output_tokens": 2},
                                 "student.model": str(tiny_model),
                                 "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False},
                                 "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["one_time"]["generation_usd"] == pytest.approx(0.02)
    assert ev["one_time"]["generation_calls"] == 2
    assert "2 successful teacher calls" in ev["sources"]["generation_usd"]


@pytest.mark.parametrize("text, said", [('{"train_s": 12.5', r"train\.json: malformed JSON"),
                                        ('{"train_s": "soon"}', r"train\.json: train_s is 'soon', not the seconds")])
def test_a_broken_train_json_is_one_line_naming_it(tmp_path, text, said):
    """evaluate read RUN/train.json with json.loads and float(): a file cut short or edited was a
    JSONDecodeError / ValueError traceback at the end of evaluate's work."""
    from potstill.errors import PotstillError
    from potstill.evaluate.stage import _one_time_costs
    from potstill.rundir import RunDir

    (tmp_path / "train.json").write_text(text)
    cfg = load_config(overrides={"run_dir": str(tmp_path), "task": {"type": "freetext"}})
    with pytest.raises(PotstillError, match=said):
        _one_time_costs(cfg, RunDir(tmp_path), {"cost_usd": 0.0, "calls": 0})
