"""A classifying student served on a GPU with its label scoring replayed from CUDA graphs
(``models.score_graphs``, what ``serve.compile`` does on CUDA since 2026-12-03) against the same
compiled engine scoring packed batches without them (the engine before).

    PYTHONPATH=src:. python benchmarks/score_graphs.py --texts texts.jsonl --n 32 --out score_graphs.json
    PYTHONPATH=src:. python benchmarks/score_graphs.py --tiny                 # CPU smoke run (no recording there)
    PYTHONPATH=src:. python benchmarks/score_graphs.py --tiny --break-graphs  # the gate failing

(texts.jsonl: ``gpu_generation.bbc_texts(96)``.) A SmolLM2-135M-shaped model with random bf16
weights (``--tiny``: a tiny random Llama in fp32 on the CPU), loaded twice and served as ``potstill
serve`` serves a classification student with ``serve.compile`` (the quickstart's 5 topics, the
system turn cached, projections fused), taking turns in one process (``served_turns.score_turns``):
each text alone and all ``--n`` as one batch, ms per input.

Correctness (exit 1 past it, after writing the JSON): the graphs' label probabilities within
``serve_gpu.PROB_TOL`` of the packed path's, and each input's embedding (what serve's
out-of-distribution check reads) at a cosine of at least ``MIN_COSINE`` to it. ``--break-graphs``
reads each row's hidden state one token before its last, which the gate must catch; the JSON's
``label_prob_spread`` (the largest minus the smallest probability of a label across the inputs)
shows how far apart inputs score, i.e. what a wrong position moves.
"""

from __future__ import annotations

import argparse

from benchmarks.checks import finish
from benchmarks.fused_decode import lively_model
from benchmarks.serve_gpu import LABELS, PROB_TOL
from benchmarks.served_turns import add_args, compare_scores, header, model_and_texts, score_results, score_turns

VARIANTS = ("packed", "graphs")
MIN_COSINE = 0.99  # bf16 body: the embeddings of one input by two paths


def served(spec: str, device: str, graphs: bool):
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.models.score_graphs import ScoreGraphs
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task

    engine = load_engine("transformers", spec, device=device)
    engine.compile()
    engine.score_graphs = ScoreGraphs(engine.lm.model) if graphs else None  # compile() sets them on CUDA only
    task = get_task(load_config(overrides={"task": {"type": "classification", "labels": LABELS}}).task)
    return ServedStudent(engine, task)


def break_graphs() -> None:
    """From now on each replay reads every row's hidden state one token before its last."""
    from potstill.models import score_graphs

    real = score_graphs._Graph._forward

    def wrong(self) -> None:
        self.ends.sub_(1).clamp_(min=0)  # recorded with the forward: each replay moves the ends it was given
        real(self)

    score_graphs._Graph._forward = wrong


def cosines(students: dict, msgs: list) -> float:
    """The smallest cosine between the two variants' embeddings of each input (scored as one batch)."""
    embs = [s.engine.score_labels(s.fmt, msgs, s.label_ids, batch_size=len(msgs)).embeddings for s in students.values()]
    return float((embs[0] * embs[1]).sum(-1).min())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, "a tiny random Llama on the CPU (smoke run)")
    ap.add_argument("--break-graphs", action="store_true", help="replays read the wrong position (the gate must fail)")
    a = ap.parse_args(argv)
    if a.break_graphs:
        break_graphs()
    spec, device, msgs = model_and_texts(a, lively_model)
    students = {v: served(spec, device, v == "graphs") for v in VARIANTS}
    run = score_turns(students, msgs, a.rounds)
    compared, failures = compare_scores(run, "packed", "graphs", PROB_TOL)
    cos = cosines(students, msgs)
    print(f"smallest embedding cosine {cos:.5f}")
    if cos < MIN_COSINE:
        failures.append(f"an embedding's cosine to the packed path's is {cos:.4f} (< {MIN_COSINE})")
    p = run["probs"]["packed"]
    out = {**header(a, device), "identities": {v: s.engine.identity for v, s in students.items()},
           **score_results(run, compared), "min_embedding_cosine": cos,
           "label_prob_spread": float((p.max(0).values - p.min(0).values).max()),
           "graphs_recorded": len(students["graphs"].engine.score_graphs)}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
