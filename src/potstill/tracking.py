"""Experiment tracking: each finished train, evaluate and redistill logged to MLflow, W&B or TensorBoard.

The run directory stays the record (its manifest, metrics.jsonl, eval.json); a tracker gets a copy
so runs can be compared in the tools teams already use. ``tracking: [mlflow]`` in potstill.yaml
turns it on; the stages call two hooks:

- ``check(cfg)`` before any work, so a tracker that is not installed is one clear error up front
  rather than after an hour of training;
- ``log_stage(cfg, stage, ...)`` after the stage finished (not when it was skipped as up to date).

Every backend gets the same run: named after the run directory, tagged with the stage and the
SHA-256 of ``manifest.json`` as it stands once the stage is recorded (so a tracked run points at
exactly one state of the run directory), parameters flattened to dotted keys, metrics (per-step
series for train), and artifacts.

MLflow: ``MLFLOW_TRACKING_URI`` when set, else a file store at ``RUN/mlruns`` (MLflow 3 keeps the
file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set, which
this module does for the store it chose itself). W&B: ``wandb.init`` with the usual ``WANDB_*``
environment (``WANDB_MODE=offline`` works without an account). TensorBoard: event files under
``RUN/tensorboard/<stage>``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from potstill.config import Config
from potstill.errors import PotstillError, without_credentials
from potstill.hashing import hash_path
from potstill.progress import say

# The module each backend needs, and the pip requirement that brings it.
MODULES = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "'wandb>=0.19.10'"),
           "tensorboard": ("torch.utils.tensorboard", "tensorboard")}


def check(cfg: Config) -> None:
    """Raise one clear error when a tracker named in ``cfg.tracking`` cannot be imported."""
    for name in cfg.tracking:
        module, package = MODULES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise PotstillError(f"tracking: {name} is not installed (pip install {package}), "
                                f"or remove it from `tracking` in the config") from None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and config sections, such as evaluate.judge.teacher) as one level of dotted
    keys; lists and scalars stay values."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if not isinstance(obj, dict):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, (dict, BaseModel)) else {key: v})
    return out


def numbers(obj: Any) -> dict[str, float]:
    """The finite numeric leaves of ``obj`` (bools as 0/1), dotted: what a tracker plots."""
    out = {}
    for k, v in flatten(obj).items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
            out[k] = float(v)
    return out


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The per-step rows of a metrics.jsonl (empty when there is none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_metrics(path: Path) -> dict[str, float]:
    """The headline numbers of eval.json: per-model quality, latency and cost, the verdict, the break-even."""
    result = json.loads(path.read_text())
    return numbers({k: result[k] for k in ("models", "agreement_ci", "metrics", "one_time", "break_even", "verdict")
                    if k in result})


class Run:
    """What every backend logs: identity, parameters, final metrics, step series, artifacts."""

    def __init__(self, run_dir: Path, stage: str, params: dict[str, Any], metrics: dict[str, float],
                 steps: list[dict[str, float]], artifacts: list[Path]):
        self.run_dir = Path(run_dir).resolve()
        self.name = self.run_dir.name
        self.stage = stage
        manifest = self.run_dir / "manifest.json"
        self.tags = {"potstill.stage": stage, "potstill.run_dir": str(self.run_dir),
                     "potstill.manifest_sha256": hash_path(manifest) if manifest.exists() else ""}
        # Trackers cap a parameter's length (MLflow: 6000 characters); long lists are context, not keys.
        self.params = {k: without_credentials(str(v))[:500] for k, v in flatten(params).items()}
        self.metrics = metrics
        self.steps = steps
        self.artifacts = [p for p in artifacts if p.exists()]


def _mlflow(run: Run) -> str:
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (run.run_dir / "mlruns").as_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("potstill")
    exp_id = exp.experiment_id if exp else client.create_experiment("potstill")
    r = client.create_run(exp_id, run_name=f"{run.name}/{run.stage}", tags=run.tags)
    rid = r.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [mlflow.entities.Param(k, v) for k, v in run.params.items()]
        metrics = [mlflow.entities.Metric(k, v, now, 0) for k, v in run.metrics.items()]
        for row in run.steps:
            step = int(row["step"])
            metrics += [mlflow.entities.Metric(k, v, now, step) for k, v in row.items() if k != "step"]
        # One log_batch takes at most 100 params and 1000 metrics (the tracking server's limits).
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        for p in run.artifacts:
            (client.log_artifacts if p.is_dir() else client.log_artifact)(rid, str(p))
        client.set_terminated(rid)
    except BaseException:
        # Half logged (its parameters, not its artifacts), the run would stay RUNNING for good beside
        # the whole one the next run of the stage logs: failed and deleted (MlflowClient.restore_run undoes it).
        with contextlib.suppress(Exception):
            client.set_terminated(rid, "FAILED")
            client.delete_run(rid)
        raise
    return f"mlflow run {rid} at {uri}"


def _wandb(run: Run) -> str:
    import wandb

    w = wandb.init(project=os.environ.get("WANDB_PROJECT", "potstill"), name=f"{run.name}/{run.stage}",
                   dir=str(run.run_dir), config=run.params, job_type=run.stage,
                   tags=[run.stage, run.tags["potstill.manifest_sha256"][:12]],
                   reinit="finish_previous")  # a string since wandb 0.19.10; True is deprecated
    for row in run.steps:
        w.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
    w.summary.update(run.metrics)
    for p in run.artifacts:
        art = wandb.Artifact(f"{run.name}-{run.stage}-{p.name}".replace("/", "-"), type=run.stage)
        (art.add_dir if p.is_dir() else art.add_file)(str(p))
        w.log_artifact(art)
    # Offline (WANDB_MODE=offline) a run has no URL, only the folder that `wandb sync` uploads.
    where = f"offline in {Path(w.dir).parent}" if w.offline else w.url
    w.finish()
    return f"wandb run {where}"


def _tensorboard(run: Run) -> str:
    from torch.utils.tensorboard import SummaryWriter

    out = run.run_dir / "tensorboard" / run.stage
    with SummaryWriter(str(out)) as w:
        for row in run.steps:
            for k, v in row.items():
                if k != "step":
                    w.add_scalar(k, v, int(row["step"]))
        for k, v in run.metrics.items():
            w.add_scalar(k, v, 0)
        w.add_text("potstill", "\n".join(f"{k}: {v}" for k, v in {**run.tags, **run.params}.items()))
    return f"tensorboard events at {out}"


BACKENDS: dict[str, Callable[[Run], str]] = {"mlflow": _mlflow, "wandb": _wandb, "tensorboard": _tensorboard}


def log_stage(cfg: Config, stage: str, params: dict[str, Any], metrics: dict[str, float],
              steps: Iterable[dict[str, Any]] = (), artifacts: Iterable[Path] = (),
              run_dir: Path | None = None) -> list[str]:
    """Log one finished stage to every tracker in ``cfg.tracking`` (a no-op when it is empty).

    ``steps``: metrics.jsonl rows (each with ``step``); ``run_dir`` defaults to ``cfg.run_dir``.
    Returns the trackers that failed (a server down, a store not writable), each said in one line:
    the stage's own record in the run directory is complete either way, so an hour of training is
    not turned into a traceback by its copy."""
    if not cfg.tracking:
        return []
    series = [{"step": float(r["step"]), **numbers({k: v for k, v in r.items() if k != "step"})} for r in steps]
    run = Run(Path(run_dir or cfg.run_dir), stage, params, metrics, series, list(artifacts))
    failed = []
    for name in cfg.tracking:
        try:
            say(f"{stage}: tracked as {without_credentials(BACKENDS[name](run))}")  # MLFLOW_TRACKING_URI may hold user:password@
        except Exception as e:  # any backend's own error type (MlflowException, wandb.Error, OSError...)
            failed.append(name)
            first = without_credentials(str(e).splitlines()[0] if str(e) else "")[:300]
            say(f"[yellow]{stage}: not tracked in {name} ({type(e).__name__}: {first}); the next run of this stage "
                "logs it[/yellow]")
    return failed


def after_stage(cfg: Config, stage: str, params: dict[str, Any], summary: dict[str, Any], run_dir: Path) -> list[str]:
    """Log a pipeline stage that just ran: train with its per-step series, evaluate with its headline
    numbers. Other stages are not tracked (their numbers live in the run directory and the ledger).
    Returns the trackers that failed (``log_stage``)."""
    if not cfg.tracking:
        return []
    if stage == "train":
        return log_stage(cfg, "train", params, numbers(summary), read_steps(run_dir / "metrics.jsonl"),
                         [run_dir / "train.json", run_dir / "metrics.jsonl"], run_dir=run_dir)
    if stage == "evaluate":
        return log_stage(cfg, "evaluate", params, eval_metrics(run_dir / "eval.json"),
                         artifacts=[run_dir / "eval.json", run_dir / "report.html"], run_dir=run_dir)
    return []
