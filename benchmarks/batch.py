"""``generate.engine: batch`` on 20,000 requests against the loopback batch API (tests/helpers/batch_server.py).

    python benchmarks/batch.py --n 20000

For each provider (OpenAI files + batches, Anthropic message batches) and each split (the
provider's own limit, and 5,000 requests per batch): wall time of ``run_generate`` end to end
(build requests, upload, poll, stream and commit results, write records), the batches and the
requests per batch, and the ledger's cost at the batch price next to the same tokens
at the live price. The server ends each batch 1 s after it is created and has no faults, so the
time is the client's overhead plus that one second. Results go to benchmarks/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.generate.loopback import LABELS, answer_for  # noqa: E402
from tests.helpers.batch_server import BatchLoopback  # noqa: E402

KEY = "sk-bench"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def one(srv: BatchLoopback, provider: str, n: int, per_batch: int | None, tmp: Path) -> dict:
    from potstill.config import load_config
    from potstill.generate import run_generate
    from potstill.ledger import Ledger
    from potstill.records import Record

    url = srv.openai_url if provider == "openai" else srv.anthropic_url
    cfg = load_config(None, {
        "run_dir": str(tmp), "task.type": "classification", "task.labels": LABELS, "task.instruction": "Topic?",
        "teacher.type": provider, "teacher.model": MODELS[provider], "teacher.base_url": url,
        "teacher.api_key_env": "BENCH_KEY", "teacher.max_tokens": 4, "generate.engine": "batch",
        "generate.batch_poll_s": 0.2, "generate.batch_max_requests": per_batch})
    texts = [f"{provider} {per_batch} item {i}: a short news text about something" for i in range(n)]
    recs = [Record(messages=[{"role": "user", "content": t}]) for t in texts]
    db = tmp / f"{provider}-{per_batch}.sqlite"
    with Ledger(db) as ledger:
        t0 = time.perf_counter()
        out, stats = run_generate(cfg, recs, ledger)
        wall = time.perf_counter() - t0
        batches = ledger.batches(open_only=False)
        rows = ledger.cost_report()["models"]
    assert [r.output for r in out] == [answer_for(t) for t in texts] and stats.calls == n
    sizes = [b["requests"] for b in batches]
    paid, live = sum(r["cost_usd"] for r in rows), sum(r["live_cost_usd"] for r in rows)
    return {"provider": provider, "n": n, "batch_max_requests": per_batch or "provider limit", "wall_s": round(wall, 2),
            "requests_per_s": round(n / wall, 1), "batches": len(batches), "requests_per_batch": sizes,
            "cost_batch_usd": round(paid, 6), "cost_live_usd": round(live, 6),
            "batch_over_live": round(paid / live, 4) if live else None}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20_000)
    a = p.parse_args()
    os.environ["BENCH_KEY"] = KEY
    load = os.getloadavg()
    runs = []
    with BatchLoopback(key=KEY, latency=1.0) as srv, tempfile.TemporaryDirectory() as d:
        for provider in ("openai", "anthropic"):
            for per_batch in (None, 5000):
                r = one(srv, provider, a.n, per_batch, Path(d))
                print(json.dumps(r))
                runs.append(r)
        stats = srv.stats()
    assert set(stats["submissions"].values()) == {1}  # nothing submitted twice
    result = {"what": "generate.engine batch on the loopback batch API (batches end 1 s after creation, no faults)",
              "runs": runs, "server": {"uploads": stats["uploads"], "created": stats["created"]},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_avg_before": load}}
    (Path(__file__).with_suffix(".json")).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
