"""OpenAI's Batch API on `potstill serve` against the same requests sent live, on the quickstart run.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/serve_batch.py --run RUN [--n 250] [--conc 16]

RUN is a finished quickstart run (copied, never written), served as ``benchmarks/serve.py`` serves it:
its own serve settings (engine, quantization, compile), the teacher replaying the run's recorded
answers. Its ``--n`` test articles go to the server three ways, each timed on the same warm server:
live one at a time (the official openai client's habit in a loop), live ``--conc`` at a time, and as one
Batch API job (``client.files.create`` + ``client.batches.create``, polled until ``completed``).

Exits 1 unless the batch answered every line (none failed), and its answers and routes (student or
teacher) part from the live one-at-a-time ones on no more articles than the live ones sent ``--conc``
at a time do, plus two standard deviations of a count and one (the student's batched forward passes
part from batch 1 at a near tie, and a route at its threshold with them); ``--break-order`` compares
each batch answer with the next article's live answer instead, to show that gate failing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import openai
import yaml

from benchmarks.checks import finish
from benchmarks.serve import KEY, loadavg, prepare, send_all
from potstill.records import read_records
from potstill.serve import run_config, serve_key
from potstill.serve.app import build_app
from potstill.serve.service import load_service
from tests.serve.conftest import LiveServer

def _key(body: dict) -> tuple:
    """An answer's text and who answered it."""
    return ((body.get("choices") or [{}])[0].get("message", {}).get("content"),
            (body.get("potstill") or {}).get("answered_by"))


def _detail(i: int, got: list[dict], want: list[dict]) -> dict:
    route = [(b.get("potstill") or {}) for b in (got[i], want[i])]
    return {"article": i, "got": _key(got[i]), "one_at_a_time": _key(want[i]),
            "confidence": [r.get("confidence") for r in route], "reason": [r.get("reason") for r in route]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--break-order", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["BENCH_SERVE_KEY"] = KEY
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-batch-"))
    try:
        run = prepare(args.run, work)
        cfg = yaml.safe_load((run / "potstill.yaml").read_text())
        cfg["serve"] = {**(yaml.safe_load((args.run / "potstill.yaml").read_text()).get("serve") or {}),
                        **cfg["serve"]}  # the run's own engine settings, the benchmark's key
        (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        test = read_records(run / "test.jsonl")[: args.n]
        bodies = [{"model": "potstill", "messages": r.messages} for r in test]
        out: dict = {"run": str(args.run), "n": len(bodies), "student": service.student_name,
                     "serve": {k: getattr(cfg.serve, k) for k in ("engine", "quantization", "dtype", "compile",
                                                                 "batch_size", "batch_concurrency")},
                     "cpus": os.cpu_count(), "loadavg_start": loadavg()}
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            asyncio.run(send_all(live.url, bodies[:16], 4))  # warm
            timed, answers = {}, {}
            for name, conc in (("live_one_at_a_time", 1), (f"live_{args.conc}_at_a_time", args.conc)):
                t0 = time.perf_counter()
                answers[name] = [a for _, a in asyncio.run(send_all(live.url, bodies, conc))]
                timed[name] = {"seconds": round(time.perf_counter() - t0, 2)}
            sequential = answers["live_one_at_a_time"]
            cl = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0)
            lines = "".join(json.dumps({"custom_id": f"a{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": b}) + "\n" for i, b in enumerate(bodies)).encode()
            t0 = time.perf_counter()
            fid = cl.files.create(file=("articles.jsonl", lines), purpose="batch").id
            batch = cl.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
            while batch.status not in ("completed", "failed", "cancelled"):
                time.sleep(0.05)
                batch = cl.batches.retrieve(batch.id)
            timed["batch_api"] = {"seconds": round(time.perf_counter() - t0, 2)}
            got = [json.loads(x) for x in cl.files.content(batch.output_file_id).text.splitlines()] \
                if batch.output_file_id else []
        service.close()
        for row in timed.values():
            row["per_request_ms"] = round(1000 * row["seconds"] / len(bodies), 1)
            row["vs_one_at_a_time"] = round(timed["live_one_at_a_time"]["seconds"] / row["seconds"], 2)
        by_id = {o["custom_id"]: o["response"]["body"] for o in got}
        batched = [by_id.get(f"a{(i + 1) % len(bodies) if args.break_order else i}") or {} for i in range(len(bodies))]
        concurrent = answers[f"live_{args.conc}_at_a_time"]
        differ = [i for i in range(len(bodies)) if _key(batched[i]) != _key(sequential[i])]
        differ_live = [i for i in range(len(bodies)) if _key(concurrent[i]) != _key(sequential[i])]
        same = len(bodies) - len(differ)
        routes: dict = {}
        for b in batched:
            routes[_key(b)[1]] = routes.get(_key(b)[1], 0) + 1
        out.update(timed=timed, batch={"status": batch.status, "request_counts": batch.request_counts.model_dump(),
                                       "answered_by": (batch.model_extra or {}).get("potstill"),
                                       "usage": batch.usage.model_dump() if batch.usage else None},
                   same_answer_and_route_as_live=round(same / len(bodies), 4), routes=routes,
                   # the same requests sent live --conc at a time also part from one at a time: the student's
                   # batched passes at a near tie, and the route at its threshold
                   live_concurrent_same_as_one_at_a_time=round(1 - len(differ_live) / len(bodies), 4),
                   differing={"batch_vs_one_at_a_time": [_detail(i, batched, sequential) for i in differ],
                              "concurrent_vs_one_at_a_time": [_detail(i, concurrent, sequential) for i in differ_live]},
                   loadavg_end=loadavg(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   broken_order=args.break_order)
        failed = []
        if batch.status != "completed" or batch.request_counts.failed or batch.request_counts.completed != len(bodies):
            failed.append(f"batch {batch.status}, counts {batch.request_counts.model_dump()}")
        if len(differ) > len(differ_live) + 2 * len(differ_live) ** 0.5 + 1:
            failed.append(f"{len(differ)} of {len(bodies)} batch answers or routes differ from the live ones one at a "
                          f"time, against {len(differ_live)} for the live ones {args.conc} at a time")
        for k, v in timed.items():
            print(f"{k}: {v['seconds']} s, {v['per_request_ms']} ms a request, {v['vs_one_at_a_time']}x one at a time")
        print(f"batch answers and routes as live one at a time: {same}/{len(bodies)} (live {args.conc} at a time: "
              f"{len(bodies) - len(differ_live)}); routes {routes}")
        finish(out, failed, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
