"""Benchmarks of `potstill serve` on CPU: calibrated routing on the quickstart run, the router's
overhead over the bare engine, throughput at concurrency 1/8/32, and a bounded load test.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/serve.py --run /tmp/qs1 \\
        --out benchmarks/serve.json --load-out benchmarks/serve_load.json

``--run`` is a finished ``potstill quickstart`` run directory; it is copied, never written. The
teacher fallback replays the run's own recorded teacher answers (``teacher.jsonl``, greedy
gemma-3-270m, so the same answers a live call would give) through the ``replay`` teacher plugin;
its cost per call is read from the run's ledger. Routing is calibrated on ``val.jsonl`` and
measured on ``test.jsonl`` by sending every test input through the live server with the official
openai client. Latency and throughput are wall-clock on this machine, whose load average is
recorded beside them (the machine is shared, so they are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import torch
import yaml

from potstill.records import read_records
from potstill.serve import run_config
from potstill.serve.app import build_app
from potstill.serve.routing import Routing, calibrate, ood_distance, outcome
from potstill.serve.calibration import jsonable
from potstill.serve.service import load_service
from potstill.students import percentile
from tests.serve.conftest import LiveServer

KEY = "sk-bench-serve"
# Inputs nothing like BBC news, written for this benchmark, to see whether the OOD rule fires.
OFF_DOMAIN = [
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "Preheat the oven to 180C. Whisk two eggs with 100 g sugar, fold in 120 g flour and bake for 25 minutes.",
    "Bonjour, je voudrais réserver une table pour deux personnes ce soir à vingt heures.",
    "1 2 3 5 8 13 21 34 55 89 144 233 377 610 987",
    "Dear landlord, the kitchen tap has been leaking since Monday, please send a plumber.",
    "lol ok see u at 7 dont forget the charger!!!",
    "The mitochondria is the powerhouse of the cell; ATP synthase couples proton flow to phosphorylation.",
    "Roses are red, violets are blue, sugar is sweet, and so are you.",
    "Error: ENOENT: no such file or directory, open '/etc/app/config.yaml'",
    "Take 1 tablet by mouth twice daily with food. Do not exceed 4 tablets in 24 hours.",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Knit 2, purl 2 to the end of the row; repeat for 10 cm, then switch to stocking stitch.",
    "git rebase -i HEAD~3 && git push --force-with-lease origin feature/login",
    "Wie komme ich am schnellsten zum Hauptbahnhof?",
    "The quadratic formula gives x = (-b ± sqrt(b^2 - 4ac)) / 2a for ax^2 + bx + c = 0.",
]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prepare(src: Path, work: Path) -> Path:
    run = work / "run"
    run.mkdir(parents=True)
    for name in ("student", "train.jsonl", "val.jsonl", "test.jsonl", "teacher.jsonl"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, run / name)
    replay = run / "teacher_replay.jsonl"
    with replay.open("w") as f:
        for r in read_records(run / "teacher.jsonl"):
            if r.output is not None:
                f.write(json.dumps({"messages": [*r.messages, {"role": "assistant", "content": r.output}]}) + "\n")
    cfg = yaml.safe_load((src / "potstill.yaml").read_text())
    cfg["teacher"] = {"type": "replay", "model": "bundled:gemma-3-270m (replayed)", "replay_path": str(replay)}
    cfg["serve"] = {"api_key_env": "BENCH_SERVE_KEY", "target_escalation": 0.2}
    (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return run


def teacher_cost_per_call(src: Path) -> float:
    db = sqlite3.connect(f"file:{src / 'calls.sqlite'}?mode=ro", uri=True)
    (cost,) = db.execute("SELECT AVG(cost_usd) FROM calls WHERE role='teacher' AND status='ok' AND stage='generate'").fetchone()
    return float(cost)


async def send_all(url: str, bodies: list[dict], conc: int) -> list[tuple[float, dict]]:
    """POST every body with at most ``conc`` in flight; (seconds, JSON) in input order."""
    out: list = [None] * len(bodies)
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=conc)) as c:
        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                r = await c.post("/v1/chat/completions", json=bodies[i], headers={"Authorization": f"Bearer {KEY}"})
                out[i] = (time.perf_counter() - t0, r.json() if r.headers.get("content-type", "").startswith("application/json") else {"status": r.status_code})
        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return out


def routing_on_quickstart(service, live, run: Path, teacher_cost: float) -> dict:
    task = service.task
    test = [r for r in read_records(run / "test.jsonl") if r.output is not None]
    teacher = [task.parse(r.output) for r in test]
    t0 = time.perf_counter()
    res = asyncio.run(send_all(live.url, [{"model": "potstill", "messages": r.messages} for r in test], 8))
    wall = time.perf_counter() - t0
    routes = [j["potstill"] for _, j in res]
    served = [task.parse(j["choices"][0]["message"]["content"]) for _, j in res]
    student = [task.parse(rt["student_output"]) for rt in routes]
    e2e = [task.agree(s, t) for s, t in zip(served, teacher)]
    alone = [task.agree(s, t) for s, t in zip(student, teacher)]
    esc = [rt["answered_by"] == "teacher" for rt in routes]
    reasons: dict[str, int] = {}
    for rt in routes:
        reasons[rt["reason"]] = reasons.get(rt["reason"], 0) + 1
    conf = [rt["confidence"] for rt in routes]
    dist = [rt["ood_distance"] for rt in routes]
    ood_flag = [d > service.routing.ood_threshold for d in dist]

    # Student cost per call: the serving rows' own student cost (latency share x student.usd_per_hour).
    rows = service.ledger.served(limit=len(test), status=None)
    student_cost = statistics.fmean(r.cost_usd for r in rows if r.answered_by == "student")
    n = len(test)
    share = sum(esc) / n

    # Sweep 1: thresholds calibrated on val for several targets, then applied to the test answers.
    val = [r for r in read_records(run / "val.jsonl") if r.output is not None]
    va = service.engine.answer([r.messages for r in val])
    vagree = [task.agree(a.parsed, task.parse(r.output)) for a, r in zip(va, val)]
    vdist = ood_distance(torch.stack([a.embedding for a in va]), service.reference)
    calibrated = []
    targets = [("target_escalation", t) for t in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)]
    targets += [("target_agreement", t) for t in (0.85, 0.9, 0.95)]
    for key, target in targets:
        rt = calibrate([a.confidence for a in va], vagree, vdist, [a.invalid is not None for a in va],
                       ood_quantile=service.cfg.serve.ood_quantile, **{key: target})
        o = outcome(rt.confidence_threshold, conf, alone, [d > rt.ood_threshold for d in dist])
        calibrated.append({key: target, "confidence_threshold": rt.confidence_threshold,
                           "val_escalation": rt.stats["val_escalation"], "val_agreement": rt.stats["val_agreement"],
                           "test_escalation": o["escalation"], "test_agreement": o["agreement"],
                           "share_of_teacher_cost": (student_cost + o["escalation"] * teacher_cost) / teacher_cost})
    # Sweep 2: confidence thresholds at test-quantiles (an oracle view of the whole trade-off curve).
    oracle = []
    for k in range(11):
        q = k / 10
        t = -math.inf if q == 0 else (math.inf if q == 1 else percentile(conf, q))
        o = outcome(t, conf, alone, [False] * n)
        oracle.append({**o, "share_of_teacher_cost": (student_cost + o["escalation"] * teacher_cost) / teacher_cost})

    # The OOD rule on inputs nothing like the training data. The replay teacher has no answer for
    # them (the server would say 502), so the decision is read from the router's own functions.
    oa = service.engine.answer([[{"role": "user", "content": t}] for t in OFF_DOMAIN])
    od = ood_distance(torch.stack([a.embedding for a in oa]), service.reference)
    off_routes = [dict(zip(("answered_by", "reason"), service.routing.decide(a.confidence, d, a.invalid)), ood_distance=d)
                  for a, d in zip(oa, od)]
    return {
        "n_test": n, "wall_s": wall, "concurrency": 8,
        "calibrated_on": "val.jsonl", "calibration": jsonable({"confidence_threshold": service.routing.confidence_threshold,
                                                               "ood_threshold": service.routing.ood_threshold,
                                                               **{k: v for k, v in service.routing.stats.items() if k != "sweep"}}),
        "at_calibrated_threshold": {
            "escalation_share": share, "escalated_by_reason": reasons,
            "agreement_with_teacher_end_to_end": sum(e2e) / n,
            "agreement_student_alone": sum(alone) / n,
            "ood_flagged_share": sum(ood_flag) / n,
            "student_cost_per_call_usd": student_cost, "teacher_cost_per_call_usd": teacher_cost,
            "routed_cost_per_call_usd": student_cost + share * teacher_cost,
            "share_of_teacher_cost": (student_cost + share * teacher_cost) / teacher_cost,
        },
        "sweep_calibrated_on_val_measured_on_test": jsonable(calibrated),
        "sweep_confidence_quantiles_on_test": jsonable(oracle),
        "off_domain_inputs": {
            "n": len(OFF_DOMAIN), "escalated_share": sum(r["answered_by"] == "teacher" for r in off_routes) / len(OFF_DOMAIN),
            "ood_share": sum(r["reason"] == "out_of_distribution" for r in off_routes) / len(OFF_DOMAIN),
            "median_ood_distance": statistics.median(r["ood_distance"] for r in off_routes),
            "median_ood_distance_test": statistics.median(dist),
        },
    }


def overhead(service, live, run: Path, n: int) -> dict:
    """Bare engine (one ``engine.answer`` call) vs the same input through HTTP + routing + ledger,
    interleaved input by input so load changes on the shared machine hit both alike."""
    saved = service.routing
    service.routing = Routing(-math.inf, math.inf)  # the student answers: measure the router, not the teacher
    cl = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0)
    recs = read_records(run / "test.jsonl")[:n]
    service.engine.answer([recs[0].messages])
    cl.chat.completions.create(model="potstill", messages=recs[0].messages)
    bare, routed = [], []
    for r in recs:
        t0 = time.perf_counter()
        service.engine.answer([r.messages])
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cl.chat.completions.create(model="potstill", messages=r.messages)
        routed.append(time.perf_counter() - t0)
    service.routing = saved
    b50, b95, r50, r95 = (percentile(bare, 0.5), percentile(bare, 0.95), percentile(routed, 0.5), percentile(routed, 0.95))
    return {"n": n, "bare_p50_s": b50, "bare_p95_s": b95, "routed_p50_s": r50, "routed_p95_s": r95,
            "p50_ratio": r50 / b50, "p95_ratio": r95 / b95, "loadavg": loadavg()}


def throughput(service, live, run: Path, levels: tuple[int, ...], per_level: int) -> list[dict]:
    saved = service.routing
    service.routing = Routing(-math.inf, math.inf)
    recs = read_records(run / "test.jsonl")
    out = []
    for c in levels:
        n = max(per_level, 2 * c)
        bodies = [{"model": "potstill", "messages": recs[i % len(recs)].messages} for i in range(n)]
        asyncio.run(send_all(live.url, bodies[: min(c, 8)], c))  # warm-up
        t0 = time.perf_counter()
        res = asyncio.run(send_all(live.url, bodies, c))
        wall = time.perf_counter() - t0
        lat = [s for s, _ in res]
        out.append({"concurrency": c, "requests": n, "wall_s": wall, "requests_per_s": n / wall,
                    "p50_s": percentile(lat, 0.5), "p95_s": percentile(lat, 0.95), "loadavg": loadavg()})
        print("throughput", json.dumps(out[-1]), flush=True)
    service.routing = saved
    return out


def load_test(n: int, conc: int) -> dict:
    """2,000 mixed requests at concurrency 32 on the tiny test model with a real teacher server."""
    from tests.helpers.chat_server import ChatServer
    from tests.helpers.tiny import make_model_dir
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, TEXTS, write_run

    from potstill.serve import serve_key

    def text(i: int) -> str:  # the tiny vocabulary's sentences, as in training: routed both ways
        return TEXTS[i % len(TEXTS)] + " the" * ((i // len(TEXTS)) % 3)

    root = Path(tempfile.mkdtemp(prefix="serve-load-"))
    s, t = make_model_dir(root / "s"), make_model_dir(root / "t", seed=1, layers=3)
    os.environ.update(TEACHER_KEY=TEACHER_KEY, SERVE_KEY=SERVE_KEY)
    with ChatServer(str(t), api_key=TEACHER_KEY) as ts:
        run = write_run(root, s, ts.base_url)
        cfg = run_config(run, None)
        svc = load_service(run, cfg, device="cpu")
        with LiveServer(build_app(svc, serve_key(cfg))) as live:
            bad = [{"model": "potstill", "messages": []}, {"model": "potstill"},
                   {"model": "potstill", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, "not json"]
            bodies = [bad[(i // 4) % 4] if i % 4 == 3 else
                      {"model": "potstill", "messages": [{"role": "user", "content": text(i)}]} for i in range(n)]
            statuses: list[int] = []

            async def go() -> None:
                sem = asyncio.Semaphore(conc)
                async with httpx.AsyncClient(base_url=live.url, timeout=120, limits=httpx.Limits(max_connections=conc)) as c:
                    async def one(b) -> None:
                        async with sem:
                            r = await c.post("/v1/chat/completions", content=b if isinstance(b, str) else json.dumps(b),
                                             headers={"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
                        statuses.append(r.status_code)
                    await asyncio.gather(*(one(b) for b in bodies))

            before = svc.ledger.count(stage="serve")
            t0 = time.perf_counter()
            asyncio.run(go())
            wall = time.perf_counter() - t0
            rows = svc.ledger.count(stage="serve") - before
            by_role = {role: svc.ledger.count(role=role, stage="serve", status="ok") for role in ("student", "teacher")}
            errors = svc.ledger.count(stage="serve", status="error")
        svc.close()
    hist: dict[str, int] = {}
    for s_ in statuses:
        hist[str(s_)] = hist.get(str(s_), 0) + 1
    return {"requests": n, "concurrency": conc, "invalid_share": 0.25, "wall_s": wall, "requests_per_s": n / wall,
            "status_counts": hist, "ledger_rows_written": rows, "rows_lost": n - rows,
            "ok_rows_by_role": by_role, "error_rows": errors, "loadavg": loadavg(),
            "engine": "tiny 2-layer Llama (tests/helpers/tiny.py), teacher: tests/helpers/chat_server.py"}


def cost_from_eval(src: Path, routing: dict) -> dict:
    """The cost trade with both per-call costs from the run's own eval.json (student: measured
    batch-16 throughput x student.usd_per_hour; teacher: the ledger's mean), which were taken on
    a quieter machine than this benchmark's serving rows."""
    ev = json.loads((src / "eval.json").read_text())["models"]
    s_cost = ev["student"]["cost_per_1k_calls_usd"] / 1000
    t_cost = ev["teacher"]["cost_per_1k_calls_usd"] / 1000
    esc = routing["at_calibrated_threshold"]["escalation_share"]
    return {
        "student_cost_per_call_usd": s_cost, "teacher_cost_per_call_usd": t_cost,
        "share_of_teacher_cost_at_calibrated_threshold": (s_cost + esc * t_cost) / t_cost,
        "share_of_teacher_cost_by_test_escalation": {
            str(p["escalation"]): (s_cost + p["escalation"] * t_cost) / t_cost
            for p in routing["sweep_confidence_quantiles_on_test"]},
        "note": "the student always runs (its confidence decides the route), so routed cost = student + escalation x teacher",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=Path("/tmp/qs1"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/serve.json"))
    ap.add_argument("--load-out", type=Path, default=Path("benchmarks/serve_load.json"))
    ap.add_argument("--overhead-n", type=int, default=30)
    ap.add_argument("--per-level", type=int, default=32)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--only-load", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="Working copy of the run to create or reuse.")
    ap.add_argument("--annotate", action="store_true", help="Only add cost_from_eval_json to an existing --out.")
    args = ap.parse_args()
    if args.annotate:
        report = json.loads(args.out.read_text())
        report["routing"]["cost_from_eval_json"] = cost_from_eval(args.run, report["routing"])
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["BENCH_SERVE_KEY"] = KEY
    report: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "note": "2 CPU cores shared with other jobs; loadavg recorded per measurement"}}
    if not args.skip_load:
        report_load = load_test(2000, 32)
        print("load", json.dumps(report_load), flush=True)
        args.load_out.write_text(json.dumps(report_load, indent=1) + "\n")
    if args.only_load:
        return
    if args.work is not None and (args.work / "run" / "potstill.yaml").exists():
        work, run = args.work, args.work / "run"  # reuse a prepared copy (and its cached calibration)
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="serve-bench-"))
        run = prepare(args.run, work)
    cfg = run_config(run, None)
    t0 = time.perf_counter()
    service = load_service(run, cfg, device="cpu")
    report["startup_with_calibration_s"] = time.perf_counter() - t0
    report["student"] = service.student_name
    from potstill.serve import serve_key

    with LiveServer(build_app(service, serve_key(cfg))) as live:
        report["routing"] = routing_on_quickstart(service, live, run, teacher_cost_per_call(args.run))
        report["routing"]["cost_from_eval_json"] = cost_from_eval(args.run, report["routing"])
        print("routing", json.dumps(report["routing"]["at_calibrated_threshold"]), flush=True)
        report["router_overhead"] = overhead(service, live, run, args.overhead_n)
        print("overhead", json.dumps(report["router_overhead"]), flush=True)
        report["throughput_cpu"] = throughput(service, live, run, (1, 8, 32), args.per_level)
    service.close()
    report["gpu"] = "see serve_gpu.json (benchmarks/serve_gpu.py on the device GPU); vLLM not measured (its wheel does not fit the device carry)"
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
