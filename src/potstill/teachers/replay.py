"""Replay: answers come from recorded traffic: OpenAI fine-tuning JSONL (``{"messages": [...]}``,
the last assistant message is the answer) or records with an ``output`` (what ``potstill import``
writes, or an earlier run's ``teacher.jsonl``). An input is matched to a recording by its user
messages (``records.user_key``); an input recorded more than once is answered with its first recording, as
the log's user got it, the later ones counted in one line. Nothing is paid, so the ledger rows cost zero. An answer keeps the model its recording
names (``Response.model``: an imported log's ``meta.teacher``), which generate writes in the record's
``meta.teacher``, so the cards name the model that wrote it rather than "replay".

A recording longer than the request's token budget (``teacher.max_tokens``, or a served client's
``max_tokens`` below it) is cut as a live teacher would have cut it and marked ``length``, so curate
sets a generated answer aside as truncated (a label answer is read from its first words and kept).
With no tokenizer at hand, its length in tokens is ``CHARS_PER_TOKEN`` characters a token (the
usual English estimate) or the recording's own count where it keeps one (an imported log's
``usage``), and the cut falls at the end of the word in which the budget runs out:
a short label is never cut into a word that is not one. A recording its own model cut (an imported
log's ``finish_reason`` ``length``) is marked ``length`` whatever the budget.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, NamedTuple

from potstill.config import GenerateConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_file
from potstill.progress import say
from potstill.records import content_text, read_objects, user_key
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher


CHARS_PER_TOKEN = 4.0  # as preflight estimates tokens where no tokenizer loads
# The stop reasons of an answer its model cut at its token limit (OpenAI, local: length; Anthropic: max_tokens).
CUT = ("length", "max_tokens")


class Recorded(NamedTuple):
    text: str
    tokens: int | None = None  # the recording's own output token count, where it keeps one
    cut: bool = False  # its model stopped at its own token limit
    model: str | None = None  # the model the recording names as its writer (an imported log's meta.teacher)


def _within(rec: Recorded, budget: int) -> tuple[str, str]:
    """(the text a teacher limited to ``budget`` tokens would have written, its stop reason)."""
    text = rec.text
    tokens = rec.tokens if rec.tokens is not None else math.ceil(len(text) / CHARS_PER_TOKEN)
    if tokens <= budget:
        return text, "length" if rec.cut else "stop"
    # The budget's share of the characters, on to the end of the word it falls in.
    end = re.compile(r"\S*").match(text, int(len(text) * budget / tokens)).end()
    return text[:end], "length"


def _from_record(row: dict[str, Any], where: str) -> Recorded | None:
    """A record's answer: its ``output``, how long its log says it was (``meta.usage``: OpenAI's
    completion_tokens, Anthropic's output_tokens; else ``meta.output_tokens``) and whether its model
    cut it (``meta.finish_reason`` as imported, ``meta.stop_reason`` as generate keeps it)."""
    out = row["output"]
    if out is None:
        return None
    if not isinstance(out, str):
        raise PotstillError(f"{where}: output: expected the answer's text, got {type(out).__name__}")
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    usage = meta.get("usage") if isinstance(meta.get("usage"), dict) else {}
    tokens = next((v for v in (usage.get("completion_tokens"), usage.get("output_tokens"), meta.get("output_tokens"))
                   if isinstance(v, int) and not isinstance(v, bool) and v > 0), None)
    if len(row.get("samples") or ()) > 1 or (meta.get("choices") or 0) > 1:
        tokens = None  # the count of all n samples (choices) together, not of the one kept as the output
    stop = meta.get("finish_reason") or meta.get("stop_reason")
    # The logged model (import's meta.teacher; an earlier run's teacher.jsonl names its teacher there too),
    # not "replay": the card and the model card name who wrote the answers, and whose terms apply.
    model = meta.get("teacher") if isinstance(meta.get("teacher"), str) and meta.get("teacher") != "replay" else None
    return Recorded(out, tokens, stop in CUT, model)


class ReplayTeacher(Teacher):
    type = "replay"
    logprobs_refusal = "a replay teacher answers with recorded text, which holds no log-probabilities"

    def __init__(self, cfg: TeacherConfig, task: Task):
        super().__init__(cfg, task)
        if not cfg.replay_path:
            raise PotstillError("teacher.replay_path is required for a replay teacher")
        if not Path(cfg.replay_path).is_file():
            raise PotstillError(f"teacher.replay_path {cfg.replay_path}: "
                                f"{'a directory' if Path(cfg.replay_path).is_dir() else 'file not found'}")
        self._answers: dict[str, Recorded] | None = None

    def _load(self) -> dict[str, Recorded]:
        if self._answers is None:
            answers: dict[str, Recorded] = {}
            repeats, first = 0, 0  # recordings of an input recorded before, the first of them
            for lineno, row in read_objects(self.cfg.replay_path):
                where = f"{self.cfg.replay_path}:{lineno}"
                msgs = row.get("messages")
                if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                    raise PotstillError(f"{where}: expected a chat under messages (fine-tuning JSONL, or the records "
                                        "`potstill import` writes)")
                key = user_key(msgs if "output" in row else msgs[:-1])
                if key in answers:  # the first answer stands, as a log's first call was the one its user got
                    repeats, first = repeats + 1, first or lineno
                    continue
                if "output" in row:
                    found = _from_record(row, where)
                    if found is not None:  # None: a record with no answer (a failed teacher call in teacher.jsonl)
                        answers[key] = found
                    continue
                if msgs[-1].get("role") != "assistant":
                    raise PotstillError(f"{where}: expected messages ending with an assistant turn, or a record with "
                                        "an output (the records `potstill import` writes)")
                if msgs[-1].get("content") is None:
                    raise PotstillError(f"{where}: the assistant turn has no text "
                                        "(a tool call?); a replay teacher answers with recorded text")
                answers[key] = Recorded(content_text(msgs[-1]["content"]))
            if repeats:
                say(f"[yellow]replay: {repeats} recording(s) in {self.cfg.replay_path} repeat an input recorded "
                    f"before; each input is answered with its first recording, the later ones are left out (first "
                    f"at line {first})[/yellow]")
            self._answers = answers
        return self._answers

    @property
    def model_name(self) -> str:
        return self.cfg.model or "replay"

    def identity(self) -> dict[str, Any]:
        # max_tokens cuts a long recording: answers cut under one budget are not another's.
        return {"type": "replay", "file": hash_file(self.cfg.replay_path), "max_tokens": self.cfg.max_tokens}

    def run(self, requests: list[dict[str, Any]], on_result: OnResult, stats: RunStats | None = None,
            gcfg: GenerateConfig | None = None) -> None:
        answers = self._load()
        for i, req in enumerate(requests):
            out = answers.get(user_key(req["messages"]))
            if out is None:
                on_result(i, Response(output=None, error="no recorded answer for this input"))
                continue
            # A served client's budget under the teacher's own is the request's (Service.teacher_request).
            text, stop = _within(out, int(req.get("max_tokens") or self.cfg.max_tokens))
            on_result(i, Response(output=text, stop_reason=stop, model=out.model))
