"""``generate.engine: ray``: shard the requests over Ray workers that commit into the one ledger.

Each worker builds its own teacher from the config and commits each answer to the run's SQLite
ledger as it arrives, exactly as a single process does:
- an API teacher (openai, anthropic) runs the async engine on its shard (``teacher.concurrency``
  in flight per worker, ``generate.rpm``/``tpm``/``budget_usd`` split evenly between workers);
  with ``generate.ray_endpoints`` worker i talks to endpoint ``i % n`` (several vLLM servers);
- an in-process teacher (local) loads its model in the worker; with
  ``generate.ray_gpus_per_worker: 1`` Ray gives each worker its own GPU (one model per GPU).
SQLite in WAL mode serialises the writers, so crash safety is unchanged: after a kill, a rerun
re-sends at most ``ray_workers x concurrency`` requests (``ray_workers x batch_size`` for a local
teacher). The ledger is a local file, so the workers must share the driver's filesystem (one host).
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
    api = hasattr(teacher, "call")
    with Ledger(ledger_path) as ledger:

        def on_result(j: int, resp: Any) -> None:
            h, req = items[j]
            call = ledger_call(h, teacher, stage, req, resp)
            ledger.record(call)
            if call.status != "ok":
                errors[h] = resp.error or "no output"
            if not api:  # the async engine keeps its own counters
                counters.done += 1
                counters.errors += call.status != "ok"
                counters.cost_usd += resp.cost_usd
                counters.input_tokens += resp.input_tokens
                counters.output_tokens += resp.output_tokens

        if api:
            asyncio.run(run_requests(teacher, ((j, req) for j, (_, req) in enumerate(items)), on_result, gcfg, counters))
        else:
            teacher.run([req for _, req in items], on_result)
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
    if gcfg.ray_endpoints and not hasattr(teacher, "call"):
        raise PotstillError(f"generate.ray_endpoints needs an API teacher (openai, anthropic), not {teacher.type!r}")
    if not ray.is_initialized():
        ray.init(num_cpus=gcfg.ray_workers, include_dashboard=False, log_to_driver=False)
    k = min(gcfg.ray_workers, len(items))
    split = gcfg.model_copy(update={
        "rpm": gcfg.rpm and max(1, gcfg.rpm // k), "tpm": gcfg.tpm and max(1, gcfg.tpm // k),
        "budget_usd": None if gcfg.budget_usd is None else gcfg.budget_usd / k, "engine": "async"})
    gpus = gcfg.ray_gpus_per_worker
    if gpus and ray.cluster_resources().get("GPU", 0) < gpus * k:
        raise PotstillError(f"generate.ray_gpus_per_worker {gpus} x {k} workers needs {gpus * k:g} GPUs; "
                            f"Ray sees {ray.cluster_resources().get('GPU', 0):g}")
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_shard)
    ends = gcfg.ray_endpoints

    def worker_cfg(i: int) -> dict:
        return teacher.cfg.model_copy(update={"base_url": ends[i % len(ends)]}).model_dump() if ends else teacher.cfg.model_dump()

    # Round-robin shards: each worker gets a mix of the input file, not one end of it.
    pending = [remote.remote(worker_cfg(i), teacher.task.cfg.model_dump(), split.model_dump(),
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
