"""`tracking: [mlflow]`: a tiny training run logged to a real local MLflow store, read back with MLflow's client."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

import potstill
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


@contextlib.contextmanager
def before_each_step(callback: Callable[[int], None]) -> Iterator[None]:
    """``callback(k)`` in the training loop right before its k-th optimiser step (1-based): the
    rows of steps 1 .. k-1 are written to metrics.jsonl and handed to ``on_row`` by then."""
    from potstill.train import trainer

    real, calls = trainer._optimiser_step, itertools.count(1)

    def step(*args, **kwargs):
        callback(next(calls))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "_optimiser_step", step)
        yield


def mlflow_runs(run: Path, **search) -> list[tuple[str, str, dict, list[int]]]:
    """Each run of the store in RUN/mlruns: name, status, parameters and the steps of its loss."""
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    exp = client.get_experiment_by_name("potstill")
    return [(r.info.run_name, r.info.status, r.data.params,
             sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")))
            for r in (client.search_runs([exp.experiment_id], **search) if exp else [])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """The run trained with `tracking: [mlflow]`, and what the store held before each step."""
    root = tmp_path_factory.mktemp("tracking")
    write_splits(root / "run")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = Config.model_validate(config(root, tiny_model, tracking=["mlflow"]))
    seen = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the store before potstill has written to it
        with before_each_step(lambda k: seen.update({k: mlflow_runs(root / "run")})):
            train_stage(cfg)
    return root / "run", seen


@pytest.fixture(scope="module")
def tracked(trained):
    return trained[0]


def test_train_is_in_mlflow_while_it_runs(trained):
    """Before step k the store holds the run, RUNNING, with its parameters and the loss of every
    step before k: the curve can be watched as the training goes, as with TRL's report_to."""
    _, seen = trained
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]
    for k, runs in seen.items():
        ((name, status, params, steps),) = runs
        assert (name, status, params["train.lr"], steps) == ("run/train", "RUNNING", "0.01", list(range(1, k)))


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
             "base_url": "https://u:x@sk-SECRET-IN-USERINFO@proxy.example/v1?api-key=sk-SECRET-IN-QUERY"}
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
    # Nothing listens on the discard port; the URI's password (with a "'", which RFC 3986 allows) must
    # not reach the line either.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:sk-SECRET'x@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    first = train_stage(cfg)
    assert not first["skipped"]
    err = capsys.readouterr()
    # One line, said when the run failed to open as the training started, not again at its end.
    assert (err.out + err.err).count("train: not tracked in mlflow") == 1 and "Traceback" not in err.out + err.err
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


def _failing(how: str, at: int) -> tuple[Callable[[int], None], Callable]:
    """A callback for ``before_each_step`` that fails the training at step ``at`` (an error, Ctrl-C), or
    for ``nan`` a wrapper of the optimiser step whose loss is NaN there (the trainer then raises);
    and a check of the exception that came out."""
    raised = {"error": RuntimeError("CUDA error: an illegal memory access"), "interrupt": KeyboardInterrupt()}.get(how)

    def callback(k: int) -> None:
        if k == at and raised is not None:
            raise raised

    def same(e: pytest.ExceptionInfo) -> bool:
        if how == "nan":
            return e.type is PotstillError and f"the loss is nan at step {at}" in str(e.value)
        return e.value is raised  # the training's own exception, not one of the trackers'

    return callback, same


@pytest.mark.parametrize("how", ["error", "interrupt", "nan"])
def test_a_training_that_fails_leaves_a_failed_run_with_its_curve(tmp_path, tiny_model, monkeypatch, how):
    """A training that fails at step 3 ends its MLflow run FAILED and keeps it (it holds steps 1-2,
    the real curve up to the failure), and the exception propagates unchanged. The same command then
    resumes from the checkpoint at step 2 and opens a new run, whose curve starts with the rows kept
    from the checkpoint: the whole curve in one run, beside the failed one."""
    from potstill.train import trainer

    write_splits(tmp_path / "run")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = Config.model_validate(config(tmp_path, tiny_model, tracking=["mlflow"],
                                       train={"lr": 0.01, "epochs": 3, "batch_size": 2, "checkpoint_every": 2}))
    callback, same = _failing(how, 3)
    with pytest.MonkeyPatch.context() as mp:
        if how == "nan":
            real, calls = trainer._optimiser_step, itertools.count(1)

            def nan_at_3(*args, **kwargs):
                logged, grad_norm = real(*args, **kwargs)
                return ({**logged, "loss": float("nan")} if next(calls) == 3 else logged), grad_norm

            mp.setattr(trainer, "_optimiser_step", nan_at_3)
        with before_each_step(callback), pytest.raises(BaseException) as e:
            train_stage(cfg)
    assert same(e), e.value
    run = tmp_path / "run"
    ((name, status, params, steps),) = mlflow_runs(run)
    assert (name, status, params["train.lr"], steps) == ("run/train", "FAILED", "0.01", [1, 2])

    resumed = train_stage(cfg)
    assert resumed["resumed_from_step"] == 2
    runs = sorted(mlflow_runs(run), key=lambda r: r[1])
    assert [(r[0], r[1], r[3]) for r in runs] == [("run/train", "FAILED", [1, 2]),
                                                  ("run/train", "FINISHED", [1, 2, 3, 4, 5, 6])]
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (done,) = client.search_runs([client.get_experiment_by_name("potstill").experiment_id],
                                 filter_string="attributes.status = 'FINISHED'")
    assert done.data.tags["potstill.manifest_sha256"] == hash_path(run / "manifest.json")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    history = sorted((m.step, m.value) for m in client.get_metric_history(done.info.run_id, "loss") if m.step > 0)
    assert history == [(r["step"], pytest.approx(r["loss"], rel=1e-12)) for r in rows]


def test_a_tracker_that_fails_mid_training_is_one_line_and_logged_by_the_next_run(tmp_path, tiny_model, monkeypatch,
                                                                                 capsys):
    """The MLflow store made unwritable under the run at step 3 (the file its grad_norm series is
    appended to replaced by a folder; the tests run as root, so a chmod would not stop a write): one
    line, the training goes on to the end, the half-logged run is failed and deleted as one
    half-logged at the end is, and the next run of the stage (skipped as up to date) logs the whole
    stage, once."""
    from mlflow.entities import ViewType

    write_splits(tmp_path / "run")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())

    def break_store(k: int) -> None:
        if k == 3:
            (r,) = client.search_runs([client.get_experiment_by_name("potstill").experiment_id])
            series = run / "mlruns" / r.info.experiment_id / r.info.run_id / "metrics" / "grad_norm"
            series.unlink()
            series.mkdir()

    cfg = Config.model_validate(config(tmp_path, tiny_model, tracking=["mlflow"]))
    with before_each_step(break_store):
        first = train_stage(cfg)
    assert not first["skipped"] and first["steps"] == 6
    said = capsys.readouterr()
    lines = [ln for ln in (said.out + said.err).splitlines() if "not tracked" in ln]
    assert len(lines) == 1 and lines[0].startswith("train: not tracked in mlflow"), lines
    assert json.loads((run / "manifest.json").read_text())["stages"]["train"]["untracked"] == ["mlflow"]
    assert mlflow_runs(run) == []
    ((_, status, _, steps),) = mlflow_runs(run, run_view_type=ViewType.DELETED_ONLY)
    assert status == "FAILED" and steps[:2] == [1, 2] and len(steps) <= 3  # step 3's row failed part-way

    for _ in range(2):
        assert train_stage(cfg)["skipped"]
    ((name, status, params, steps),) = mlflow_runs(run)
    assert (name, status, steps) == ("run/train", "FINISHED", [1, 2, 3, 4, 5, 6])
    assert "untracked" not in json.loads((run / "manifest.json").read_text())["stages"]["train"]


def test_under_torchrun_only_the_main_process_tracks(tmp_path, tiny_model, monkeypatch):
    """`potstill train` in two processes (torchrun, gloo on CPU): rank 0 alone opens, follows and
    finishes the runs, so there is one MLflow run holding each step once and one TensorBoard event
    file. (The code before live tracking logged on rank 0 too: this guards the live path, it is not
    a test that failed before.)"""
    write_splits(tmp_path / "run")
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(config(tmp_path, tiny_model,
                                                                  tracking=["mlflow", "tensorboard"])))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this process reads the store
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # two CPU ranks (gloo), even on a GPU machine
    # The potstill under test, from any cwd (a relative PYTHONPATH=src would name nothing in tmp_path).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(potstill.__file__).parents[1]), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "potstill", "train", "-c", "potstill.yaml"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "train.json").read_text())["processes"] == 2
    ((name, status, _, steps),) = mlflow_runs(run)
    assert (name, status, steps) == ("run/train", "FINISHED", [1, 2, 3, 4, 5, 6])
    assert len(list((run / "tensorboard" / "train").glob("*/events.out.tfevents.*"))) == 1


def test_a_training_that_fails_before_its_first_row_leaves_no_tracker_run(tmp_path, tiny_model, monkeypatch):
    """Refused in its setup (train.trainable_layers 0 leaves nothing to train), a training has no
    curve: its MLflow run is deleted and its TensorBoard folder removed, where each used to stay as
    an empty failed run, one more for every try of a wrong setting."""
    write_splits(tmp_path / "run")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = Config.model_validate(config(tmp_path, tiny_model, tracking=["mlflow", "tensorboard"],
                                       train={"lr": 0.01, "epochs": 3, "batch_size": 2, "trainable_layers": 0}))
    with pytest.raises(PotstillError, match="trainable_layers 0"):
        train_stage(cfg)
    run = tmp_path / "run"
    assert mlflow_runs(run) == []
    assert list((run / "tensorboard").glob("train/*")) == []
    # A training that wrote rows keeps its failed run (test_a_training_that_fails_leaves_a_failed_run...).
