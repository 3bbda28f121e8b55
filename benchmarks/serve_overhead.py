"""What `potstill serve` adds to the student's own time, and what the batcher's wait costs.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/serve_overhead.py --out benchmarks/serve_overhead.json
    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/serve_overhead.py --student RUN/student --n 64

A classification run served from real parts (``tests.serve.conftest.write_run``: a student on disk,
a teacher server on 127.0.0.1 behind the official openai adapter, calibration on a val split,
uvicorn on loopback), its routing forced to the student so that every request takes the student's
path: HTTP (uvicorn, FastAPI, pydantic), the batcher's hand-off, routing, the ledger row. The
student is a tiny random Llama by default (a forward of a few milliseconds, mostly Python: the
numbers are the serving path's own), ``--student`` (a model directory, e.g. a quickstart run's)
or ``--smol`` (random SmolLM2-135M-shaped weights; with ``--device cuda --compile``, served as on a GPU).

One service per variant, all up at once, requests taking turns: ``serve.batch_wait_ms`` 2 with the
batcher's load-aware wait (``wait 2``, the default: a batch waits only after a batch of several),
2 with every batch waiting (``wait 2 always``, the batcher before 2026-12-03) and 0:
- concurrency 1: p50 / p95 of each request through the official openai client, beside the bare
  ``ServedStudent.answer`` of the same input (no HTTP, no batcher);
- concurrency ``--concurrency``: requests/s over ``--n`` requests and the mean batch the engine got.

Correctness (exit 1 past it, after writing the JSON): every service answers every request with the
bare engine's label.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from benchmarks.checks import finish
from potstill.students import percentile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, help="a model directory (default: a tiny random Llama)")
    ap.add_argument("--smol", action="store_true", help="a random SmolLM2-135M-shaped student (bf16) instead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="serve.compile (on CUDA: CUDA-graphed label scoring)")
    ap.add_argument("--n", type=int, default=200, help="requests per measurement")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.helpers.chat_server import ChatServer
    from tests.helpers.tiny import make_model_dir
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import TEACHER_KEY, TEXTS, write_run

    work = Path(tempfile.mkdtemp())
    if a.smol:
        from benchmarks.serve_split_probe import smol_shaped

        student = Path(smol_shaped(work / "student"))
    else:
        student = a.student or make_model_dir(work / "student")
    waits = {"wait 2": (2.0, False), "wait 2 always": (2.0, True), "wait 0": (0.0, False)}
    os.environ["TEACHER_KEY"] = TEACHER_KEY
    texts = [f"{TEXTS[i % len(TEXTS)]} {'and the ' * (i % 7)}".strip() for i in range(a.n)]
    import torch

    gpu = torch.cuda.get_device_name() if a.device == "cuda" else None
    out: dict = {"machine": {"cpus": os.cpu_count(), "cpu": platform.processor(), "gpu": gpu,
                             "loadavg_start": os.getloadavg()},
                 "argv": sys.argv[1:],
                 "student": "random SmolLM2-135M shape" if a.smol else "tiny random Llama" if a.student is None else str(a.student),
                 "n": a.n, "concurrency": a.concurrency, "rounds": a.rounds, "services": {}}
    failures: list[str] = []
    with ChatServer(str(make_model_dir(work / "teacher", seed=1, layers=3)), api_key=TEACHER_KEY) as teacher:
        services, servers, clients, batches = {}, {}, {}, {}
        for i, (w, (ms, always)) in enumerate(waits.items()):
            run = write_run(work / f"s{i}", student, teacher.base_url, batch_wait_ms=ms, batch_size=a.concurrency,
                            compile=a.compile)
            svc = load_service(run, run_config(run, None), device=a.device)
            svc.batcher.always_wait = always
            out["services"][w] = {"identity": svc.engine.identity}
            svc.routing = Routing(-math.inf, math.inf)  # every request is the student's
            sizes = batches[w] = []
            engine = svc.engine
            answer = engine.answer

            def counted(msgs, answer=answer, sizes=sizes):
                sizes.append(len(msgs))
                return answer(msgs)

            engine.answer = counted
            services[w], servers[w] = svc, LiveServer(build_app(svc, None)).__enter__()
            clients[w] = openai.OpenAI(base_url=servers[w].url + "/v1", api_key="unused", max_retries=0)
        bare_engine = services["wait 2"].engine
        msgs = [[{"role": "user", "content": t}] for t in texts]
        want = [x.output for m in msgs for x in bare_engine.answer([m])]  # warms each path too
        for w in waits:
            clients[w].chat.completions.create(model=services[w].student_name, messages=msgs[0])

        def ask(w: float, m: list) -> tuple[float, str]:
            t0 = time.perf_counter()
            r = clients[w].chat.completions.create(model=services[w].student_name, messages=m)
            return time.perf_counter() - t0, r.choices[0].message.content

        lat = {w: [] for w in waits}
        bare: list[float] = []
        rps = {w: [] for w in waits}
        for _ in range(a.rounds):
            for i, m in enumerate(msgs):  # one at a time, taking turns
                t0 = time.perf_counter()
                bare_engine.answer([m])
                bare.append(time.perf_counter() - t0)
                for w in waits:
                    dt, got = ask(w, m)
                    lat[w].append(dt)
                    if got != want[i]:
                        failures.append(f"{w}: request {i} answered {got!r}, the bare engine {want[i]!r}")
            for w in waits:
                del batches[w][:]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(a.concurrency) as pool:
                    got = list(pool.map(lambda m, w=w: ask(w, m)[1], msgs))
                rps[w].append(a.n / (time.perf_counter() - t0))
                bad = sum(g != x for g, x in zip(got, want))
                if bad:
                    failures.append(f"{w}, concurrency {a.concurrency}: {bad} answers differ from the bare engine's")
                out["services"].setdefault(w, {}).setdefault("mean_batch", []).append(statistics.mean(batches[w]))
        out["bare_ms"] = {"p50": 1000 * statistics.median(bare), "p95": 1000 * percentile(bare, 0.95)}
        print(f"bare engine: p50 {out['bare_ms']['p50']:.2f} ms, p95 {out['bare_ms']['p95']:.2f} ms")
        for w in waits:
            s = out["services"][w]
            s.update({"p50_ms": 1000 * statistics.median(lat[w]), "p95_ms": 1000 * percentile(lat[w], 0.95),
                      "added_p50_ms": 1000 * (statistics.median(lat[w]) - statistics.median(bare)),
                      "requests_per_s": rps[w], "requests_per_s_median": statistics.median(rps[w])})
            print(f"{w:13s}: p50 {s['p50_ms']:.2f} ms (+{s['added_p50_ms']:.2f} over bare), "
                  f"p95 {s['p95_ms']:.2f} ms; concurrency {a.concurrency}: {s['requests_per_s_median']:.1f} "
                  f"requests/s, mean batch {statistics.mean(s['mean_batch']):.1f}")
        for w in waits:
            servers[w].__exit__(None, None, None)
            services[w].close()
    out["machine"]["loadavg_end"] = os.getloadavg()
    finish(out, failures[:10], a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
