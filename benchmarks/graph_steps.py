"""Greedy decoding on static caches with one compiled call per token (a CUDA graph each, through
``mode="reduce-overhead"``) against 8 tokens per CUDA graph replay (``static_decode.Steps``).

    PYTHONPATH=src:. python benchmarks/graph_steps.py --texts texts.jsonl --out graph_steps.json
    PYTHONPATH=src:. python benchmarks/graph_steps.py --tiny      # CPU smoke run (no CUDA graphs there)

(texts.jsonl: ``gpu_generation.bbc_texts(96)``.) A SmolLM2-135M-shaped model with random bf16
weights (``--tiny``: the tests' tiny Llama in fp32 on the CPU), served as ``potstill serve`` serves
a free-text student with ``serve.compile`` (64-token summaries, the system turn cached). Both
variants in one process, each with static caches of its own: warmed on the ``--n`` texts at batch 1
and in one batch of ``--n``, then ``--rounds`` rounds taking turns, each round answering the texts
one at a time and as one batch (ms per input, medians).

Correctness (exit 1 past it, after writing the JSON): where the variants' answers part, the eager
model scores both tokens after the shared start and the one-step variant's may lead by at most
``gpu_generation.MAX_GAP`` nats (a near tie), as in ``gpu_generation.py``; ``--break-steps``
shows it failing.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.checks import finish
from benchmarks.gpu_generation import tiny_model
from benchmarks.serve_gpu_generation import served_student
from benchmarks.served_turns import (add_args, compare, header, medians_ms, model_and_texts, report, results,
                                     warm_and_take_turns)

VARIANTS = {"one-step": 1, "8-steps": 8}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, "the tests' tiny Llama on the CPU (smoke run)")
    ap.add_argument("--only", choices=list(VARIANTS), help="one variant, warmed in a fresh process (no comparison)")
    ap.add_argument("--break-steps", action="store_true",
                    help="feed the 8-step graphs a wrong token (the gate must then fail)")
    a = ap.parse_args(argv)
    from potstill.models.static_decode import StaticCaches, Steps

    if a.break_steps:
        real = Steps.replay

        def shifted(self: Steps) -> None:
            self.tok.sub_(1).clamp_(min=0)  # the step reads a token next to the one chosen
            real(self)

        Steps.replay = shifted  # type: ignore[method-assign]

    model, device, msgs = model_and_texts(a, tiny_model)
    served = served_student(model, device, True, a.max_new)
    engine = served.engine
    caches = {v: StaticCaches.for_model(engine.lm.model, compile=True, graph_steps=k) for v, k in VARIANTS.items()
              if a.only in (None, v)}

    def using(static):
        def use():
            engine.static = static
            return served
        return use

    run = warm_and_take_turns({v: using(static) for v, static in caches.items()}, msgs, a.rounds)
    engine.static = None  # eager, dynamic cache: the judge of departures
    compared, failures = compare(served, msgs, run["answers"], "one-step", "8-steps") if a.only is None else ({}, [])
    report(run, medians_ms(run["secs"]), compared)
    out = {**header(a, device), **results(run, compared)}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
