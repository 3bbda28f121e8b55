"""The quickstart's local teacher in int8 (``teacher.quantization: int8`` with ``teacher.compile:
true``), against the same teacher in transformers fp32 and bf16 (issue 17, point 2).

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/teacher_int8.py --run RUN --out benchmarks/teacher_int8.json
    ... --only "int8, fp32 activations, fp32 re-check auto"   # one engine, beside the two references

RUN is a finished quickstart run (its 250 test articles). The teacher is the quickstart's:
gemma-3-270m with the 50-shot prefix in three shot orders, contextual calibration, labels as
``generate`` makes them (``LocalTeacher._classify``, batch 1). Each engine in a process of its own:
loaded, warmed (compiled) on the first articles, then every test article labelled one at a time
(seconds per article: the three orders of one article), the label distributions written for the
parent to compare. The teacher has no int8 calibration (it is not trained here), so its int8 layers
are unsmoothed and ``recheck_margin: auto`` means 0.3; the re-check runs at the engine's dtype, on
the teacher's answer (the calibrated average over shot orders: ``teachers.local``), and
``rechecked_share`` is the share of articles re-checked (before 2026-12-02: of article-order pairs,
each order's raw scores re-checked on their own).

Correctness: the int8 teacher as configured (re-check auto) must give the transformers teacher's
label (the dtype it re-checks in) on at least 99% of the articles; else the script exits 1 after
writing the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.engine import MIN_SAME_LABEL, exit_on_failures, quickstart
from benchmarks.engine_int8 import machine, run_alone

ENGINES = {  # name -> (dtype, quantization, recheck_margin)
    "transformers fp32": ("float32", "auto", 0.0),
    "transformers bf16 (the quickstart's on a CPU with AMX)": ("bfloat16", "auto", 0.0),
    "int8, fp32 activations, no re-check": ("float32", "int8", 0.0),
    "int8, fp32 activations, fp32 re-check auto": ("float32", "int8", "auto"),
    "int8, bf16 activations, no re-check": ("bfloat16", "int8", 0.0),
    "int8, bf16 activations, bf16 re-check auto": ("bfloat16", "int8", "auto"),
}
REFERENCE = {"float32": "transformers fp32", "bfloat16": "transformers bf16 (the quickstart's on a CPU with AMX)"}
WARM = 4  # articles labelled before timing (compiles the int8 engines' shapes)


def solo(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Label every test article with the teacher in engine ``name``; its label distributions and times."""
    from potstill.engines import load_engine
    from potstill.models.prompting import label_token_ids
    from potstill.tasks import get_task
    from potstill.teachers.local import LocalTeacher

    cfg, _, test = quickstart(Path(tempfile.mkdtemp(prefix="potstill-bench-teacher-")), args.run)
    dtype, quantization, margin = ENGINES[name]
    task = get_task(cfg.task)
    teacher = LocalTeacher(cfg.teacher, task)
    t0 = time.perf_counter()
    e = load_engine("transformers", cfg.teacher.model, device="cpu", dtype=dtype, quantization=quantization,
                    compile=quantization == "int8", recheck_margin=margin)
    ids = label_token_ids(e.tokenizer, teacher.fmt, task.labels)
    msgs = [r.messages for r in test]
    for m in msgs[:WARM]:
        teacher._classify(e, ids, [m])
    warm = time.perf_counter() - t0
    rechecked0 = getattr(e, "rechecked", 0)
    probs, secs = [], []
    for m in msgs:
        t = time.perf_counter()
        p, _ = teacher._classify(e, ids, [m])
        secs.append(time.perf_counter() - t)
        probs.append(p[0].tolist())
    return {"identity": e.identity, "load_and_warm_s": round(warm, 1),
            "per_article_s": {"mean": statistics.fmean(secs), "p50": statistics.median(secs),
                              "p95": sorted(secs)[int(0.95 * len(secs))]},
            "rechecked_share": (getattr(e, "rechecked", 0) - rechecked0) / len(msgs),
            "probs": probs, "gold": [task.labels.index(r.label) for r in test]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished quickstart run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--only", help="engine names separated by semicolons (the two transformers references always run)")
    ap.add_argument("--solo", help="(internal) run this one engine and print its results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.solo:
        print(json.dumps(solo(args, args.solo)))
        return
    t0 = time.perf_counter()
    rows: dict[str, Any] = {}
    names = [n for n in ENGINES if not args.only or n in REFERENCE.values() or n in args.only.split(";")]
    for name in names:  # each in a process of its own
        rows[name] = run_alone(__file__, name, "--run", str(args.run))
        print(f"{name}: {rows[name]['per_article_s']['p50'] * 1e3:.0f} ms per article (p50)", file=sys.stderr,
              flush=True)
    gold = torch.tensor(next(iter(rows.values()))["gold"])
    labels = {k: torch.tensor(r.pop("probs")).argmax(-1) for k, r in rows.items()}
    for k, r in rows.items():
        r.pop("gold")
        r["gold_accuracy"] = float((labels[k] == gold).float().mean())
        for ref in REFERENCE.values():
            r[f"same_label_as_{ref}"] = float((labels[k] == labels[ref]).float().mean())
        bf16 = r["same_label_as_" + REFERENCE["bfloat16"]]
        print(f"{k}: same label as fp32 {r['same_label_as_transformers fp32']:.1%}, as bf16 {bf16:.1%}, "
              f"gold {r['gold_accuracy']:.1%}, re-checked {r['rechecked_share']:.1%}", file=sys.stderr)
    out = {"teacher": "bundled:gemma-3-270m, the quickstart's 50 shots in 3 orders, calibrated",
           "articles": int(len(gold)), "machine": machine(),
           "engines": rows, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": round(time.perf_counter() - t0, 1)}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    bad = []
    for k, (dtype, quantization, margin) in ENGINES.items():
        if k not in rows:
            continue
        same = rows[k][f"same_label_as_{REFERENCE[dtype]}"]
        if quantization == "int8" and margin == "auto" and same < MIN_SAME_LABEL:
            bad.append(f"{k}: {same:.1%} of {REFERENCE[dtype]}'s labels (tolerance {MIN_SAME_LABEL:.0%})")
    exit_on_failures(bad)


if __name__ == "__main__":
    main()
