"""Generate: run the teacher over records, through the ledger.

Every request is hashed with the teacher's identity; a hash with an ``ok`` row in the ledger is
answered from it and never sent again. Each answer is committed to the ledger as it arrives, so
after a crash a rerun re-sends only what was in flight. The output file is rebuilt from the
ledger and written atomically at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from potstill.config import Config
from potstill.hashing import hash_obj
from potstill.ledger import Call, Ledger
from potstill.progress import bar
from potstill.records import Record
from potstill.tasks import Task, get_task
from potstill.teachers import Response, Teacher, get_teacher


@dataclass
class GenerateStats:
    inputs: int = 0
    cache_hits: int = 0
    calls: int = 0
    errors: int = 0
    invalid: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    invalid_reasons: dict[str, int] = field(default_factory=dict)


def request_hash(identity: dict[str, Any], request: dict[str, Any]) -> str:
    return hash_obj({"teacher": identity, "request": request})


def label_records(records: list[Record], task: Task, teacher: Teacher, ledger: Ledger, stage: str) -> tuple[list[Record], GenerateStats]:
    """Attach the teacher's answer to each record (cache first), validating it against the task."""
    t0 = time.perf_counter()
    stats = GenerateStats(inputs=len(records))
    ident = teacher.identity()
    reqs = [teacher.request(r) for r in records]
    hashes = [request_hash(ident, q) for q in reqs]
    answers: dict[str, dict[str, Any]] = ledger.lookup(list(dict.fromkeys(hashes)))
    stats.cache_hits = sum(h in answers for h in hashes)
    todo_hashes = [h for h in dict.fromkeys(hashes) if h not in answers]
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    todo = [first[h] for h in todo_hashes]
    errors: dict[str, str] = {}
    with bar(f"{stage}: teacher {teacher.model_name}", len(todo)) as advance:

        def on_result(j: int, resp: Response) -> None:
            i = todo[j]
            h = hashes[i]
            ok = resp.error is None and resp.output is not None
            ledger.record(Call(
                request_hash=h, role="teacher", stage=stage, model=teacher.model_name, request=reqs[i],
                response=resp.to_json() if ok else None, input_tokens=resp.input_tokens,
                output_tokens=resp.output_tokens, cached_input_tokens=resp.cached_input_tokens,
                cost_usd=resp.cost_usd, latency_s=resp.latency_s, status="ok" if ok else "error", error=resp.error,
            ))
            stats.calls += 1
            stats.cost_usd += resp.cost_usd
            if ok:
                answers[h] = resp.to_json()
            else:
                stats.errors += 1
                errors[h] = resp.error or "no output"
            advance(1, spent=f"${stats.cost_usd:.4f}", errors=stats.errors)

        teacher.run([reqs[i] for i in todo], on_result)

    out = []
    for rec, h in zip(records, hashes):
        rec = rec.model_copy(deep=True)
        ans = answers.get(h)
        if ans is None:
            rec.output, rec.valid, rec.invalid_reason = None, False, f"teacher error: {errors.get(h, 'no answer')}"
        else:
            rec.output = ans.get("output")
            rec.label_probs = ans.get("label_probs")
            rec.logprobs = ans.get("logprobs")
            rec.samples = ans.get("samples")
            reason = task.validate(task.parse(rec.output or ""))
            rec.valid, rec.invalid_reason = reason is None, reason
            rec.meta.update({
                "teacher": teacher.model_name, "teacher_type": teacher.type, "request_hash": h,
                "input_tokens": ans.get("input_tokens", 0), "output_tokens": ans.get("output_tokens", 0),
                "cost_usd": ans.get("cost_usd", 0.0), "latency_s": ans.get("latency_s", 0.0),
            })
        if not rec.valid:
            stats.invalid += 1
            key = (rec.invalid_reason or "").split(":")[0]
            stats.invalid_reasons[key] = stats.invalid_reasons.get(key, 0) + 1
        out.append(rec)
    stats.seconds = time.perf_counter() - t0
    return out, stats


def run_generate(cfg: Config, records: list[Record], ledger: Ledger, stage: str = "generate") -> tuple[list[Record], GenerateStats]:
    task = get_task(cfg.task)
    teacher = get_teacher(cfg.teacher, task)
    try:
        return label_records(records, task, teacher, ledger, stage)
    finally:
        teacher.close()
