"""The quickstart student's depth: SmolLM2 cut to its first N layers, trained and evaluated on the
teacher labels and split of one finished quickstart run, then timed side by side (issue 17, point 3:
the teacher/student cost ratio per call).

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/quickstart_depth.py --run RUN --layers 12,8,6 \
        --out benchmarks/quickstart_depth.json

RUN is a finished quickstart run. For each depth a copy of it gets ``student.num_layers`` N, the
quickstart's training settings, and the evaluate/serve engine that ``potstill quickstart`` writes on
this machine (``quickstart.student_engine("auto")``); ``potstill train --force`` (with its int8
calibration) and ``potstill evaluate --force`` then run on it as a user runs them, and their gold
metric, agreement, verdict and timings are kept.

Evaluate's own latencies are taken minutes apart, and on this shared 2-core VM the same engine's
batch-1 p50 moved by a third between minutes. So each depth's student is then loaded again in a
process of its own, as evaluate loads it (``students.evaluation_engine``: the int8 layers, compiled,
with the calibrated re-check), and the processes take turns: ``--rounds`` rounds, each one
``--calls`` batch-1 calls (``students.predict`` on one test input, evaluate's latency call) and one
pass over the first 48 test inputs in batches of 16, in alternating order. A depth's figures are
the medians over rounds. The cost ratio is the teacher's mean cost per call (its ledger, from
eval.json) over the student's (mean batch-1 seconds, or per-input seconds in batches of 16, times
``student.usd_per_hour``), evaluate's own formula.

Correctness: exits 1 after writing the JSON if a train or evaluate fails, or if the depth the
quickstart ships (``quickstart.STUDENT_LAYERS``) is not GO.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

BATCHED = 48  # test inputs per batched pass (3 batches of 16)


def prepare(run: Path, copy: Path, layers: int) -> None:
    """``run`` copied to ``copy`` (its trained student left out) with ``layers`` student layers and
    this machine's quickstart engine in evaluate and serve."""
    from potstill.quickstart import student_engine

    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("student", "student.ckpt", "eval.json", "report.html"))
    path = copy / "potstill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["student"]["num_layers"] = layers
    engine = {"engine": "transformers", "quantization": "auto", "compile": False, "recheck_margin": "auto",
              "dtype": "auto", **student_engine("auto")}
    for section in ("evaluate", "serve"):
        cfg[section].update(engine)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, width=100))


def cli(copy: Path, *argv: str) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "potstill.cli", *argv, "-c", str(copy / "potstill.yaml"), "--force"],
                       capture_output=True, text=True)
    return r.returncode, time.perf_counter() - t0, (r.stdout + r.stderr)[-2000:]


def worker(copy: Path) -> None:
    """Load ``copy``'s student as evaluate does, warm it, then answer each line of stdin (a number of
    batch-1 calls) with one JSON line of times."""
    from potstill.config import load_config
    from potstill.records import read_records
    from potstill.students import evaluation_engine, predict
    from potstill.tasks import get_task

    cfg = load_config(copy / "potstill.yaml")
    task = get_task(cfg.task)
    test = [r for r in read_records(copy / "test.jsonl") if r.output is not None]
    t0 = time.perf_counter()
    engine = evaluation_engine(cfg, str(copy / "student"))
    for r in test[:3]:
        predict(engine, task, [r], batch_size=1, desc="")
    predict(engine, task, test[:BATCHED], batch_size=16, desc="")
    print(json.dumps({"ready_s": time.perf_counter() - t0, "identity": engine.identity}), flush=True)
    i = 0
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            r = test[i % len(test)]
            i += 1
            t = time.perf_counter()
            predict(engine, task, [r], batch_size=1, desc="")
            times.append(time.perf_counter() - t)
        before = getattr(engine, "rechecked", 0)
        t = time.perf_counter()
        predict(engine, task, test[:BATCHED], batch_size=16, desc="")
        batched = (time.perf_counter() - t) / BATCHED
        print(json.dumps({"batch1_s": times, "batched_s_per_input": batched,
                          "rechecked_share": (getattr(engine, "rechecked", 0) - before) / BATCHED}), flush=True)


def take_turns(copies: dict[int, Path], rounds: int, calls: int) -> dict[int, dict[str, Any]]:
    # A worker's stderr goes to a file beside its copy: a pipe nobody reads could fill and stall it.
    logs = {n: (c.parent / f"{c.name}.timing.log").open("w") for n, c in copies.items()}
    procs = {n: subprocess.Popen([sys.executable, __file__, "--worker", str(c)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=logs[n], text=True)
             for n, c in copies.items()}
    out: dict[int, dict[str, Any]] = {}
    for n, p in procs.items():  # warmed one after another: compiling is not what is timed
        line = p.stdout.readline()
        if not line:
            logs[n].close()
            last = Path(logs[n].name).read_text().strip().splitlines()[-1:]
            sys.exit(f"{n} layers: the timing process failed: {last} ({logs[n].name})")
        out[n] = {**json.loads(line), "p50_s": [], "mean_s": [], "batched_s_per_input": [], "rechecked_share": []}
    order = list(procs)
    for k in range(rounds):
        for n in (order if k % 2 == 0 else order[::-1]):
            procs[n].stdin.write(f"{calls}\n")
            procs[n].stdin.flush()
            d = json.loads(procs[n].stdout.readline())
            out[n]["p50_s"].append(statistics.median(d["batch1_s"]))
            out[n]["mean_s"].append(statistics.fmean(d["batch1_s"]))
            out[n]["batched_s_per_input"].append(d["batched_s_per_input"])
            out[n]["rechecked_share"].append(d["rechecked_share"])
    for n, p in procs.items():
        p.stdin.close()
        p.wait()
        logs[n].close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a finished quickstart run (required)")
    ap.add_argument("--layers", default="12,8,6")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--work", help="directory for the copies (default: a new temporary one)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("quickstart_depth.json")))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(Path(args.worker))
    if not args.run:
        ap.error("--run is required")
    from benchmarks.engine import exit_on_failures
    from benchmarks.engine_int8 import machine
    from potstill.quickstart import STUDENT_LAYERS

    run = Path(args.run)
    work = Path(args.work or tempfile.mkdtemp(prefix="potstill-bench-depth-"))
    depths = [int(x) for x in args.layers.split(",")]
    copies = {n: work / f"layers{n}" for n in depths}
    result: dict[str, Any] = {
        "what": "the quickstart student cut to its first N of SmolLM2's 30 layers: trained and evaluated on one "
                "run's teacher labels and split, then timed with the depths taking turns",
        "run": str(run), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {**machine(), "platform": platform.platform()},
        "rounds": args.rounds, "calls_per_round": args.calls, "batched_inputs_per_round": BATCHED,
        "shipped_layers": STUDENT_LAYERS, "depths": {}}
    failed = []
    for n, copy in copies.items():
        if not (copy / "eval.json").exists():
            if copy.exists():
                shutil.rmtree(copy)
            prepare(run, copy, n)
            for stage in ("train", "evaluate"):
                rc, secs, tail = cli(copy, stage)
                print(f"{n} layers: {stage} rc {rc} in {secs:.0f} s", flush=True)
                if rc != 0:
                    failed.append(f"{n} layers: potstill {stage} exited {rc}: {tail.strip().splitlines()[-1:]}")
                    break
                result["depths"].setdefault(str(n), {})[f"{stage}_s"] = round(secs, 1)
        if not (copy / "eval.json").exists():
            continue
        ev = json.loads((copy / "eval.json").read_text())
        tr = json.loads((copy / "train.json").read_text())
        st, te = ev["models"]["student"], ev["models"]["teacher"]
        cal = tr.get("int8_calibration") or {}
        result["depths"].setdefault(str(n), {}).update({
            "student_gold": st.get("gold_metric"), "agreement_with_teacher": st.get("agreement_with_teacher"),
            "teacher_gold": te.get("gold_metric"), "verdict": ev["verdict"]["decision"],
            "verdict_reason": ev["verdict"]["reason"], "recheck_margin": cal.get("recheck_margin"),
            "calibration_same_label": cal.get("same_label_as_fp32"),
            "evaluate_latency_batch1": st.get("latency_batch1"),
            "teacher_usd_per_call": te["cost_per_1k_calls_usd"] / 1000,
            "evaluate_cost_ratio_batch1": te["cost_per_1k_calls_usd"] / st["cost_per_1k_calls_usd"],
            "evaluate_cost_ratio_batched": (te["cost_per_1k_calls_usd"] / st["cost_per_1k_calls_batched_usd"]
                                            if st.get("cost_per_1k_calls_batched_usd") else None)})
    timed = {n: c for n, c in copies.items() if (c / "eval.json").exists()}
    if timed:
        first = next(iter(timed.values())) / "potstill.yaml"
        usd_per_hour = yaml.safe_load(first.read_text())["student"]["usd_per_hour"]
        for n, t in take_turns(timed, args.rounds, args.calls).items():
            d = result["depths"][str(n)]
            med = {k: statistics.median(t[k]) for k in ("p50_s", "mean_s", "batched_s_per_input", "rechecked_share")}
            teacher = d["teacher_usd_per_call"]
            d["turns"] = {"identity": t["identity"], "ready_s": round(t["ready_s"], 1), **med,
                          "per_round": {k: t[k] for k in ("p50_s", "mean_s", "batched_s_per_input")},
                          "cost_ratio_batch1": teacher / (med["mean_s"] * usd_per_hour / 3600),
                          "cost_ratio_batched": teacher / (med["batched_s_per_input"] * usd_per_hour / 3600)}
            print(f"{n} layers: gold {d['student_gold']:.1%}, agreement {d['agreement_with_teacher']:.1%}, "
                  f"{d['verdict']}; batch 1 p50 {med['p50_s'] * 1e3:.1f} ms, mean {med['mean_s'] * 1e3:.1f} ms, "
                  f"batched {med['batched_s_per_input'] * 1e3:.2f} ms/input; cost ratio "
                  f"{d['turns']['cost_ratio_batch1']:.1f}x / {d['turns']['cost_ratio_batched']:.1f}x", flush=True)
    shipped = result["depths"].get(str(STUDENT_LAYERS))
    if shipped is None or shipped.get("verdict") != "GO":
        failed.append(f"the shipped depth ({STUDENT_LAYERS} layers) is "
                      f"{'not measured' if shipped is None else shipped.get('verdict')}, not GO")
    result["failures"] = failed
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    exit_on_failures(failed)


if __name__ == "__main__":
    main()
