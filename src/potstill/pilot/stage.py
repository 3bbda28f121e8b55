"""`potstill pilot`: pilot.json and a printed table, before a cent goes to training."""

from __future__ import annotations

from typing import Any

from potstill.config import Config
from potstill.curate.split import rank
from potstill.errors import PotstillError
from potstill.generate import run_generate
from rich.markup import escape

from potstill.progress import say
from potstill.records import Record, write_json
from potstill.report import measure_student, measure_teacher, print_table
from potstill.rundir import RunDir
from potstill.stage import load_inputs
from potstill.students import readable, untrained_student_engine, untrained_task
from potstill.tasks import get_task


def pilot_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import STAGES

    return STAGES["pilot"].run(cfg, force)


def pilot_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    sample = draw(load_inputs(cfg), cfg.pilot.n, cfg.pilot.seed)
    task = get_task(cfg.task)
    with run.ledger() as ledger:
        labelled, stats = run_generate(cfg, sample, ledger, stage="pilot")
        valid = [r for r in labelled if r.valid]
        if not valid:
            # Not marked done and no pilot.json: with nothing to compare against, the table would show the
            # teacher at 100% and the student at 0%, and a fixed key would never rerun it. Failed calls are
            # not cached, so the rerun retries them.
            raise PotstillError(f"pilot: no usable teacher answer for any of the {len(sample)} inputs: "
                                f"{_unusable(labelled)}; no pilot.json written, fix the teacher and rerun")
    lm = untrained_student_engine(cfg, "pilot")
    asked = untrained_task(task)
    # Both measured on the inputs the student reads: a longer one is the teacher's when served.
    read = readable(lm, asked, valid, "pilot")
    with run.ledger() as ledger:
        # As evaluate prices it: teacher.price (per call, its token price over the recorded tokens, or a
        # self-hosted server's usd_per_hour over its busy seconds) in place of the ledger's cost, which is
        # $0 for a replay teacher's recorded traffic and for a server whose model no price table knows.
        teacher = measure_teacher(task, read, ledger, price=cfg.teacher.price, prices=cfg.generate.prices,
                                  hourly=cfg.teacher.type != "local")
        student, _ = measure_student(lm, asked, read, cfg.student.usd_per_hour, cfg.evaluate.batch_size,
                                     min(cfg.evaluate.latency_samples, 10), "untrained student", ledger, "pilot")
    models = {"untrained student": student, "teacher": teacher}
    write_json(run / "pilot.json", {"n": len(sample), "seed": cfg.pilot.seed, "ids": [r.id for r in sample],
                                    "valid": len(valid), "too_long": len(valid) - len(read),
                                    "teacher_calls": stats.calls, "teacher_errors": stats.errors,
                                    "teacher_invalid": stats.invalid, "models": models})
    if len(valid) < len(sample):
        # The teacher's error text as the provider wrote it: "[/messages/1]" is a JSON path, not markup.
        say(escape(f"pilot: {_unusable(labelled)}; the figures are over the other {len(valid)} of {len(sample)} inputs"))
    print_table(f"pilot: {len(read)} inputs, before training", models)
    say(summary_line(student, teacher))
    if cfg.student.num_layers:
        # A depth-pruned model before training has lost what its later layers did: its pilot figures are a
        # floor, not what the whole model would do.
        n = cfg.student.num_layers
        say(f"pilot: the untrained student is student.model cut to its first {n} layer{'s' if n > 1 else ''} "
            "(student.num_layers), where train starts; cut, it answers poorly until trained")
    if cfg.task.type == "tools":
        say("pilot: the untrained student was shown the tools and the call's form in its system prompt (zero-shot, "
            "its tokens/call above include them); the trained student is asked without them, having learnt both")
    return {"agreement": student["agreement_with_teacher"], "teacher_calls": stats.calls}


def draw(records: list[Record], n: int, seed: int) -> list[Record]:
    """The ``n`` inputs of lowest seeded content hash (curate's split ``rank``; the id breaks a tie:
    two chats ending in one turn), in that order. Drawn by position, the same inputs in another line
    order gave the same seed another sample and other pilot figures."""
    return sorted(records, key=lambda r: (rank(r.text, seed), r.id))[:n]


def summary_line(student: dict[str, Any], teacher: dict[str, Any]) -> str:
    """The pilot's one line: agreement (and chrF for free text), and the gold gap where there is gold."""
    gap = (teacher.get("gold_metric") or 0) - (student.get("gold_metric") or 0)
    chrf = student.get("chrf_with_teacher")
    # An untrained student can beat the teacher on gold (a weak teacher): "trails it by -5.0 points" read wrong.
    gold = (f" and trails it by {100 * gap:.1f} points on gold" if gap > 0 else
            f" and leads it by {-100 * gap:.1f} points on gold" if gap < 0 else " and matches it on gold")
    return (f"pilot: the untrained student agrees with the teacher on {100 * (student['agreement_with_teacher'] or 0):.1f}%"
            + (f" (exact match), chrF {chrf:.3f} against its answers" if chrf is not None else "")
            + (gold if teacher.get("gold_metric") is not None else ""))


def _unusable(labelled: list[Record]) -> str:
    """How many inputs lack a usable answer, and the first reason: as generate words it, the teacher's
    error with its keys already redacted by the sender."""
    reasons = [r.invalid_reason or "no output" for r in labelled if not r.valid]
    failed = [why for why in reasons if why.startswith("teacher error")]
    n, other = len(labelled), len(reasons) - len(failed)
    parts = ([f"{len(failed)} of {n} teacher calls failed"] if failed else []) + (
        [f"{other} of {n} answers invalid or not sent"] if other else [])
    return f"{' and '.join(parts)} ({(failed or reasons)[0]})"
