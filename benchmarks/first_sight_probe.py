"""Probe: why a served generating student's first request for an input is slower than the same
request again (one H200, static caches with ``serve.compile``; ``serve_thread.json`` showed it is
not the thread). After warming, each of ``--n`` new inputs is answered twice; each answer's time is
split into the decoding steps (``StaticCaches.step``) and the rest (prefill, host work), with the CUDA
caching allocator's cudaMalloc calls (``segment.all.allocated``) counted per answer.

    PYTHONPATH=src:. python benchmarks/first_sight_probe.py --texts texts.jsonl --out first_sight_probe.json
    PYTHONPATH=src:. python benchmarks/first_sight_probe.py --texts texts.jsonl --sdpa no-cudnn   # cuDNN attention off

Timings only (random weights); ``static_rows.py`` and ``serve_gpu_generation.py`` hold the gates.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.gpu_generation import load_texts
from benchmarks.serve_gpu import sync
from benchmarks.serve_gpu_generation import served_student
from benchmarks.serve_split_probe import smol_shaped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--sdpa", choices=["default", "no-cudnn", "cudnn-prefill"], default="default",
                    help="default: today's (the prefill avoids cuDNN attention); no-cudnn: nothing uses it; "
                         "cudnn-prefill: the prefill may too (the code before)")
    ap.add_argument("--out")
    a = ap.parse_args()
    from torch._dynamo.utils import counters

    if a.sdpa == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    elif a.sdpa == "cudnn-prefill":
        from potstill.models import static_decode

        static_decode.PREFILL_SDPA = None

    msgs = [[{"role": "user", "content": t}] for t in load_texts(False, a.texts)]
    served = served_student(smol_shaped(Path(tempfile.mkdtemp())), "cuda", True, 64)
    static = served.engine.static
    t0 = time.perf_counter()
    served.warm(msgs, 2)
    print(f"warm {time.perf_counter() - t0:.1f} s; caches {sorted(static._caches)}", flush=True)
    parts = {"steps": 0.0}
    step = static.step

    def timed(key, f):
        def run(*args):
            sync()
            t = time.perf_counter()
            out = f(*args)
            sync()
            parts[key] += time.perf_counter() - t
            return out
        return run
    static.step = timed("steps", step)  # not forward: the compiled step calls it
    tok = served.engine.tokenizer
    rows = []
    for m in msgs[-a.n:]:  # the shortest inputs: never seen while warming
        for sight in ("first", "second"):
            parts.update(steps=0.0)
            segs = torch.cuda.memory_stats().get("segment.all.allocated", 0)
            graphs = counters["stats"]["unique_graphs"]
            sync()
            t = time.perf_counter()
            served.answer([m])
            sync()
            row = {"sight": sight, "prompt_words": len(m[0]["content"].split()),
                   "prompt_tokens": len(tok.encode(m[0]["content"])), "ms": 1000 * (time.perf_counter() - t),
                   "steps_ms": 1000 * parts["steps"],
                   "cudamallocs": torch.cuda.memory_stats().get("segment.all.allocated", 0) - segs,
                   "new_graphs": counters["stats"]["unique_graphs"] - graphs}
            rows.append(row)
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                           "sdpa": a.sdpa, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
