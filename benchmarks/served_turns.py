"""Two ways of serving a generating student, side by side in one process (``graph_steps.py``,
``fused_decode.py``): each warmed, then timed taking turns, then their answers compared by the
eager model where they part."""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_generation import MAX_GAP, divergence_gaps, load_texts
from benchmarks.serve_gpu import sync
from benchmarks.static_rows import timed_batches


def add_args(ap: argparse.ArgumentParser, tiny_help: str) -> None:
    """The options these benchmarks take: texts, how many, answer length, rounds, ``--tiny``, ``--out``."""
    ap.add_argument("--texts", help="JSONL with a 'text' per line (default: gpu_generation.bbc_texts(96))")
    ap.add_argument("--n", type=int, default=8, help="texts answered, one at a time and as one batch")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help=tiny_help)
    ap.add_argument("--out", help="where to write the JSON")


def model_and_texts(a: argparse.Namespace, tiny: Callable[[Path], str]) -> tuple[str, str, list]:
    """The model (``tiny(path)`` on the CPU with ``--tiny``, which also shortens answers and rounds;
    else a random SmolLM2-135M-shaped one for CUDA), its device and the ``--n`` chats to answer."""
    work = Path(tempfile.mkdtemp())
    if a.tiny:
        spec, device, a.max_new, a.rounds = tiny(work / "tiny"), "cpu", min(a.max_new, 12), min(a.rounds, 2)
    else:
        from benchmarks.serve_split_probe import smol_shaped

        spec, device = smol_shaped(work / "smol"), "cuda"
    return spec, device, [[{"role": "user", "content": t}] for t in load_texts(a.tiny, a.texts)][: a.n]


def header(a: argparse.Namespace, device: str) -> dict:
    """What every JSON of these benchmarks starts with."""
    return {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "argv": sys.argv[1:], "model": "tiny" if a.tiny else "random SmolLM2-135M shape",
            "n": a.n, "max_new": a.max_new, "rounds": a.rounds}


def warm_and_take_turns(variants: dict[str, Callable[[], Any]], msgs: list, rounds: int) -> dict:
    """``variants``: name -> a call that makes that variant the one served and returns its
    ``ServedStudent``. Each is warmed on ``msgs`` one at a time and as one batch (its seconds and the
    graphs it compiled), then ``rounds`` rounds take turns answering them one at a time and as one
    batch. Returns ``warm_s``, ``graphs``, ``secs`` (seconds per input by batch size) and ``answers``
    (the last round's, by batch size)."""
    from torch._dynamo.utils import counters

    n = str(len(msgs))
    warm_s, graphs, answers, secs = {}, {}, {}, {v: {"1": [], n: []} for v in variants}
    for v, use in variants.items():
        served = use()
        graphs0 = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        for m in msgs:
            served.answer([m])
        served.answer(msgs)
        sync()
        warm_s[v], graphs[v] = time.perf_counter() - t0, counters["stats"]["unique_graphs"] - graphs0
        print(f"{v}: warmed in {warm_s[v]:.1f} s, {graphs[v]} graphs ({served.engine.identity})", flush=True)
    for _ in range(rounds):
        for v, use in variants.items():
            served = use()
            one_s, one = timed_batches(served, msgs, 1, len(msgs))
            batch_s, batch = timed_batches(served, msgs, len(msgs), 1)
            secs[v]["1"] += one_s
            secs[v][n].append(batch_s[0] / len(msgs))
            answers[v] = {"1": one, n: batch}
    return {"warm_s": warm_s, "graphs": graphs, "secs": secs, "answers": answers}


def medians_ms(secs: dict) -> dict:
    return {v: {b: 1000 * statistics.median(s) for b, s in d.items()} for v, d in secs.items()}


def compare(judge: Any, msgs: list, answers: dict, ref: str, got: str) -> tuple[dict, list[str]]:
    """``got``'s answers against ``ref``'s at each batch size, judged by ``judge`` (a ``ServedStudent``
    whose engine decodes eagerly on the dynamic cache): how many are identical, the gaps where they
    part, and a failure where ``ref``'s own token led by more than ``MAX_GAP`` nats."""
    failures, compared = [], {}
    for b in answers[ref]:
        r, g = answers[ref][b], answers[got][b]
        gaps = [d["gap"] for d in divergence_gaps(judge.engine, judge.fmt, msgs, r, g)]
        compared[b] = {"identical": f"{sum(x[1] == y[1] for x, y in zip(r, g))}/{len(r)}", "divergence_gaps": gaps}
        if gaps and max(gaps) > MAX_GAP:
            failures.append(f"batch {b}: {got} parts from {ref} where the eager model's own token led by "
                            f"{max(gaps):.2f} nats (> {MAX_GAP})")
    return compared, failures


def results(run: dict, compared: dict) -> dict:
    """The JSON fields of a ``warm_and_take_turns`` run and its ``compare``."""
    secs = run["secs"]
    return {"warm_s": run["warm_s"], "graphs_compiled_warming": run["graphs"], "ms_per_input_p50": medians_ms(secs),
            "ms_per_input": {v: {b: [1000 * x for x in s] for b, s in d.items()} for v, d in secs.items()},
            "compared": compared}


def report(run: dict, ms: dict, compared: dict) -> None:
    for v in ms:
        sizes = ", ".join(f"batch {b} {x:.1f}" for b, x in ms[v].items())
        print(f"{v:9s} warm {run['warm_s'][v]:6.1f} s ({run['graphs'][v]} graphs); ms per input: {sizes}")
    print("same answers: " + ", ".join(f"batch {b}: {c['identical']}" for b, c in compared.items()))


def served_probs(s: Any, batch: list) -> torch.Tensor:
    """A served classifier's label probabilities of ``batch``, scored as one batch."""
    return torch.softmax(s.engine.score_labels(s.fmt, batch, s.label_ids, batch_size=len(batch)).logits, -1)


def score_turns(students: dict[str, Any], msgs: list, rounds: int,
                scored: Callable[[Any, list], torch.Tensor] = served_probs) -> dict:
    """Label scoring, as a served classifier does it (or as ``scored(student, batch)`` does):
    ``students`` (name -> ``ServedStudent`` of a classification task), each warmed on ``msgs`` one at
    a time and as one batch, then ``rounds`` rounds taking turns scoring them one at a time and as
    one batch. Returns ``warm_s``, ``secs`` (seconds per input by batch size) and ``probs`` (each
    one's label probabilities of the last batch, in ``msgs``' order)."""
    n = str(len(msgs))
    warm_s, secs, probs = {}, {v: {"1": [], n: []} for v in students}, {}

    for v, s in students.items():
        t0 = time.perf_counter()
        for m in msgs:
            scored(s, [m])
        scored(s, msgs)
        sync()
        warm_s[v] = time.perf_counter() - t0
        print(f"{v}: warmed in {warm_s[v]:.1f} s ({s.engine.identity})", flush=True)
    for _ in range(rounds):
        for v, s in students.items():
            for m in msgs:
                sync()
                t0 = time.perf_counter()
                scored(s, [m])
                sync()
                secs[v]["1"].append(time.perf_counter() - t0)
            sync()
            t0 = time.perf_counter()
            probs[v] = scored(s, msgs)
            sync()
            secs[v][n].append((time.perf_counter() - t0) / len(msgs))
    return {"warm_s": warm_s, "secs": secs, "probs": probs}


def compare_scores(run: dict, ref: str, got: str, tol: float) -> tuple[dict, list[str]]:
    """``got``'s last label probabilities against ``ref``'s: the largest difference, how many inputs
    keep ``ref``'s label, and a failure past ``tol``."""
    p, q = run["probs"][ref], run["probs"][got]
    diff = (q - p).abs().max().item()
    same = int((q.argmax(-1) == p.argmax(-1)).sum())
    failures = [f"{got}'s label probabilities differ from {ref}'s by {diff:.4f} (> {tol})"] if diff > tol else []
    return {"max_label_prob_diff": diff, "same_label": f"{same}/{len(p)}"}, failures


def score_results(run: dict, compared: dict) -> dict:
    """The JSON fields of a ``score_turns`` run and its ``compare_scores``, after printing them."""
    ms = medians_ms(run["secs"])
    for v in ms:
        sizes = ", ".join(f"batch {b} {x:.3f}" for b, x in ms[v].items())
        print(f"{v:8s} warm {run['warm_s'][v]:6.1f} s; ms per input: {sizes}")
    print(f"largest label probability difference {compared['max_label_prob_diff']:.4f}; "
          f"same label {compared['same_label']}")
    return {"task": "classification, 5 labels", "warm_s": run["warm_s"], "ms_per_input_p50": ms, **compared,
            "ms_per_input": {v: {b: [1000 * x for x in s] for b, s in d.items()} for v, d in run["secs"].items()}}
