"""`tracking: [wandb, tensorboard]`: a tiny training run logged by the real libraries (W&B offline,
TensorBoard's event files) and read back from the files they wrote. Until 2026-12-05 neither path
had ever run ("written against their documented APIs"); running them found W&B's deprecation
warning for ``reinit=True`` and an offline run reported as RUN/wandb, the folder of every run,
instead of its own."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from potstill.config import Config
from potstill.hashing import hash_path
from potstill.train.stage import train_stage
from tests.test_tracking import _failing, before_each_step, config, write_splits

wandb = pytest.importorskip("wandb")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of an offline W&B run file (``run-ID.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB's log format, 32 KiB blocks of chunks each behind a 7-byte header
    (CRC-32C, length, type: 1 whole, 2 first, 3 middle, 4 last); a block's last < 7 bytes are padding."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        body, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 0:  # zeros past the last record
            break
        if kind == 1:
            yield body
        elif kind == 2:
            parts = body
        elif kind == 3:
            parts += body
        else:
            yield parts + body


def read_wandb(run_dir: Path, wait_s: float = 10.0) -> dict:
    """The run, history rows, summary and artifacts of the one offline W&B run under ``run_dir``,
    read again (up to ``wait_s``) until its exit record is there: W&B's own process writes the file,
    and in one CI run in many a run ended by an interrupt was read before it had (no records yet)."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_wandb_once(run_dir)
        if "exit_code" in out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_wandb_once(run_dir: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out: dict = {"history": [], "summary": {}, "artifacts": {}}
    for raw in wandb_records(path):
        r = pb.Record()
        r.ParseFromString(raw)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"] = {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "artifact":
            out["artifacts"][r.artifact.name] = [e.path for e in r.artifact.manifest.contents]
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """W&B offline for this module's runs, with its settings away from the user's home. One
    environment for every run here: W&B warns when it changes within a process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb-config")))
        for var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_SILENT"):
            mp.delenv(var, raising=False)
        yield


def tensorboard_runs(run: Path) -> list[Path]:
    """The TensorBoard runs of the train stage (a folder each), oldest first."""
    parent = run / "tensorboard" / "train"
    return sorted(parent.iterdir(), key=lambda p: p.stat().st_mtime_ns) if parent.is_dir() else []


def tensorboard_events(folder: Path) -> EventAccumulator:
    """One TensorBoard run's events; a run directory: its only train run."""
    if (folder / "tensorboard").is_dir():  # a run directory, not a TensorBoard run's folder
        (folder,) = tensorboard_runs(folder)
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tensorboard_steps(where: Path, key: str = "loss") -> list[int]:
    if not where.exists() or (where / "train.jsonl").exists() and not tensorboard_runs(where):
        return []
    acc = tensorboard_events(where)
    return [e.step for e in acc.Scalars(key)] if key in acc.Tags()["scalars"] else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, offline):
    """The run trained with `tracking: [wandb, tensorboard]`, and what each had written before each step."""
    root = tmp_path_factory.mktemp("tracking-files")
    write_splits(root / "run")
    seen = {}

    def look(k: int) -> None:
        seen[k] = {"wandb runs": len(list((root / "run").glob("wandb/offline-run-*"))),
                   "tensorboard steps": tensorboard_steps(root / "run")}

    with before_each_step(look):
        train_stage(Config.model_validate(config(root, tiny_model, tracking=["wandb", "tensorboard"])))
    return root / "run", seen


@pytest.fixture(scope="module")
def tracked(trained):
    return trained[0]


def steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_trackers_follow_the_training_as_it_runs(trained):
    """Before step k TensorBoard's event files already hold the loss of every step before k (the
    writer is flushed after each row; by itself it writes every 120 s), and the W&B run is open
    (its offline file holds a step's row only once the next begins, so only its folder is checked)."""
    _, seen = trained
    assert seen == {k: {"wandb runs": 1, "tensorboard steps": list(range(1, k))} for k in range(1, 7)}


def test_wandb_holds_the_step_series_summary_and_artifacts(tracked):
    w = read_wandb(tracked)
    assert w["run"].display_name == "run/train" and w["run"].job_type == "train"
    assert list(w["run"].tags) == ["train", hash_path(tracked / "manifest.json")[:12]]
    assert w["config"]["train.lr"] == "0.01" and w["config"]["student.max_length"] == "32"
    rows = steps(tracked)
    assert len(rows) == 6
    for key in ("loss", "grad_norm", "lr", "tokens"):
        assert [h[key] for h in w["history"]] == [pytest.approx(float(r[key]), rel=1e-12) for r in rows]
    assert [h["_step"] for h in w["history"]] == [r["step"] for r in rows]  # every step, once
    assert w["exit_code"] == 0
    train = json.loads((tracked / "train.json").read_text())
    assert w["summary"]["final_loss"] == pytest.approx(train["final_loss"])
    assert w["artifacts"] == {"run-train-train.json": ["train.json"], "run-train-metrics.jsonl": ["metrics.jsonl"]}


def test_tensorboard_holds_the_step_series_and_the_run(tracked):
    acc = tensorboard_events(tracked)
    rows = steps(tracked)
    for key in ("loss", "grad_norm", "lr"):
        series = [(e.step, e.value) for e in acc.Scalars(key) if e.step > 0]
        assert series == [(r["step"], pytest.approx(float(r[key]), rel=1e-6)) for r in rows]  # float32 events
    train = json.loads((tracked / "train.json").read_text())
    (final,) = acc.Scalars("final_loss")
    assert final.step == 0 and final.value == pytest.approx(train["final_loss"], rel=1e-6)
    (text,) = acc.Tensors("potstill/text_summary")
    logged = text.tensor_proto.string_val[0].decode()
    assert f"potstill.manifest_sha256: {hash_path(tracked / 'manifest.json')}" in logged and "train.lr: 0.01" in logged


def test_potstill_train_says_where_each_tracker_wrote_and_wandb_warns_of_nothing(tmp_path, tiny_model):
    """`potstill train` in a process of its own: the line after train names the offline W&B run's
    own folder (what `wandb sync` takes), not RUN/wandb, which holds every run of the directory; W&B
    printed "WARNING Using a boolean value for 'reinit' is deprecated" and "URL not available in
    offline run" (once per process, so not seen by the tests above)."""
    write_splits(tmp_path / "run")
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(config(tmp_path, tiny_model,
                                                                  tracking=["wandb", "tensorboard"])))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    r = subprocess.run([sys.executable, "-m", "potstill", "train", "-c", "potstill.yaml"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    said = r.stdout + r.stderr
    assert r.returncode == 0, said[-2000:]
    (folder,) = (tmp_path / "run").glob("wandb/offline-run-*")
    assert f"train: tracked as wandb run offline in {folder}" in " ".join(said.split())
    (folder,) = tensorboard_runs(tmp_path / "run")
    assert f"tracked as tensorboard events at {folder}" in " ".join(said.split())
    assert "wandb: WARNING" not in said and "wandb:" in said  # W&B spoke, and warned of nothing


@pytest.mark.parametrize("how", ["error", "interrupt"])
def test_a_training_that_fails_ends_its_wandb_run_failed_and_keeps_its_event_files(tmp_path, tiny_model, offline,
                                                                                  how):
    """A training that fails at step 3: the W&B run holds steps 1-2 and ends with exit code 1 (W&B
    marks it failed), TensorBoard's event files keep steps 1-2, and the exception propagates unchanged."""
    write_splits(tmp_path / "run")
    callback, same = _failing(how, 3)
    with before_each_step(callback), pytest.raises(BaseException) as e:
        train_stage(Config.model_validate(config(tmp_path, tiny_model, tracking=["wandb", "tensorboard"])))
    assert same(e), e.value
    w = read_wandb(tmp_path / "run")
    assert w["run"].display_name == "run/train" and [h["_step"] for h in w["history"]] == [1, 2]
    assert w["exit_code"] == 1
    assert tensorboard_steps(tmp_path / "run") == [1, 2]


def test_a_resumed_training_is_a_tensorboard_run_of_its_own(tmp_path, tiny_model, offline):
    """A training that fails at step 3 and is resumed from its checkpoint at step 2: two TensorBoard
    runs, the failed one with steps 1-2 and the resumed one with the whole curve, each step once.
    In one folder per stage, TensorBoard merged the two event files into one run that drew steps
    1-2 twice."""
    write_splits(tmp_path / "run")
    cfg = Config.model_validate(config(tmp_path, tiny_model, tracking=["tensorboard"],
                                       train={"lr": 0.01, "epochs": 3, "batch_size": 2, "checkpoint_every": 2}))
    callback, _ = _failing("error", 3)
    with before_each_step(callback), pytest.raises(RuntimeError):
        train_stage(cfg)
    assert train_stage(cfg)["resumed_from_step"] == 2
    failed, resumed = tensorboard_runs(tmp_path / "run")
    assert tensorboard_steps(failed) == [1, 2]
    rows = steps(tmp_path / "run")
    acc = tensorboard_events(resumed)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == \
        [(r["step"], pytest.approx(float(r["loss"]), rel=1e-6)) for r in rows]
    # TensorBoard reads every run under RUN/tensorboard: this is what it plots for train.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={"scalars": 0}).AddRunsFromDirectory(str(tmp_path / "run" / "tensorboard"))
    mux.Reload()
    per_run = {name: [e.step for e in mux.Scalars(name, "loss")] for name in mux.Runs()}
    assert sorted(per_run.values()) == [[1, 2], [1, 2, 3, 4, 5, 6]]


def test_an_abandoned_tensorboard_run_leaves_nothing_and_a_new_one_takes_another_folder(tmp_path):
    from potstill.tracking import Run, TensorBoardRun

    run = Run(tmp_path / "run", "train", {"train.lr": 0.01})
    first, second = TensorBoardRun(run), TensorBoardRun(run)  # within one second: two folders all the same
    assert first.out != second.out and first.out.parent == second.out.parent
    first.log([{"step": 1.0, "loss": 2.0}])
    first.abandon()
    assert not first.out.exists() and tensorboard_steps(second.out) == []
    second.log([{"step": 1.0, "loss": 3.0}])
    assert tensorboard_steps(second.out) == [1]
    second.fail()


def test_an_abandoned_offline_wandb_run_leaves_no_run_to_sync(tmp_path, offline):
    """A W&B run abandoned offline (a training refused in its setup, before its first row) leaves no
    offline-run folder for `wandb sync` to upload as an empty failed run; a run beside it stays."""
    from potstill.tracking import Run, WandbRun

    run = Run(tmp_path / "run", "train", {"train.lr": 0.01})
    kept = WandbRun(run)
    kept.log([{"step": 1.0, "loss": 2.0}])
    kept.fail()
    dropped = WandbRun(run)
    dropped.abandon()
    folders = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and folders[0] == Path(kept.w.dir).parent
    assert not (tmp_path / "run" / "wandb" / "latest-run").exists()

