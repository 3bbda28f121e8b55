"""Could q8_0 answers be kept and only near ties re-generated at f32? How close each q8_0 answer
came to a tie, against whether it matches transformers fp32's output.

    POTSTILL_LLAMA_SERVER=... HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/extraction_near_ties.py RUNX

RUNX is a finished run of ``benchmarks/extraction_run.py`` whose fp32 outputs are in
``extraction_llamacpp.json`` (``extraction_alone.py RUNX fp32 --out benchmarks/extraction_llamacpp.json``).
Each q8_0 answer is generated greedily by engine llamacpp with the top two probabilities of every
step (``n_probs`` 2); its *gap* is the smallest top-1 minus top-2 probability over its tokens. A
re-check that re-generates every answer whose gap is under a margin catches every changed output
only if the margin is above the widest gap of a changed one; the JSON gives that margin and the
share of answers under it.

Correctness: the answers read here (asked with ``n_probs`` 2) must be the answers engine llamacpp
gave in ``extraction_llamacpp.json``'s ``llamacpp-q8_0`` row, or the gaps describe other outputs;
the script exits 1 if fewer than 98% of them are.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from benchmarks.extraction_alone import held_out_chats, outputs_of
from potstill.engines import load_engine
from potstill.students import student_format


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--ref", type=Path, default=Path(__file__).with_name("extraction_llamacpp.json"))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    run = args.run.resolve()
    task, msgs = held_out_chats(run, args.n)
    ref = outputs_of(args.ref, run)
    want = ref["engines"]["fp32"]["texts"]
    engine_texts = ref["engines"]["llamacpp-q8_0"]["texts"]
    e = load_engine("llamacpp", str(run / "student"), device="cpu")
    fmt = student_format(e, task)
    rows = []
    texts = []
    for x, w in zip(e._ids(fmt, msgs), want):
        r = e.server.post("/completion", {"prompt": x, "n_predict": task.cfg.max_output_tokens, "n_probs": 2,
                                          "samplers": ["top_k"], "top_k": 1, "cache_prompt": True})
        gaps = [math.exp(p["top_logprobs"][0]["logprob"]) - math.exp(p["top_logprobs"][1]["logprob"])
                for p in r["completion_probabilities"] if len(p["top_logprobs"]) > 1]
        rows.append({"gap": min(gaps, default=1.0), "identical": r["content"] == w})
        texts.append(r["content"])
    e.close()
    changed = [r["gap"] for r in rows if not r["identical"]]
    margin = max(changed, default=0.0)
    under = sum(r["gap"] <= margin for r in rows)
    out = {"run": str(run), "n": len(rows), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "identical": sum(r["identical"] for r in rows), "widest_gap_of_a_changed_output": margin,
           "answers_at_or_under_it": under, "rows": rows}
    same = sum(a == b for a, b in zip(texts, engine_texts)) / len(texts)
    out["same_as_engine_row"] = same
    args.out.write_text(json.dumps(out, indent=2))
    print(f"q8_0: {out['identical']}/{len(rows)} identical; a changed output's gap up to {margin:.4f}; "
          f"{under}/{len(rows)} answers have a gap that small; {same:.0%} the engine's own answers")
    if same < 0.98:
        print(f"CORRECTNESS FAILED: the answers read with their probabilities are engine llamacpp's on "
              f"{same:.0%} of inputs (tolerance 98%)", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
