"""Generate: run the teacher over records, through the ledger.

Every request is hashed with the teacher's identity; a hash with an ``ok`` row in the ledger is
answered from it and never sent again. Each answer is committed to the ledger as it arrives, so
after a crash (even ``kill -9``) a rerun re-sends only what was in flight: at most
``teacher.concurrency`` requests. The output file is rebuilt from the ledger and written
atomically at the end, so a record reaches it only once its answer is committed.

API teachers (openai, anthropic) run on ``potstill.generate.engine`` (rate limits, budget,
retries); other teachers answer through their own ``run``. ``generate.engine: ray`` shards the
requests over Ray workers that commit into the same ledger (``potstill.generate.ray_engine``);
``generate.engine: batch`` sends them through the provider's batch API (``potstill.generate.batch_engine``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from potstill.config import Config, GenerateConfig
from potstill.errors import PotstillError
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
    unsent: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    budget_stopped: bool = False
    invalid_reasons: dict[str, int] = field(default_factory=dict)


def request_hash(identity: dict[str, Any], request: dict[str, Any]) -> str:
    return hash_obj({"teacher": identity, "request": request})


def ledger_call(h: str, teacher: Teacher, stage: str, request: dict[str, Any], resp: Response) -> Call:
    """The ledger row for one answer (what ``label_records`` and the Ray workers commit)."""
    ok = resp.error is None and resp.output is not None
    stop = getattr(resp, "stop_reason", None)
    body = resp.to_json() if ok else None
    if body is not None and stop is not None:
        body["stop_reason"] = stop
    return Call(
        request_hash=h, role="teacher", stage=stage, model=teacher.model_name, request=request, response=body,
        input_tokens=resp.input_tokens, output_tokens=resp.output_tokens, cached_input_tokens=resp.cached_input_tokens,
        cost_usd=resp.cost_usd, latency_s=resp.latency_s, status="ok" if ok else "error", error=resp.error,
        stop_reason=stop if isinstance(stop, str) or stop is None else ",".join(map(str, stop)),
    )


def _fields(stats: GenerateStats, t0: float, counters: Any = None) -> dict[str, str]:
    dt = max(time.perf_counter() - t0, 1e-9)
    return {"req/s": f"{stats.calls / dt:.1f}", "tok": f"{stats.input_tokens + stats.output_tokens:,}",
            "spent": f"${stats.cost_usd:.4f}", "retries": str(counters.retries if counters else 0),
            "errors": str(stats.errors)}


def label_records(records: list[Record], task: Task, teacher: Teacher, ledger: Ledger, stage: str,
                  gcfg: GenerateConfig | None = None) -> tuple[list[Record], GenerateStats]:
    """Attach the teacher's answer to each record (cache first), validating it against the task.

    Records the run did not answer (budget reached) come back with ``output=None`` and
    ``invalid_reason`` starting ``not sent``.
    """
    gcfg = gcfg or GenerateConfig()
    t0 = time.perf_counter()
    stats = GenerateStats(inputs=len(records))
    if hasattr(teacher, "n"):
        teacher.n = gcfg.n  # type: ignore[attr-defined]
    elif gcfg.n > 1:
        raise PotstillError(f"generate.n={gcfg.n}: the {teacher.type} teacher returns one answer per input; use n: 1")
    if gcfg.engine == "batch" and teacher.type not in ("openai", "anthropic"):
        raise PotstillError(f"generate.engine batch needs an openai or anthropic teacher, not {teacher.type!r}")
    ident = teacher.identity()
    reqs = [teacher.request(r) for r in records]
    hashes = [request_hash(ident, q) for q in reqs]
    unique = list(dict.fromkeys(hashes))
    answers: dict[str, dict[str, Any]] = ledger.lookup(unique)
    stats.cache_hits = sum(h in answers for h in hashes)
    todo_hashes = [h for h in unique if h not in answers]
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    todo = [first[h] for h in todo_hashes]
    errors: dict[str, str] = {}
    run_id = ledger.start_run(stage, teacher.model_name, len(records), unique, stats.cache_hits)
    counters = None
    with bar(f"{stage}: teacher {teacher.model_name}", len(todo)) as advance:

        def on_result(j: int, resp: Response) -> None:
            i = todo[j]
            h = hashes[i]
            call = ledger_call(h, teacher, stage, reqs[i], resp)
            ledger.record(call)
            stats.calls += 1
            stats.cost_usd += resp.cost_usd
            stats.input_tokens += resp.input_tokens
            stats.output_tokens += resp.output_tokens
            if call.status == "ok":
                answers[h] = call.response or {}
            else:
                stats.errors += 1
                errors[h] = resp.error or "no output"
            advance(1, **_fields(stats, t0, counters))

        if gcfg.engine == "ray" and todo:
            from potstill.generate.ray_engine import run_ray

            ray_out = run_ray(teacher, [(hashes[i], reqs[i]) for i in todo], ledger.path, stage, gcfg)
            answers.update(ledger.lookup([hashes[i] for i in todo]))
            stats.calls, stats.errors, stats.retries = ray_out["calls"], ray_out["errors"], ray_out["retries"]
            stats.cost_usd, stats.budget_stopped = ray_out["cost_usd"], ray_out["budget_stopped"]
            stats.input_tokens, stats.output_tokens = ray_out["input_tokens"], ray_out["output_tokens"]
            errors.update(ray_out["error_by_hash"])
        elif gcfg.engine == "batch" and todo:
            from potstill.generate.batch_engine import run_batch

            b_out = run_batch(teacher, [(hashes[i], reqs[i]) for i in todo], ledger, stage, gcfg)
            answers.update(ledger.lookup([hashes[i] for i in todo]))
            for k in ("calls", "errors", "retries", "cost_usd", "budget_stopped", "input_tokens", "output_tokens"):
                setattr(stats, k, b_out[k])
            errors.update(b_out["error_by_hash"])
        elif hasattr(teacher, "call"):
            from potstill.generate.engine import Counters, run_requests

            counters = Counters(t0=t0)
            asyncio.run(run_requests(teacher, ((j, reqs[i]) for j, i in enumerate(todo)), on_result, gcfg, counters))
            stats.retries, stats.budget_stopped = counters.retries, counters.budget_stopped
        else:
            teacher.run([reqs[i] for i in todo], on_result)

    ledger.finish_run(run_id, "budget" if stats.budget_stopped else "errors" if stats.errors else "done", stats.retries)
    out = []
    for rec, h in zip(records, hashes):
        rec = rec.model_copy(deep=True)
        ans = answers.get(h)
        if ans is None:
            reason = f"teacher error: {errors[h]}" if h in errors else "not sent: budget reached"
            stats.unsent += h not in errors
            rec.output, rec.valid, rec.invalid_reason = None, False, reason
        else:
            _attach(rec, ans, task)
            rec.meta.update({
                "teacher": teacher.model_name, "teacher_type": teacher.type, "request_hash": h,
                "input_tokens": ans.get("input_tokens", 0), "output_tokens": ans.get("output_tokens", 0),
                "cost_usd": ans.get("cost_usd", 0.0), "latency_s": ans.get("latency_s", 0.0),
            })
            if ans.get("stop_reason") is not None:
                rec.meta["stop_reason"] = ans["stop_reason"]
        if not rec.valid:
            stats.invalid += 1
            key = (rec.invalid_reason or "").split(":")[0]
            stats.invalid_reasons[key] = stats.invalid_reasons.get(key, 0) + 1
        out.append(rec)
    stats.seconds = time.perf_counter() - t0
    return out, stats


def _attach(rec: Record, ans: dict[str, Any], task: Task) -> None:
    """Copy an answer onto a record; with several samples, the output is their majority answer."""
    from potstill.generate.consistency import majority

    rec.output = ans.get("output")
    rec.label_probs = ans.get("label_probs")
    rec.logprobs = ans.get("logprobs")
    rec.samples = ans.get("samples")
    if rec.samples and len(rec.samples) > 1:
        best, agreement = majority(rec.samples, task.parse)
        rec.output = best
        rec.meta["majority"] = task.parse(best) if best is not None else None
        rec.meta["agreement"] = agreement
        if task.labels and rec.label_probs is None:
            # With no logprobs, the vote shares are the soft label (n samples -> steps of 1/n).
            votes = [task.parse(s) for s in rec.samples]
            rec.label_probs = {lab: votes.count(lab) / len(votes) for lab in task.labels}
    reason = task.validate(task.parse(rec.output or ""))
    rec.valid, rec.invalid_reason = reason is None, reason


def run_generate(cfg: Config, records: list[Record], ledger: Ledger, stage: str = "generate") -> tuple[list[Record], GenerateStats]:
    task = get_task(cfg.task)
    teacher = get_teacher(cfg.teacher, task)
    try:
        return label_records(records, task, teacher, ledger, stage, cfg.generate)
    finally:
        teacher.close()
