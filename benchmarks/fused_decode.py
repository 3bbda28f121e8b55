"""A generating student served on a GPU with each layer's sibling projections fused (q/k/v and
gate/up each one product, ``models.fused_linear``, what ``serve.compile`` does on CUDA since
2026-12-03) against the same engine without them (``fuse_projections = False``, the engine before).

    PYTHONPATH=src:. python benchmarks/fused_decode.py --texts texts.jsonl --out fused_decode.json
    PYTHONPATH=src:. python benchmarks/fused_decode.py --tiny      # CPU smoke run (no CUDA graphs, no fusion there)
    PYTHONPATH=src:. python benchmarks/fused_decode.py --tiny --break-fused   # the gate failing
    PYTHONPATH=src:. python benchmarks/fused_decode.py --texts texts.jsonl --n 32 --scoring --out fused_scoring.json

(texts.jsonl: ``gpu_generation.bbc_texts(96)``.) A SmolLM2-135M-shaped model with random bf16
weights (``--tiny``: a tiny random Llama in fp32 on the CPU, fused there by hand), loaded twice
and served as ``potstill serve`` serves a free-text student with ``serve.compile`` (64-token
summaries, the system turn cached, 8 decoding steps per CUDA graph replay). Both in one process:
each warmed on the ``--n`` texts at batch 1 and in one batch of ``--n`` (its compile and graph
recording: the warm-up a server pays), then ``--rounds`` rounds taking turns, each answering the
texts one at a time and as one batch (ms per input, medians).

Correctness (exit 1 past it, after writing the JSON): where the answers part, the unfused model
(eager, dynamic cache) scores both tokens after the shared start, and its own may lead by at most
``gpu_generation.MAX_GAP`` nats (a near tie). ``--break-fused`` hands the value projection the
key's slice, which the gate must catch. ``--scoring`` times label scoring instead (see ``scoring``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.checks import finish
from benchmarks.gpu_generation import INSTRUCTION
from benchmarks.served_turns import (add_args, compare, compare_scores, header, medians_ms, model_and_texts, report,
                                     results, score_results, score_turns, warm_and_take_turns)

VARIANTS = ("unfused", "fused")


def lively_model(path: Path) -> str:
    """``tests.helpers.tiny.make_lively_model_dir``: a tiny random Llama whose answers vary, so that a
    broken projection shows in its tokens (``gpu_generation.tiny_model`` repeats one token)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.tiny import make_lively_model_dir

    return str(make_lively_model_dir(path))


def break_fused() -> None:
    """From now on every fused value projection returns the keys (``--break-fused``: a gate must fail)."""
    from potstill.models.fused_linear import Part

    real = Part.forward

    def wrong(self: Part, x: torch.Tensor) -> torch.Tensor:
        out = real(self, x)
        return self.fused.slice(x, 1) if self.i == 2 else out

    Part.forward = wrong  # type: ignore[method-assign]


def served(spec: str, device: str, fused: bool, max_new: int, labels: list[str] | None = None):
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.models.fused_linear import fuse_projections
    from potstill.models.static_decode import StaticCaches
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task

    engine = load_engine("transformers", spec, device=device)
    engine.fuse_projections = fused
    if device == "cpu" and fused:  # compile() fuses on CUDA only
        fuse_projections(engine.lm.model)
    engine.compile()
    if device == "cpu":  # static caches as on CUDA, the steps compiled (no graphs on a CPU)
        engine.static = StaticCaches.for_model(engine.lm.model, compile=True)
    kind = {"type": "freetext", "instruction": INSTRUCTION, "max_output_tokens": max_new}
    if labels:
        kind = {"type": "classification", "labels": labels}
    return ServedStudent(engine, get_task(load_config(overrides={"task": kind}).task))


def scoring(a: argparse.Namespace, spec: str, device: str, msgs: list) -> int:
    """``--scoring``: the same two engines scoring labels (the quickstart's 5 topics), as a served
    classifier does (``served_turns.score_turns``); exit 1 where a label probability differs by
    more than ``serve_gpu.PROB_TOL``."""
    from benchmarks.serve_gpu import LABELS, PROB_TOL

    students = {v: served(spec, device, v == "fused", a.max_new, LABELS) for v in VARIANTS}
    run = score_turns(students, msgs, a.rounds)
    compared, failures = compare_scores(run, "unfused", "fused", PROB_TOL)
    out = {**header(a, device), "identities": {v: s.engine.identity for v, s in students.items()},
           **score_results(run, compared)}
    finish(out, failures, a.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, "a tiny random Llama on the CPU (smoke run)")
    ap.add_argument("--break-fused", action="store_true",
                    help="the value projection returns the key's slice (the gate must then fail)")
    ap.add_argument("--scoring", action="store_true", help="time label scoring (classification) instead")
    a = ap.parse_args(argv)
    if a.break_fused:
        break_fused()
    spec, device, msgs = model_and_texts(a, lively_model)
    if a.scoring:
        return scoring(a, spec, device, msgs)
    students = {v: served(spec, device, v == "fused", a.max_new) for v in VARIANTS}
    run = warm_and_take_turns({v: (lambda s=s: s) for v, s in students.items()}, msgs, a.rounds)
    students["unfused"].engine.static = None  # the dynamic cache, unfused: the judge of departures
    compared, failures = compare(students["unfused"], msgs, run["answers"], "unfused", "fused")
    report(run, medians_ms(run["secs"]), compared)
    out = {**header(a, device), "identities": {v: s.engine.identity for v, s in students.items()},
           **results(run, compared)}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
