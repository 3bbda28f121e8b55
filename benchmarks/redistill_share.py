"""Does `redistill.new_share` help? The same served traffic, one challenger per share, side by side.

1. Copy a quickstart run (never touch the original), pick the student's two weakest topics
   (eval.json) and BBC articles of them that the run never saw, and serve them through a real
   `potstill serve` with the official openai client (``redistill.send_traffic``).
2. For each share in ``--shares`` (0: each new record once, today's default), run
   `potstill redistill RUN --no-promote [--new-share S]` (the CLI, a subprocess). Every run reads the
   same traffic and makes the same hash split (same seed and --new-test), so the new-traffic test is
   the same set for every challenger, and the teacher is paid once (the ledger).
3. Write the JSON beside this script: per share, the challenger's examples, its agreement with the
   teacher and with gold on the new-traffic test and on the frozen test, and its gain over the
   champion with the paired 95% bootstrap interval redistill computes.

Exit 1 if the challengers' new-traffic tests differ (the comparison would not be paired) or a
redistill fails.

    POTSTILL_CACHE=... PYTHONPATH=src:. python benchmarks/redistill_share.py \\
        --source /path/to/runs/quickstart --work /tmp/redistill-share --shares 0,0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks.redistill import CLI, send_traffic, shifted_articles, start_server, weakest_topics
from potstill.records import read_records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--shares", default="0,0.5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    shares = [float(x) for x in args.shares.split(",")]
    if args.work.exists():
        shutil.rmtree(args.work)
    run = args.work / "run"
    shutil.copytree(args.source, run, symlinks=True)
    weak = weakest_topics(run)
    arts = shifted_articles(run, [w["topic"] for w in weak], args.requests, args.seed)
    print(f"weakest topics {weak}; {len(arts)} unseen articles as shifted traffic", flush=True)
    env = {**os.environ, "POTSTILL_PROGRESS": "never"}
    server, url = start_server(run, args.work / "serve.log", env)
    try:
        traffic = {"topics": weak, **send_traffic(run, url, arts)}
    finally:
        server.terminate()
        server.wait(timeout=60)

    rows, tests = [], []
    for share in shares:
        flags = ["--new-share", str(share)] if share else []
        t0 = time.perf_counter()
        done = subprocess.run([*CLI, "redistill", str(run), "--no-promote", *flags], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"redistill (share {share}) failed: {done.stderr[-3000:]}")
        record = json.loads(max((run / "redistill").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
        tests.append(sorted(r.text for r in read_records(run / record["data"]["files"]["new_test"])))
        res = record["results"]
        rows.append({
            "new_share": share or None, "challenger": record["challenger_id"],
            "old_train": record["data"]["old_train"], "new_train": record["data"]["new_train"],
            "trained_examples": record["data"].get("trained_examples", record["data"]["challenger_train"]),
            "new_test": record["data"]["new_test"], "frozen_test": record["data"]["frozen_test"],
            "new_traffic": {k: res["new_traffic_test"][k] for k in ("teacher", "gold") if k in res["new_traffic_test"]},
            "frozen": {k: res["frozen_test"][k] for k in ("teacher", "gold") if k in res["frozen_test"]},
            "train_s": record["train"].get("train_s"), "redistill_s": time.perf_counter() - t0,
        })
        nt = res["new_traffic_test"]["teacher"]
        print(f"share {share}: {rows[-1]['trained_examples']} examples; new traffic {nt['challenger']['value']:.3f} "
              f"vs champion {nt['champion']['value']:.3f}; frozen {res['frozen_test']['teacher']['challenger']['value']:.3f}",
              flush=True)
    out = {
        "what": "redistill.new_share on a copy of the quickstart run: the same shifted BBC traffic (the student's "
                "weakest topics, unseen articles) served once, one challenger per share, compared with the champion "
                "on the same new-traffic test and the frozen test (agreement with the teacher, and with gold)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "source_run": str(args.source), "traffic": traffic, "challengers": rows,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    if any(t != tests[0] for t in tests):
        raise SystemExit("the challengers' new-traffic tests differ: the comparison is not paired")


if __name__ == "__main__":
    main()
