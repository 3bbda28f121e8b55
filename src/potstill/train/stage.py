"""`potstill train`: the student on train.jsonl, into student/ with metrics.jsonl and train.json."""

from __future__ import annotations

import os
from typing import Any

from potstill import tracking_live
from potstill.config import Config
from potstill.errors import PotstillError
from potstill.models.loading import load_lm
from potstill.progress import say
from potstill.records import read_numbered, write_json
from potstill.rundir import RunDir
from potstill.students import student_format, unreadable
from potstill.tasks import get_task
from potstill.train import checkpoint
from potstill.train.distributed import load_on_every_rank
from potstill.train.space import check_room, training_needs
from potstill.train.trainer import check_settings, train


def train_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import STAGES

    return STAGES["train"].run(cfg, force)


def train_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    check_settings(cfg.train)
    if not (run / "train.jsonl").exists():
        raise PotstillError(f"{run / 'train.jsonl'} not found: run `potstill curate` first")
    from potstill.preflight import require

    require(cfg, "train")
    task = get_task(cfg.task)
    records = trainable(task, run / "train.jsonl")
    if not records:
        raise PotstillError(f"{run / 'train.jsonl'}: no training examples; run `potstill curate` (or add records) first")
    val = trainable(task, run / "val.jsonl") if (run / "val.jsonl").exists() else []
    with load_on_every_rank():
        lm = load_lm(cfg.student.model, device=cfg.train.device, num_layers=cfg.student.num_layers)
    if not (checkpoint.dir_for(run / "student") / checkpoint.FINAL).exists():  # a finished training writes no weights
        check_room(run.path, training_needs(lm.model, cfg.train))
    # Followed live in the trackers of `tracking` (set by Stage.run; None off the main process).
    live = tracking_live.current()
    summary = train(lm, student_format(lm, task), task, records, val, cfg.train, cfg.student.max_length,
                    run / "student", run / "metrics.jsonl", on_row=live.start() if live else None)
    try:
        return _after_training(cfg, run, summary, lm, task, records)
    except KeyboardInterrupt:
        # student.ckpt/ keeps the finished training until the stage is marked done (pipeline: scratch).
        if cfg.train.resume and int(os.environ.get("RANK", "0")) == 0:
            say("train: interrupted after the training finished; the same command keeps the trained student and "
                "runs only the passes after it")
        raise


def _after_training(cfg: Config, run: RunDir, summary: dict[str, Any], lm: Any, task: Any,
                    records: list) -> dict[str, Any]:
    """The passes on the saved student (int8 calibration, importance matrix), then train.json."""
    summary["base_model"] = cfg.student.model
    if summary.get("resumed_from_step") == summary["steps"]:
        say(f"train: the training had finished (step {summary['steps']}) when the run was stopped; its student "
            f"is kept ({run / 'student'}) and only the passes after it run again")
    elif summary.get("resumed_from_step"):
        say(f"train: resumed from the checkpoint at step {summary['resumed_from_step']} ({run / 'student.ckpt'})")
    if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch`: the main process writes
        return summary
    # An earlier training's train.json no longer describes run/student: stopped before this one's is
    # written, export's model card told of the old training beside the new weights.
    (run / "train.json").unlink(missing_ok=True)
    # run/student is a new directory (both saves replace it whole; a resumed finished training
    # removes what was added since), so no earlier student's calibration file smooths this one.
    if cfg.train.int8_calibration:
        summary["int8_calibration"] = calibrate_int8(cfg, run / "student", lm, task, records)
    if cfg.export.imatrix_inputs:
        summary["imatrix"] = record_imatrix(cfg, run / "student", task, read_whole(lm, task, records,
                                                                                 cfg.export.imatrix_inputs))
    write_json(run / "train.json", summary)
    say(f"train: {summary['steps']} steps over {summary['examples']} examples, {summary['tokens']} tokens, "
        f"{summary['train_s']:.1f} s, final loss {summary['final_loss']:.4f}, val loss "
        + (f"{summary['val_loss']:.4f}" if summary.get("val_loss") is not None else "none (no val split)")
        + (f", the student of step {summary['best_step']} (train.keep_best)" if summary.get("best_step") else "")
        + (f"; stopped early: no lower val loss in the last {_count(cfg.train.early_stopping_patience, 'measurement')} "
           "(train.early_stopping_patience)" if summary.get("stopped_early") else ""))
    return summary


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def trainable(task: Any, path: Any) -> list:
    """The records of a split, each with a valid answer; one without (curate writes none: a hand edit)
    is one error naming file and line, before a model loads."""
    out = []
    for lineno, r in read_numbered(path):
        why = "no output" if r.output is None else task.validate(task.parse(r.output))
        if why:
            raise PotstillError(f"{path}:{lineno}: {why}; a split holds only answers to train on (`potstill curate` "
                                "writes them)")
        out.append(r)
    return out


def read_whole(lm: Any, task: Any, records: list, n: int) -> list:
    """The first ``n`` of ``records`` the student reads when served: prompt (and, generating, the task's
    answer budget) within its positions (``students.unreadable``). The passes after training
    run only these: a longer one failed a GPT-2 student's with an IndexError, and serve sends it to
    the teacher unread (too_long)."""
    out: list = []
    for r in records:  # one at a time: the first n that fit, without measuring the whole training set
        if len(out) == n:
            break
        if not unreadable(lm, task, [r]):
            out.append(r)
    return out


def record_imatrix(cfg: Config, student: Any, task: Any, records: list) -> dict[str, Any] | None:
    """``potstill.export.imatrix`` of the student saved in ``student``, on its first
    ``export.imatrix_inputs`` training ``records``, kept beside it for the GGUF mixes; what was
    measured. A failure is one line and leaves the student without one (export measures it then)."""
    import time

    from potstill.export import imatrix

    msgs = [r.messages for r in records[: cfg.export.imatrix_inputs]]
    if not msgs:
        say("train: importance matrix skipped: no training input fits the student's context")
        return None
    t0 = time.perf_counter()
    try:
        per_module = imatrix.measure(student, task, msgs, num_layers=cfg.student.num_layers)
        info = {"inputs": len(msgs), "source": "train.jsonl", "layers": len(per_module),
                "seconds": round(time.perf_counter() - t0, 1)}
        imatrix.save(student, per_module, info)
    except Exception as e:  # noqa: BLE001 - the training itself succeeded
        first = str(e).splitlines()[0] if str(e) else ""
        say(f"train: importance matrix skipped ({type(e).__name__}: {first})"[:300])
        return None
    say(f"train: importance matrix for GGUF mixes on {len(msgs)} training inputs ({info['seconds']} s)")
    return info


def calibrate_int8(cfg: Config, student: Any, lm: Any, task: Any, records: list) -> dict[str, Any] | None:
    """``potstill.engines.calibration`` of the student saved in ``student`` on the first
    ``train.int8_calibration`` of its training ``records``; what it measured. A failure is one line
    and leaves the trained student uncalibrated (int8 unsmoothed)."""
    from potstill.engines import calibration
    from potstill.models.prompting import label_token_ids

    fmt = student_format(lm, task)
    msgs = [r.messages for r in read_whole(lm, task, records, cfg.train.int8_calibration)]
    if not msgs:
        say("train: int8 calibration skipped: no training input fits the student's context")
        return None
    ids = label_token_ids(lm.tokenizer, fmt, task.labels) if task.labels else None
    try:
        cal = calibration.calibrate(student, fmt, msgs, ids, num_layers=cfg.student.num_layers)
    except Exception as e:  # noqa: BLE001 - the training itself succeeded; int8 then runs unsmoothed
        first = str(e).splitlines()[0] if str(e) else ""
        say(f"train: int8 calibration skipped ({type(e).__name__}: {first})"[:300])
        return None
    info = cal.info
    if info.get("recheck_margin") is not None:
        say(f"train: int8 calibration on {len(msgs)} training inputs: {info['same_label_as_fp32']:.1%} same label "
            f"as fp32, largest label noise {info['noise']['max']:.3f}, recheck margin {info['recheck_margin']:.3f} "
            f"({calibration.path(student)})")
    else:
        say(f"train: int8 calibration on {len(msgs)} training inputs ({calibration.path(student)})")
    return info
