"""Where the int8 engine's label noise comes from, and what takes it out (issue 17): the probe behind
``models.int8.OUTLIERS`` / ``OUTLIER_LAYERS``.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/int8_outliers.py --run RUN --out benchmarks/int8_outliers.json

RUN is a finished quickstart run. Its student is calibrated as ``potstill train`` does (the first
512 training inputs, in a copy) and scored in fp32 and with eager int8 layers (smoothed, the
calibration's strength) on those 512 inputs and the 250 test articles. Then variants, each from the
same weights: one layer type, or one decoder layer, kept in fp32; ``down_proj`` (the MLP's output,
whose inputs carry the largest channels) with other smoothing strengths, in bf16, or with its k
largest input channels multiplied in float (``Int8Linear``'s ``outliers``); every layer with them.
For each: the label noise (``engines.calibration.label_noise``, how much int8 overstates its top
label's lead) over the 762 inputs (mean, 99th percentile, max) and the labels that differ from fp32's.
Eager layers: label noise, not speed (``engine_ab.py --switch outliers`` times the chosen variant).

Correctness: exits 1 (after writing the JSON) if the variant potstill ships (``OUTLIERS`` channels of
the ``OUTLIER_LAYERS``) does not cut the mean label noise below the plain calibrated layers'.
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

from benchmarks.engine import quickstart
from benchmarks.engine_int8 import calibrated_student, machine
from potstill.engines import calibration, load_engine
from potstill.engines.transformers import TransformersEngine
from potstill.models import int8
from potstill.models.int8 import Int8Linear, smoothing
from potstill.models.prompting import label_token_ids
from potstill.models.scoring import decoder
from potstill.records import read_records
from potstill.students import student_format
from potstill.tasks import get_task

TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Bf16Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight.detach().bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.bfloat16(), self.weight).to(x.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished quickstart run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-outliers-"))
    cfg, _, test = quickstart(work, args.run)
    student = calibrated_student(args.run, cfg, work, own=False)
    cal = calibration.load(student)
    task = get_task(cfg.task)
    ref = load_engine("transformers", str(student), device="cpu")
    fmt = student_format(ref, task)
    ids = label_token_ids(ref.tokenizer, fmt, task.labels)
    calib = [r.messages for r in read_records(args.run / "train.jsonl")[:cal.inputs]]
    msgs = calib + [r.messages for r in test]
    p_ref = torch.softmax(ref.score_labels(fmt, msgs, ids, batch_size=16).logits.float(), -1)
    fast = TransformersEngine.load(str(student), device="cpu", dtype="float32")  # float; layers swapped below
    body = decoder(fast.lm.model)
    floats = {n: m for n, m in body.named_modules() if isinstance(m, torch.nn.Linear)}
    smoothed = {n: Int8Linear(m, smoothing(cal.absmax[n], m.weight, cal.alpha)) for n, m in floats.items()}

    def top(n: str, k: int) -> torch.Tensor:
        return cal.absmax[n].float().topk(k).indices.sort().values

    def split(n: str, k: int) -> Int8Linear:
        m = floats[n]
        return Int8Linear(m, smoothing(cal.absmax[n], m.weight, cal.alpha), top(n, k), k)

    rows: dict[str, Any] = {}

    def measure(name: str, layer: Callable[[str], torch.nn.Module]) -> None:
        for n in floats:
            parent, leaf = n.rsplit(".", 1)
            setattr(body.get_submodule(parent), leaf, layer(n))
        fast._prefixes.clear()  # the cached system turn is recomputed by these layers
        fast._stacks.clear()
        t = time.perf_counter()
        p = torch.softmax(fast.score_labels(fmt, msgs, ids, batch_size=16).logits.float(), -1)
        noise = calibration.label_noise(p, p_ref)
        rows[name] = {"noise_mean": float(noise.mean()), "noise_q99": float(noise.quantile(0.99)),
                      "noise_max": float(noise.max()),
                      "labels_differing_from_fp32": int((p.argmax(-1) != p_ref.argmax(-1)).sum())}
        print(f"{name:44s} noise mean {rows[name]['noise_mean']:.4f} q99 {rows[name]['noise_q99']:.4f} max "
              f"{rows[name]['noise_max']:.3f}, {rows[name]['labels_differing_from_fp32']} of {len(msgs)} labels "
              f"differ ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)

    def is_type(n: str, types: tuple[str, ...]) -> bool:
        return n.rsplit(".", 1)[1] in types

    plain = "calibrated int8 (smoothed), every layer"
    measure(plain, lambda n: smoothed[n])
    for t in TYPES:
        measure(f"{t} in fp32", lambda n, t=t: floats[n] if is_type(n, (t,)) else smoothed[n])
    for i in range(len(body.layers)):
        measure(f"decoder layer {i} in fp32", lambda n, i=i: floats[n] if n.startswith(f"layers.{i}.") else smoothed[n])
    for a in (0.5, 0.8, 0.9):
        measure(f"down_proj smoothed at {a}", lambda n, a=a: Int8Linear(floats[n], smoothing(
            cal.absmax[n], floats[n].weight, a)) if is_type(n, ("down_proj",)) else smoothed[n])
    measure("down_proj in bf16", lambda n: Bf16Linear(floats[n]) if is_type(n, ("down_proj",)) else smoothed[n])
    for k in (4, 8, 16, 32):
        measure(f"down_proj, {k} largest channels in float",
                lambda n, k=k: split(n, k) if is_type(n, ("down_proj",)) else smoothed[n])
    measure("every layer, 8 largest channels in float", lambda n: split(n, 8))
    measure("down_proj and o_proj, 8 largest channels in float",
            lambda n: split(n, 8) if is_type(n, ("down_proj", "o_proj")) else smoothed[n])
    shipped = f"shipped: {', '.join(int8.OUTLIER_LAYERS)}, {int8.OUTLIERS} largest channels in float"
    measure(shipped, lambda n: split(n, int8.OUTLIERS) if is_type(n, int8.OUTLIER_LAYERS) else smoothed[n])
    out = {"student_model": str(args.run / "student"), "inputs": {"calibration": len(calib), "test": len(test)},
           "alpha": cal.alpha, "machine": machine(),
           "variants": rows, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": round(time.perf_counter() - t0, 1)}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    if rows[shipped]["noise_mean"] >= rows[plain]["noise_mean"]:
        print(f"CORRECTNESS FAILED: the shipped variant's mean label noise {rows[shipped]['noise_mean']:.4f} is not "
              f"below the plain calibrated layers' {rows[plain]['noise_mean']:.4f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
