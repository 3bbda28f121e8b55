"""Peak RSS of `potstill import` on a large OpenAI request/response log and a served ledger, before and
after import streamed its records (review3-scale, finding 5).

Builds (once, in --work) an N-line log of ``{"request", "response"}`` chat-completion lines (~990 bytes
each: a system prompt and a 60-word support ticket, a one-word answer) and a ledger of M served rows,
then runs the real CLI on each under ``/usr/bin/time -v`` (peak RSS, CPU seconds) with this checkout's
src/ and with ``--before``'s (a git revision, unpacked with ``git archive``). Each run's output is
checked to hold the same records.

    PYTHONPATH=src:. python benchmarks/import_memory.py --work /tmp/impbench --before HEAD~1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["printer", "login", "refund", "slow", "broken", "email", "password", "invoice"]


def build_log(path: Path, n: int) -> None:
    """The review's generator (import_bench.py): the same lines, seed 0."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            req = {"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "You classify support tickets." * 5},
                {"role": "user", "content": f"ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(60))}]}
            resp = {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}}
            f.write(json.dumps({"request": req, "response": resp}) + "\n")


def build_ledger(path: Path, n: int) -> None:
    """``n`` served rows, written through ``Ledger.record_served`` as `potstill serve` writes them."""
    sys.path.insert(0, str(ROOT / "src"))
    from potstill.ledger import Ledger, ServedCall

    rng = random.Random(0)
    with Ledger(path) as ledger:
        for i in range(n):
            user = {"role": "user", "content": f"ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(60))}
            ledger.record_served(ServedCall(request={"model": "potstill", "messages": [user]},
                                            answered_by="student" if i % 5 else "teacher", model="student-v1",
                                            content="billing", input_tokens=120, output_tokens=1))


def run_import(src_dir: Path, source: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src_dir}:{ROOT}", "POTSTILL_PROGRESS": "never"}
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "potstill.cli", "import", str(source), "-o", str(out)],
                       env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"import failed ({src_dir}): {p.stderr[-2000:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (\S+)", p.stderr).group(1)

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"peak_rss_mb": int(field("Maximum resident set size (kbytes)")) // 1024,
            "cpu_s": round(float(field("User time (seconds)")) + float(field("System time (seconds)")), 1),
            "records": sum(1 for _ in open(out)), "out_mb": round(out.stat().st_size / 2**20, 1), "sha256": digest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--before", required=True, help="git revision of the code before the change")
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--served", type=int, default=100_000)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log, db = args.work / f"log{args.lines}.jsonl", args.work / f"served{args.served}.sqlite"
    if not log.exists():
        build_log(log, args.lines)
    if not db.exists():
        build_ledger(db, args.served)
    with tempfile.TemporaryDirectory(dir=args.work) as old:
        subprocess.run(f"git -C {ROOT} archive {args.before} src | tar -x -C {old}", shell=True, check=True)
        results = {}
        for name, source in (("log", log), ("served", db)):
            before = run_import(Path(old) / "src", source, args.work / f"{name}_before.jsonl")
            after = run_import(ROOT / "src", source, args.work / f"{name}_after.jsonl")
            same = before.pop("sha256") == after.pop("sha256")
            results[name] = {"input_mb": round(source.stat().st_size / 2**20, 1), "before": before, "after": after,
                             "same_output": same}
            print(name, json.dumps(results[name]), flush=True)
            if not same:
                raise SystemExit(f"{name}: the records differ before and after")
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True, text=True)
    out = {"what": "peak RSS and CPU of `potstill import` (CLI, /usr/bin/time -v) before and after streaming records",
           "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
           "before": rev.stdout.strip(), "lines": args.lines, "served_rows": args.served, **results}
    (Path(__file__).with_suffix(".json")).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
