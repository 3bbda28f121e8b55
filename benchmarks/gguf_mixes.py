"""potstill's GGUF mixes (q6_k, q5_k_m, q4_k_m, q4_0) against llama.cpp's own ``llama-quantize``.

    POTSTILL_LLAMA_SERVER=... HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/gguf_mixes.py --run RUN \
        --llama-quantize /path/to/llama-quantize

RUN is a finished quickstart run. Two sections:

1. Weights: each mix written by potstill (``export.gguf_quant``) and by ``llama-quantize`` from the
   same f32 conversion, of RUN's student and of a synthetic SmolLM2-tokenizer Llama with rows of
   1,024 weights and heavy-tailed weights (Student-t, 5 dof, 1% of columns 8x; every tensor wide
   enough for k-quant blocks, where the student's 576-wide rows take the fallbacks). Per mix: the
   file size and the seconds each tool took, and per block type the relative RMSE of the dequantized
   weights (gguf-py reads both files). The quickstart student descends from a Q4_1 GGUF (the
   bundled SmolLM2), so its weights sit near a 4-bit grid; the synthetic model has no such grid.
2. Labels: the student's 250 test articles through llama-server, each engine in a process of its
   own (``engine_int8.time_alone``: 40 batch-1 calls, then batches of 16, ``--passes`` times):
   transformers fp32 (padded, issue 17's baseline), llamacpp f32 and q8_0, and each mix from
   potstill and from llama-quantize, each without and with an importance matrix from the run's
   first 256 training inputs (potstill: ``export.imatrix``; llama.cpp: ``llama-imatrix`` over the
   same inputs written out as the student reads them, given to ``llama-quantize --imatrix``).
   Same label as fp32, mean total variation of the label probabilities from fp32's, gold
   accuracy, p50 and throughput.

Exits 1 where a potstill file's tensor types or size differ from llama-quantize's, a block type's
RMSE exceeds 1.03x llama-quantize's, or, against llama-quantize's file of the same mix (an
importance matrix on both sides or on neither), potstill's label probabilities sit further from
fp32's (mean total variation over the articles above 1.1x) or its labels differ from fp32's on
more articles than two standard deviations of a count allow (``flips > theirs + 2 sqrt(theirs) +
1``: which near ties flip is a matter of rounding, and two files of equal error flip different
ones). ``--break-mix`` writes q4_k_m's Q4_K blocks from a perturbed copy of the weights, to show
the gates failing (``--skip-labels --break-mix``: rc 1 on the RMSE gate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.checks import finish
from benchmarks.engine import BASE, padded, quickstart
from benchmarks.engine_int8 import machine, mean_tv, print_alone, run_alone
from benchmarks.int8_calibration import quality, with_ratios
from potstill.engines import load_engine
from potstill.export.gguf_quant import MIXES, requantize

RMSE_RATIO = 1.03
TV_RATIO = 1.1
IMATRIX_INPUTS = 256


def theirs_file(f32: Path, mix: str, out: Path, binary: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([binary, str(f32), str(out), mix.upper()], check=True, capture_output=True)
    return time.perf_counter() - t0


def break_q4_k() -> None:
    """--break-mix: Q4_K blocks fitted to weights with 5% noise added, so the gates can be seen failing."""
    from potstill.export import kquants

    fit = kquants.q4_k

    def noisy(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        rng = np.random.default_rng(0)
        return fit(x + 0.05 * np.abs(x).mean() * rng.standard_normal(x.shape).astype(np.float32), w)

    kquants.BLOCKS["Q4_K"] = (noisy, kquants.BLOCKS["Q4_K"][1])


def synthetic(work: Path, tokenizer_dir: Path) -> Path:
    """A Llama with 1,024-wide rows and heavy-tailed random weights, the student's tokenizer beside it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = work / "synthetic"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                t = torch.distributions.StudentT(5.0).sample(p.shape) * 0.02
                t[:, torch.rand(p.shape[1], generator=g) < 0.01] *= 8
                p.copy_(t)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def weights_section(name: str, hf_dir: Path, work: Path, binary: str) -> tuple[dict[str, Any], list[str]]:
    import gguf

    from potstill.export.gguf_file import convert

    f32 = work / f"{name}-f32.gguf"
    convert(hf_dir, f32, "f32")
    x = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(f32).tensors}
    out: dict[str, Any] = {"f32_bytes": f32.stat().st_size, "mixes": {}}
    failed = []
    for mix in MIXES:
        mine, theirs = work / f"{name}-{mix}-potstill.gguf", work / f"{name}-{mix}-llama-quantize.gguf"
        t0 = time.perf_counter()
        requantize(f32, mine, mix)
        s_mine = time.perf_counter() - t0
        s_theirs = theirs_file(f32, mix, theirs, binary)
        a = {t.name: t for t in gguf.GGUFReader(mine).tensors}
        b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
        same_types = {n: t.tensor_type for n, t in a.items()} == {n: t.tensor_type for n, t in b.items()}
        err: dict[str, dict[str, float]] = {}
        for n, ta in a.items():
            kind = ta.tensor_type.name
            if kind == "F32":
                continue
            e = err.setdefault(kind, {"potstill": 0.0, "llama_quantize": 0.0, "norm": 0.0, "tensors": 0})
            for who, t in (("potstill", ta), ("llama_quantize", b[n])):
                y = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(x[n].shape)
                e[who] += float(((y - x[n]) ** 2).sum())
            e["norm"] += float((x[n] ** 2).sum())
            e["tensors"] += 1
        rmse = {k: {"tensors": v["tensors"], "potstill": (v["potstill"] / v["norm"]) ** 0.5,
                    "llama_quantize": (v["llama_quantize"] / v["norm"]) ** 0.5} for k, v in err.items()}
        row = {"bytes_potstill": mine.stat().st_size, "bytes_llama_quantize": theirs.stat().st_size,
               "seconds_potstill": round(s_mine, 2), "seconds_llama_quantize": round(s_theirs, 2),
               "same_tensor_types": same_types, "relative_rmse": rmse}
        out["mixes"][mix] = row
        if not same_types or row["bytes_potstill"] != row["bytes_llama_quantize"]:
            failed.append(f"{name} {mix}: tensor types or size differ from llama-quantize's")
        for k, v in rmse.items():
            if v["potstill"] > RMSE_RATIO * v["llama_quantize"]:
                failed.append(f"{name} {mix} {k}: RMSE {v['potstill']:.4f} > {RMSE_RATIO} x {v['llama_quantize']:.4f}")
        print(f"{name} {mix}: {row['bytes_potstill'] / 1e6:.1f} MB, potstill {s_mine:.1f} s / llama-quantize "
              f"{s_theirs:.1f} s; " + ", ".join(f"{k} {v['potstill']:.4f} vs {v['llama_quantize']:.4f}"
                                                for k, v in rmse.items()), file=sys.stderr, flush=True)
    return out, failed


def engine_names(with_theirs: bool) -> list[str]:
    names = [BASE, "llamacpp f32", "llamacpp q8_0"]
    for mix in MIXES:
        for who in ("potstill", "llama-quantize") if with_theirs else ("potstill",):
            names += [f"llamacpp {mix} ({who})", f"llamacpp {mix} ({who}, imatrix)"]
    return names


def train_messages(run: Path) -> list[list[dict]]:
    from potstill.records import read_records

    return [r.messages for r in read_records(run / "train.jsonl")[:IMATRIX_INPUTS]]


def llama_imatrix(run: Path, f32: Path, work: Path, binary: str) -> Path:
    """llama.cpp's importance matrix over the same training inputs, as text the student reads."""
    from potstill.config import load_config
    from potstill.students import student_format
    from potstill.tasks import get_task

    task = get_task(load_config(run / "potstill.yaml").task)
    e = load_engine("transformers", str(run / "student"), device="cpu")
    fmt = student_format(e, task)
    text = work / "train.txt"
    text.write_text("".join(fmt.prefix() + fmt.query(e.tokenizer, m) for m in train_messages(run)))
    out = work / "imatrix.gguf"
    tool = str(Path(binary).with_name("llama-imatrix"))
    subprocess.run([tool, "-m", str(f32), "-f", str(text), "-o", str(out), "-c", "512", "--no-ppl"], check=True,
                   capture_output=True)
    return out


def make_engine(name: str, spec: str, run: Path, work: Path, binary: str | None) -> Any:
    from potstill.config import load_config
    from potstill.engines.convert import gguf_model
    from potstill.engines.llamacpp import LlamaCppEngine
    from potstill.export import imatrix
    from potstill.tasks import get_task

    if name == BASE:
        return padded(load_engine("transformers", spec, device="cpu"))
    q = name.split()[1]
    if "(" not in name:
        return load_engine("llamacpp", spec, device="cpu", quantization={"f32": "none", "q8_0": "int8"}[q])
    f32, model_dir, key = gguf_model(spec, "f32")
    path = work / f"{q}.gguf"
    if name.endswith("(llama-quantize)"):
        theirs_file(f32, q, path, binary)
    elif name.endswith("(llama-quantize, imatrix)"):
        t0 = time.perf_counter()
        imat = llama_imatrix(run, f32, work, binary)
        subprocess.run([binary, "--imatrix", str(imat), str(f32), str(path), q.upper()], check=True,
                       capture_output=True)
        print(f"{name}: imatrix and quantization {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        importance = None
        if name.endswith("imatrix)"):
            task = get_task(load_config(run / "potstill.yaml").task)
            importance = imatrix.for_file(imatrix.measure(spec, task, train_messages(run)), f32)
        requantize(f32, path, q, importance=importance)
    return LlamaCppEngine(path, model_dir, f"student@{key[:12]}#{name.split(' ', 1)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--llama-quantize", help="llama.cpp's llama-quantize binary (the reference)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--n-latency", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--skip-labels", action="store_true")
    ap.add_argument("--break-mix", action="store_true")
    ap.add_argument("--solo", help="(internal) time this one engine alone and print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.break_mix:
        break_q4_k()
        # engine llamacpp caches its conversions by content: the broken files go to a cache of their own
        os.environ["POTSTILL_CACHE"] = str(Path(tempfile.gettempdir()) / "potstill-bench-break-mix")
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-mixes-"))
    spec = str(args.run / "student")
    try:
        if args.solo:
            cfg, _, test = quickstart(work, args.run)
            print_alone(make_engine(args.solo, spec, args.run, work, args.llama_quantize), args.solo, cfg, test,
                        args.n_latency, args.batch_size, args.passes)
            return
        t0 = time.perf_counter()
        out: dict[str, Any] = {"student_model": spec, "machine": machine(), "weights": {}}
        failed: list[str] = []
        if args.llama_quantize:
            for name, hf in (("student", args.run / "student"), ("synthetic", synthetic(work, args.run / "student"))):
                out["weights"][name], bad = weights_section(name, hf, work, args.llama_quantize)
                failed += bad
        if not args.skip_labels:
            from potstill.tasks import get_task

            cfg, _, test = quickstart(work, args.run)
            rows = {}
            extra = ["--llama-quantize", args.llama_quantize] if args.llama_quantize else []
            for k in engine_names(bool(args.llama_quantize)):
                rows[k] = run_alone(__file__, k, "--run", str(args.run), "--n-latency", str(args.n_latency),
                                    "--batch-size", str(args.batch_size), "--passes", str(args.passes), *extra,
                                    *(["--break-mix"] if args.break_mix else []))
                print(f"{k}: done", file=sys.stderr, flush=True)
            key = f"throughput_batch{args.batch_size}"
            tv = {k: mean_tv(r["logits"], rows[BASE]["logits"]) for k, r in rows.items()}
            fp32 = torch.tensor(rows[BASE]["logits"]).argmax(-1)
            flips = {k: int((torch.tensor(r["logits"]).argmax(-1) != fp32).sum()) for k, r in rows.items()}
            q = quality(rows, test, get_task(cfg.task).labels, key)
            for k in q:
                q[k].update(mean_total_variation_vs_fp32=tv[k], labels_differing_from_fp32=flips[k])
            out["engines"] = with_ratios(rows, q, key)
            for k, r in out["engines"].items():
                print(f"{k}: p50 {r['batch1']['p50_s'] * 1e3:.1f} ms, batch {args.batch_size} "
                      f"{r[key]['per_input_s'] * 1e3:.2f} ms/input ({r['throughput_vs_fp32']:.2f}x), same label "
                      f"{r['same_label_as_fp32']:.1%}, gold {r['gold_accuracy']:.1%}, mean TV "
                      f"{r['mean_total_variation_vs_fp32']:.4f}")
            pairs = [(f"llamacpp {mix} (potstill{i})", f"llamacpp {mix} (llama-quantize{i})")
                     for mix in MIXES for i in ("", ", imatrix")] if args.llama_quantize else []
            for a, b in pairs:
                mine, theirs, mix = out["engines"][a], out["engines"][b], a.split(" ", 1)[1]
                if mine["mean_total_variation_vs_fp32"] > TV_RATIO * theirs["mean_total_variation_vs_fp32"]:
                    failed.append(f"{mix}: mean TV from fp32 {mine['mean_total_variation_vs_fp32']:.4f} > {TV_RATIO} x "
                                  f"llama-quantize's {theirs['mean_total_variation_vs_fp32']:.4f}")
                n = theirs["labels_differing_from_fp32"]
                if mine["labels_differing_from_fp32"] > n + 2 * n ** 0.5 + 1:
                    failed.append(f"{mix}: {mine['labels_differing_from_fp32']} labels differ from fp32's against "
                                  f"llama-quantize's {n}")
        out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        finish(out, failed, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
