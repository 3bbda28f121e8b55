"""Replay: answers come from recorded traffic in OpenAI fine-tuning JSONL (``{"messages": [...]}``).

An input is matched to a recording by its user messages; the recording's last assistant message
is the answer. Nothing is paid, so the ledger rows cost zero.

A recording longer than the request's token budget (``teacher.max_tokens``, or a served client's
``max_tokens`` below it) is cut as a live teacher would have cut it and marked ``length``, so curate
sets a generated answer aside as truncated (a label answer is read from its first words and kept).
With no tokenizer at hand, its length in tokens is ``CHARS_PER_TOKEN`` characters a token (the
usual English estimate), and the cut falls at the end of the word in which the budget runs out:
a short label is never cut into a word that is not one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from potstill.config import GenerateConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_file, hash_obj
from potstill.records import content_text, read_objects
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher


CHARS_PER_TOKEN = 4.0  # as preflight estimates tokens where no tokenizer loads


def _within(text: str, budget: int) -> tuple[str, str]:
    """(the text a teacher limited to ``budget`` tokens would have written, its stop reason)."""
    tokens = math.ceil(len(text) / CHARS_PER_TOKEN)
    if tokens <= budget:
        return text, "stop"
    # The budget's share of the characters, on to the end of the word it falls in.
    end = re.compile(r"\S*").match(text, int(len(text) * budget / tokens)).end()
    return text[:end], "length"


def _key(messages: list[dict[str, Any]]) -> str:
    # By text, so a chat logged with content parts finds the answer recorded for the same words as a string.
    return hash_obj([content_text(m.get("content")) for m in messages if m.get("role") == "user"])


class ReplayTeacher(Teacher):
    type = "replay"

    def __init__(self, cfg: TeacherConfig, task: Task):
        super().__init__(cfg, task)
        if not cfg.replay_path:
            raise PotstillError("teacher.replay_path is required for a replay teacher")
        if not Path(cfg.replay_path).is_file():
            raise PotstillError(f"teacher.replay_path {cfg.replay_path}: "
                                f"{'a directory' if Path(cfg.replay_path).is_dir() else 'file not found'}")
        self._answers: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._answers is None:
            answers = {}
            for lineno, row in read_objects(self.cfg.replay_path):
                msgs = row.get("messages")
                if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                    raise PotstillError(f"{self.cfg.replay_path}:{lineno}: expected messages ending with an assistant turn")
                if msgs[-1].get("content") is None:
                    raise PotstillError(f"{self.cfg.replay_path}:{lineno}: the assistant turn has no text "
                                        "(a tool call?); a replay teacher answers with recorded text")
                answers[_key(msgs[:-1])] = content_text(msgs[-1]["content"])
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
            out = answers.get(_key(req["messages"]))
            if out is None:
                on_result(i, Response(output=None, error="no recorded answer for this input"))
                continue
            # A served client's budget under the teacher's own is the request's (Service.teacher_request).
            text, stop = _within(out, int(req.get("max_tokens") or self.cfg.max_tokens))
            on_result(i, Response(output=text, stop_reason=stop))
