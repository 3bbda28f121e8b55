"""Greedy JSON extraction, one engine per process: what each engine costs alone, at batch 1 or in bulk.

``engine.py``'s extraction part and ``extraction_probe.py`` time their engines interleaved in one
process, input by input. There, the torch paths ran slower beside CTranslate2's or
onnxruntime-genai's (whose thread pools keep the cores busy for a while after each call): in an
interrupted ``extraction_probe.py --no-ort`` run, transformers fp32 took 26.1 s and transformers
int8 19.9 s over the first 16 articles, against 11.8 s and 5.8 s with no CTranslate2 path beside
them. This script times one engine in a process of its own, so that no engine's threads slow
another's:

    for e in fp32 fp32-potstill int8 ct2-int8 ct2-float32; do
        HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/extraction_alone.py RUNX $e --n 40
    done

RUNX is a finished run of ``benchmarks/extraction_run.py``. Engines:
- ``fp32``: engine transformers fp32 as transformers' ``model.generate`` runs it (whole prompt,
  no drafts): the baseline, and the reference for identical outputs;
- ``fp32-compiled``: the same ``model.generate`` on a static KV cache with its forward under
  ``torch.compile`` (transformers' ``CompileConfig``, default mode), the compiled baseline (with
  ``--batch``, the whole set runs once untimed first, so that every batch's shapes are compiled);
- ``fp32-potstill``: potstill's fp32 engine (the system turn's cache reused, drafts of 2);
- ``int8``: engine transformers with torchao's int8 layers, compiled frozen (``load_and_warm_s``,
  as for every engine: loading, quantizing, compiling and 3 warm-up generations, before the
  timed pass);
- ``ct2-int8``, ``ct2-float32``: engine ctranslate2;
- ``llamacpp-q8_0``, ``llamacpp-f32``: engine llamacpp (``llama-server`` on PATH or
  ``POTSTILL_LLAMA_SERVER``; its build is recorded in the row).
``--batch B`` (B > 1) times the whole set in one ``generate`` call with ``batch_size`` B, as
evaluate passes a test set (bulk throughput: wall time / inputs), stored as ``ENGINE@bB``; run
``fp32 --batch B`` first to get the baseline batched the same way as well (each row's
``speedup_vs_fp32@bB_mean``), and ``fp32-compiled`` (``--batch B`` too) for the compiled one:
each other row also gives ``speedup_vs_best_baseline_mean``, against the faster of the two at its
batch size. Outputs are always compared with fp32's at batch 1.
Each run adds its engine to ``extraction_alone.json`` (an engine other than ``fp32`` needs the
``fp32`` row of the same RUNX first). Exits 1 if an engine that should reproduce fp32 token for
token (``fp32-compiled``, ``fp32-potstill``, ``ct2-float32``, ``llamacpp-f32``) gives identical outputs on fewer than 98% of inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from potstill.config import load_config
from potstill.engines import load_engine
from potstill.records import read_records
from potstill.students import student_format
from potstill.tasks import get_task

ENGINES = {
    "fp32": dict(name="transformers"),
    "fp32-compiled": dict(name="transformers"),
    "fp32-potstill": dict(name="transformers"),
    "int8": dict(name="transformers", quantization="int8", compile=True),
    "ct2-int8": dict(name="ctranslate2"),
    "ct2-float32": dict(name="ctranslate2", quantization="none"),
    "llamacpp-q8_0": dict(name="llamacpp"),
    "llamacpp-f32": dict(name="llamacpp", quantization="none"),
}
EXACT = {"fp32-compiled", "fp32-potstill", "ct2-float32", "llamacpp-f32"}  # fp32 weights and arithmetic: held to 98% identical


def held_out_chats(run: Path, n: int) -> tuple[Any, list[list[dict]]]:
    """The task of the finished run ``run`` and its first ``n`` test chats."""
    return get_task(load_config(run / "potstill.yaml").task), [r.messages for r in read_records(run / "test.jsonl")[:n]]


def outputs_of(ref: Path, run: Path) -> dict:
    """``ref``, a JSON this script wrote, refused unless its rows are ``run``'s."""
    result = json.loads(ref.read_text())
    if result.get("run") != str(run):
        raise SystemExit(f"{ref} holds the outputs of {result.get('run')}, not {run}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("engine", choices=sorted(ENGINES))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--batch", type=int, default=1,
                    help="inputs per generate call; above 1 the row is bulk throughput (wall time / inputs), "
                         "stored as ENGINE@bB, and compared with fp32 at batch 1 and with fp32@bB when present")
    ap.add_argument("--tag", default="", help="stored as ENGINE+TAG: a variant (e.g. other llama-server arguments)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    run = args.run.resolve()
    task, msgs = held_out_chats(run, args.n)
    max_new = task.cfg.max_output_tokens
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = args.engine + (f"+{args.tag}" if args.tag else "") + (f"@b{args.batch}" if args.batch > 1 else "")
    if key == "fp32" or result.get("run") != str(run):
        result = {"run": str(run), "n": len(msgs), "max_new_tokens": max_new, "cpus": os.cpu_count(),
                  "torch": torch.__version__, "engines": {}}
    base = result["engines"].get("fp32")
    if key != "fp32" and base is None:
        sys.exit(f"no fp32 row for {run} in {args.out}: run engine fp32 first")
    t0 = time.perf_counter()
    e = load_engine(spec=str(run / "student"), device="cpu", **ENGINES[args.engine])
    if args.engine in ("fp32", "fp32-compiled"):
        e.reuse_prefix, e.draft_tokens = False, 0  # transformers' generate as a user calls it
    if args.engine == "fp32-compiled":
        # transformers' own compiled generation: a static KV cache, the forward under torch.compile
        # (inductor, default mode: reduce-overhead's CUDA graphs do not apply on a CPU), which
        # generate does only on an accelerator unless the config says all devices.
        from transformers import CompileConfig

        cc = CompileConfig(mode="default")
        cc._compile_all_devices = True
        e.lm.model.generation_config.cache_implementation = "static"
        e.lm.model.generation_config.compile_config = cc
    fmt = student_format(e, task)
    for m in msgs[:3]:  # warm-up (compiling, for int8), not timed below
        e.generate(fmt, [m], max_new, batch_size=1)
    warm_s = time.perf_counter() - t0
    secs, texts = [], []
    if args.batch == 1:
        for m in msgs:
            t1 = time.perf_counter()
            texts.append(e.generate(fmt, [m], max_new, batch_size=1).texts[0])
            secs.append(time.perf_counter() - t1)
    else:  # the whole set in one call, as evaluate passes it: the engine batches it its own way
        if args.engine == "fp32-compiled":  # each batch's shapes compiled before the timed pass, not in it
            e.generate(fmt, msgs, max_new, batch_size=args.batch)
            warm_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        texts = e.generate(fmt, msgs, max_new, batch_size=args.batch).texts
        secs = [(time.perf_counter() - t1) / len(msgs)] * len(msgs)  # per input: the wall time shared
    row = {"mean_s": statistics.fmean(secs), "p50_s": statistics.median(secs), "texts": texts,
           "load_and_warm_s": round(warm_s, 1), "compiled": bool(getattr(e, "compiled", False)),
           "loadavg_after": list(os.getloadavg()),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ref = base or row
    row["speedup_vs_fp32_mean"] = ref["mean_s"] / row["mean_s"]
    row["identical_to_fp32"] = sum(a == b for a, b in zip(texts, ref["texts"])) / len(texts)
    same_batch = result["engines"].get(f"fp32@b{args.batch}")
    if args.batch > 1 and key != f"fp32@b{args.batch}" and same_batch:  # the baseline batched as well
        row[f"speedup_vs_fp32@b{args.batch}_mean"] = same_batch["mean_s"] / row["mean_s"]
    at = f"@b{args.batch}" if args.batch > 1 else ""
    baselines = {k: result["engines"][k] for k in (f"fp32{at}", f"fp32-compiled{at}") if k in result["engines"]}
    if args.engine not in ("fp32", "fp32-compiled") and baselines:  # the faster of eager and compiled
        best = min(baselines, key=lambda k: baselines[k]["mean_s"])
        row["best_baseline"] = best
        row["speedup_vs_best_baseline_mean"] = baselines[best]["mean_s"] / row["mean_s"]
    if args.engine.startswith("llamacpp"):
        import subprocess

        from potstill.engines.llamacpp import server_binary

        v = subprocess.run([server_binary(), "--version"], capture_output=True, text=True)
        row["llama_server"] = " ".join((v.stdout + v.stderr).split())[-160:]
        row["server_args"] = list(e.server.proc.args[1:])
        row["server_args"][row["server_args"].index("-m") + 1] = "MODEL.gguf"
        e.close()
    result["engines"][key] = row
    args.out.write_text(json.dumps(result, indent=2))
    vs_batch = (f", {row[f'speedup_vs_fp32@b{args.batch}_mean']:.2f}x fp32@b{args.batch}"
                if f"speedup_vs_fp32@b{args.batch}_mean" in row else "")
    if "best_baseline" in row:
        vs_batch += f", {row['speedup_vs_best_baseline_mean']:.2f}x the best baseline ({row['best_baseline']})"
    print(f"{key}: mean {row['mean_s']:.3f} s, p50 {row['p50_s']:.3f} s, "
          f"{row['speedup_vs_fp32_mean']:.2f}x fp32{vs_batch}, {row['identical_to_fp32']:.0%} identical")
    if args.engine in EXACT and row["identical_to_fp32"] < 0.98:
        print(f"CORRECTNESS FAILED: {args.engine} gave fp32's output on {row['identical_to_fp32']:.0%} "
              "of inputs (tolerance 98%)", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
