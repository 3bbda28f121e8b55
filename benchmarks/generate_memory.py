"""Peak RSS of `potstill generate` over N inputs, before and after a change to what it holds: first
every request, answer and record copy (a review: ~4.3 KB an input, 818 MB at 100k inputs), then its
parsed inputs (read whole by `load_inputs`; since, read again at each pass, ``inputs.InputFile``).

Builds (once, in --work) N inputs (a 40-word support ticket each) and a replay teacher's recording
of an answer to each (an in-process teacher: no server, so the numbers are generate's own), then
runs the real CLI under ``/usr/bin/time -v`` (peak RSS, CPU seconds) with this checkout's src/ and
with ``--before``'s (a git revision, unpacked with ``git archive``), each in a fresh run directory.
The two teacher.jsonl files, the ledger rows (request hash, request, response, cost) and the runs'
cost must be the same; the script exits 1 if they are not.

    PYTHONPATH=src:. python benchmarks/generate_memory.py --work /tmp/genbench --before HEAD~1 --inputs 20000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["printer", "login", "refund", "slow", "broken", "email", "password", "invoice"]
LABELS = ["sports", "tech", "politics", "business", "film"]


def build(work: Path, n: int) -> None:
    rng = random.Random(0)
    with open(work / "inputs.jsonl", "w") as f, open(work / "replay.jsonl", "w") as g:
        for i in range(n):
            text = f"ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(40))
            f.write(json.dumps({"id": f"r{i}", "input": text}) + "\n")
            g.write(json.dumps({"messages": [{"role": "user", "content": text},
                                             {"role": "assistant", "content": LABELS[i % 5]}]}) + "\n")


def run_generate(src_dir: Path, work: Path, name: str) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    cfg = {"run_dir": str(run), "data": {"inputs": str(work / "inputs.jsonl")},
           "task": {"type": "classification", "labels": LABELS, "instruction": "Topic?"},
           "teacher": {"type": "replay", "replay_path": str(work / "replay.jsonl"), "max_tokens": 4}}
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": f"{src_dir}:{ROOT}", "POTSTILL_PROGRESS": "never"}
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "potstill.cli", "generate", "-c",
                        str(work / f"{name}.yaml")], env=env, capture_output=True, text=True, cwd=work)
    if p.returncode:
        raise SystemExit(f"generate failed ({src_dir}): {p.stderr[-2000:]}")

    def field(label: str) -> str:
        return re.search(rf"{re.escape(label)}: (\S+)", p.stderr).group(1)

    with sqlite3.connect(run / "calls.sqlite") as db:
        rows = db.execute("SELECT request_hash, request, response, status, cost_usd FROM calls ORDER BY request_hash")
        ledger = hashlib.sha256(json.dumps(rows.fetchall()).encode()).hexdigest()
        cost = db.execute("SELECT SUM(cost_usd), COUNT(*) FROM calls").fetchone()
        runs = db.execute("SELECT inputs, unique_requests, cache_hits, status FROM generate_runs").fetchall()
    out = run / "teacher.jsonl"
    return {"peak_rss_mb": int(field("Maximum resident set size (kbytes)")) // 1024,
            "cpu_s": round(float(field("User time (seconds)")) + float(field("System time (seconds)")), 1),
            "records": sum(1 for _ in open(out)), "ledger_rows": cost[1],
            "same": {"teacher_jsonl": hashlib.sha256(out.read_bytes()).hexdigest(), "ledger": ledger,
                     "cost_usd": cost[0], "runs": runs}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--before", required=True, help="git revision of the code before the change")
    ap.add_argument("--inputs", type=int, default=100_000)
    args = ap.parse_args()
    work = args.work / f"n{args.inputs}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "replay.jsonl").exists():
        build(work, args.inputs)
    with tempfile.TemporaryDirectory(dir=args.work) as old:
        subprocess.run(f"git -C {ROOT} archive {args.before} src | tar -x -C {old}", shell=True, check=True)
        before = run_generate(Path(old) / "src", work, "before")
    after = run_generate(ROOT / "src", work, "after")
    same = before.pop("same") == after.pop("same")
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True, text=True)
    out = {"what": "peak RSS and CPU of `potstill generate` (CLI, replay teacher, /usr/bin/time -v) before and after "
                   "it stopped holding its parsed inputs (read again at each pass)",
           "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
           "before": rev.stdout.strip(), "inputs": args.inputs, "input_mb": round((work / "inputs.jsonl").stat().st_size
                                                                                 / 2**20, 1),
           "before_run": before, "after_run": after,
           "same_output_ledger_and_cost": same}
    print(json.dumps(out, indent=2))
    (Path(__file__).with_suffix(".json")).write_text(json.dumps(out, indent=2) + "\n")
    if not same:
        raise SystemExit("the outputs, ledger rows or cost differ before and after")


if __name__ == "__main__":
    main()
