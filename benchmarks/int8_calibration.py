"""The int8 calibration (``potstill.engines.calibration``) on the trained quickstart student: what
smoothing and the float outlier channels do to int8's label noise, and what the calibrated re-check
margin (``recheck_margin: auto``) does to agreement with fp32 and to the cost per call, against the
fixed 0.3 that was the default before (issue 17). The fp32 baseline is the padded engine
(``throughput_vs_fp32``), and since 2026-12-05 also the fastest of it, the engine's packed batches
and those under ``torch.compile`` (``throughput_vs_best_fp32``, ``batch1_mean_vs_best_fp32``).

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/int8_calibration.py --run RUN --out benchmarks/int8_calibration.json

RUN is a finished quickstart run. The script calibrates a copy of its student exactly as ``potstill
train`` does (the first ``train.int8_calibration`` = 512 inputs of RUN/train.jsonl; no labels
read) and keeps another copy uncalibrated, so both int8 variants run from the same weights. Then
each engine in a process of its own, as a service runs it (``engine_int8.py``'s ``solo``): warmed
on the timed shapes, ``n_latency`` batch-1 calls (mean includes what re-checks cost), then the 250
test articles in arrival-order batches of 16, ``--passes`` times (the median pass timed), the
first pass's label logits compared by the parent with the fp32 engine's: same label as fp32 alone
and after re-checks, the re-checked share, gold accuracy, the int8 margins of the inputs whose
label differs, and the label noise (``calibration.label_noise``: how much int8 overstates its top
label's lead; before 2026-12-01 twice the largest change of a label probability) on the test articles.

Correctness: the default engine (smoothed int8, re-check auto) must give fp32's label on at least
99% of the test articles, and smoothing must shrink the largest label noise on them; else the
script exits 1 after writing the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.engine import BASE, MIN_SAME_LABEL, exit_on_failures, padded, quickstart
from benchmarks.engine_int8 import machine, run_alone, time_alone
from potstill.engines import calibration, load_engine

N_CALIBRATION = 512  # TrainConfig.int8_calibration's default
OLD = "int8, unsmoothed, fp32 re-check under 0.3 (the default before 2026-12-01)"
NEW = "int8, calibrated (smoothed, float outlier channels), fp32 re-check auto (the default)"
PLAIN = "int8, unsmoothed, no re-check"
SMOOTH = "int8, calibrated (smoothed, float outlier channels), no re-check"
NEW_BF16 = "int8, calibrated, bf16 activations, bf16 re-check auto (the quickstart's on a CPU with AMX)"
# The fp32 baselines a user would pick beside the padded one: the engine's own packed batches, and
# those under torch.compile. Throughput is also given against the fastest of the three.
FP32_PACKED = "transformers fp32, packed (the engine's default)"
FP32_COMPILED = "transformers fp32, packed, compiled"
FP32 = (BASE, FP32_PACKED, FP32_COMPILED)


def factories(plain: str, calibrated: str) -> dict[str, Callable[[], Any]]:
    def int8(spec: str, margin: float | str, dtype: str = "auto") -> Callable[[], Any]:
        def build() -> Any:
            e = load_engine("transformers", spec, device="cpu", quantization="int8", compile=True,
                            recheck_margin=margin, dtype=dtype)
            e.compile_s = 0.0  # warm_compiled warms (and times) the engines that have it
            return e
        return build

    def compiled_fp32() -> Any:
        e = load_engine("transformers", plain, device="cpu", compile=True)
        e.compile_s = 0.0
        return e

    return {BASE: lambda: padded(load_engine("transformers", plain, device="cpu")),
            FP32_PACKED: lambda: load_engine("transformers", plain, device="cpu"), FP32_COMPILED: compiled_fp32,
            OLD: int8(plain, 0.3), NEW: int8(calibrated, "auto"), PLAIN: int8(plain, 0.0),
            SMOOTH: int8(calibrated, 0.0), NEW_BF16: int8(calibrated, "auto", "bfloat16")}


def solo(args: argparse.Namespace, cfg: Any, test: list) -> dict[str, Any]:
    """One engine in a process of its own, as a service runs it (``engine_int8.time_alone``)."""
    e = factories(args.plain, args.calibrated)[args.solo]()
    return {"identity": e.identity, "margin": getattr(e, "margin", None),
            **time_alone(e, args.solo, cfg, test, args.n_latency, args.batch_size, args.passes)}


def quantile_stats(xs: torch.Tensor) -> dict[str, float]:
    return {"median": float(xs.median()), "q99": float(xs.quantile(0.99)), "max": float(xs.max())}


def quality(rows: dict[str, Any], test: list, labels: list[str], key: str) -> dict[str, Any]:
    from potstill.models.scoring import label_margin

    ref = torch.tensor(rows[BASE]["logits"])
    p_ref = torch.softmax(ref, -1)
    gold = torch.tensor([labels.index(r.label) if r.label in labels else -1 for r in test])
    out = {}
    for k, r in rows.items():
        lg = torch.tensor(r["logits"])
        flips = (lg.argmax(-1) != ref.argmax(-1)).nonzero().flatten().tolist()
        margins = label_margin(lg)
        noise = calibration.label_noise(torch.softmax(lg, -1), p_ref)
        out[k] = {"same_label_as_fp32": float((lg.argmax(-1) == ref.argmax(-1)).float().mean()),
                  "gold_accuracy": float((lg.argmax(-1) == gold).float().mean()),
                  "rechecked_share": r[key]["rechecked"] / len(test),
                  "differing_inputs_int8_margins": [round(float(margins[i]), 4) for i in flips],
                  "label_noise": quantile_stats(noise)}
    return out


def with_ratios(rows: dict[str, Any], q: dict[str, Any], key: str) -> dict[str, Any]:
    """Each engine's row without its logits, with its ``quality`` and its batch-1 and ``key`` (batched)
    ratios against the fp32 baseline's (``BASE``)."""
    base = rows[BASE]
    best1 = min((rows[k] for k in FP32 if k in rows), key=lambda r: r["batch1"]["mean_s"])
    best = min((rows[k] for k in FP32 if k in rows), key=lambda r: r[key]["per_input_s"])
    for k, r in rows.items():
        r.pop("logits")
        r.update(q[k])
        r["batch1_mean_vs_fp32"] = base["batch1"]["mean_s"] / r["batch1"]["mean_s"]
        r["throughput_vs_fp32"] = base[key]["per_input_s"] / r[key]["per_input_s"]
        r["batch1_mean_vs_best_fp32"] = best1["batch1"]["mean_s"] / r["batch1"]["mean_s"]
        r["throughput_vs_best_fp32"] = best[key]["per_input_s"] / r[key]["per_input_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished quickstart run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--n-latency", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--passes", type=int, default=5,
                    help="passes over the test articles in batches; the median is kept")
    ap.add_argument("--solo", help="(internal) time this one engine alone and print the results as JSON")
    ap.add_argument("--plain", help="(internal)")
    ap.add_argument("--calibrated", help="(internal)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-cal-"))
    cfg, _, test = quickstart(work, args.run)
    if args.solo:
        print(json.dumps(solo(args, cfg, test)))
        shutil.rmtree(work, ignore_errors=True)
        return
    t0 = time.perf_counter()
    from potstill.models.prompting import label_token_ids
    from potstill.records import read_records
    from potstill.students import student_format
    from potstill.tasks import get_task

    plain, calibrated = work / "plain", work / "calibrated"
    for d in (plain, calibrated):  # the run's weights, without its own calibration if it has one
        shutil.copytree(args.run / "student", d, ignore=shutil.ignore_patterns(calibration.FILE))
    task = get_task(cfg.task)
    ref = load_engine("transformers", str(plain), device="cpu")
    fmt = student_format(ref, task)
    ids = label_token_ids(ref.tokenizer, fmt, task.labels)
    calib = [r.messages for r in read_records(args.run / "train.jsonl")[:N_CALIBRATION]]
    c0 = time.perf_counter()
    cal = calibration.calibrate(calibrated, fmt, calib, ids)
    out: dict[str, Any] = {
        "student_model": str(args.run / "student"),
        "machine": machine(),
        "calibration": {"inputs": len(calib), "seconds": round(time.perf_counter() - c0, 1), **cal.info}}
    rows = {}
    for k in factories(str(plain), str(calibrated)):  # each engine in a process of its own
        rows[k] = run_alone(__file__, k, "--run", str(args.run), "--plain", str(plain), "--calibrated",
                            str(calibrated), "--n-latency", str(args.n_latency), "--batch-size",
                            str(args.batch_size), "--passes", str(args.passes))
        print(f"{k}: done", file=sys.stderr, flush=True)
    key = f"throughput_batch{args.batch_size}"
    q = quality(rows, test, task.labels, key)
    out["engines"] = with_ratios(rows, q, key)
    for k, r in out["engines"].items():
        print(f"{k}: p50 {r['batch1']['p50_s'] * 1e3:.1f} ms, mean {r['batch1']['mean_s'] * 1e3:.1f} ms "
              f"({r['batch1_mean_vs_fp32']:.2f}x), batch {args.batch_size} {r[key]['per_input_s'] * 1e3:.2f} ms/input "
              f"({r['throughput_vs_fp32']:.2f}x padded fp32, {r['throughput_vs_best_fp32']:.2f}x the fastest fp32), same label {r['same_label_as_fp32']:.1%}, re-checked "
              f"{r['rechecked_share']:.1%}, noise max {r['label_noise']['max']:.3f}")
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    e = out["engines"]
    bad = []
    if e[NEW]["same_label_as_fp32"] < MIN_SAME_LABEL:
        bad.append(f"{NEW}: {e[NEW]['same_label_as_fp32']:.1%} same label as fp32 (< {MIN_SAME_LABEL:.0%})")
    if e[SMOOTH]["label_noise"]["max"] >= e[PLAIN]["label_noise"]["max"]:
        bad.append(f"smoothing did not shrink the largest label noise ({e[SMOOTH]['label_noise']['max']:.3f} vs "
                   f"{e[PLAIN]['label_noise']['max']:.3f})")
    shutil.rmtree(work, ignore_errors=True)
    exit_on_failures(bad)


if __name__ == "__main__":
    main()
