"""A GPU server's warm-up of static-cache generation: a compiled decoding step for each bucket of
rows (before) against one step whose rows are dynamic (``static_decode.greedy`` marks them).

    PYTHONPATH=src:. python benchmarks/static_rows.py --texts texts.jsonl --batch 16 --out static_rows.json
    PYTHONPATH=src:. python benchmarks/static_rows.py --tiny            # CPU smoke run of the same code
    PYTHONPATH=src:. python benchmarks/static_rows.py --tiny --break-static   # the gate failing

(texts.jsonl: ``gpu_generation.bbc_texts(96)``, the default.) A SmolLM2-135M-shaped model with
random bf16 weights (``--tiny``: the tests' tiny Llama in fp32 on the CPU) served as ``potstill
serve`` serves a free-text student with ``serve.compile`` (a summary of each article, ``--max-new``
tokens, the system turn cached). Each variant runs in a fresh process of its own with empty
inductor and Triton caches, one after the other: ``ServedStudent.warm`` on all texts with
``--batch`` (what ``potstill serve`` does before taking requests: single inputs, then a batch of
every power of two of rows up to ``--batch``), timed, with the graphs dynamo compiled; then
``--rounds`` batches of each bucket of rows answered and timed (ms per batch, p50).

- ``per-bucket``: the step compiled with ``dynamic=False`` and no rows marked (the code before);
- ``dynamic-rows``: today's ``StaticCaches``.

Correctness (exit 1 past it, after writing the JSON): each input's answer at every bucket from
both variants; where ``dynamic-rows`` parts from ``per-bucket``, the eager bf16 model scores both
tokens after the shared start and ``per-bucket``'s may lead by at most ``gpu_generation.MAX_GAP``
nats (a near tie: another kernel's rounding), as in ``gpu_generation.py``; a wrong cache row or
position parts anywhere. ``--break-static`` breaks the copied prefix in ``dynamic-rows`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.checks import finish
from benchmarks.gpu_generation import MAX_GAP, break_static, divergence_gaps, load_texts, tiny_model
from benchmarks.serve_gpu import sync
from benchmarks.serve_gpu_generation import served_student

VARIANTS = ("per-bucket", "dynamic-rows")


def buckets(batch: int) -> list[int]:
    out = [1]
    while out[-1] < batch:
        out.append(out[-1] * 2)
    return out


def run_variants(script: str, variants: tuple[str, ...], work: Path, a: argparse.Namespace,
                 extra: list[str] = ()) -> dict[str, Any] | None:
    """Run ``script --child V`` for each variant V, one after the other, each in a fresh process
    whose inductor and Triton caches are empty (nothing reused from another variant), with the
    common options of ``a`` and ``extra``: each one's JSON (``work/V.json``) with the process's
    seconds, or None where one failed."""
    args = ["--model", a.model, "--texts", a.texts, "--batch", str(a.batch), "--max-new", str(a.max_new),
            "--rounds", str(a.rounds), *extra] + ["--tiny"] * a.tiny + ["--break-static"] * a.break_static
    runs = {}
    for v in variants:
        cache = work / f"cache-{v}"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
        t0 = time.perf_counter()
        if subprocess.run([sys.executable, script, "--child", v, *args, "--out", str(work / f"{v}.json")],
                          env=env).returncode:
            print(f"{v} failed", file=sys.stderr)
            return None
        runs[v] = json.loads((work / f"{v}.json").read_text())
        runs[v]["process_s"] = time.perf_counter() - t0
    return runs


def served_compiled(a: argparse.Namespace, broken: str) -> tuple[Any, float]:
    """The model served with ``serve.compile`` and static caches (set here on a CPU, where compile
    leaves them off), the copied prefix broken first where ``--break-static`` names this variant
    ``broken``; and the seconds loading took."""
    from potstill.models.static_decode import StaticCaches

    if a.break_static and a.child == broken:
        break_static()
    t0 = time.perf_counter()
    served = served_student(a.model, "cpu" if a.tiny else "cuda", True, a.max_new)
    if served.engine.static is None:
        served.engine.static = StaticCaches.for_model(served.engine.lm.model, compile=True)
    return served, time.perf_counter() - t0


def warm_counted(served: Any, texts: list[str], a: argparse.Namespace) -> tuple[float, int]:
    """``ServedStudent.warm`` on ``texts`` at ``--batch``, as ``potstill serve`` warms: its seconds
    and the graphs dynamo compiled."""
    from torch._dynamo.utils import counters

    graphs0 = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    served.warm([[{"role": "user", "content": t}] for t in texts], a.batch)
    sync()
    warm_s, graphs = time.perf_counter() - t0, counters["stats"]["unique_graphs"] - graphs0
    print(f"{a.child}: warmed in {warm_s:.1f} s, {graphs} graphs, caches {sorted(served.engine.static._caches)}",
          flush=True)
    return warm_s, graphs


def timed_batches(served: Any, msgs: list, rows: int, rounds: int) -> tuple[list[float], list]:
    """``rounds`` batches of ``rows`` consecutive chats answered one after the other: each batch's
    seconds, and every answer as [text, token ids]."""
    secs, answers = [], []
    for i in range(rounds):
        sync()
        t0 = time.perf_counter()
        out = served.answer(msgs[i * rows : (i + 1) * rows])
        sync()
        secs.append(time.perf_counter() - t0)
        answers += [[x.output, x.tokens] for x in out]
    return secs, answers


def child(a: argparse.Namespace) -> int:
    """One variant in this process: warm, then time each bucket; its JSON to ``a.out``."""
    from torch._dynamo.utils import counters

    served, load_s = served_compiled(a, "dynamic-rows")
    engine = served.engine
    if a.child == "per-bucket":  # the code before: a graph per bucket of rows
        engine.static.step = torch.compile(engine.static._step, mode="reduce-overhead", dynamic=False)
        torch._dynamo.maybe_mark_dynamic = lambda t, i: None
    msgs = [[{"role": "user", "content": t}] for t in load_texts(False, a.texts)]
    graphs0 = counters["stats"]["unique_graphs"]
    warm_s, graphs = warm_counted(served, load_texts(False, a.texts), a)
    rows: dict[str, Any] = {}
    answers: dict[str, list] = {}  # by rows: each input's [text, token ids]
    for r in buckets(a.batch):
        secs, texts = timed_batches(served, msgs, r, a.rounds)
        rows[str(r)] = {"ms_per_batch_p50": 1000 * statistics.median(secs), "ms_per_batch": [1000 * s for s in secs]}
        answers[str(r)] = texts
        print(f"  rows {r:3d}: {rows[str(r)]['ms_per_batch_p50']:8.1f} ms per batch (p50 of {len(secs)})", flush=True)
    after = counters["stats"]["unique_graphs"] - graphs0 - graphs
    Path(a.out).write_text(json.dumps({"variant": a.child, "load_s": load_s, "warm_s": warm_s, "graphs": graphs,
                                       "graphs_after_warm": after, "caches": sorted(engine.static._caches),
                                       "buckets": rows, "answers": answers}) + "\n")
    return 0


def common_args(doc: str, variants: tuple[str, ...], batch: int, rounds: str, broken: str) -> argparse.ArgumentParser:
    """The options both static-cache benchmarks take."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: SmolLM2-135M-shaped random bf16 weights)")
    ap.add_argument("--texts", help="JSONL with a 'text' per line (default: gpu_generation.bbc_texts(96))")
    ap.add_argument("--batch", type=int, default=batch, help="serve.batch_size: the largest bucket of rows")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help=rounds)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny Llama on the CPU (smoke run)")
    ap.add_argument("--break-static", action="store_true", help=f"noise for the prefix {broken} copies in")
    ap.add_argument("--work", help="folder for the model, texts and each variant's JSON (default: a new temporary one)")
    ap.add_argument("--child", choices=variants, help=argparse.SUPPRESS)
    ap.add_argument("--out")
    return ap


def prepare(a: argparse.Namespace) -> Path:
    """A ``--tiny`` run's smaller sizes, and the work folder with the model and texts the children
    read (the model made where ``--model`` names none, ``texts.jsonl`` where ``--texts`` names none)."""
    if a.tiny:
        a.batch, a.max_new, a.rounds = min(a.batch, 4), min(a.max_new, 12), min(a.rounds, 2)
    work = Path(a.work or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    if not a.model:
        if a.tiny:
            a.model = tiny_model(work / "tiny")
        else:
            from benchmarks.serve_split_probe import smol_shaped

            a.model = smol_shaped(work / "smol")
    if a.texts is None:  # the children read the same texts from a file
        a.texts = str(work / "texts.jsonl")
        Path(a.texts).write_text("".join(json.dumps({"text": t}) + "\n" for t in load_texts(a.tiny, None)))
    return work


def main(argv: list[str] | None = None) -> int:
    a = common_args(__doc__, VARIANTS, 16, "timed batches per bucket of rows", "dynamic-rows").parse_args(argv)
    if a.child:
        return child(a)
    device = "cpu" if a.tiny else "cuda"
    work = prepare(a)
    runs = run_variants(__file__, VARIANTS, work, a)
    if runs is None:
        return 2

    served = served_student(a.model, device, False, a.max_new)  # eager: the judge of departures
    msgs = [[{"role": "user", "content": t}] for t in load_texts(False, a.texts)]
    failures, compared = [], {}
    ref, got = runs["per-bucket"]["answers"], runs["dynamic-rows"]["answers"]
    for r in ref:
        n = len(ref[r])
        gaps = [d["gap"] for d in divergence_gaps(served.engine, served.fmt, msgs[:n], ref[r], got[r])]
        compared[r] = {"identical": f"{sum(x[1] == y[1] for x, y in zip(ref[r], got[r]))}/{n}", "divergence_gaps": gaps}
        if gaps and max(gaps) > MAX_GAP:
            failures.append(f"rows {r}: dynamic-rows parts from per-bucket where the eager model's own token led "
                            f"by {max(gaps):.2f} nats (> {MAX_GAP})")
    for v, run in runs.items():
        print(f"{v:13s} warm {run['warm_s']:6.1f} s, {run['graphs']} graphs; p50 ms per batch by rows: "
              + ", ".join(f"{r}: {b['ms_per_batch_p50']:.1f}" for r, b in run["buckets"].items()), flush=True)
    print("same answers by rows: " + ", ".join(f"{r}: {c['identical']}" for r, c in compared.items()))
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "argv": sys.argv[1:],
           "model": "random SmolLM2-135M shape" if "smol" in a.model else a.model, "batch": a.batch,
           "max_new": a.max_new, "rounds": a.rounds, "compared": compared,
           "variants": {v: {k: x for k, x in run.items() if k != "answers"} for v, run in runs.items()}}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
