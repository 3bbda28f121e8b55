"""`tracking: [mlflow]`: a tiny training run logged to a real local MLflow store, read back with MLflow's client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from potstill.config import Config, load_config
from potstill.errors import PotstillError
from potstill.hashing import hash_path
from potstill.records import Record, write_jsonl
from potstill.train.stage import train_stage

mlflow = pytest.importorskip("mlflow")

LABELS = ["sports", "tech"]
TEXTS = {"sports": ["the team won the match", "a late goal to win", "the team has a star"],
         "tech": ["new phone software", "the internet and a computer", "a game on the phone"]}


def write_splits(run: Path) -> None:
    rows = [Record(messages=[{"role": "user", "content": t}], output=label, label=label)
            for label, texts in TEXTS.items() for t in texts]
    write_jsonl(run / "train.jsonl", rows[:2] + rows[3:5])
    write_jsonl(run / "val.jsonl", [rows[2], rows[5]])


def config(root: Path, student: Path, **extra) -> dict:
    return {"run_dir": str(root / "run"), "task": {"labels": LABELS, "instruction": "classify the text"},
            "student": {"model": str(student), "max_length": 32},
            "train": {"lr": 0.01, "epochs": 3, "batch_size": 2}, **extra}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("tracking")
    write_splits(root / "run")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = Config.model_validate(config(root, tiny_model, tracking=["mlflow"]))
    train_stage(cfg)
    return root / "run"


def test_train_metrics_match_metrics_jsonl(tracked):
    client = mlflow.MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    exp = client.get_experiment_by_name("potstill")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_name == "run/train" and r.info.status == "FINISHED"
    assert r.data.tags["potstill.manifest_sha256"] == hash_path(tracked / "manifest.json")
    assert r.data.tags["potstill.stage"] == "train"
    assert r.data.params["train.lr"] == "0.01" and r.data.params["student.max_length"] == "32"
    rows = [json.loads(line) for line in (tracked / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # 4 examples / batch 2 x 3 epochs
    for key in ("loss", "grad_norm", "lr", "tokens"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key) if m.step > 0)
        assert history == [(row["step"], pytest.approx(float(row[key]), rel=1e-12)) for row in rows]
    train = json.loads((tracked / "train.json").read_text())
    assert r.data.metrics["final_loss"] == pytest.approx(train["final_loss"])
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"train.json", "metrics.jsonl"}


def test_skipped_stage_logs_nothing(tracked, tiny_model):
    assert train_stage(Config.model_validate(config(tracked.parent, tiny_model, tracking=["mlflow"])))["skipped"]
    client = mlflow.MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    assert len(client.search_runs([client.get_experiment_by_name("potstill").experiment_id])) == 1


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(PotstillError, match="tracking"):
        load_config(overrides={"tracking": ["neptune"]})


def test_without_mlflow_one_clear_line(tmp_path, tiny_model):
    """mlflow made unimportable (a None entry in sys.modules) in a real `potstill train` process."""
    write_splits(tmp_path / "run")
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(config(tmp_path, tiny_model, tracking=["mlflow"])))
    code = "import sys; sys.modules['mlflow'] = None; from potstill.cli import main; sys.argv[0] = 'potstill'; main()"
    r = subprocess.run([sys.executable, "-c", code, "train", "-c", "potstill.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: tracking: mlflow is not installed (pip install mlflow-skinny), or remove it from `tracking` in the config"]
    assert not (tmp_path / "run" / "student").exists()  # refused before training


def test_a_key_in_a_judge_url_is_not_logged(tmp_path, tiny_model):
    """evaluate's parameters include the judge's teacher section; a key carried in its base_url
    (a proxy's ?api-key=, or user:key@host) must not reach the tracker."""
    import shutil

    from potstill.pipeline import STAGES

    run = tmp_path / "run"
    write_splits(run)
    (run / "test.jsonl").write_text((run / "train.jsonl").read_text())
    shutil.copytree(tiny_model, run / "student")
    (run / "train.json").write_text("{}")
    judge = {"type": "openai", "model": "judge-1", "api_key_env": "",
             "base_url": "https://proxy.example/v1?api-key=sk-SECRET-IN-QUERY"}
    cfg = Config.model_validate(config(
        tmp_path, tiny_model, tracking=["mlflow"], teacher={"base_url": "https://u:sk-SECRET-IN-USERINFO@host/v1"},
        evaluate={"latency_samples": 2, "batch_size": 2, "include_untrained": False, "judge": {"teacher": judge}},
        report={"min_slice_n": 2, "bootstrap_samples": 100}))
    STAGES["evaluate"].run(cfg)
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (r,) = client.search_runs([client.get_experiment_by_name("potstill").experiment_id])
    assert r.info.run_name == "run/evaluate"
    logged = json.dumps([r.data.params, r.data.tags])
    assert "SECRET" not in logged
    # The rest of the judge's section is still there, one parameter per field.
    assert r.data.params["evaluate.judge.teacher.model"] == "judge-1"
    assert r.data.params["evaluate.judge.teacher.base_url"] == "https://proxy.example/v1"


def test_a_tracker_that_fails_after_the_stage_is_logged_by_the_next_run(tmp_path, tiny_model, monkeypatch, capsys):
    """An MLflow server down when a long train ends: the train is kept and recorded (not a traceback
    that leaves the run unlogged for good), one line says so, and the next run of the stage, skipped
    as up to date, logs it then, once."""
    write_splits(tmp_path / "run")
    cfg = Config.model_validate(config(tmp_path, tiny_model, tracking=["mlflow"]))
    # Nothing listens on the discard port; the URI's password must not reach the line either.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:sk-SECRET@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    first = train_stage(cfg)
    assert not first["skipped"]
    err = capsys.readouterr()
    assert "train: not tracked in mlflow" in err.out + err.err and "Traceback" not in err.out + err.err
    assert "SECRET" not in err.out + err.err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the file store in RUN/mlruns
    store = mlflow.MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    for _ in range(2):
        assert train_stage(cfg)["skipped"]
        (r,) = store.search_runs([store.get_experiment_by_name("potstill").experiment_id])
    assert r.info.run_name == "run/train" and r.data.params["train.lr"] == "0.01"
    assert r.data.metrics["final_loss"] == pytest.approx(first["final_loss"])


def test_a_run_that_fails_half_logged_is_not_left_running_beside_the_retry(tmp_path, monkeypatch):
    """An artifact store that refuses the upload (here a path under a file; an s3:// root without
    boto3 alike) failed after the parameters were logged: the MLflow run stayed RUNNING for good,
    and the retry the README promises added a second run of the stage beside it."""
    from mlflow.entities import ViewType

    from potstill import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text("{}")
    (tmp_path / "blocker").write_text("a file where the artifact folder should be")
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    exp = client.create_experiment("potstill", artifact_location=(tmp_path / "blocker" / "artifacts").as_uri())
    cfg = Config.model_validate({"run_dir": str(run), "task": {"type": "freetext"}, "tracking": ["mlflow"]})
    assert tracking.log_stage(cfg, "train", {"train": {"lr": 0.01}}, {"final_loss": 1.0},
                              artifacts=[run / "train.json"]) == ["mlflow"]
    assert client.search_runs([exp]) == []  # nothing half-logged in the default (active) view
    (gone,) = client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
    assert gone.info.status == "FAILED" and gone.data.params == {"train.lr": "0.01"}
