"""``generate.engine: ray``: shard the requests over Ray workers that commit into the one ledger.

Each worker runs the same async engine on its shard (``teacher.concurrency`` in flight per
worker, ``generate.rpm``/``tpm``/``budget_usd`` split evenly between workers) and commits each
answer to the run's SQLite ledger as it arrives, exactly as a single process does. SQLite in WAL
mode serialises the writers, so crash safety is unchanged: after a kill, a rerun re-sends at
most ``ray_workers x concurrency`` requests. The ledger is a local file, so the workers must
share the driver's filesystem (one host: a local teacher per GPU, or several endpoints).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from potstill.config import GenerateConfig
from potstill.errors import PotstillError
from potstill.progress import bar


def _shard(teacher_cfg: dict, task_cfg: dict, gen_cfg: dict, items: list[tuple[str, dict]], ledger_path: str,
           stage: str) -> dict[str, Any]:
    from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
    from potstill.generate import ledger_call
    from potstill.generate.engine import Counters, run_requests
    from potstill.ledger import Ledger
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    gcfg = GenerateConfig.model_validate(gen_cfg)
    teacher = get_teacher(TeacherConfig.model_validate(teacher_cfg), get_task(TaskConfig.model_validate(task_cfg)))
    teacher.n = gcfg.n  # type: ignore[attr-defined]
    counters = Counters()
    errors: dict[str, str] = {}
    with Ledger(ledger_path) as ledger:

        def on_result(j: int, resp: Any) -> None:
            h, req = items[j]
            call = ledger_call(h, teacher, stage, req, resp)
            ledger.record(call)
            if call.status != "ok":
                errors[h] = resp.error or "no output"

        asyncio.run(run_requests(teacher, ((j, req) for j, (_, req) in enumerate(items)), on_result, gcfg, counters))
    teacher.close()
    return {"calls": counters.done, "errors": counters.errors, "retries": counters.retries, "cost_usd": counters.cost_usd,
            "input_tokens": counters.input_tokens, "output_tokens": counters.output_tokens,
            "budget_stopped": counters.budget_stopped, "error_by_hash": errors}


def run_ray(teacher: Any, items: list[tuple[str, dict]], ledger_path: Path, stage: str, gcfg: GenerateConfig) -> dict[str, Any]:
    """Answer ``(hash, request)`` items on Ray workers; returns the summed counters."""
    try:
        import ray
    except ImportError:
        raise PotstillError("generate.engine ray needs Ray: pip install ray") from None
    if not hasattr(teacher, "call"):
        raise PotstillError(f"generate.engine ray supports API teachers (openai, anthropic), not {teacher.type!r}")
    if not ray.is_initialized():
        ray.init(num_cpus=gcfg.ray_workers, include_dashboard=False, log_to_driver=False)
    k = min(gcfg.ray_workers, len(items))
    split = gcfg.model_copy(update={
        "rpm": gcfg.rpm and max(1, gcfg.rpm // k), "tpm": gcfg.tpm and max(1, gcfg.tpm // k),
        "budget_usd": None if gcfg.budget_usd is None else gcfg.budget_usd / k, "engine": "async"})
    remote = ray.remote(num_cpus=1, max_retries=0)(_shard)
    # Round-robin shards: each worker gets a mix of the input file, not one end of it.
    pending = [remote.remote(teacher.cfg.model_dump(), teacher.task.cfg.model_dump(), split.model_dump(),
                             items[i::k], str(ledger_path), stage) for i in range(k)]
    from potstill.ledger import Ledger

    results = []
    with Ledger(ledger_path) as ledger, bar(f"{stage}: teacher {teacher.model_name} on {k} Ray workers", len(items)) as advance:
        base = ledger.count(role="teacher", stage=stage)
        shown = 0
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            results += ray.get(done)
            now = ledger.count(role="teacher", stage=stage) - base
            advance(now - shown, workers_left=len(pending))
            shown = now
    out: dict[str, Any] = {"calls": 0, "errors": 0, "retries": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0,
                           "budget_stopped": False, "error_by_hash": {}}
    for r in results:
        for key in ("calls", "errors", "retries", "cost_usd", "input_tokens", "output_tokens"):
            out[key] += r[key]
        out["budget_stopped"] |= r["budget_stopped"]
        out["error_by_hash"].update(r["error_by_hash"])
    return out
