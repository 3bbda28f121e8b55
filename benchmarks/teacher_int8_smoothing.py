"""Would a calibration make the quickstart teacher's int8 layers quiet enough (issue 17, point 2)?
A probe of SmoothQuant's migration on the local teacher, which ``potstill`` does not calibrate
(``teacher_int8.py`` runs its int8 layers unsmoothed).

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/teacher_int8_smoothing.py --run RUN --out benchmarks/teacher_int8_smoothing.json

RUN is a finished quickstart run. The teacher (gemma-3-270m) under its first shot order's 50-shot
prefix, in fp32, records each linear layer's activation ranges on the first ``--calibration``
training inputs (the prefix run before the recording, as ``engines.calibration`` does for a
student); then the test articles are scored by the fp32 teacher and by eager int8 layers,
unsmoothed and smoothed at several strengths, from the same weights. Reported per variant: the
label noise against fp32 (``calibration.label_noise``) and the share of articles whose label
under this one order differs from fp32's. Raw label scores of one order, not the teacher's label
(three orders averaged, divided by content-free priors): the question is only how much noise the
smoothing takes out of the int8 product.

Correctness: smoothing at potstill's strength (``models.int8.ALPHA``) must cut the largest label
noise below the unsmoothed layers'; else the script exits 1 after writing the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.engine import exit_on_failures
from benchmarks.engine_int8 import machine
from potstill.config import load_config
from potstill.engines import calibration
from potstill.engines.transformers import TransformersEngine
from potstill.models.int8 import ALPHA, activation_absmax
from potstill.models.prompting import label_token_ids
from potstill.models.scoring import decoder
from potstill.records import read_records
from potstill.tasks import get_task
from potstill.teachers.local import LocalTeacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished quickstart run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--calibration", type=int, default=64, help="training inputs whose activation ranges are recorded")
    ap.add_argument("--alphas", default=f"0.5,{ALPHA:g},0.8")
    args = ap.parse_args()
    t_start = time.time()
    cfg = load_config(args.run / "potstill.yaml")
    task = get_task(cfg.task)
    fmt = LocalTeacher(cfg.teacher, task).fmts[0]
    train = [r.messages for r in read_records(args.run / "train.jsonl")][: args.calibration]
    test = [r.messages for r in read_records(args.run / "test.jsonl")]
    ref = TransformersEngine.load(cfg.teacher.model, device="cpu", dtype="float32")
    ids = label_token_ids(ref.tokenizer, fmt, task.labels)
    ref.score_labels(fmt, train[:1], ids, batch_size=1)  # the prefix, outside the recording
    with activation_absmax(decoder(ref.lm.model)) as rec:
        ref.score_labels(fmt, train, ids, batch_size=8)
    p_ref = torch.softmax(ref.score_labels(fmt, test, ids, batch_size=8).logits.float(), -1)
    del ref
    variants = {"int8, unsmoothed": 0.0, **{f"int8, smoothed at {a:g}": a for a in map(float, args.alphas.split(","))}}
    rows = {}
    for name, alpha in variants.items():
        t0 = time.time()
        fast = TransformersEngine.load(cfg.teacher.model, device="cpu", dtype="float32")
        fast.quantize_int8(None if alpha == 0 else calibration.Calibration(
            absmax=rec.absmax, alpha=alpha, inputs=len(train), recheck_margin=None, info={}))
        p = torch.softmax(fast.score_labels(fmt, test, ids, batch_size=8).logits.float(), -1)
        noise = calibration.label_noise(p, p_ref)
        rows[name] = {"noise_median": float(noise.median()), "noise_q90": float(noise.quantile(0.9)),
                      "noise_q99": float(noise.quantile(0.99)), "noise_max": float(noise.max()),
                      "labels_differing_from_fp32": float((p.argmax(-1) != p_ref.argmax(-1)).float().mean())}
        r = rows[name]
        print(f"{name:26s} noise median {r['noise_median']:.4f} q90 {r['noise_q90']:.4f} max {r['noise_max']:.4f}, "
              f"{r['labels_differing_from_fp32']:.1%} of labels differ ({time.time() - t0:.0f} s)", flush=True)
        del fast
    shipped, plain = rows[f"int8, smoothed at {ALPHA:g}"], rows["int8, unsmoothed"]
    failures = []
    if not shipped["noise_max"] < plain["noise_max"]:
        failures.append(f"smoothing at {ALPHA:g} left the largest label noise at {shipped['noise_max']:.4f} "
                        f"(unsmoothed {plain['noise_max']:.4f})")
    out = {"teacher": cfg.teacher.model, "shot_order": 0, "calibration_inputs": len(train), "test_articles": len(test),
           "machine": machine(), "variants": rows, "failures": failures,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(time.time() - t_start, 1)}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    exit_on_failures(failures)


if __name__ == "__main__":
    main()
