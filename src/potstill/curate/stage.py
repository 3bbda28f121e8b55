"""`potstill curate`: teacher.jsonl into train/val/test, rejected records and a dataset card."""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape

from potstill.config import Config
from potstill.curate import Refuses, card_markdown, curate
from potstill.curate.card import configured_teacher, replays_logs, same_teacher
from potstill.curate.checks import SPECIAL_SHAPE, Specials
from potstill.errors import PotstillError
from potstill.inputs import instructions_aside
from potstill.progress import say
from potstill.records import Record, atomic_files, check_ids, dump_jsonl, read_numbered, read_records
from potstill.review.store import load_decisions
from potstill.rundir import RunDir
from potstill.tasks import get_task


def student_checks(cfg: Config, records: list) -> tuple[Specials, Refuses | None]:
    """What curate checks of the student's own: the texts its tokenizer reads as special tokens
    (``prompting.special_tokens``), where an answer (output or sample) holds text shaped like one
    (``SPECIAL_SHAPE``), and whether its chat template takes a record's chat (``students.refusal``, the
    check train, evaluate, pilot and preflight stop on), where a chat has more than one message: one
    message its template refuses (a system turn under Gemma 2's) is refused in every record alike, which
    preflight's prompt check says before generate. Else the tokenizer is not loaded (a bundled GGUF
    student is converted for it, ~25 s the first time). One that does not load here is one line, and
    the records go unchecked for them."""
    shaped = any(SPECIAL_SHAPE.search(t) for r in records for t in (r.output or "", *(r.samples or ())))
    turns = any(len(r.messages) > 1 for r in records)
    if not shaped and not turns:
        return Specials(), None
    from potstill.models.loading import load_tokenizer
    from potstill.models.prompting import refused_words, special_tokens
    from potstill.students import refusal, tokenizer_format

    try:
        tok = load_tokenizer(cfg.student.model)
    except PotstillError as e:
        held = " and ".join(w for w, on in (("answers hold text shaped like special tokens", shaped),
                                             ("records hold chats of several turns", turns)) if on)
        unchecked = " nor ".join(w for w, on in (
            ("for the student's own special tokens, which train would read as control tokens", shaped),
            ("for chats its chat template refuses", turns)) if on)
        say("[yellow]" + escape(f"curate: {held}, and the student's tokenizer does not load here ({e}): not checked "
                                f"{unchecked}") + "[/yellow]")
        return Specials(), None
    if not turns:
        return Specials(special_tokens(tok)), None
    fmt = tokenizer_format(tok, get_task(cfg.task))

    def refuses(r: Record) -> str | None:
        e = refusal(tok, fmt, r.messages) if len(r.messages) > 1 else None
        return None if e is None else f"chat template: {refused_words(e)}"

    return Specials(special_tokens(tok) if shaped else ()), refuses


def curate_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import STAGES

    return STAGES["curate"].run(cfg, force)


def curate_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    if not (run / "teacher.jsonl").exists():
        raise PotstillError(f"{run / 'teacher.jsonl'} not found: run `potstill generate` first")
    real = read_records(cfg.curate.real_data) if cfg.curate.real_data else None
    if real:  # as data.inputs': serve drops a client's own system message, so the student must not learn one
        instructions_aside(cfg.curate.real_data, real, cfg.task.instruction)
    if real == []:  # a failed export, a header-only table: mixing nothing in without a word hides it
        raise PotstillError(f"curate.real_data {cfg.curate.real_data} holds no records; fill it, or unset "
                            "curate.real_data to curate without real examples")
    own = [r for r in real or () if r.meta.get("format") == "served" and r.meta.get("role") == "student"]
    if own:  # `potstill import calls.sqlite` keeps every served answer, the student's own among them
        raise PotstillError(f"curate.real_data {cfg.curate.real_data}: {len(own)} of {len(real)} records are answers "
                            f"the served student wrote itself (meta.role student; the first from ledger row "
                            f"{own[0].meta.get('ledger_id')}), not labels; a student trained on them learns its own "
                            "mistakes: keep the rows a person labelled (or the teacher's, meta.role teacher)")
    decisions = load_decisions(run / "review.sqlite") if cfg.curate.review else {}
    numbered = read_numbered(run / "teacher.jsonl")
    if decisions:  # kept by id: a decision on one of two inputs under one id would judge both
        check_ids(run / "teacher.jsonl", numbered)
    records = [r for _, r in numbered]
    if not records:
        raise PotstillError(f"{run / 'teacher.jsonl'} holds no records: run `potstill generate` (it writes one per input)")
    failed = sum((r.invalid_reason or "").startswith("teacher error") for r in records)
    if failed:  # a generate that stopped on failed calls wrote the rest: curating them is allowed, not silent
        say(f"[yellow]curate: {failed} of {len(records)} records in teacher.jsonl are failed teacher calls, left out; "
            "`potstill generate` retries just those (the answered ones are cached), then curate again[/yellow]")
    specials, refuses = student_checks(cfg, records + (real or []))
    c = curate(cfg, records, decisions, real, specials, refuses)
    special = [r for r in c.rejected if "special token: the answer holds" in (r.invalid_reason or "")]
    if special:  # said where it can be fixed: the card counts them among the rejected
        token = specials.first_in(special[0].output or "")
        say("[yellow]" + escape(f"curate: {len(special)} of {len(records) + len(real or [])} answers hold a special token of the student's (record "
                                f"{special[0].id}: {token!r}), which its tokenizer reads as a control token, not text, "
                                "so trained on they teach the student to stop mid-answer: set aside (rejected.jsonl)")
            + "[/yellow]")
    refused = [r for r in c.rejected if "chat template: " in (r.invalid_reason or "")]
    if refused:  # as train would stop on the first, said here where it can be fixed
        say("[yellow]" + escape(f"curate: {len(refused)} of {len(records) + len(real or [])} records have a chat the "
                                f"student's chat template refuses (record {refused[0].id}: "
                                f"{refused[0].invalid_reason.split('chat template: ', 1)[1]}): set aside "
                                "(rejected.jsonl)") + "[/yellow]")
    if not c.train:  # nothing is written: the counts and the commonest reasons say where the records went
        counts = ", ".join(f"{k}={v}" for k, v in c.card["counts"].items() if v)
        reasons = sorted(c.card["rejected_reasons"].items(), key=lambda kv: -kv[1])[:3]
        why = f"; rejected: {', '.join(f'{r} ({n})' for r, n in reasons)}" if reasons else ""
        held = " (curate.val and curate.test took them all)" if not reasons and (c.val or c.test) else ""
        raise PotstillError(f"curate: no training records left{held}: {counts}{why}")
    if (run / "synthesize.json").exists():  # inputs written by `potstill synthesize`: say how many, and what was refused
        syn = json.loads((run / "synthesize.json").read_text(encoding="utf-8"))
        c.card["synthesis"] = {**{k: syn[k] for k in ("teacher", "seeds", "written", "rejected", "rejected_by_reason")},
                               "synthetic_per_split": {n: sum("synthetic" in r.slice for r in rows)
                                                       for n, rows in (("train", c.train), ("val", c.val), ("test", c.test))}}
    wrote, named = c.card["teacher"]["records_by_model"], configured_teacher(c.card["teacher"])
    # By resolved path: a local teacher is `models/t` from the project folder, `/abs/models/t` by an absolute -c.
    # The card says so too; said here, where it can still be fixed. A replay teacher gives logged models' answers.
    if wrote and not replays_logs(c.card["teacher"]) and not any(same_teacher(m, named) for m in wrote):
        say("[yellow]" + escape(f"curate: teacher.jsonl was written by {', '.join(map(str, wrote))}, not the configured "
                                f"teacher {named}; run `potstill generate` for this teacher, or curate with the config "
                                "that wrote it") + "[/yellow]")
    # One set: a failure midway leaves every previous file, never a new train beside an old test.
    splits = {run / f"{name}.jsonl": rows for name, rows in
              (("train", c.train), ("val", c.val), ("test", c.test), ("rejected", c.rejected))}
    markdown = card_markdown(c.card)
    with atomic_files([*splits, run / "card.json", run / "card.md"]) as files:
        for path, rows in splits.items():
            dump_jsonl(files[path], rows)
        json.dump(c.card, files[run / "card.json"], indent=2, ensure_ascii=False, default=str)
        files[run / "card.json"].write("\n")
        files[run / "card.md"].write(markdown)
    counts = c.card["counts"]
    say("curate: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return counts
