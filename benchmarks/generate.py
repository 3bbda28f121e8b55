"""Generation throughput and crash safety against the loopback server (tests/generate/loopback.py).

    python benchmarks/generate.py throughput --n 5000 --concurrency 64 --reps 3
    python benchmarks/generate.py crash --n 5000 --kills 20 --concurrency 64
    python benchmarks/generate.py throttled --n 1200 --concurrency 16 --capacity 40 --p429 0.05 --label after

``throughput`` measures, side by side in one process and interleaved rep by rep:
  * bare: the SDK's floor, ``openai.AsyncOpenAI`` + ``asyncio.Semaphore(concurrency)`` + gather;
  * potstill: ``run_generate`` with the ledger on (hashing, one SQLite commit per answer,
    rate-limit bookkeeping, output records), on as many new inputs;
  * rerun: the same inputs again, every one a cache hit (records/s);
  * distilabel (when /tmp/venv-distilabel exists): its OpenAILLM + TextGeneration pipeline.
The server has no faults and no latency, so the numbers are client overhead. ``crash`` kills
``potstill generate`` with SIGKILL at random moments, restarts it, and checks the final output.
``throttled`` runs ``run_generate`` (ledger on) against a server of finite capacity (``--capacity``
answers/s: 16 requests in service at once, 0.4 s each at 40/s) that answers ``--p429`` of the
attempts with a 429 and ``Retry-After: 1``, once without 429s (the capacity the client reaches)
and then with them; ``--label`` names the code measured (run it with ``PYTHONPATH`` at an older
``src`` for "before") and the result is merged into generate_throttled.json under that label.
Results go to benchmarks/generate*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.generate.loopback import LABELS, Loopback, answer_for, committed_answers  # noqa: E402

KEY = "sk-bench"
INSTRUCTION = "Topic?"


def config(base_url: str, conc: int, run_dir: str, inputs: str = "inputs.jsonl"):
    from potstill.config import load_config

    return load_config(None, {
        "run_dir": run_dir, "task.type": "classification", "task.labels": LABELS, "task.instruction": INSTRUCTION,
        "data.inputs": inputs, "teacher.type": "openai", "teacher.model": "gpt-4o-mini", "teacher.base_url": base_url,
        "teacher.api_key_env": "BENCH_KEY", "teacher.concurrency": conc, "teacher.max_tokens": 4})


async def bare(base_url: str, texts: list[str], conc: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=5)
    sem = asyncio.Semaphore(conc)

    async def one(t: str) -> str:
        async with sem:
            c = await client.chat.completions.create(model="gpt-4o-mini", temperature=0.0, max_tokens=4, messages=[
                {"role": "system", "content": INSTRUCTION}, {"role": "user", "content": t}])
            return c.choices[0].message.content

    t0 = time.perf_counter()
    out = await asyncio.gather(*(one(t) for t in texts))
    dt = time.perf_counter() - t0
    await client.close()
    assert out == [answer_for(t) for t in texts]
    return len(texts) / dt


def potstill_run(base_url: str, texts: list[str], conc: int, db: Path) -> tuple[float, float]:
    from potstill.generate import run_generate
    from potstill.ledger import Ledger
    from potstill.records import Record

    cfg = config(base_url, conc, str(db.parent))
    recs = [Record(messages=[{"role": "user", "content": t}]) for t in texts]
    with Ledger(db) as ledger:
        t0 = time.perf_counter()
        out, stats = run_generate(cfg, recs, ledger)
        first = len(texts) / (time.perf_counter() - t0)
        assert stats.calls == len(texts) and all(r.output == answer_for(t) for r, t in zip(out, texts))
        t0 = time.perf_counter()
        _, stats2 = run_generate(cfg, recs, ledger)
        rerun = len(texts) / (time.perf_counter() - t0)
        assert stats2.cache_hits == len(texts) and stats2.calls == 0
    return first, rerun


def distilabel_run(base_url: str, texts: list[str], conc: int) -> dict | None:
    py = Path("/tmp/venv-distilabel/bin/python")
    if not py.exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        inp = Path(d) / "texts.json"
        inp.write_text(json.dumps(texts))
        out = subprocess.run([str(py), str(ROOT / "benchmarks" / "generate_distilabel.py"), base_url, str(inp), str(conc)],
                             capture_output=True, text=True, timeout=1200, env={**os.environ, "DISTILABEL_CACHE": d,
                                                                              "HOME": d})
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(args: argparse.Namespace) -> dict:
    os.environ["BENCH_KEY"] = KEY
    os.environ.setdefault("POTSTILL_PROGRESS", "never")
    rows = []
    with Loopback(key=KEY) as srv, tempfile.TemporaryDirectory() as d:
        for rep in range(args.reps):
            texts = [f"rep {rep} item {i} about the match" for i in range(args.n)]
            b = asyncio.run(bare(srv.base_url, [f"bare {t}" for t in texts], args.concurrency))
            p, r = potstill_run(srv.base_url, [f"potstill {t}" for t in texts], args.concurrency, Path(d) / f"r{rep}" / "calls.sqlite")
            rows.append({"rep": rep, "bare_req_per_s": b, "potstill_req_per_s": p, "rerun_records_per_s": r, "ratio": p / b})
            print(json.dumps(rows[-1]), flush=True)
        dl = distilabel_run(srv.base_url, [f"distilabel {i} about the match" for i in range(args.n)], args.concurrency) if args.distilabel else None
    med = {k: statistics.median(r[k] for r in rows) for k in ("bare_req_per_s", "potstill_req_per_s", "rerun_records_per_s")}
    res = {
        "what": "potstill generate vs a bare AsyncOpenAI+semaphore loop, zero-latency loopback server, ledger on",
        "n": args.n, "concurrency": args.concurrency, "reps": rows, "median": med,
        "ratio_potstill_over_bare": med["potstill_req_per_s"] / med["bare_req_per_s"],
        # Each rep runs both arms back to back, so its own ratio cancels slow drifts of a shared machine.
        "median_of_paired_ratios": statistics.median(r["ratio"] for r in rows),
        "distilabel": dl,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    if dl and "req_per_s" in dl:
        res["ratio_distilabel_over_bare"] = dl["req_per_s"] / med["bare_req_per_s"]
    return res


def crash(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    with Loopback(key=KEY, seed=args.seed, p429=0.02, p500=0.01, pslow=0.02, slow_s=0.05, pdrop=0.01) as srv, \
            tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "inputs.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "input": f"item {i}"}) + "\n" for i in range(args.n)))
        import yaml

        cfg = config(srv.base_url, args.concurrency, "run").model_dump(mode="json")
        cfg["teacher"]["max_retries"] = 10
        (root / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "BENCH_KEY": KEY, "PYTHONPATH": str(ROOT), "POTSTILL_PROGRESS": "never"}
        cmd = [sys.executable, "-m", "potstill.cli", "generate", "-c", "potstill.yaml"]
        db = root / "run" / "calls.sqlite"
        targets = sorted(rng.sample(range(50, args.n - 50), args.kills))
        t0 = time.perf_counter()
        for target in targets:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while committed_answers(db) < target and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.random() * 0.05)
            assert proc.poll() is None, "finished before its kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        final = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        assert final.returncode == 0, final.stderr
        ids = [json.loads(line)["id"] for line in (root / "run" / "teacher.jsonl").read_text().splitlines()]
        answered = sum(srv.stats()["answered"].values())
    ok = sorted(ids) == sorted(f"r{i}" for i in range(args.n))
    return {"what": "SIGKILL at random moments, restart, final output checked", "n": args.n, "kills": args.kills,
            "concurrency": args.concurrency, "each_input_exactly_once": ok, "server_answered": answered,
            "resent": answered - args.n, "bound": args.kills * args.concurrency,
            "within_bound": answered - args.n <= args.kills * args.concurrency, "seconds": seconds,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}


def throttled_run(args: argparse.Namespace, p429: float, tag: str, d: Path) -> dict:
    with Loopback(key=KEY, seed=args.seed, p429=p429, retry_after_s=1, capacity_rps=args.capacity, slots=16) as srv:
        texts = [f"{tag} item {i} about the match" for i in range(args.n)]
        t0 = time.perf_counter()
        potstill_once(srv.base_url, texts, args.concurrency, d / tag / "calls.sqlite")
        seconds = time.perf_counter() - t0
        st = srv.stats()
    answered = sum(st["answered"].values())
    n429 = st["faults"].get("429", 0)
    return {"p429": p429, "load_average_1m_after": os.getloadavg()[0], "answered": answered, "seconds": seconds,
            "req_per_s": answered / seconds,
            "share_of_capacity": answered / seconds / args.capacity, "n_429": n429,
            "429_per_1000_requests": 1000 * n429 / answered}


def potstill_once(base_url: str, texts: list[str], conc: int, db: Path) -> None:
    from potstill.generate import run_generate
    from potstill.ledger import Ledger
    from potstill.records import Record

    cfg = config(base_url, conc, str(db.parent))
    cfg.teacher.max_retries = 10
    recs = [Record(messages=[{"role": "user", "content": t}]) for t in texts]
    with Ledger(db) as ledger:
        out, stats = run_generate(cfg, recs, ledger)
    assert stats.calls == len(texts) and stats.errors == 0 and all(r.output == answer_for(t) for r, t in zip(out, texts))


def throttled(args: argparse.Namespace) -> dict:
    import potstill

    os.environ["BENCH_KEY"] = KEY
    os.environ.setdefault("POTSTILL_PROGRESS", "never")
    out = ROOT / "benchmarks" / "generate_throttled.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as d:
        runs = [throttled_run(args, 0.0, "clean", Path(d))]
        runs += [throttled_run(args, args.p429, f"rep{rep}", Path(d)) for rep in range(args.reps)]
    for r in runs:
        print(json.dumps(r), flush=True)
    faulty = runs[1:]
    res.update({
        "what": (f"run_generate (ledger on) against a loopback server of {args.capacity:g} answers/s capacity "
                 f"(16 in service x {16 / args.capacity:.2f} s) with {args.p429:.0%} random 429s (Retry-After: 1), "
                 f"concurrency {args.concurrency}, {args.n} inputs per run"),
        "capacity_rps": args.capacity, "concurrency": args.concurrency, "n": args.n,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    })
    res.setdefault("runs", {})[args.label] = {
        "code": str(Path(potstill.__file__).parent), "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "without_429s": runs[0], "with_429s": faulty,
        "median_req_per_s": statistics.median(r["req_per_s"] for r in faulty),
        "median_share_of_capacity": statistics.median(r["share_of_capacity"] for r in faulty),
        "median_429_per_1000_requests": statistics.median(r["429_per_1000_requests"] for r in faulty),
    }
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["throughput", "crash", "throttled"])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-distilabel", dest="distilabel", action="store_false")
    p.add_argument("--capacity", type=float, default=40.0, help="throttled: the server's answers per second")
    p.add_argument("--p429", type=float, default=0.05, help="throttled: share of attempts answered 429")
    p.add_argument("--label", default="after", help="throttled: which code this measures (before/after)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    res = {"throughput": throughput, "crash": crash, "throttled": throttled}[args.mode](args)
    out = args.out or ROOT / "benchmarks" / {"throughput": "generate.json", "crash": "generate_crash.json",
                                             "throttled": "generate_throttled.json"}[args.mode]
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
