"""Time `potstill quickstart` stage by stage on this machine, as a newcomer would run it.

    python benchmarks/quickstart.py [--out benchmarks/quickstart.json] [--keep-cache]

Runs the quickstart CLI in a fresh run directory with an empty model cache and an empty
torch.compile cache (so the one-time GGUF conversion and compiling are counted, as on a fresh
machine), then reruns it to show that every stage is
skipped and no teacher call is made. Writes stage timings, the evaluation's numbers and the
machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def teacher_calls(run: Path) -> int:
    db = sqlite3.connect(run / "calls.sqlite")
    return db.execute("SELECT COUNT(*) FROM calls WHERE role='teacher'").fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("quickstart.json")))
    ap.add_argument("--keep-cache", action="store_true", help="reuse ~/.cache/potstill (skip the one-time conversion)")
    ap.add_argument("extra", nargs="*", help="extra arguments for `potstill quickstart`")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="potstill-qs-bench-"))
    env = dict(os.environ)
    if not args.keep_cache:
        env["POTSTILL_CACHE"] = str(work / "cache")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # torch.compile's code cache, empty too
    run = work / "run"
    cmd = [sys.executable, "-m", "potstill.cli", "quickstart", "--run-dir", str(run), *args.extra]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    first_s = time.perf_counter() - t0
    sys.stdout.write(first.stdout)
    if first.returncode != 0:
        sys.stderr.write(first.stderr)
        raise SystemExit(f"quickstart failed with exit code {first.returncode}")
    calls = teacher_calls(run)
    t0 = time.perf_counter()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    second_s = time.perf_counter() - t0
    ev = json.loads((run / "eval.json").read_text())
    pilot = json.loads((run / "pilot.json").read_text())
    result = {
        "what": "potstill quickstart, first run with an empty model cache, then a rerun",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    # Other work on the machine slows every stage; the 1-minute load average says how much there was.
                    "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["potstill", "quickstart", *args.extra]),
        "first_run_total_s": round(first_s, 1),
        # timings.json is rewritten by the rerun, so take the first run's from what it printed.
        "stages_s": first_stage_times(first.stdout),
        "rerun_total_s": round(second_s, 1),
        "rerun_exit_code": second.returncode,
        "teacher_calls_first_run": calls,
        "teacher_calls_added_by_rerun": teacher_calls(run) - calls,
        "pilot": {k: {m: v.get(m) for m in ("gold_metric", "agreement_with_teacher")} for k, v in pilot["models"].items()},
        "evaluate": {
            name: {k: m.get(k) for k in ("gold_metric", "agreement_with_teacher", "input_tokens_per_call",
                                         "output_tokens_per_call", "cost_per_1k_calls_usd",
                                         "ledger_cost_per_1k_calls_usd")}
                  | {"latency_batch1": m.get("latency_batch1"), "ledger_latency_batch1": m.get("ledger_latency_batch1")}
            for name, m in ev["models"].items()
        },
        "cost_ratio_teacher_over_student": cost_ratios(ev),
        "verdict": ev["verdict"],
        "break_even": ev.get("break_even"),
        "train": json.loads((run / "train.json").read_text()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("first_run_total_s", "stages_s", "rerun_total_s",
                                             "teacher_calls_added_by_rerun")}, indent=2))
    # The rerun must skip every stage: a failure or a single new teacher call is a bug (JSON written first).
    if result["rerun_exit_code"] != 0 or result["teacher_calls_added_by_rerun"] != 0:
        raise SystemExit(f"CORRECTNESS FAILED: the rerun exited {result['rerun_exit_code']} and added "
                         f"{result['teacher_calls_added_by_rerun']} teacher calls (tolerance: 0 and 0)")


def cost_ratios(ev: dict) -> dict:
    """The teacher's $ per call over the trained student's, at batch 1 and at the serving batch; the
    teacher's cost as evaluate reports it (a local teacher timed there in turns with the student),
    and ``*_ledger`` with generate's timing of it instead (what earlier runs of this script reported)."""
    m = ev["models"]
    teacher, student = m["teacher"]["cost_per_1k_calls_usd"], m["student"]
    ledger = m["teacher"].get("ledger_cost_per_1k_calls_usd", teacher)
    batched = student.get("cost_per_1k_calls_batched_usd")
    return {"batch1": teacher / student["cost_per_1k_calls_usd"], "batched": teacher / batched if batched else None,
            "batch1_ledger": ledger / student["cost_per_1k_calls_usd"],
            "batched_ledger": ledger / batched if batched else None,
            "teacher_cost_source": m["teacher"].get("cost_source"), "student_engine": student.get("engine")}


def first_stage_times(stdout: str) -> dict:
    """The quickstart prints its stage timings as JSON on its last line."""
    for line in reversed(stdout.splitlines()):
        if "timings:" in line:
            return json.loads(line.split("timings:", 1)[1])
    return {}


if __name__ == "__main__":
    main()
