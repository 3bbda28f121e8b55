"""`evaluate` on JSON-extraction and free-text runs: the task's own metrics land in eval.json and the
page renders. The run directory is built by hand (test split + a tiny student), no teacher calls."""

import json
import math
import shutil

import pytest

from potstill.config import load_config
from potstill.evaluate.stage import evaluate_stage

RECORDS = {
    "freetext": [("the team won the match", "team won", "team won"), ("new phone software", "phone", "software"),
                 ("a vote in the election", "vote", "election vote"), ("the bank profit", "bank profit", "profit")],
    "extraction": [("the team won the match", '{"topic": "sports"}', {"topic": "sports"}),
                   ("new phone software", '{"topic": "tech"}', {"topic": "tech"}),
                   ("a vote in the election", '{"topic": "politics"}', {"topic": "tech"}),
                   ("the bank profit", '{"topic": "business"}', {"topic": "business"})],
}


@pytest.mark.parametrize("task_type", ["freetext", "extraction"])
def test_evaluate_generation_tasks(tmp_path, tiny_model, task_type):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"input": text, "output": out, "reference": ref, "slice": ["s"]} for text, out, ref in RECORDS[task_type]]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, run / "student")
    task = {"type": task_type, "instruction": "answer", "max_output_tokens": 4}
    if task_type == "extraction":
        task["json_schema"] = {"type": "object", "required": ["topic"]}
    cfg = load_config(overrides={"run_dir": str(run), "task": task, "student.model": str(tiny_model),
                                 "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False},
                                 "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())  # strict JSON: NaN would not parse back as a number
    student = ev["metrics"]["student"]
    if task_type == "freetext":
        assert set(student["vs_teacher"]) == {"n", "chrf", "rouge_l"} and 0 <= student["vs_gold"]["chrf"] <= 1
    else:
        # A tiny random model does not write JSON: validity 0, no fields, recall 0.
        assert student["vs_teacher"]["validity_rate"] == 0.0 and student["vs_teacher"]["field_recall"] == 0.0
        # The teacher against gold: 3 of 4 outputs equal the reference (worked out from RECORDS).
        assert ev["metrics"]["teacher"]["vs_gold"]["exact_match"] == pytest.approx(0.75)
        assert ev["metrics"]["teacher"]["vs_gold"]["field_f1"] == pytest.approx(0.75)
    assert ev["models"]["teacher"]["latency_batch1"]["p50_s"] is None  # no ledger rows: unknown, not NaN
    assert all(math.isfinite(c["confidence"]) for c in ev["worst_cases"])
    page = (run / "report.html").read_text()
    assert "Not applicable" in page and "id='verdict'" in page
