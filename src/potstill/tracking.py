"""Experiment tracking: train, evaluate and redistill logged to MLflow, W&B or TensorBoard.

The run directory stays the record (its manifest, metrics.jsonl, eval.json); a tracker gets a copy
so runs can be compared in the tools teams already use. ``tracking: [mlflow]`` in potstill.yaml
turns it on; the stages call these hooks:

- ``check(cfg)`` before any work, so a tracker that is not installed is one clear error up front
  rather than after an hour of training;
- while a training runs, ``tracking_live.Live`` opens each tracker's run and logs every
  metrics.jsonl row as it is written (so the curve can be watched as it grows);
- ``log_stage(cfg, stage, ...)`` after the stage finished (not when it was skipped as up to date):
  the run opened live gets the rest; a stage not followed live is logged whole here.

Every backend gets the same run: named after the run directory, tagged with the stage and the
SHA-256 of ``manifest.json`` as it stands once the stage is recorded (so a tracked run points at
exactly one state of the run directory), parameters flattened to dotted keys, metrics (per-step
series for train), and artifacts.

MLflow: ``MLFLOW_TRACKING_URI`` when set, else a file store at ``RUN/mlruns`` (MLflow 3 keeps the
file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set, which
this module does for the store it chose itself). W&B: ``wandb.init`` with the usual ``WANDB_*``
environment (``WANDB_MODE=offline`` works without an account). TensorBoard: event files under
``RUN/tensorboard/<stage>/<time>``, a folder per tracker run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from potstill.config import Config
from potstill.errors import PotstillError, url_without_credentials, without_credentials
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
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def eval_metrics(path: Path) -> dict[str, float]:
    """The headline numbers of eval.json: per-model quality, latency and cost, the verdict, the break-even."""
    result = json.loads(path.read_text(encoding="utf-8"))
    return numbers({k: result[k] for k in ("models", "agreement_ci", "metrics", "one_time", "break_even", "verdict")
                    if k in result})


class Run:
    """What every backend logs: identity, parameters, final metrics, step series, artifacts."""

    def __init__(self, run_dir: Path, stage: str, params: dict[str, Any], metrics: dict[str, float] | None = None,
                 steps: Iterable[dict[str, float]] = (), artifacts: Iterable[Path] = ()):
        self.run_dir = Path(run_dir).resolve()
        self.name = self.run_dir.name
        self.stage = stage
        self.title = f"{self.name}/{stage}"
        self.tags = {"potstill.stage": stage, "potstill.run_dir": str(self.run_dir)}
        # Trackers cap a parameter's length (MLflow: 6000 characters); long lists are context, not keys.
        self.params = {k: url_without_credentials(str(v))[:500] for k, v in flatten(params).items()}
        self.metrics = metrics or {}
        self.steps = list(steps)
        self.artifacts = [p for p in artifacts if p.exists()]

    def recorded_tags(self) -> dict[str, str]:
        """The tags with the SHA-256 of manifest.json as it stands now: read when the stage is
        recorded, which for a run followed live is long after its tracker run opened."""
        manifest = self.run_dir / "manifest.json"
        return {**self.tags, "potstill.manifest_sha256": hash_path(manifest) if manifest.exists() else ""}


def series(rows: Iterable[dict[str, Any]]) -> list[dict[str, float]]:
    """metrics.jsonl rows as trackers plot them: ``step`` and the row's finite numbers."""
    return [{"step": float(r["step"]), **numbers({k: v for k, v in r.items() if k != "step"})} for r in rows]


# Each backend is one open tracker run: opened by the constructor, then ``log`` (step rows, any
# number of times), and one of ``finish`` (the stage's final metrics, artifacts and tags; returns
# where it went), ``fail`` (the stage failed: the run ends failed and is kept, with the curve up
# to the failure) or ``abandon`` (the tracker itself failed: the part logged is removed where the
# tracker can, so the stage's next run logs it whole, once).


class MLflowRun:
    """``MLFLOW_TRACKING_URI`` when set, else a file store at ``RUN/mlruns``."""

    def __init__(self, run: Run):
        import mlflow

        self._entities = mlflow.entities
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run.run_dir / "mlruns").as_uri()
        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("potstill")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("potstill")
        self.id = self.client.create_run(exp_id, run_name=run.title, tags=run.tags).info.run_id
        try:
            params = [self._entities.Param(k, v) for k, v in run.params.items()]
            for i in range(0, len(params), 100):  # at most 100 params in one log_batch (the server's limit)
                self.client.log_batch(self.id, params=params[i : i + 100])
        except BaseException:
            self.abandon()
            raise

    def _metrics(self, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), 1000):  # at most 1000 metrics in one log_batch
            self.client.log_batch(self.id, metrics=metrics[i : i + 1000])

    def log(self, rows: list[dict[str, float]]) -> None:
        now = int(time.time() * 1000)
        self._metrics([self._entities.Metric(k, v, now, int(row["step"]))
                       for row in rows for k, v in row.items() if k != "step"])

    def finish(self, run: Run) -> str:
        now = int(time.time() * 1000)
        self.client.log_batch(self.id, tags=[self._entities.RunTag(k, v) for k, v in run.recorded_tags().items()])
        self._metrics([self._entities.Metric(k, v, now, 0) for k, v in run.metrics.items()])
        for p in run.artifacts:
            (self.client.log_artifacts if p.is_dir() else self.client.log_artifact)(self.id, str(p))
        self.client.set_terminated(self.id)
        return f"mlflow run {self.id} at {self.uri}"

    def fail(self) -> None:
        self.client.set_terminated(self.id, "FAILED")

    def abandon(self) -> None:
        # Half logged (its parameters, not its artifacts), the run would stay RUNNING for good beside
        # the whole one the next run of the stage logs: failed and deleted (MlflowClient.restore_run undoes it).
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.id, "FAILED")
            self.client.delete_run(self.id)


class WandbRun:
    """``wandb.init`` with the usual ``WANDB_*`` environment (``WANDB_MODE=offline`` needs no account)."""

    def __init__(self, run: Run):
        import wandb

        self._wandb = wandb
        self.w = wandb.init(project=os.environ.get("WANDB_PROJECT", "potstill"), name=run.title,
                            dir=str(run.run_dir), config=run.params, job_type=run.stage, tags=[run.stage],
                            reinit="finish_previous")  # a string since wandb 0.19.10; True is deprecated

    def log(self, rows: list[dict[str, float]]) -> None:
        for row in rows:
            # commit: a row is whole when logged; W&B would otherwise hold it until the next step's.
            self.w.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]), commit=True)

    def finish(self, run: Run) -> str:
        self.w.tags = (run.stage, run.recorded_tags()["potstill.manifest_sha256"][:12])
        self.w.summary.update(run.metrics)
        for p in run.artifacts:
            art = self._wandb.Artifact(f"{run.name}-{run.stage}-{p.name}".replace("/", "-"), type=run.stage)
            (art.add_dir if p.is_dir() else art.add_file)(str(p))
            self.w.log_artifact(art)
        # Offline (WANDB_MODE=offline) a run has no URL, only the folder that `wandb sync` uploads.
        where = f"offline in {Path(self.w.dir).parent}" if self.w.offline else self.w.url
        self.w.finish()
        return f"wandb run {where}"

    def fail(self) -> None:
        self.w.finish(exit_code=1)

    def abandon(self) -> None:
        """Offline, the run's folder goes (never synced, it is then no run at all); online, the
        run is deleted through W&B's public API, where that fails it stays, ended failed."""
        try:
            folder, path, offline = Path(self.w.dir).parent, self.w.path, self.w.offline
        except Exception:  # noqa: BLE001 - a run in a state that says nothing: end it, as before
            folder, path, offline = None, None, False
        with contextlib.suppress(Exception):
            self.w.finish(exit_code=1)
        if folder is None:
            return
        if offline:
            latest = folder.parent / "latest-run"
            if latest.is_symlink() and latest.resolve() == folder.resolve():
                latest.unlink()
            shutil.rmtree(folder, ignore_errors=True)
            return
        with contextlib.suppress(Exception):  # not run here: no network to W&B's cloud
            self._wandb.Api().run(path).delete()


class TensorBoardRun:
    """Event files under ``RUN/tensorboard/<stage>/<time>``: a folder per tracker run, which
    TensorBoard lists as a run of its own (as transformers' ``runs/<time>`` logging dirs). In one
    folder per stage, a resumed training's event file sat beside the failed one's and TensorBoard
    merged them into one curve that drew the steps before the checkpoint twice."""

    def __init__(self, run: Run):
        from torch.utils.tensorboard import SummaryWriter

        parent = run.run_dir / "tensorboard" / run.stage
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out, n = parent / stamp, 1
        while self.out.exists():  # two runs of the stage within a second
            n += 1
            self.out = parent / f"{stamp}-{n}"
        self.w = SummaryWriter(str(self.out))

    def log(self, rows: list[dict[str, float]]) -> None:
        for row in rows:
            for k, v in row.items():
                if k != "step":
                    self.w.add_scalar(k, v, int(row["step"]))
        # SummaryWriter writes its queue every 120 s (or 10 events): a live curve would lag by minutes.
        self.w.flush()

    def finish(self, run: Run) -> str:
        for k, v in run.metrics.items():
            self.w.add_scalar(k, v, 0)
        self.w.add_text("potstill", "\n".join(f"{k}: {v}" for k, v in {**run.recorded_tags(), **run.params}.items()))
        self.w.close()
        return f"tensorboard events at {self.out}"

    def fail(self) -> None:
        self.w.close()

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.w.close()
        shutil.rmtree(self.out, ignore_errors=True)  # its own folder: the part it logged


BACKENDS: dict[str, Callable[[Run], Any]] = {"mlflow": MLflowRun, "wandb": WandbRun, "tensorboard": TensorBoardRun}


def finish(tracker: Any, run: Run) -> str:
    """``tracker.finish(run)``, the tracker run abandoned when that fails."""
    try:
        return tracker.finish(run)
    except BaseException:
        tracker.abandon()
        raise


def not_tracked(stage: str, name: str, e: Exception) -> None:
    """One line for a tracker that failed (``e``, any backend's own error type)."""
    first = without_credentials(str(e).splitlines()[0] if str(e) else "")[:300]  # MLFLOW_TRACKING_URI may hold user:password@
    say(f"[yellow]{stage}: not tracked in {name} ({type(e).__name__}: {first}); the next run of this stage "
        "logs it[/yellow]")


def log_stage(cfg: Config, stage: str, params: dict[str, Any], metrics: dict[str, float],
              steps: Iterable[dict[str, Any]] = (), artifacts: Iterable[Path] = (),
              run_dir: Path | None = None, live: Any = None) -> list[str]:
    """Log one finished stage to every tracker in ``cfg.tracking`` (a no-op when it is empty).

    ``steps``: metrics.jsonl rows (each with ``step``); ``run_dir`` defaults to ``cfg.run_dir``.
    ``live``: the ``tracking_live.Live`` that followed the stage's training, whose open tracker
    runs get the rest (final metrics, artifacts, tags) rather than a second run being made; the
    steps go only to trackers it did not follow.
    Returns the trackers that failed (a server down, a store not writable), each said in one line:
    the stage's own record in the run directory is complete either way, so an hour of training is
    not turned into a traceback by its copy."""
    if not cfg.tracking:
        return []
    run = Run(Path(run_dir or cfg.run_dir), stage, params, metrics, series(steps), list(artifacts))
    failed = []
    for name in cfg.tracking:
        if live is not None and name in live.failed:  # said when it failed
            failed.append(name)
            continue
        try:
            tracker = live.take(name) if live is not None else None
            if tracker is None:
                tracker = BACKENDS[name](run)
                try:
                    tracker.log(run.steps)
                except BaseException:
                    tracker.abandon()
                    raise
            say(f"{stage}: tracked as {without_credentials(finish(tracker, run))}")
        except Exception as e:
            failed.append(name)
            not_tracked(stage, name, e)
    return failed


def after_stage(cfg: Config, stage: str, params: dict[str, Any], summary: dict[str, Any], run_dir: Path,
                live: Any = None) -> list[str]:
    """Log a pipeline stage that just ran: train with its per-step series, evaluate with its headline
    numbers. Other stages are not tracked (their numbers live in the run directory and the ledger).
    ``live``: see ``log_stage``. Returns the trackers that failed (``log_stage``)."""
    if not cfg.tracking:
        return []
    if stage == "train":
        return log_stage(cfg, "train", params, numbers(summary), read_steps(run_dir / "metrics.jsonl"),
                         [run_dir / "train.json", run_dir / "metrics.jsonl"], run_dir=run_dir, live=live)
    if stage == "evaluate":
        return log_stage(cfg, "evaluate", params, eval_metrics(run_dir / "eval.json"),
                         artifacts=[run_dir / "eval.json", run_dir / "report.html"], run_dir=run_dir)
    return []
