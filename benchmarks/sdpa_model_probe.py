"""Greedy generation in bf16 through each of ``scaled_dot_product_attention``'s backends, against
the same model in float32 on the math backend, on real prompts: which backend's outputs part
from the reference where the reference had no near tie.

    PYTHONPATH=src:. python benchmarks/sdpa_model_probe.py --model DIR --gguf FILE --prompts prompts.json --out X.json

``prompts.json``: {"prompts": [[token ids], ...], "eos": id}. transformers' ``generate`` with its
dynamic cache (the GPU's default path), ``--max-new`` tokens. Where an output first parts from
the reference's, the reference (float32, math) scores both tokens after the shared start; the
gap is how much it preferred its own. bf16 parts at near ties (gaps well under 1 nat); a wrong
kernel parts anywhere. Exits 1 when the default dispatch has a gap over ``MAX_GAP``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.sdpa_probe import finish

MAX_GAP = 1.0


def greedy(model: Any, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
    outs = []
    for p in prompts:
        ids = torch.tensor([p], device=model.device)
        with torch.inference_mode():
            o = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=max_new, pad_token_id=eos, eos_token_id=eos)
        row = o[0, len(p):].tolist()
        n = next((j for j, t in enumerate(row) if t == eos), len(row))
        outs.append(row[:n])
    return outs


@torch.inference_mode()
def gap(ref: Any, prompt: list[int], a: list[int], b: list[int], eos: int) -> float:
    j = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    x, y = (a + [eos])[j], (b + [eos])[j]
    with sdpa_kernel([SDPBackend.MATH]):
        logits = ref(input_ids=torch.tensor([prompt + a[:j]], device=ref.device)).logits[0, -1]
    lp = torch.log_softmax(logits.double(), -1)
    return float(lp[x] - lp[y])


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="directory")
    ap.add_argument("--gguf", help="GGUF file name inside --model")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--backends", default="default,cudnn,flash,efficient,math")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    data = json.load(open(a.prompts))
    prompts, eos = data["prompts"][: a.n], data["eos"]
    kw = {"gguf_file": a.gguf} if a.gguf else {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ref = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, **kw).to(dev).eval()
    bf = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, **kw).to(dev).eval()
    named = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    with sdpa_kernel([SDPBackend.MATH]):
        want = greedy(ref, prompts, a.max_new, eos)
    cfg = ref.config
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
        "model": a.gguf or a.model, "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
        "prompts": len(prompts), "max_new_tokens": a.max_new, "reference": "float32, math backend", "rows": []}
    import transformers

    result["transformers"] = transformers.__version__
    failures = []
    for name in a.backends.split(","):
        ctx = sdpa_kernel([named[name]]) if name in named else contextlib.nullcontext()
        try:
            with ctx:
                got = greedy(bf, prompts, a.max_new, eos)
        except RuntimeError as e:
            result["rows"].append({"backend": name, "error": str(e).splitlines()[0][:200]})
            continue
        gaps = [round(gap(ref, p, x, y, eos), 4) for p, x, y in zip(prompts, want, got) if x != y]
        row = {"backend": name, "dtype": "bfloat16", "identical": sum(x == y for x, y in zip(want, got)) / len(want),
               "divergence_gaps": gaps, "largest_gap": max(gaps, default=0.0)}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if name == "default" and row["largest_gap"] > MAX_GAP:
            failures.append(f"default dispatch parts from float32 where it led by {row['largest_gap']:.2f} nats")
    return finish(result, failures, a.out)


if __name__ == "__main__":
    sys.exit(main())
