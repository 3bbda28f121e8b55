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

from pathlib import Path
from typing import Any

from potstill.config import GenerateConfig
from potstill.errors import PotstillError
from potstill.progress import bar
from potstill.teachers import Response, RunStats, Teacher


def _shard(teacher_cfg: dict, task_cfg: dict, gen_cfg: dict, items: list[tuple[str, dict]], ledger_path: str,
           stage: str, earlier: dict[str, dict]) -> tuple[RunStats, dict[str, str]]:
    from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
    from potstill.generate import ledger_call
    from potstill.generate.consistency import rest_request, with_earlier
    from potstill.ledger import Ledger
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    gcfg = GenerateConfig.model_validate(gen_cfg)
    teacher = get_teacher(TeacherConfig.model_validate(teacher_cfg), get_task(TaskConfig.model_validate(task_cfg)))
    teacher.n = gcfg.n
    stats = RunStats()
    errors: dict[str, str] = {}
    with Ledger(ledger_path) as ledger:

        def on_result(j: int, resp: Response) -> None:
            h, req = items[j]
            if h in earlier:
                resp = with_earlier(earlier[h], resp)
            call = ledger_call(h, teacher, stage, req, resp)
            ledger.record(call)
            stats.count(resp)
            if call.status != "ok":
                errors[h] = resp.error or "no output"

        teacher.run([rest_request(req, earlier[h]) if h in earlier else req for h, req in items], on_result, stats, gcfg)
    teacher.close()
    return stats, errors


def run_ray(teacher: Teacher, items: list[tuple[str, dict]], ledger_path: Path, stage: str, gcfg: GenerateConfig,
            stats: RunStats, earlier: dict[str, dict] | None = None) -> dict[str, str]:
    """Answer ``(hash, request)`` items on Ray workers, adding their numbers to ``stats``; returns errors by hash.
    ``earlier``: by hash, the samples a failed attempt did answer (``Ledger.partial``), not asked again."""
    try:
        import ray
    except ImportError:
        raise PotstillError("generate.engine ray needs Ray: pip install ray") from None
    if gcfg.ray_endpoints and not teacher.remote:
        raise PotstillError(f"generate.ray_endpoints needs an API teacher (openai, anthropic), not {teacher.type!r}")
    joined = _connect(ray, gcfg)
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
                             items[i::k], str(ledger_path), stage,
                             {h: (earlier or {})[h] for h, _ in items[i::k] if h in (earlier or {})}) for i in range(k)]
    from potstill.ledger import Ledger

    results = []
    failed: list[BaseException] = []
    with Ledger(ledger_path) as ledger, bar(f"{stage}: teacher {teacher.model_name} on {k} Ray workers", len(items)) as advance:
        base = ledger.count(role="teacher", stage=stage)
        shown = 0
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            for ref in done:  # one by one: a failed shard must not leave the others' results unread
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayError as e:
                    failed.append(e)
            now = ledger.count(role="teacher", stage=stage) - base
            advance(now - shown, workers_left=len(pending))
            shown = now
    if failed:
        raise _one_line(failed[0], teacher, len(failed), k, joined)
    errors: dict[str, str] = {}
    for shard_stats, shard_errors in results:
        stats.merge(shard_stats)
        errors.update(shard_errors)
    return errors


def _connect(ray: Any, gcfg: GenerateConfig) -> bool:
    """Start a local Ray of ``generate.ray_workers`` CPUs, or join the cluster that RAY_ADDRESS names
    or that ``ray start`` left running on this host (``ray.init`` finds it), as it is: Ray refuses
    resources given to a cluster that exists. Returns whether an existing cluster was joined."""
    if ray.is_initialized():
        return False
    try:
        try:
            ray.init(num_cpus=gcfg.ray_workers, include_dashboard=False, log_to_driver=False)
            return False
        except ValueError as e:  # "When connecting to an existing cluster, num_cpus ... must not be provided"
            if "existing cluster" not in str(e):
                raise
        ray.init(log_to_driver=False)
        return True
    except Exception as e:  # noqa: BLE001 - an address that answers nothing, a cluster of another Ray version
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PotstillError(f"generate.engine ray: cannot start or join a Ray cluster ({type(e).__name__}: "
                            f"{first[:300]}); check RAY_ADDRESS, or the cluster `ray start` left running here (`ray status`)") from None


def _one_line(e: BaseException, teacher: Teacher, failed: int, workers: int, joined: bool = False) -> PotstillError:
    """A worker's failure as the single-process engine would show it: a PotstillError's own line
    (a missing key), else the exception's type and message, never the worker's remote traceback
    (``str`` of a RayTaskError). The other shards ran to their end, their answers committed."""
    import os

    from potstill.errors import redact

    cause = getattr(e, "cause", None) or e
    # A key unset in the workers: those of a cluster already running have its environment, not this shell's.
    where = ("; the workers of a Ray cluster that was already running read the environment it was started with"
             if joined else "")
    if isinstance(cause, PotstillError):
        return PotstillError(str(cause) + where)
    env = teacher.cfg.api_key_env
    secrets = [*teacher.secrets(), *(os.environ.get(v, "") for v in (env, "ANTHROPIC_API_KEY") if v)]
    what = redact(f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}", secrets)[:300]
    return PotstillError(f"generate: {failed} of {workers} Ray workers failed ({what}); the answers committed are in "
                         "the ledger and a rerun sends only the rest")
