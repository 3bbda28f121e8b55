"""Other 8- and 16-bit paths for greedy generation, probed against transformers fp32 (issue 17).

``engine.py``'s ``extraction`` part measures the engines potstill ships; this script measures the
ones it does not (and engine transformers' int8 generation, which that part leaves out), on the
same distilled extraction student and test articles, to see whether any reaches the issue's 5x
with 98% of outputs identical to fp32's:
- onnxruntime-genai (``pip install onnxruntime-genai onnx onnx_ir``; not a potstill dependency):
  its model builder's int8 weights (blocks of 32, ``MatMulNBits``) at accuracy level 4 (int8
  activations, its CPU default) and 1 (fp32 activations); greedy decoding token by token from
  the same prompt ids;
- CTranslate2 int16 weights (potstill's engine offers int8 and none only, so ``CT2Engine`` is
  built here directly on an int16 conversion);
- potstill's engine transformers with ``quantization: int8`` and ``compile: true`` (torchao's int8
  layers, compiled frozen), whose generation ``engine.py`` does not time: its compile and warm-up
  (``warm_s``) happen before the timed passes.
Each input runs through transformers fp32 (potstill's engine: the system turn's cache reused,
prompt drafts of 2) and every path in turn (interleaved), batch 1.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/extraction_probe.py RUNX --n 30 --out benchmarks/extraction_probe.json
    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/extraction_probe.py RUNX --n 40 --no-ort --no-int16 --out benchmarks/extraction_probe_torchao.json

The second command times potstill's two transformers engines with no other runtime beside them:
timed beside CTranslate2's int16 path (an interrupted run), they took 2.2x (fp32) and 3.4x (int8)
as long over the same 16 articles (``extraction_alone.py`` has the numbers); CTranslate2's and
onnxruntime-genai's thread pools stay busy for a while after each call, the likely cause.

RUNX is a finished run of ``benchmarks/extraction_run.py``. Exits 1 if transformers fp32's own
outputs differ between two passes (the reference would be unsound); the paths' misses are
measurements, not failures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from potstill.config import load_config
from potstill.engines import load_engine
from potstill.engines.convert import ctranslate2_model
from potstill.engines.ctranslate2 import CT2Engine
from potstill.models.prompting import encode_prompt
from potstill.records import read_records
from potstill.students import student_format
from potstill.tasks import get_task


INT8 = "transformers int8 (torchao, compiled frozen), prompt drafts of 2"


def ort_generator(model_dir: Path, tok: Any, max_new: int) -> Callable[[list[int]], str]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    stop = {tok.eos_token_id, tok.pad_token_id}

    def run(ids: list[int]) -> str:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + max_new)
        g = og.Generator(model, params)
        g.append_tokens(ids)
        out: list[int] = []
        while not g.is_done() and len(out) < max_new:
            g.generate_next_token()
            t = int(g.get_next_tokens()[0])
            if t in stop:
                break
            out.append(t)
        return tok.decode(out, skip_special_tokens=True)

    return run


def build_ort(student: Path, out: Path, level: int) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(student), "-o", str(out), "-p", "int8",
           "-e", "cpu", "-c", str(out.parent / "cache"), "--extra_options", f"accuracy_level={level}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("extraction_probe.json"))
    ap.add_argument("--ort", action=argparse.BooleanOptionalAction, default=True,
                    help="the onnxruntime-genai paths (--no-ort: the others without them beside, "
                         "where the torch paths ran slower)")
    ap.add_argument("--int16", action=argparse.BooleanOptionalAction, default=True,
                    help="the CTranslate2 int16 path (the torch paths ran 2.2-3.4x slower beside it)")
    args = ap.parse_args()
    task = get_task(load_config(args.run / "potstill.yaml").task)
    recs = read_records(args.run / "test.jsonl")[: args.n]
    student, max_new = args.run / "student", task.cfg.max_output_tokens
    ref = load_engine("transformers", str(student), device="cpu")
    fmt, tok = student_format(ref, task), ref.tokenizer
    msgs = [r.messages for r in recs]
    ids = [encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True) for m in msgs]
    paths: dict[str, Callable[[int], str]] = {
        "transformers fp32": lambda i: ref.generate(fmt, [msgs[i]], max_new, batch_size=1).texts[0]}
    scratch = Path(tempfile.mkdtemp(prefix="potstill-ort-"))
    try:  # the models load into memory; their files are not needed after
        for level, what in ((4, "int8 activations"), (1, "fp32 activations")) if args.ort else ():
            build_ort(student, scratch / f"level{level}", level)
            gen = ort_generator(scratch / f"level{level}", tok, max_new)
            paths[f"onnxruntime-genai int8 weights, accuracy level {level} ({what})"] = lambda i, gen=gen: gen(ids[i])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.int16:
        path, key = ctranslate2_model(str(student), "int16")
        i16 = CT2Engine(path, f"student@{key[:12]}#ct2-int16", "cpu", "int16")
        paths["ctranslate2 int16"] = lambda i: i16.generate(fmt, [msgs[i]], max_new, batch_size=1).texts[0]
    t0 = time.perf_counter()
    q8 = load_engine("transformers", str(student), device="cpu", quantization="int8", compile=True)
    q8.warm_compiled("probe", lambda: [q8.generate(fmt, [m], max_new, batch_size=1) for m in msgs[:3]])
    warm = {INT8: time.perf_counter() - t0}  # loading, quantizing, compiling, 3 warm-up generations
    paths[INT8] = lambda i: q8.generate(fmt, [msgs[i]], max_new, batch_size=1).texts[0]
    texts: dict[str, list[str]] = {k: [] for k in paths}
    secs: dict[str, list[float]] = {k: [] for k in paths}
    for f in paths.values():
        f(0)  # warm-up
    for i in range(len(msgs)):
        for k, f in paths.items():
            t0 = time.perf_counter()
            texts[k].append(f(i))
            secs[k].append(time.perf_counter() - t0)
        print(i, {k: round(v[-1], 2) for k, v in secs.items()}, flush=True)
    base, base_mean = texts["transformers fp32"], statistics.fmean(secs["transformers fp32"])
    again = [paths["transformers fp32"](i) for i in range(len(msgs))]
    result = {"run": str(args.run), "n": len(msgs), "max_new_tokens": max_new,
              "onnxruntime_genai": __import__("onnxruntime_genai").__version__ if args.ort else None,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "fp32_repeatable": again == base, "paths": {}}
    for k in paths:
        result["paths"][k] = {"mean_s": statistics.fmean(secs[k]), "p50_s": statistics.median(secs[k]),
                              "speedup_vs_fp32_mean": base_mean / statistics.fmean(secs[k]),
                              "identical_to_fp32": sum(a == b for a, b in zip(texts[k], base)) / len(base),
                              "examples_differing": [[a, b] for a, b in zip(base, texts[k]) if a != b][:2]}
        if k in warm:
            result["paths"][k]["warm_s"] = round(warm[k], 1)
    args.out.write_text(json.dumps(result, indent=2))
    for k, v in result["paths"].items():
        print(f"{k}: {v['speedup_vs_fp32_mean']:.2f}x, {v['identical_to_fp32']:.0%} identical")
    if not result["fp32_repeatable"]:
        print("CORRECTNESS FAILED: transformers fp32 gave different outputs on a second pass", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
