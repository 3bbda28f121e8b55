"""Would fused projections (``models.fused_linear``, on by default under ``compile`` on CUDA) pay on
the CPU? A probe on a trained quickstart student, fp32 under ``torch.compile`` (the engine with
``quantization: none``; potstill's int8 layers, the CPU default, smooth each projection on its own
and are not fused): the fused and unfused engines classify the run's test articles taking turns,
at batch 1 and in batches of 16, and must give the same labels (exit 1 otherwise).

    PYTHONPATH=src:. python benchmarks/fused_cpu_probe.py RUN --out fused_cpu_probe.json
    PYTHONPATH=src:. python benchmarks/fused_cpu_probe.py RUN --n 16 --rounds 1 --break-fused   # the check failing

RUN: a ``potstill quickstart`` run directory (its ``student/``, ``potstill.yaml``, ``test.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.checks import finish


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=64, help="test articles (batches of 16; the first 24 alone too)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--break-fused", action="store_true", help="fused value projections give the keys (the check fails)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.break_fused:
        from benchmarks.fused_decode import break_fused

        break_fused()
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.models.fused_linear import fuse_projections
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task

    run = Path(a.run)
    task = get_task(load_config(run / "potstill.yaml").task)
    rows = [json.loads(line) for line in (run / "test.jsonl").open()][: a.n]
    msgs = [r["messages"] for r in rows]
    students = {}
    for v in ("unfused", "fused"):
        engine = load_engine("transformers", str(run / "student"), device="cpu")
        if v == "fused":
            fuse_projections(engine.lm.model)
        engine.compile()
        students[v] = ServedStudent(engine, task)
    warm_s = {}
    for v, s in students.items():
        t0 = time.perf_counter()
        for batch in (msgs[:1], msgs[1:2], msgs[:16]):
            s.answer(batch)
        warm_s[v] = time.perf_counter() - t0
        print(f"{v}: compiled and warmed in {warm_s[v]:.1f} s", flush=True)
    secs = {v: {"1": [], "16": []} for v in students}
    labels = {}
    for _ in range(a.rounds):
        for v, s in students.items():
            for m in msgs[:24]:
                t0 = time.perf_counter()
                s.answer([m])
                secs[v]["1"].append(time.perf_counter() - t0)
            out = []
            for i in range(0, len(msgs), 16):
                t0 = time.perf_counter()
                out += s.answer(msgs[i : i + 16])
                secs[v]["16"].append((time.perf_counter() - t0) / len(msgs[i : i + 16]))
            labels[v] = [x.output for x in out]
    ms = {v: {b: 1000 * statistics.median(x) for b, x in d.items()} for v, d in secs.items()}
    same = sum(x == y for x, y in zip(labels["unfused"], labels["fused"]))
    for v in students:
        print(f"{v:8s} ms p50: batch 1 {ms[v]['1']:.2f}, per input in batches of 16 {ms[v]['16']:.2f}")
    print(f"same labels {same}/{len(msgs)}")
    failures = [] if same == len(msgs) else [f"the fused engine gave another label on {len(msgs) - same} articles"]
    out = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "argv": sys.argv[1:], "layers": students["fused"].engine.lm.model.config.num_hidden_layers,
           "n": len(msgs), "rounds": a.rounds, "warm_s": warm_s, "ms_p50": ms, "same_labels": f"{same}/{len(msgs)}",
           "ms": {v: {b: [1000 * x for x in s] for b, s in d.items()} for v, d in secs.items()}}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
