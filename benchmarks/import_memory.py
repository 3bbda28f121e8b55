"""Peak RSS of `potstill import` on a large OpenAI request/response log, a served ledger and the same
traffic as a CSV and a Parquet table, before and after import streamed its records (review3-scale,
finding 5; the tables later).

Builds (once, in --work) an N-line log of ``{"request", "response"}`` chat-completion lines (~990 bytes
each: a system prompt and a 60-word support ticket, a one-word answer), a ledger of M served rows and
a CSV and a Parquet file of the log's N tickets as ``prompt``/``completion`` pairs (Parquet in row
groups of 100,000 rows, zstd, as pyarrow's writer is commonly asked), then runs the real CLI on each
under ``/usr/bin/time -v`` (peak RSS, CPU seconds) with this checkout's src/ and with ``--before``'s (a
git revision, unpacked with ``git archive``). Each run's output is checked to hold the same records,
byte for byte; the script exits non-zero if they differ. The Batch case: an OpenAI Batch output of K
answers, imported with ``--requests`` (its input file, the log's requests; the output shuffled, as a
batch returns it). ``--only csv,parquet`` runs those cases alone and keeps the others' numbers in the
JSON as they were (each case names its --before).

    PYTHONPATH=src:. python benchmarks/import_memory.py --work /tmp/impbench --before HEAD~1 [--only csv,parquet]
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


def _tickets(n: int):
    rng = random.Random(0)  # the log's tickets, in its order
    for i in range(n):
        yield f"ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(60))


def build_csv(path: Path, n: int) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerows((t, "billing") for t in _tickets(n))


def build_parquet(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("prompt", pa.string()), ("completion", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        tickets = _tickets(n)
        while chunk := [t for _, t in zip(range(100_000), tickets)]:
            w.write_table(pa.table({"prompt": chunk, "completion": ["billing"] * len(chunk)}, schema=schema))


def build_batch(path: Path, n: int) -> None:
    """An OpenAI Batch output of ``n`` answers (``path``) and its input file (``requests_path``), the
    log's requests and answers, the output in another order than the input (as a batch returns it)."""
    rng = random.Random(1)
    order = list(range(n))
    rng.shuffle(order)
    tickets = list(_tickets(n))
    with open(requests_path(path), "w") as f:
        for i, t in enumerate(tickets):
            body = {"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "You classify support tickets." * 5}, {"role": "user", "content": t}]}
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    with open(path, "w") as f:
        for i in order:
            completion = {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}}
            f.write(json.dumps({"id": f"batch_req_{i}", "custom_id": f"req-{i}", "error": None,
                                "response": {"status_code": 200, "request_id": f"r{i}", "body": completion}}) + "\n")


def requests_path(results: Path) -> Path:
    return results.with_name(results.name.replace("results", "requests"))


def run_import(src_dir: Path, source: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src_dir}:{ROOT}", "POTSTILL_PROGRESS": "never"}
    extra = ["--requests", str(requests_path(source))] if "batch_results" in source.name else []
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "potstill.cli", "import", str(source),
                        "-o", str(out), *extra], env=env, capture_output=True, text=True)
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
    ap.add_argument("--batch", type=int, default=50_000, help="requests of the Batch case (OpenAI's most per batch)")
    ap.add_argument("--only", default="log,served,csv,parquet,batch", help="the cases to run, comma-separated")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sources = {"log": (args.work / f"log{args.lines}.jsonl", build_log, args.lines),
               "served": (args.work / f"served{args.served}.sqlite", build_ledger, args.served),
               "csv": (args.work / f"pairs{args.lines}.csv", build_csv, args.lines),
               "parquet": (args.work / f"pairs{args.lines}.parquet", build_parquet, args.lines),
               "batch": (args.work / f"batch_results{args.batch}.jsonl", build_batch, args.batch)}
    only = args.only.split(",")
    for name in only:
        source, build, n = sources[name]
        if not source.exists():
            build(source, n)
    with tempfile.TemporaryDirectory(dir=args.work) as old:
        subprocess.run(f"git -C {ROOT} archive {args.before} src | tar -x -C {old}", shell=True, check=True)
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                             text=True, check=True).stdout.strip()
        results = {}
        for name in only:
            source = sources[name][0]
            before = run_import(Path(old) / "src", source, args.work / f"{name}_before.jsonl")
            after = run_import(ROOT / "src", source, args.work / f"{name}_after.jsonl")
            same = before.pop("sha256") == after.pop("sha256")
            size = source.stat().st_size + (requests_path(source).stat().st_size if name == "batch" else 0)
            results[name] = {"input_mb": round(size / 2**20, 1), "rows": sources[name][2],
                             "before_revision": rev, "before": before, "after": after, "same_output": same}
            print(name, json.dumps(results[name]), flush=True)
            if not same:
                raise SystemExit(f"{name}: the records differ before and after")
    target = Path(__file__).with_suffix(".json")
    out = json.loads(target.read_text()) if target.exists() and set(only) != set(sources) else {}
    for case in out.values():  # cases measured before each named its own revision: the file's one
        if isinstance(case, dict) and "same_output" in case:
            case.setdefault("before_revision", out.get("before"))
    out.update({"what": "peak RSS and CPU of `potstill import` (CLI, /usr/bin/time -v) before and after streaming "
                        "records; each case's before_revision is the code it was compared with",
                "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
                **results})
    target.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
