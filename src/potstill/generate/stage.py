"""`potstill generate`: the teacher over every input, into teacher.jsonl."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.generate import check_settings, run_generate, stream_labels, unpriced_provider_model, unsent
from potstill.generate.tool_rounds import add_rounds, check_rounds
from potstill.inputs import InputFile
from potstill.progress import say
from potstill.ledger import Ledger
from potstill.records import Record, atomic_write, dump_jsonl, write_jsonl
from potstill.rundir import RunDir
from potstill.tasks import get_task
from potstill.teachers import RunStats, Teacher, get_teacher


def generate_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import STAGES

    return STAGES["generate"].run(cfg, force)


def _write_labelled(cfg: Config, inputs: InputFile, ledger: Ledger, teacher: Teacher,
                    path: Path) -> tuple[RunStats, str | None]:
    """The teacher over ``inputs`` (``stream_labels``, reading the file at each pass), each answered
    record written to ``path`` as it comes (atomically: the file appears whole, once the last is
    written); the run's numbers and its first teacher error. Only answered records (committed to the
    ledger) reach the output; unsent ones wait for a rerun. No record outlives its window: held all
    at once, with a copy each, a million inputs took ~4.5 GB."""
    task = get_task(cfg.task)
    first: list[str] = []

    try:
        with atomic_write(path) as f:
            def emit(rec: Record) -> None:
                if not first and (rec.invalid_reason or "").startswith("teacher error"):
                    first.append(rec.invalid_reason or "")
                if not unsent(rec):
                    dump_jsonl(f, (rec,))

            stats = stream_labels(inputs, task, teacher, ledger, "generate", emit, cfg.generate, inputs.beyond())
    finally:
        teacher.close()
    return stats, (first or [None])[0]


def generate_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    # Checked whole here, then read again at each pass; tool rounds hold the records (add_rounds
    # makes each round's chats from all the answers of the one before, so they live in lists anyway).
    inputs = InputFile(cfg, hold=bool(cfg.generate.tool_rounds))
    # Made before the ledger is created: a teacher that cannot be made (an unknown type) stops a run
    # that never called anyone without leaving an empty calls.sqlite.
    teacher = get_teacher(cfg.teacher, get_task(cfg.task))
    check_settings(teacher, cfg.generate)  # label_records checks them too, once the ledger exists
    check_rounds(cfg)
    with run.ledger() as ledger:
        if cfg.generate.tool_rounds:
            labelled, stats = run_generate(cfg, list(inputs), ledger, stage="generate", teacher=teacher,
                                           beyond=inputs.beyond())
            first = len(labelled)
            labelled = add_rounds(cfg, labelled, ledger, stats, lambda task: get_teacher(cfg.teacher, task))
            rounds = len({r.meta.get("round") for r in labelled[first:]})
            say(f"generate: {len(labelled) - first} later turn(s) over {rounds} tool round(s), each call's result "
                "written by the teacher playing the function (generate.tool_rounds)")
            error = next((r.invalid_reason for r in labelled if (r.invalid_reason or "").startswith("teacher error")),
                         None)
            # Only answered records (committed to the ledger) reach the output; unsent ones wait for a rerun.
            write_jsonl(run / "teacher.jsonl", [r for r in labelled if not unsent(r)])
        else:
            stats, error = _write_labelled(cfg, inputs, ledger, teacher, run / "teacher.jsonl")
    if stats.budget_stopped:
        raise PotstillError(f"generate: budget of ${cfg.generate.budget_usd:g} reached (${stats.cost_usd:.4f} spent "
                            f"this run); {stats.unsent} of {stats.inputs} inputs not sent. Raise generate.budget_usd "
                            "and rerun: answered inputs are cached")
    if stats.halted and stats.unsent:
        raise PotstillError(f"generate: stopped, {stats.halted[:300]}; every other request would fail the same way, so "
                            f"{stats.unsent} of {stats.inputs} inputs were not sent. Fix it and rerun: answered inputs "
                            "are cached")
    if stats.errors and stats.halted:  # every input sent, each failing as a rerun would again
        raise PotstillError(f"generate: {stats.errors} of {stats.inputs} teacher calls failed, {stats.halted[:300]}; "
                            "every request would fail the same way until that is fixed: fix it and rerun (answered "
                            "inputs are cached)")
    if stats.errors:
        # Not marked done: the next run retries exactly the failed requests (answers are cached).
        first = error or "a function's result asked in a tool round"
        raise PotstillError(f"generate: {stats.errors} of {stats.inputs} teacher calls failed ({first}); "
                            "rerun to retry them, the others are cached")
    # Printed only on success: a failed run says everything in its one error line.
    whole = (f" ({stats.whole_reused} answered under another teacher.max_tokens, where they ended by themselves "
             "within this one)"
             if stats.whole_reused else "")
    say(f"generate: {stats.inputs} inputs, {stats.cache_hits} from cache{whole}, {stats.calls} teacher calls, "
        f"{stats.retries} retries, {stats.errors} errors, {stats.invalid} invalid"
        + (f" ({stats.refused} refused by the teacher, not sent again: generate.retry_refusals)" if stats.refused else "")
        + ", "
        f"{stats.input_tokens + stats.output_tokens} tokens, ${stats.cost_usd:.4f}, {stats.seconds:.1f} s")
    unpriced = unpriced_provider_model(teacher, cfg.generate)
    if unpriced:  # beside the $ it explains
        say(f"[yellow]{unpriced}[/yellow]")
    return asdict(stats)
