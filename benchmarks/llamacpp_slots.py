"""How many requests engine llamacpp should keep in flight: its llama-server's slots, on a CPU.

The engine starts llama-server with 16 slots (``--parallel 16``, each with the model's context up
to 8,192 positions) and keeps up to 16 one-prompt requests in flight. This times greedy extraction
of the first ``--n`` test articles of an ``extraction_run.py`` run in one ``generate`` call with as
many in flight as there are slots, for each slot count, the f32 GGUF (the exact one), one server at
a time in this process; answers are compared with the 16-slot ones (greedy, the same weights:
they must not move; exits 1 if any does).

    POTSTILL_LLAMA_SERVER=... HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/llamacpp_slots.py RUNX \
        --n 64 --slots 16 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.extraction_alone import held_out_chats
from potstill.engines import load_engine
from potstill.engines.llamacpp import LlamaCppEngine
from potstill.students import student_format


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--slots", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    run = args.run.resolve()
    task, msgs = held_out_chats(run, args.n)
    max_new = task.cfg.max_output_tokens
    first = load_engine("llamacpp", str(run / "student"), device="cpu", quantization="none")  # converts, cached
    argv = list(first.server.proc.args)
    gguf, model_dir, identity = Path(argv[argv.index("-m") + 1]), first.model_dir, first.identity
    first.close()
    rows, ref = {}, None
    for slots in sorted(args.slots, key=lambda s: s != 16):  # 16 first: the reference answers
        e = LlamaCppEngine(gguf, model_dir, identity, slots=slots)
        fmt = student_format(e, task)
        e.generate(fmt, msgs[:4], max_new, batch_size=4)  # warm-up, not timed
        t0 = time.perf_counter()
        texts = e.generate(fmt, msgs, max_new, batch_size=slots).texts
        wall = time.perf_counter() - t0
        e.close()
        ref = ref or texts
        rows[str(slots)] = {"per_input_s": wall / len(msgs), "wall_s": wall, "ctx_per_slot": e.context,
                            "same_as_16_slots": sum(a == b for a, b in zip(texts, ref)) / len(msgs)}
        print(f"{slots} slots: {wall / len(msgs):.3f} s per input, {rows[str(slots)]['same_as_16_slots']:.0%} "
              "the 16-slot answers", flush=True)
    out = {"run": str(run), "n": len(msgs), "max_new_tokens": max_new, "gguf": "f32", "cpus": os.cpu_count(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "slots": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    moved = [s for s, r in rows.items() if r["same_as_16_slots"] < 1]
    if moved:
        print(f"CORRECTNESS FAILED: answers moved with {', '.join(moved)} slots", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
