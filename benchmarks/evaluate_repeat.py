"""The teacher/student cost ratio of a finished run, measured again and again: ``potstill evaluate
--force`` N times in a row on RUN (each timing the local teacher in turns with the student), with
each run's ratio at batch 1 and batched. On a shared VM whose speed moves +-30% from one minute to
the next, one run is one draw; this gives the spread.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/evaluate_repeat.py RUN --n 6 --out benchmarks/evaluate_repeat.json

RUN is changed in place (its eval.json, report and card are rewritten by each run). Exits 1 if a
run fails or its teacher was not timed in turns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def ratios(eval_json: dict) -> dict:
    rows = {r["model"]: r for r in eval_json["latency_cost"]}
    t, s = rows["teacher"], rows["student"]
    return {"batch1": t["usd_per_call"] / s["usd_per_call"],
            "batched": t["usd_per_1k_calls"] / s["usd_per_1k_calls_batched"],
            "teacher_p50_s": t["p50_s"], "teacher_timed_here": t["source"].startswith("timed by this command"),
            "student_p50_s": s["p50_s"], "student_p95_s": s["p95_s"],
            "student_batched_source": s["source"].rsplit("; ", 1)[-1],
            "verdict": eval_json["verdict"].get("decision") if isinstance(eval_json["verdict"], dict) else eval_json["verdict"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", default="evaluate_repeat.json")
    args = ap.parse_args()
    run = Path(args.run)
    out = {"run": str(run), "cpus": os.cpu_count(), "runs": []}
    failures = []
    for i in range(args.n):
        t0 = time.time()
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        p = subprocess.run([sys.executable, "-m", "potstill.cli", "evaluate", "-c", str(run / "potstill.yaml"), "--force"],
                           capture_output=True, text=True)
        row = {"started": started, "wall_s": round(time.time() - t0, 1), "rc": p.returncode,
               "loadavg_after": os.getloadavg()[0]}
        if p.returncode:
            failures.append(f"run {i}: rc {p.returncode}: {p.stderr.strip().splitlines()[-1:] }")
        else:
            row.update(ratios(json.loads((run / "eval.json").read_text())))
            if not row["teacher_timed_here"]:
                failures.append(f"run {i}: the teacher was not timed in turns (ledger figures)")
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    ok = [r for r in out["runs"] if "batch1" in r]
    if ok:
        b1, bb = sorted(r["batch1"] for r in ok), sorted(r["batched"] for r in ok)
        out["batch1"] = {"min": b1[0], "median": b1[len(b1) // 2], "max": b1[-1], "at_least_10x": sum(x >= 10 for x in b1)}
        out["batched"] = {"min": bb[0], "median": bb[len(bb) // 2], "max": bb[-1], "at_least_20x": sum(x >= 20 for x in bb)}
    out["failures"] = failures
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
