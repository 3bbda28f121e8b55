"""Probe: where a served generating student's time goes on a GPU (embed, generate, the whole
answer; in the caller's thread and through the Batcher's), on a SmolLM2-135M-shaped random model
(bf16; no weights need carrying, every answer runs the whole 64-token budget).

    PYTHONPATH=src:. python benchmarks/serve_split_probe.py --texts texts.jsonl

Timings only (random weights: no output to check); ``serve_gpu_generation.py`` holds the gate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.serve_gpu import sync
from benchmarks.serve_gpu_generation import served_student


def smol_shaped(path: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, torch_dtype="bfloat16")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def timed(f) -> float:
    sync()
    t0 = time.perf_counter()
    f()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    from potstill.serve.engine import Batcher

    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", required=True)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out")
    a = ap.parse_args()
    texts = [json.loads(x)["text"] for x in Path(a.texts).read_text().splitlines()][:24]
    msgs = [[{"role": "user", "content": t}] for t in texts]
    served = served_student(smol_shaped(Path(tempfile.mkdtemp())), "cuda", True, 64)
    eng = served.engine
    w = timed(lambda: served.warm(msgs[-8:], 8))
    print(f"warm {w:.1f} s; buckets {sorted(eng.static._caches)}", flush=True)
    rows = {"embed": [], "generate": [], "answer": [], "batcher": []}
    for m in msgs[: a.n]:
        rows["embed"].append(timed(lambda: served.embed([m])))
        rows["generate"].append(timed(lambda: eng.generate(served.fmt, [m], 64, batch_size=1)))
        rows["answer"].append(timed(lambda: served.answer([m])))
    b = Batcher(served, 8, 2.0)
    try:
        for m in msgs[: a.n] * 2:
            rows["batcher"].append(timed(lambda: b.submit(m).result()))
    finally:
        b.close()
    out = {k: [round(x * 1e3, 1) for x in v] for k, v in rows.items()}
    for k, v in out.items():
        print(f"{k:<9} p50 {statistics.median(v):7.1f} ms  {v}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "warm_s": w, "ms": out}, indent=1))


if __name__ == "__main__":
    main()
