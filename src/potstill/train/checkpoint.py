"""Checkpoints that resume exactly: the loss curve after a kill equals the one without.

A checkpoint holds everything the next step depends on: the trainable weights, the optimizer and
scheduler state, the Python shuffle RNG and the not-yet-consumed part of the epoch order, and the
torch RNG states (dropout, on-policy sampling) of every process, since each rank draws its own
masks and samples (``rank_rngs``, gathered by the trainer). It is written to a temp directory and
renamed into place, so a kill during the save leaves the previous checkpoint intact, and it carries
the fingerprint of the settings and data: a checkpoint from other settings is never resumed. It also
keeps the curve up to its step (``metrics.jsonl``), since the run's own file may since have been
rewritten by a run with other settings.

Nothing in a checkpoint is unpickled: the state is JSON (``state.json``, checked against ``_State``)
and the tensors are read with ``torch.load(weights_only=True)``, which builds tensors, numbers and
containers and nothing else. A run folder may be shared by a team, and the next ``potstill train``
reads whatever lies under it: a pickle there runs any code it names as whoever trains. A checkpoint
of an earlier potstill (``state.pkl``) is never opened, only named (``not_resumed``).

Once the last step is done and the student saved, ``final.json`` replaces the step checkpoints: the
training's summary and the digests of the student's files and the curve. Train's passes after it
(int8 calibration, the importance matrix: minutes on a large student) and train.json come next, so
a kill there resumes as "trained, not yet calibrated" (``finished``) rather than from step 0. The
caller drops the whole directory once its own outputs are whole (``drop``).
"""

from __future__ import annotations

import json
import pickle  # for its error alone: nothing here is unpickled but through torch's weights_only
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from potstill import leftovers
from potstill.errors import PotstillError, no_room
from potstill.hashing import hash_file
from potstill.records import atomic_dir, read_json, write_json

NAME = "step-{:08d}"
FINAL = "final.json"
STATE = "state.json"
# The state as a pickle, written by potstill up to 2026-12-07: never opened (unpickling runs code).
PICKLED = "state.pkl"

# Train settings added since 2026-12-07, each with the value at which training runs as it did before
# the field existed (say a new `foo: None` that changes nothing unless set: {"foo": None}). At that
# value the field stays out of the fingerprint, so a checkpoint written before it was added still
# resumes; at any other value it is in, as every other field always is. Every field added since
# 12-03 went into the fingerprint as it came, so each one lost every checkpoint in progress on upgrade.
# Not "every field at its default": a default that changed value (a new lr default) would then leave
# the fingerprint alike while the steps differ, and the old default's checkpoint would resume under
# the new one. The value here stays what the code did before, whatever the default becomes.
AS_BEFORE: dict[str, Any] = {}


def settings(cfg: Any) -> dict[str, Any]:
    """The train settings (a ``TrainConfig``) a checkpoint's fingerprint holds: those the steps read.

    Out of it: how to resume and save, where, and int8_calibration (read after the last step), so
    changing them on a rerun still resumes. So do grad_accum_steps (the same update, split for
    memory: a run that ran out of memory resumes with more micro-batches) and eval_every (the val
    passes change no weight and draw no random number), unless keep_best chooses among the steps it
    measures or early stopping counts them. And the fields of ``AS_BEFORE`` at their earlier value."""
    out = cfg.model_dump(exclude={"resume", "checkpoint_every", "device", "int8_calibration", "grad_accum_steps",
                                  *(() if cfg.keep_best or cfg.early_stopping_patience else ("eval_every",))})
    return {k: v for k, v in out.items() if not (k in AS_BEFORE and v == AS_BEFORE[k])}


def dir_for(out_dir: Path) -> Path:
    """Where the checkpoints of a training into ``out_dir`` go: ``<out_dir>.ckpt/`` beside it."""
    return out_dir.parent / f"{out_dir.name}.ckpt"


def drop(out_dir: Path) -> None:
    """Remove the checkpoints of a training into ``out_dir``: its caller's outputs are whole."""
    shutil.rmtree(dir_for(out_dir), ignore_errors=True)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s trainable tensors (all weights of a full fine-tune, a LoRA's adapters)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and every CUDA device where there is one)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save(ckpt_dir: Path, step: int, fingerprint: str, model: Any, opt: Any, sched: Any, rng: random.Random,
         order: list[int], extra: dict[str, Any], rank_rngs: list[dict[str, Any]] | None = None,
         metrics: Path | None = None, best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``ckpt_dir/step-N`` atomically and drop older checkpoints (only the latest is kept).

    ``rank_rngs``: every process's ``rng_state()`` in rank order (None: this process's alone).
    ``best``: ``train.keep_best``'s snapshot of the best step so far (``best_weights`` reads it back).
    ``metrics``: the run's metrics file, its rows up to this step, copied in (``curve``)."""
    out = ckpt_dir / NAME.format(step)
    # A save killed part-way left its temp directory (weights and optimizer state) under its own step's
    # name, which no later save writes again: one more per crash.
    leftovers.remove(ckpt_dir, lambda name: name.startswith("step-"))
    with atomic_dir(out) as tmp:
        if metrics is not None and metrics.exists():
            shutil.copyfile(metrics, tmp / "metrics.jsonl")
        _save_torch(trainable_state(model), tmp / "model.pt")
        if best is not None:
            _save_torch(best, tmp / "best.pt")
        _save_torch({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp / "optim.pt")
        _save_torch(rank_rngs or [rng_state()], tmp / "rng.pt")
        version, internal, gauss = rng.getstate()
        state = {"step": step, "fingerprint": fingerprint, "order": list(order),
                 "py_rng": [version, list(internal), gauss], **extra}
        # No default=: a value JSON cannot hold is an error here, not a string that resumes otherwise.
        (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
    for old in ckpt_dir.glob("step-*"):
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


def _save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file: given a path, torch writes the file itself, and a full disk
    is 'unexpected pos 170112 vs 170064' with no OSError behind it (``atomic_dir`` names it then)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


class _State(BaseModel):
    """What ``state.json`` must hold to be resumed (the trainer's extras besides, kept as they are)."""

    model_config = ConfigDict(extra="allow")
    step: int
    fingerprint: str
    order: list[int]
    py_rng: tuple[int, tuple[int, ...], float | None]  # random.Random.getstate()
    tokens: int = 0
    elapsed_s: float = 0.0
    settings: dict[str, Any] | None = None  # None: written before checkpoints kept their settings


def _state(d: Path) -> dict[str, Any] | None:
    """The state of the checkpoint ``d``, or None where it has none that reads as a ``_State``."""
    try:
        return _State.model_validate_json((d / STATE).read_bytes()).model_dump()
    except (OSError, ValidationError):
        return None


def _readable(ckpt_dir: Path) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    """Each checkpoint in ``ckpt_dir``, newest first, with its state: None for one an earlier potstill
    pickled (named, never opened). One whose state does not read (cut short, edited) is passed over."""
    for d in sorted(ckpt_dir.glob("step-*"), reverse=True):
        state = _state(d)
        if state is not None or (d / PICKLED).is_file():
            yield d, state


def latest(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint written with these settings, or None."""
    return next((d for d, state in _readable(ckpt_dir) if state and state["fingerprint"] == fingerprint), None)


def rerun(ckpt_dir: Path, fingerprint: str, cfg: Any) -> str:
    """What the same command does next with the checkpoints in ``ckpt_dir`` (a ``TrainConfig``'s)."""
    kept = latest(ckpt_dir, fingerprint) if cfg.checkpoint_every else None
    if kept and cfg.resume:
        return f"the same command resumes from its checkpoint at step {int(kept.name.split('-')[1])}"
    if kept:
        return "a rerun starts over (train.resume is false)"
    return "no checkpoint was saved yet (train.checkpoint_every), so a rerun starts over"


def after_failed_write(e: OSError, ckpt_dir: Path, fingerprint: str, cfg: Any) -> str:
    """A write that failed while training (a checkpoint, the student), and what a rerun does then."""
    what = f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
    fix = no_room(e)
    return f"{what}; {fix + ', then: ' if fix else ''}{rerun(ckpt_dir, fingerprint, cfg)}"


def not_resumed(ckpt_dir: Path, cfg: Any) -> str | None:
    """Why the newest checkpoint in ``ckpt_dir`` is not resumed, in one line naming it, or None where
    there is none; for a caller that found no checkpoint of its settings (``latest``) or does not
    look (``train.resume`` false): a restart from step 0 said nothing, and dropped it at its first save."""
    for d, state in _readable(ckpt_dir):
        if not cfg.resume:
            why = "train.resume is false"
        elif not cfg.checkpoint_every:
            why = "train.checkpoint_every is 0"
        elif state is None:
            why = (f"an earlier potstill wrote its state as a pickle ({PICKLED}), which potstill no longer "
                   "opens: unpickling a file runs whatever code it holds")
        elif state["settings"] is None:  # written before checkpoints kept their settings (an earlier potstill)
            why = "it was written with other settings, data or student, or by an earlier potstill"
        else:
            # As state.json holds them (a tuple reads back as a list).
            now, then = json.loads(json.dumps(settings(cfg))), state["settings"]
            differ = sorted(k for k in {*now, *then} if now.get(k, "<unset>") != then.get(k, "<unset>"))
            why = (f"it was written with other settings ({', '.join('train.' + k for k in differ)})" if differ
                   else "it was written with other data, student, max_length or number of processes")
        step = state["step"] if state else d.name.removeprefix("step-").lstrip("0") or "0"
        return f"train: the checkpoint {d} (step {step}) is not resumed: {why}; training starts from step 0"
    return None


def best_weights(path: Path) -> dict[str, torch.Tensor] | None:
    """The ``train.keep_best`` snapshot a checkpoint keeps, or None."""
    f = path / "best.pt"
    return _load_torch(f) if f.exists() else None


def curve(path: Path) -> list[str] | None:
    """The metrics rows (JSON lines) a checkpoint keeps up to its step; None where it keeps none."""
    f = path / "metrics.jsonl"
    return [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln] if f.exists() else None


def load(path: Path, model: Any, opt: Any, sched: Any, rng: random.Random, rank: int = 0) -> dict[str, Any]:
    """Restore a checkpoint in place, with process ``rank``'s torch RNG states; returns its state
    (``step``, ``order`` and the extras). One that does not read or restore is one line naming it."""
    state = _state(path)
    if state is None:
        raise PotstillError(f"train: the checkpoint {path} has no readable {STATE}: {_UNREADABLE}")
    weights, optim, rngs = (_load_torch(path / name) for name in ("model.pt", "optim.pt", "rng.pt"))
    try:
        missing = set(weights) - set(model.state_dict())
        if missing:
            raise ValueError(f"it does not fit this model ({len(missing)} unknown tensors)")
        model.load_state_dict(weights, strict=False)
        opt.load_state_dict(optim["opt"])
        sched.load_state_dict(optim["sched"])
        version, internal, gauss = state["py_rng"]
        rng.setstate((version, tuple(internal), gauss))
        mine = rngs[rank]  # the fingerprint holds the world size, so every rank has its entry
        torch.set_rng_state(mine["cpu"])
        if mine["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PotstillError(f"train: the checkpoint {path} does not restore ({why}): {_UNREADABLE}") from None
    return state


_UNREADABLE = "remove it (or set train.resume false) and train again from step 0"


def _load_torch(f: Path) -> Any:
    """Tensors, numbers and containers from ``f`` (``weights_only``: a pickle there that names any other
    object is refused, not run); a file that does not read is one line naming it."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's words go on to say how to load it anyway: not for this file
        why = "it names objects other than tensors, numbers and containers, and was not loaded"
    except (OSError, RuntimeError, EOFError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise PotstillError(f"train: the checkpoint {f} does not read ({why}): {_UNREADABLE}")


def _digests(root: Path) -> dict[str, str]:
    # hash_file memoises by (path, inode, size, mtime): the manifest's hash of the student after
    # calibration reads none of these files again.
    return {str(f.relative_to(root)): hash_file(f) for f in sorted(root.rglob("*")) if f.is_file()}


def save_final(ckpt_dir: Path, fingerprint: str, summary: dict[str, Any], out_dir: Path, metrics: Path) -> None:
    """Record a training finished into ``out_dir`` (with its curve in ``metrics``), then drop the step
    checkpoints it supersedes (a full fine-tune's optimizer state is twice the fp32 weights)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(ckpt_dir / FINAL, {"fingerprint": fingerprint, "summary": summary, "student": _digests(out_dir),
                                  "metrics": hash_file(metrics)})
    for old in ckpt_dir.glob("step-*"):
        shutil.rmtree(old, ignore_errors=True)


def finished(ckpt_dir: Path, fingerprint: str, out_dir: Path, metrics: Path) -> dict[str, Any] | None:
    """The summary of a training with these settings that finished into ``out_dir`` and was stopped
    before its caller was done, or None. Only while ``out_dir`` and ``metrics`` still hold what it
    wrote (a student saved or a curve written since is not this training's). Files added to
    ``out_dir`` since (a calibration cut short, or one the rerun no longer asks for) are removed:
    the student is again as the training saved it."""
    try:
        final = read_json(ckpt_dir / FINAL)
        if final.get("fingerprint") != fingerprint or hash_file(metrics) != final.get("metrics"):
            return None
        files = final["student"]
        if any(not (out_dir / name).is_file() or hash_file(out_dir / name) != digest
               for name, digest in files.items()):
            return None
    except (OSError, PotstillError, KeyError, TypeError, AttributeError):  # none, or not one written whole
        return None
    for f in [f for f in out_dir.rglob("*") if f.is_file() and str(f.relative_to(out_dir)) not in files]:
        f.unlink()
    return final["summary"]
