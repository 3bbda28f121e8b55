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


def test_extraction_slices_come_from_tags_length_and_fields_never_whole_references(tmp_path, tiny_model):
    """30 records, each with its own reference object: today that made 30 `label:{...}` slices of n=1.
    Now the slices are the tags, the three length terciles and one row per schema field."""
    run = tmp_path / "run"
    run.mkdir()
    cities = ["Oslo", "Lima", "Pune"]
    rows = []
    for i in range(30):
        ref = {"name": f"person {i}", "age": 20 + i, "city": cities[i % 3]}
        out = dict(ref, age=ref["age"] + (i % 2))  # the teacher gets every other age wrong
        rows.append({"input": "record " + "word " * (i % 7) + f"{i}", "output": json.dumps(out), "reference": ref,
                     "slice": ["web" if i % 2 else "mail"]})
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, run / "student")
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "city": {"type": "string"}}}
    cfg = load_config(overrides={
        "run_dir": str(run), "task": {"type": "extraction", "instruction": "extract", "max_output_tokens": 4,
                                      "json_schema": schema},
        "student.model": str(tiny_model), "evaluate": {"latency_samples": 2, "batch_size": 8, "include_untrained": False},
        "report": {"min_slice_n": 5, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())
    names = [r["slice"] for r in ev["slices"]]
    assert not [n for n in names if n.startswith("label:")]
    assert {n for n in names if n.startswith("field:")} == {"field:name", "field:age", "field:city"}
    assert {n for n in names if n.startswith("tag:")} == {"tag:web", "tag:mail"}
    assert len(names) <= 1 + 2 + 3 + 3 and min(r["n"] for r in ev["slices"]) >= 5
    by = {r["slice"]: r for r in ev["slices"]}
    # The tiny student writes no JSON, so it matches no field; the teacher's age is gold half of the time.
    assert by["field:age"]["n"] == 30 and by["field:age"]["agreement"]["value"] == 0.0
    assert by["field:age"]["gold"]["teacher"] == pytest.approx(0.5) and by["field:name"]["gold"]["teacher"] == 1.0
