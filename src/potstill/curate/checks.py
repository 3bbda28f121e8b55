"""Validation and self-consistency: which teacher outputs may be trained on.

Validation re-runs the task's own check (label set; JSON Schema, keeping the failing path) and
adds the configured length and format rules (``potstill.tasks.answers.output_problem``, which the
review server also asks of an edited answer). Self-consistency reads the n ``samples`` of a
record: the majority answer becomes the output, its share of the samples is the agreement, and
records below ``curate.min_agreement`` are set aside.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from potstill.config import CurateConfig
from potstill.ledger_schema import REFUSED_STOPS
from potstill.records import Record
from potstill.tasks import Task
from potstill.tasks.answers import output_problem, vote
from potstill.teachers.reasoning import spent_before_answering


# The stop reasons of an answer that ran into a token limit, as generate keeps them in meta.stop_reason:
# the request's (OpenAI, local: length; Anthropic: max_tokens) or the model's context window (Anthropic:
# model_context_window_exceeded, the answer cut where the prompt and it filled the window); or that
# stopped before its end (Anthropic's pause_turn: a turn of server tools paused, its text a preamble).
CUT = ("length", "max_tokens", "model_context_window_exceeded", "pause_turn")


def _cut(stop: str | None, task: Task, rec: Record, text: str) -> bool:
    """Whether an answer ``text`` that stopped for ``stop`` is half an answer curate sets aside (see
    ``invalid_reason``): a label read from the first words is whole unless no word came."""
    return (not task.labels or not text.strip()) and stop in CUT and "review" not in rec.meta


def _refused(stop: str | None, rec: Record) -> bool:
    """Whether an answer that stopped for ``stop`` is a refusal curate sets aside; a reviewer's decision stands."""
    return stop in REFUSED_STOPS and "review" not in rec.meta


# What a special token's text looks like: ChatML's <|im_end|>, Gemma's <end_of_turn>, </s>, Mistral's
# [INST], BERT's [SEP]. From a '<' it reads to the first '>', from a '[' to the first ']': a special token
# of that shape standing at a position is exactly what it reads there.
SPECIAL_SHAPE = re.compile(r"<[^\s<>]{1,40}>|\[/?[A-Z_]{2,24}\]")
_SHAPED_AT_EACH = re.compile(f"(?=({SPECIAL_SHAPE.pattern}))")  # at every position, overlaps included


class Specials(tuple):
    """The student's special-token texts (``prompting.special_tokens``), in their order, found in a text in
    one pass: the texts shaped like one (``SPECIAL_SHAPE``) it holds, looked up in a set, and the few of
    another shape searched for one by one. Each searched for one by one, Gemma 3's 6,249 (``<unused0>``
    to ``<unused6241>``, its turn marks) took 0.9 ms an answer: 7 minutes for 100,000 records of 5 samples."""

    shaped: frozenset[str]
    other: tuple[str, ...]

    def __new__(cls, texts: Iterable[str] = ()) -> Specials:
        self = super().__new__(cls, texts)
        self.shaped = frozenset(t for t in self if SPECIAL_SHAPE.fullmatch(t))
        self.other = tuple(t for t in self if t not in self.shaped)
        return self

    def first_in(self, text: str) -> str | None:
        """The first of these, in their order, that ``text`` holds; None when it holds none."""
        if not self:
            return None
        found = {m.group(1) for m in _SHAPED_AT_EACH.finditer(text)} & self.shaped
        found.update(t for t in self.other if t in text)
        return next(t for t in self if t in found) if found else None


def special_token(text: str, specials: Sequence[str]) -> str | None:
    """Why an answer holding one of the student's special-token texts (``specials``:
    ``prompting.special_tokens``, best as ``Specials``) is set aside, else None. Every stage tokenises a
    text with its special tokens read as such (as vLLM and TRL do), so ``<|im_end|>`` in an answer is the
    student's turn end in the middle of its target: trained on, it learns to stop there."""
    found = (specials if isinstance(specials, Specials) else Specials(specials)).first_in(text)
    if found is None:
        return None
    return (f"special token: the answer holds {found!r}, which the student's tokenizer reads as its control token, "
            "not as text: trained on it, the student learns to write that token mid-answer (a turn end such as "
            "<|im_end|> stops it there)")


def invalid_reason(rec: Record, task: Task, c: CurateConfig, specials: Sequence[str] = (),
                   logged: bool = False) -> str | None:
    """None when the record may be trained on, else why not (the text before ':' is the card's category).

    A generated answer (free text, JSON) that the teacher's token limit cut is half an answer, which
    would teach the student to stop mid-sentence; one a reviewer decided on stands (an edit replaced
    it). A label answer is read whole from its first words, so a cut one is kept. An answer that
    stopped as a refusal is set aside whatever its text, unless a reviewer decided on it. One that
    holds a special token of the student's (``special_token``) is set aside, a reviewer's too: the
    token is no text the student can learn. ``logged``: a real example's answer (``curate.real_data``),
    which no teacher setting or new generate would lengthen."""
    if rec.output is None:
        return rec.invalid_reason or "teacher error: no output"
    stop = rec.meta.get("stop_reason")
    if _refused(stop, rec):
        return (f"teacher refused: the answer stopped for {stop}; its text (the words written before it "
                "stopped, or none) is no answer to learn")
    cut, spent = _cut(stop, task, rec, rec.output), spent_before_answering(rec.output, stop)
    # An answer never written is no label outside the set, nor an empty answer: said before the task's check.
    problem = None if cut and spent else output_problem(rec.output, task, c)
    if problem is None and cut:
        n = rec.meta.get("output_tokens")
        tokens = f" ({n} tokens)" if n else ""
        if spent and not logged:
            return (f"truncated: the teacher spent all of teacher.max_tokens{tokens} before answering (a reasoning "
                    "model's hidden reasoning counts in it); raise teacher.max_tokens (or lower "
                    "teacher.reasoning_effort) and run `potstill generate` again")
        if logged and stop != "pause_turn":  # written where it was logged: nothing here to raise or run again
            where = "where the model's context window filled" if stop == "model_context_window_exceeded" else \
                "at its token limit"
            return (f"truncated: the logged answer was cut {where}{tokens}, half an answer; to learn this input, "
                    "give it to the teacher in data.inputs")
        if stop == "pause_turn":  # no limit cut it: Claude paused its turn, to go on when sent it back
            return ("truncated: the answer stopped mid-turn (pause_turn: Claude paused a turn of server tools, "
                    "such as web search); its text is a preamble, not the answer")
        if stop == "model_context_window_exceeded":  # a larger max_tokens would not help: the window is full
            return (f"truncated: the teacher's answer ran into the model's context window{tokens}; "
                    "shorten the input or use a model with a longer one")
        return (f"truncated: the teacher's answer ran to its token limit{tokens}; raise "
                "teacher.max_tokens and run `potstill generate` again")
    return problem or special_token(rec.output, specials)


def majority(rec: Record, task: Task, c: CurateConfig, specials: Sequence[str] = ()) -> tuple[str, float, str | None] | None:
    """(the majority sample's text, the share of samples that give its answer, that sample's stop
    reason or None where the record does not say); None without samples.

    ``tasks.answers.vote`` under curate's rules: samples that fail validation (the task's check,
    curate's rules, a refusal or a cut at the token limit as ``invalid_reason`` reads it, from generate's
    ``meta.sample_stop_reasons``, a special token of the student's) count against agreement but never win the vote; ties go to the
    answer seen first. With no valid sample the record keeps its own, validated output at agreement
    0: an answer outside the label set must not become the training target, even at min_agreement 0.
    """
    if not rec.samples or len(rec.samples) < 2:
        return None
    stops = rec.meta.get("sample_stop_reasons") or []
    stops = stops if len(stops) == len(rec.samples) else [None] * len(rec.samples)  # a record written before them

    def problem(i: int, s: str) -> str | None:
        if _refused(stops[i], rec):
            return "refused"
        if _cut(stops[i], task, rec, s):
            return "truncated"
        return output_problem(s, task, c) or special_token(s, specials)

    i, share = vote(rec.samples, task.parse, task.validate, problem)
    if not share:
        return rec.output if rec.output is not None else rec.samples[0], 0.0, rec.meta.get("stop_reason")
    return rec.samples[i], share, stops[i]


def teacher_accuracy(records: list[Record], task: Task) -> dict[str, Any] | None:
    """Teacher vs gold, overall, per gold label and per slice; an invalid answer counts as wrong.

    A group is flagged weak when its accuracy is more than 10 points under the overall one and
    it holds at least 5 records (fewer is noise: one miss in 4 is already 25 points).
    """
    scored = []
    for r in records:
        gold = task.gold(r)
        if gold is None or (r.meta.get("source") not in (None, "teacher")):
            continue
        ok = 0.0 if r.output is None else task.agree(task.parse(r.output), gold)
        scored.append((r, ok))
    if not scored:
        return None
    overall = sum(ok for _, ok in scored) / len(scored)

    def groups(key) -> dict[str, dict[str, Any]]:
        acc: dict[str, list[float]] = {}
        for r, ok in scored:
            for k in key(r):
                acc.setdefault(k, []).append(ok)
        return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4),
                    "weak": len(v) >= 5 and sum(v) / len(v) < overall - 0.10} for k, v in sorted(acc.items())}

    return {"n": len(scored), "accuracy": round(overall, 4),
            "per_label": groups(lambda r: [str(r.label)] if r.label is not None else []),
            "per_slice": groups(lambda r: r.slice)}
