"""The Teacher protocol.

A teacher turns a record into a *request* (a JSON-able dict: what is sent, never a key) and
answers batches of requests. The generate stage hashes ``identity() + request`` to look the
ledger up, so a request already answered is never sent again, and writes one ledger row per
answer as it arrives through ``on_result``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from potstill.config import TeacherConfig
from potstill.records import Record
from potstill.tasks import Task


@dataclass
class Response:
    output: str | None
    label_probs: dict[str, float] | None = None
    logprobs: list[dict[str, Any]] | None = None
    samples: list[str] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


OnResult = Callable[[int, Response], None]


class Teacher:
    """Subclasses set ``type`` and implement ``identity``, ``request`` and ``run``."""

    type = "teacher"

    def __init__(self, cfg: TeacherConfig, task: Task):
        self.cfg = cfg
        self.task = task

    @property
    def model_name(self) -> str:
        return self.cfg.model or self.type

    def identity(self) -> dict[str, Any]:
        """Everything besides the request that determines the answer (model, prompt, sampling)."""
        raise NotImplementedError

    def request(self, record: Record) -> dict[str, Any]:
        return {"messages": record.messages}

    def run(self, requests: list[dict[str, Any]], on_result: OnResult) -> None:
        """Answer every request, calling ``on_result(index, response)`` as each one completes."""
        raise NotImplementedError

    def token_cost(self, input_tokens: int, output_tokens: int) -> float:
        p = self.cfg.price
        return (input_tokens * p.input_per_mtok + output_tokens * p.output_per_mtok) / 1e6

    def close(self) -> None:
        pass
