"""A served run: the student engine, the teacher fallback, the calibrated routing and the ledger.

``load_service(run_dir, cfg)`` loads ``run_dir/student``, calibrates routing on ``val.jsonl``
(cached in ``run_dir/serve/`` and redone when the student, the splits or the targets change),
and opens ``run_dir/calls.sqlite``, where every request becomes one row with ``stage='serve'``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.hashing import hash_file, hash_obj
from potstill.ledger import Call, Ledger
from potstill.models.loading import load_lm
from potstill.progress import bar, say
from potstill.records import Record, read_records
from potstill.serve.engine import Batcher, StudentAnswer, TransformersEngine
from potstill.serve.routing import Routing, calibrate, ood_distance
from potstill.tasks import Task, get_task
from potstill.teachers import Teacher, get_teacher


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def jsonable(obj: Any) -> Any:
    """Strict JSON: infinite thresholds ("escalate none/all") become the strings "inf"/"-inf"."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _answer_all(engine: TransformersEngine, messages: list[list[dict]], batch_size: int, desc: str) -> list[StudentAnswer]:
    out: list[StudentAnswer] = []
    with bar(desc, len(messages)) as advance:
        for i in range(0, len(messages), batch_size):
            out += engine.answer(messages[i : i + batch_size])
            advance(min(batch_size, len(messages) - i))
    return out


def _embed_all(engine: TransformersEngine, messages: list[list[dict]], batch_size: int, desc: str) -> torch.Tensor:
    parts = []
    with bar(desc, len(messages)) as advance:
        for i in range(0, len(messages), batch_size):
            parts.append(engine.embed(messages[i : i + batch_size]))
            advance(min(batch_size, len(messages) - i))
    return torch.cat(parts)


def _spread(records: list[Record], n: int) -> list[Record]:
    """n records evenly spaced through the list (the training split is already shuffled by hash)."""
    if len(records) <= n:
        return records
    return [records[int(i * len(records) / n)] for i in range(n)]


def calibrate_run(run_dir: Path, cfg: Config, engine: TransformersEngine, task: Task, force: bool = False) -> tuple[Routing, torch.Tensor]:
    """Routing thresholds and OOD reference embeddings for a run, cached in ``run_dir/serve/``."""
    s = cfg.serve
    val_path, train_path = run_dir / "val.jsonl", run_dir / "train.jsonl"
    for p in (val_path, train_path):
        if not p.exists():
            raise PotstillError(f"{p} not found: serving calibrates on the run's splits (run `potstill curate` first)")
    key = hash_obj({
        "student": engine.lm.identity, "val": hash_file(val_path), "train": hash_file(train_path),
        "targets": [s.target_escalation, s.target_agreement, s.ood_quantile, s.ood_reference], "v": 1,
    })
    out_dir = run_dir / "serve"
    routing_path, ref_path = out_dir / "routing.json", out_dir / "reference.pt"
    if not force and routing_path.exists() and ref_path.exists():
        saved = json.loads(routing_path.read_text())
        if saved.get("key") == key:
            r = Routing(float(saved["confidence_threshold"]), float(saved["ood_threshold"]), saved["stats"])
            return r, torch.load(ref_path)
    train = _spread(read_records(train_path), s.ood_reference)
    val = [r for r in read_records(val_path) if r.output is not None]
    if not val:
        raise PotstillError(f"{val_path}: no record has a teacher output to calibrate on")
    reference = _embed_all(engine, [r.messages for r in train], s.batch_size, "serve: embed training inputs")
    answers = _answer_all(engine, [r.messages for r in val], s.batch_size, "serve: calibrate on val")
    agree = [task.agree(a.parsed, task.parse(r.output or "")) for a, r in zip(answers, val)]
    dist = ood_distance(torch.stack([a.embedding for a in answers]), reference)
    routing = calibrate([a.confidence for a in answers], agree, dist, [a.invalid is not None for a in answers],
                        s.target_escalation, s.target_agreement, s.ood_quantile)
    routing.stats["n_reference"] = len(train)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written to temp names and renamed, so a crash never leaves a half-written calibration.
    torch.save(reference, ref_path.with_suffix(".tmp"))
    os.replace(ref_path.with_suffix(".tmp"), ref_path)
    tmp = routing_path.with_suffix(".tmp")
    stats = jsonable(routing.stats)
    tmp.write_text(json.dumps({
        "key": key, "confidence_threshold": _finite(routing.confidence_threshold),
        "ood_threshold": _finite(routing.ood_threshold), "stats": stats,
    }, indent=2))
    os.replace(tmp, routing_path)
    return routing, reference


@dataclass
class Served:
    """One answered request: what the client gets and what the ledger keeps."""

    content: str
    model: str
    answered_by: str
    reason: str
    confidence: float
    ood_distance: float
    student_output: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    extra: dict[str, Any] = field(default_factory=dict)


class TeacherError(Exception):
    """The teacher failed to answer an escalated request (a 502 for the client)."""


class Service:
    def __init__(self, cfg: Config, task: Task, engine: TransformersEngine, teacher: Teacher, routing: Routing,
                 reference: torch.Tensor, ledger: Ledger, student_name: str):
        self.cfg = cfg
        self.task = task
        self.engine = engine
        self.teacher = teacher
        self.routing = routing
        self.reference = reference
        self.ledger = ledger
        self.student_name = student_name
        self.batcher = Batcher(engine, cfg.serve.batch_size, cfg.serve.batch_wait_ms)
        # The openai adapter opens its own client per call; in-process teachers share one model.
        self._teacher_lock = threading.Lock() if teacher.type != "openai" else None

    @property
    def teacher_name(self) -> str:
        return self.teacher.model_name

    def close(self) -> None:
        self.batcher.close()
        self.ledger.close()

    def _ask_teacher(self, messages: list[dict]) -> Any:
        got: list[Any] = []
        req = self.teacher.request(Record(messages=messages))
        if self._teacher_lock is None:
            self.teacher.run([req], lambda i, r: got.append(r))
        else:
            with self._teacher_lock:
                self.teacher.run([req], lambda i, r: got.append(r))
        if not got or got[0].output is None:
            raise TeacherError(got[0].error if got else "the teacher returned no answer")
        return got[0]

    async def answer(self, messages: list[dict]) -> Served:
        """Route one chat (user-side messages only) and return the answer."""
        a: StudentAnswer = await asyncio.wrap_future(self.batcher.submit(messages))
        dist = ood_distance(a.embedding[None], self.reference)[0]
        who, reason = self.routing.decide(a.confidence, dist, a.invalid)
        student_cost = a.seconds * self.cfg.student.usd_per_hour / 3600
        common = dict(answered_by=who, reason=reason, confidence=a.confidence, ood_distance=dist,
                      student_output=a.output)
        if who == "student":
            return Served(content=a.output, model=self.student_name, prompt_tokens=a.prompt_tokens,
                          completion_tokens=a.output_tokens, cost_usd=student_cost, **common)
        r = await asyncio.to_thread(self._ask_teacher, messages)
        return Served(content=r.output, model=self.teacher_name, prompt_tokens=r.input_tokens,
                      completion_tokens=r.output_tokens, cost_usd=student_cost + r.cost_usd,
                      extra={"teacher_latency_s": r.latency_s}, **common)

    def log(self, request: dict[str, Any], role: str, model: str, latency_s: float, status: str,
            response: dict[str, Any] | None = None, error: str | None = None, input_tokens: int = 0,
            output_tokens: int = 0, cost_usd: float = 0.0) -> None:
        self.ledger.record(Call(
            request_hash=hash_obj(["serve", request.get("messages", request)]), role=role, stage="serve", model=model,
            request=request, response=response, input_tokens=input_tokens, output_tokens=output_tokens,
            cost_usd=cost_usd, latency_s=latency_s, status=status, error=error,
        ))


def load_service(run_dir: Path, cfg: Config, recalibrate: bool = False, ledger_path: Path | None = None,
                 device: str = "auto") -> Service:
    run_dir = Path(run_dir)
    student_dir = run_dir / "student"
    if not (student_dir / "config.json").exists() and not (student_dir / "adapter_config.json").exists():
        raise PotstillError(f"{student_dir}: no trained student (run `potstill train` first)")
    task = get_task(cfg.task)
    teacher = get_teacher(cfg.teacher, task)
    t0 = time.perf_counter()
    lm = load_lm(str(student_dir), device=device)
    engine = TransformersEngine(lm, task)
    routing, reference = calibrate_run(run_dir, cfg, engine, task, force=recalibrate)
    st = routing.stats
    say(f"serve: student loaded and routing calibrated in {time.perf_counter() - t0:.1f} s; on val: "
        f"{st['val_escalation']:.0%} escalated, agreement {st['val_agreement']:.3f} "
        f"(student alone {st['val_student_alone_agreement']:.3f})")
    ledger = Ledger(ledger_path or run_dir / "calls.sqlite")
    return Service(cfg, task, engine, teacher, routing, reference, ledger, student_name=f"potstill-student@{lm.identity.rsplit('@', 1)[-1]}")
