"""Every student answer of pilot and evaluate is a ledger row, and `potstill cost` shows them beside
the teacher's; the same tiny run, with `tracking: [mlflow]`, shows evaluate's numbers in MLflow."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

from potstill.config import load_config
from potstill.pipeline import run_all
from tests.test_pipeline import LABELS, write_inputs


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model, tiny_model_b):
    root = tmp_path_factory.mktemp("student-ledger")
    write_inputs(root / "inputs.jsonl")
    cfg = {
        "run_dir": "run", "tracking": ["mlflow"],
        "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "local", "model": str(tiny_model_b), "batch_size": 4, "price": {"usd_per_hour": 1.0}},
        # Cut to 1 of its 2 layers: the untrained student is the cut model train starts from.
        "student": {"model": str(tiny_model), "max_length": 64, "usd_per_hour": 3.6, "num_layers": 1},
        "pilot": {"n": 10},
        "curate": {"val": 4, "test": 8},
        "train": {"lr": 0.01, "epochs": 1, "batch_size": 4},
        "evaluate": {"latency_samples": 3, "batch_size": 4},
        "report": {"bootstrap_samples": 100},
    }
    (root / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    run_all(load_config(root / "potstill.yaml"))
    return root


def student_rows(run):
    db = sqlite3.connect(run / "calls.sqlite")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM calls WHERE role='student' ORDER BY id")]


def test_pilot_and_evaluate_answers_are_ledger_rows(project):
    run = project / "run"
    rows = student_rows(run)
    ev = json.loads((run / "eval.json").read_text())
    pilot = json.loads((run / "pilot.json").read_text())
    by = {}
    for r in rows:
        by.setdefault((r["stage"], r["model"]), []).append(r)
    trained = ev["models"]["student"]["model"]
    untrained = ev["models"]["untrained student"]["model"]
    assert trained != untrained and untrained.endswith("[:1]")
    assert len(by[("evaluate", trained)]) == len(by[("evaluate", untrained)]) == ev["n_test"] == 8
    assert len(by[("pilot", untrained)]) == pilot["valid"] > 0
    assert set(by) == {("evaluate", trained), ("evaluate", untrained), ("pilot", untrained)}
    test_ids = {json.dumps(json.loads(line)["messages"], sort_keys=True)
                for line in (run / "test.jsonl").read_text().splitlines()}
    for r in by[("evaluate", trained)]:
        assert r["status"] == "ok" and r["input_tokens"] > 0 and r["output_tokens"] == 1 and r["latency_s"] > 0
        assert r["cost_usd"] == pytest.approx(r["latency_s"] * 3.6 / 3600)
        assert json.dumps(json.loads(r["request"])["messages"], sort_keys=True) in test_ids
        assert json.loads(r["response"])["output"] in LABELS


def test_cost_lists_the_students_calls(project):
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "cost", "run"], cwd=project, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = student_rows(project / "run")
    trained = json.loads((project / "run" / "eval.json").read_text())["models"]["student"]["model"]
    spend = sum(r["cost_usd"] for r in rows if r["stage"] == "evaluate" and r["model"] == trained)
    assert f"student {trained} (evaluate): 8 calls (0 errors)" in out.stdout
    line = next(x for x in lines if x.startswith(f"student {trained} (evaluate)"))
    assert line.endswith(f"${spend:.4f}")
    assert any(x.startswith("teacher ") for x in lines)
    assert f"student: {len(rows)} calls" in out.stdout and len(rows) > 16


def test_evaluate_is_tracked_in_mlflow(project):
    mlflow = pytest.importorskip("mlflow")
    run = project / "run"
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("potstill").experiment_id])
    by = {r.info.run_name: r for r in runs}
    assert set(by) == {"run/train", "run/evaluate"}
    ev = json.loads((run / "eval.json").read_text())
    m = by["run/evaluate"].data.metrics
    assert m["models.student.agreement_with_teacher"] == pytest.approx(ev["models"]["student"]["agreement_with_teacher"])
    assert m["verdict.go"] == float(ev["verdict"]["go"])
    assert {a.path for a in client.list_artifacts(by["run/evaluate"].info.run_id)} == {"eval.json", "report.html"}


def test_cost_splits_the_teachers_calls_by_stage(project):
    """README: `potstill cost RUN` prints the teacher's and the student's calls and spend per model
    and stage. The pilot's teacher calls and generate's are different spends (the pilot's are a
    subset of the inputs, answered before generate's cache hits)."""
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "cost", "run"], cwd=project, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    db = sqlite3.connect(project / "run" / "calls.sqlite")
    rows = db.execute("SELECT model, stage, COUNT(*), SUM(cost_usd) FROM calls WHERE role='teacher' GROUP BY 1, 2").fetchall()
    assert {r[1] for r in rows} == {"pilot", "generate"}
    for model, stage, calls, spend in rows:
        line = next(x for x in out.stdout.splitlines() if x.startswith(f"teacher {model} ({stage}): "))
        assert line.startswith(f"teacher {model} ({stage}): {calls} calls (0 errors)") and line.endswith(f"${spend:.4f}")
