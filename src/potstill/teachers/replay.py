"""Replay: answers come from recorded traffic in OpenAI fine-tuning JSONL (``{"messages": [...]}``).

An input is matched to a recording by its user messages; the recording's last assistant message
is the answer. Nothing is paid, so the ledger rows cost zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from potstill.config import GenerateConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_file, hash_obj
from potstill.records import content_text, read_objects
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher


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
        return {"type": "replay", "file": hash_file(self.cfg.replay_path)}

    def run(self, requests: list[dict[str, Any]], on_result: OnResult, stats: RunStats | None = None,
            gcfg: GenerateConfig | None = None) -> None:
        answers = self._load()
        for i, req in enumerate(requests):
            out = answers.get(_key(req["messages"]))
            on_result(i, Response(output=out, error=None if out is not None else "no recorded answer for this input"))
