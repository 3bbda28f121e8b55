"""Engines side by side on the quickstart student and prompt, on this machine (issue 17).

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/engine.py --run RUN --out benchmarks/engine.json
    ... --only student,serve   # rerun some parts (the others are kept from an existing --out)

RUN is a finished quickstart run: its trained student and its own test split. Without it, the
bundled (untrained) SmolLM2-135M-Instruct on a split rebuilt here.

Parts:
- ``student``: the student on the quickstart's classification prompt, transformers fp32 and
  bf16 (label rows in fp32; the chat's system turn cached, and fp32 without that cache), each
  with batches packed (potstill's default, ``potstill.models.packing``) and padded (as before;
  fp32 padded is the baseline every ratio is against), CTranslate2 int8 (with and without prefix
  reuse, with potstill's default re-check of near ties in fp32 and in bf16 (the quickstart's),
  and, for a student of more than 12 layers, its first 12 for speed only), transformers fp32 and
  bf16 with the decoder under ``torch.compile`` and batches padded (the best baseline a user
  would pick), and bf16 compiled and packed (``serve.compile``'s path); compiled on the timed
  shapes before timing, the compile time reported. A re-check's reference is loaded and warmed
  before timing. ``padded_share``: the share of a padded batch's tokens that are padding.
  Each engine: p50/p95 of single calls (batch 1) on the same articles, engines interleaved call
  by call so the shared machine's load hits them alike; throughput answering the 250 test
  articles in arrival-order batches of 16 (one engine call per batch, as ``serve`` batches;
  engines interleaved batch by batch); and label agreement with transformers fp32 over those
  250 (plus gold).
- ``teacher``: gemma-3-270m with the quickstart's 50-shot prefix (one shot order), transformers
  fp32 and bf16 (CTranslate2 int8 is refused past gemma-3's sliding window), both reusing the
  prefix's cache: same label on the 250, raw and with the quickstart's contextual calibration;
  seconds per article at batch 1. Then the quickstart teacher as ``generate`` runs it (three shot
  orders, calibrated, averaged): seconds per article, orders one at a time or in one forward (in
  bf16 also with packing off: one article's three rows have one length and run padded either way,
  so the two rows differ by the run's noise alone), and
  its labels on the 250 in fp32 and bf16; and a teacher with ``batch_size: 8`` in bf16, packed
  (gemma-3's sliding-window layers under the stacked prefixes) against padded, taking turns:
  seconds per article and the same label.
- ``extraction``: greedy JSON extraction, batch 1 and batch 8, transformers fp32 and bf16
  (``model.generate`` over whole prompts, as a user calls it: potstill's prefix cache and drafts
  are ``benchmarks/generation.py``'s), CTranslate2 int8 and float32 (``quantization`` none):
  seconds per input, the share of outputs
  identical to fp32's, valid JSON and the teacher's answer. With ``--extract-run``, a
  student distilled for the task (``benchmarks/extraction_run.py``); else the bundled untrained
  student (48 new tokens of prose).
- ``compare`` (with ``--compare-run``): another run's student on that run's own test split, per
  engine: batch-1 latency, agreement with the teacher, gold accuracy (e.g. the quickstart before
  2026-11-30: the whole 30-layer SmolLM2 trained on its top 20 layers).
- ``serve``: `potstill serve`'s app in-process on 127.0.0.1 with each engine, requests sent one
  at a time with the official openai client, routing forced to the student.

The 250 test articles: the quickstart builder's 700 inputs split as ``curate`` splits them
(val 50, test 250, seed 0), stratified by gold label (curate stratifies by the teacher's label).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.checks import exit_on_failures  # noqa: F401 - here too for the benchmarks importing it from here
from potstill.curate.split import split
from potstill.engines import load_engine
from potstill.engines.ctranslate2 import CT2Engine
from potstill.engines.transformers import TransformersEngine
from potstill.errors import PotstillError
from potstill.models.loading import load_lm
from potstill.models.prompting import PromptFormat, label_token_ids
from potstill.models.scoring import label_margin
from potstill.quickstart import build
from potstill.records import Record, read_records
from potstill.students import percentile, student_format
from potstill.tasks import get_task
from potstill.config import load_config

STUDENT = "bundled:smollm2-135m-instruct"
TEACHER = "bundled:gemma-3-270m"
EXTRACT = ("List the people and organisations this BBC News article names, as JSON: "
           '{"people": [...], "organisations": [...]}. Answer with the JSON only.')


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def quickstart(work: Path, run: Path | None = None) -> tuple[Any, list[Record], list[Record]]:
    """(config, train records, the 250 test records) of a freshly built quickstart run; with ``run``
    (a finished quickstart run), its own test split, which its trained student never saw."""
    cfg = load_config(build(work / "qs"))
    if run is not None:
        test = read_records(run / "test.jsonl")
        seen = {r.text for r in test}
        return cfg, [r for r in read_records(cfg.data.inputs) if r.text not in seen], test
    recs = read_records(cfg.data.inputs)
    train, _, test = split(recs, cfg.curate.val, cfg.curate.test, cfg.curate.seed,
                           lambda r: f"{r.label}|{','.join(sorted(r.slice))}")
    return cfg, train, test


def stats(times: list[float]) -> dict[str, float]:
    return {"n": len(times), "p50_s": percentile(times, 0.5), "p95_s": percentile(times, 0.95),
            "mean_s": statistics.fmean(times)}


def interleaved(calls: dict[str, Callable[[int], Any]], n: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency of each callable on inputs 0..n-1, engines taking turns input by input."""
    for f in calls.values():
        f(0)  # warm-up (and a CT2 static prompt's first computation)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(n):
        for k, f in calls.items():
            t0 = time.perf_counter()
            f(i)
            times[k].append(time.perf_counter() - t0)
    return {k: stats(v) for k, v in times.items()}


def torch_int8(spec: str) -> TransformersEngine:
    """torch's own dynamic int8 (fbgemm) on the decoder's linear layers; the LM head stays fp32
    because label scoring reads its rows directly."""
    lm = load_lm(spec, device="cpu")
    torch.ao.quantization.quantize_dynamic(lm.model.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    lm.identity += "#torch-dynamic-int8"
    return TransformersEngine(lm)


def compiled(spec: str, dtype: str, pack: bool = False) -> TransformersEngine:
    """transformers with its decoder under ``torch.compile`` (inductor, default mode, as a user
    would write it; ``TransformersEngine.compile``, what ``serve.compile`` does). Padded
    (``pack=False``) it is the baseline to beat, a transformers model as a user runs it; packed,
    potstill's engine. It compiles during ``warm_compiled``, timed apart."""
    e = load_engine("transformers", spec, device="cpu", dtype=dtype, compile=True)
    e.pack = pack
    e.compile_s = 0.0
    return e


def padded(e: TransformersEngine) -> TransformersEngine:
    e.pack = False  # batches right-padded after the cached prefix, as before packing
    return e


def warm_compiled(engines: dict[str, Any], fmt: PromptFormat, msgs: list[list[dict]], ids: list[int],
                  bs: int) -> None:
    """Run each compiled engine on the shapes the timed passes use (batch 1 at three lengths, so the
    recompile for dynamic lengths happens here; two batches of ``bs`` and a shorter one, the last
    batch's), recording the seconds."""
    for e in engines.values():
        if hasattr(e, "compile_s"):
            t0 = time.perf_counter()
            for i in range(3):
                e.score_labels(fmt, [msgs[i]], ids, batch_size=1)
            for s, n in ((0, bs), (bs, bs), (2 * bs, len(msgs) % bs or bs // 2)):
                e.score_labels(fmt, msgs[s : s + n], ids, batch_size=bs)
            e.compile_s = time.perf_counter() - t0


BASE = "transformers fp32, padded"
RECHECK_MARGIN = 0.3  # potstill's default (config_models.engine_recheck)
RECHECKED = f"ctranslate2 int8, fp32 re-check under margin {RECHECK_MARGIN}"
RECHECKED_BF16 = f"ctranslate2 int8, bf16 re-check under margin {RECHECK_MARGIN} (the quickstart's, with AMX)"


def core_engines(spec: str) -> dict[str, Any]:
    """The engines as potstill runs them, for the ``student`` and ``compare`` parts: transformers in
    fp32 and bf16, CTranslate2 int8 alone and with its default re-check in fp32 and in bf16."""
    return {"transformers fp32": load_engine("transformers", spec, device="cpu"),
            "transformers bf16": load_engine("transformers", spec, device="cpu", dtype="bfloat16"),
            "ctranslate2 int8": load_engine("ctranslate2", spec, device="cpu"),
            RECHECKED: load_engine("ctranslate2", spec, device="cpu", recheck_margin=RECHECK_MARGIN),
            RECHECKED_BF16: load_engine("ctranslate2", spec, device="cpu", recheck_margin=RECHECK_MARGIN,
                                        dtype="bfloat16")}


def student_engines(args: argparse.Namespace) -> dict[str, Any]:
    """``core_engines`` and the variants that show what each lever buys. The baseline is
    ``BASE``: potstill's transformers engine in fp32 with batches padded, as it ran before packing."""
    student = args.student
    e = {BASE: padded(load_engine("transformers", student, device="cpu")), **core_engines(student)}
    e["transformers bf16, padded"] = padded(load_engine("transformers", student, device="cpu", dtype="bfloat16"))
    old = load_engine("transformers", student, device="cpu")
    old.reuse_prefix = False  # the system turn recomputed per call, as before this engine cached it
    e["transformers fp32, no prefix reuse, padded"] = padded(old)
    if args.torch_variants:
        e["torch dynamic int8"] = torch_int8(student)
    if args.compiled:
        e["transformers fp32 + torch.compile, padded"] = compiled(student, "auto")
        e["transformers bf16 + torch.compile, padded"] = compiled(student, "bfloat16")
        e["transformers bf16 + torch.compile (serve.compile)"] = compiled(student, "bfloat16", pack=True)
    plain = CT2Engine.load(student, device="cpu")
    plain.reuse_prefix = False
    e["ctranslate2 int8, no prefix reuse"] = plain
    depth = e["transformers fp32"].lm.model.config.num_hidden_layers
    if depth > 12:  # what cutting the trained student would buy, before training a cut one
        e[f"ctranslate2 int8, first 12 of {depth} layers (speed only)"] = CT2Engine.load(student, device="cpu",
                                                                                        num_layers=12)
    return e


def warm_references(engines: dict[str, Any], fmt: PromptFormat, msgs: list[list[dict]], ids: list[int]) -> None:
    """Load each re-checking engine's reference and its prompt cache before timing: they load at the
    first near tie, once per process (serve's routing calibration and evaluate's passes do it there)."""
    for e in engines.values():
        if hasattr(e, "reference"):
            e.reference.score_labels(fmt, [msgs[0]], ids, batch_size=1)


def student_part(args: argparse.Namespace, cfg: Any, test: list[Record],
                 build: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
                 rechecked: tuple[str, ...] = (RECHECKED, RECHECKED_BF16)) -> dict[str, Any]:
    """``build``: the engines to measure (default ``student_engines``), ``BASE`` among them;
    ``rechecked``: those of them that re-check near ties, whose re-checked share is reported."""
    task = get_task(cfg.task)
    engines = (build or student_engines)(args)
    fmt = student_format(engines[BASE], task)
    ids = label_token_ids(engines[BASE].tokenizer, fmt, task.labels)
    msgs = [r.messages for r in test]
    out: dict[str, Any] = {"loadavg_before": loadavg(), "prompt_tokens_mean": None, "baseline": BASE, "engines": {}}
    warm_references(engines, fmt, msgs, ids)
    warm_compiled(engines, fmt, msgs, ids, args.batch_size)
    calls = {k: (lambda i, e=e: e.score_labels(fmt, [msgs[i]], ids, batch_size=1)) for k, e in engines.items()}
    lat = interleaved(calls, args.n_latency)
    bs = args.batch_size
    labels: dict[str, list[str]] = {k: [] for k in engines}
    walls = {k: 0.0 for k in engines}
    margins: list[float] = []  # fp32's top-1 minus top-2 label probability: how close each input is to a tie
    for k in rechecked:
        engines[k].rechecked = 0
    for s in range(0, len(msgs), bs):  # engines take turns batch by batch, like the latency pass
        for k, e in engines.items():
            t0 = time.perf_counter()
            logits = e.score_labels(fmt, msgs[s : s + bs], ids, batch_size=bs).logits
            walls[k] += time.perf_counter() - t0
            labels[k] += [task.labels[j] for j in logits.argmax(-1).tolist()]
            if k == BASE:
                margins += label_margin(logits).tolist()
    for k in engines:
        wall = walls[k]
        out["engines"][k] = {"batch1": lat[k], f"throughput_batch{bs}": {"inputs": len(msgs), "wall_s": wall,
                                                                      "per_input_s": wall / len(msgs),
                                                                      "inputs_per_s": len(msgs) / wall}}
        print(k, lat[k]["p50_s"], wall / len(msgs), loadavg(), flush=True)
    ref = labels[BASE]
    gold = [r.label for r in test]
    base = out["engines"][BASE]
    for k, row in out["engines"].items():
        row["agreement_with_transformers_fp32"] = sum(a == b for a, b in zip(labels[k], ref)) / len(ref)
        row["gold_accuracy"] = sum(a == b for a, b in zip(labels[k], gold)) / len(gold)
        # int8 flips labels only where fp32 itself nearly ties: agreement by fp32's margin.
        row["agreement_by_fp32_margin"] = {
            f">={m}": {"share_of_inputs": sum(x >= m for x in margins) / len(ref),
                       "agreement": (sum(a == b for a, b, x in zip(labels[k], ref, margins) if x >= m)
                                     / max(1, sum(x >= m for x in margins)))}
            for m in (0.0, 0.05, 0.1, 0.2, 0.3)}
        row["speedup_p50_vs_fp32"] = base["batch1"]["p50_s"] / row["batch1"]["p50_s"]
        row["throughput_vs_fp32"] = base[f"throughput_batch{bs}"]["wall_s"] / row[f"throughput_batch{bs}"]["wall_s"]
    for k in rechecked:
        out["engines"][k]["rechecked_share"] = engines[k].rechecked / len(msgs)
    for k, e in engines.items():
        if hasattr(e, "compile_s"):
            out["engines"][k]["compile_and_warmup_s"] = e.compile_s
    s = engines[BASE].score_labels(fmt, msgs, ids, batch_size=bs)
    c = engines["ctranslate2 int8"].score_labels(fmt, msgs[:bs], ids, batch_size=bs)
    out["prompt_tokens_mean"] = statistics.fmean(s.prompt_tokens)
    own = [n - k for n, k in zip(s.prompt_tokens, s.cached_tokens)]  # each input's tokens after the cached turn
    batches = [own[i : i + bs] for i in range(0, len(own), bs)]  # the arrival-order batches timed above
    out["padded_share"] = 1 - sum(map(sum, batches)) / sum(max(b) * len(b) for b in batches)
    out["fixed_prefix_tokens"] = c.cached_tokens[0]
    out["fixed_prefix_tokens_transformers"] = s.cached_tokens[0]
    out["loadavg_after"] = loadavg()
    return out


def three_orders(args: argparse.Namespace, cfg: Any, task: Any, engines: dict[str, Any],
                 msgs: list[list[dict]], test: list[Record]) -> dict[str, Any]:
    """Seconds per article for the quickstart teacher's three shot orders: one after another, and
    in one forward with the cached prefixes stacked (``score_labels_formats``), interleaved; and the
    teacher's labels (as ``generate`` makes them) in fp32 and bf16."""
    from potstill.teachers.local import LocalTeacher

    teacher = LocalTeacher(cfg.teacher, task)
    fmts = teacher.fmts
    ids = label_token_ids(engines["transformers fp32"].tokenizer, fmts[0], task.labels)
    calls: dict[str, Callable[[int], Any]] = {}
    for k in ("transformers fp32", "transformers bf16"):
        e = engines[k]
        calls[f"{k}, orders one at a time"] = lambda i, e=e: [e.score_labels(f, [msgs[i]], ids, batch_size=1) for f in fmts]
        calls[f"{k}, orders in one forward"] = lambda i, e=e: e.score_labels_formats(fmts, [msgs[i]], ids, batch_size=1)
    bf16 = engines["transformers bf16"]
    calls["transformers bf16, orders in one forward, padded"] = lambda i: with_pack(
        bf16, False, lambda: bf16.score_labels_formats(fmts, [msgs[i]], ids, batch_size=1))
    out: dict[str, Any] = {"orders": len(fmts), "per_article": interleaved(calls, args.n_teacher_latency)}
    out["batch8"] = teacher_batches(bf16, fmts, ids, msgs)
    # The quickstart teacher's own labels (three orders, calibrated, averaged) over all the test
    # articles, in each precision.
    labels = {}
    for k in ("transformers fp32", "transformers bf16"):
        teacher._priors = []
        probs, _ = teacher._classify(engines[k], ids, msgs)
        labels[k] = probs.argmax(-1).tolist()
    gold = [task.labels.index(r.label) for r in test]
    a, b = labels["transformers fp32"], labels["transformers bf16"]
    out["labels"] = {"n": len(a), "bf16_same_label_as_fp32": sum(x == y for x, y in zip(a, b)) / len(a),
                     "gold_accuracy": {k: sum(x == g for x, g in zip(v, gold)) / len(v) for k, v in labels.items()}}
    return out


def with_pack(e: TransformersEngine, pack: bool, run: Callable[[], Any]) -> Any:
    saved, e.pack = e.pack, pack
    try:
        return run()
    finally:
        e.pack = saved


def teacher_batches(e: TransformersEngine, fmts: list[PromptFormat], ids: list[int],
                    msgs: list[list[dict]]) -> dict[str, Any]:
    """A teacher with ``batch_size: 8``: every test article under the shot orders in one forward per
    8 articles, packed (gemma-3's sliding-window layers included) and padded, taking turns batch by
    batch; the same label under both?"""
    walls, labels = {True: 0.0, False: 0.0}, {True: [], False: []}
    for s in range(0, len(msgs), 8):
        for pack in (True, False):
            t0 = time.perf_counter()
            scored = with_pack(e, pack, lambda: e.score_labels_formats(fmts, msgs[s : s + 8], ids, batch_size=8))
            walls[pack] += time.perf_counter() - t0
            labels[pack] += sum(torch.softmax(x.logits, -1) for x in scored).argmax(-1).tolist()
    return {"articles": len(msgs), "packed_per_article_s": walls[True] / len(msgs),
            "padded_per_article_s": walls[False] / len(msgs), "packed_speedup": walls[False] / walls[True],
            "same_label": sum(a == b for a, b in zip(labels[True], labels[False])) / len(msgs)}


def teacher_part(args: argparse.Namespace, cfg: Any, test: list[Record]) -> dict[str, Any]:
    from potstill.teachers.local import LocalTeacher

    task = get_task(cfg.task)
    engines = {"transformers fp32": load_engine("transformers", TEACHER, device="cpu"),
               "transformers bf16": load_engine("transformers", TEACHER, device="cpu", dtype="bfloat16"),
               "ctranslate2 int8": load_engine("ctranslate2", TEACHER, device="cpu")}
    fmt = LocalTeacher(cfg.teacher, task).fmt  # its first shot order, as generate runs it
    ids = label_token_ids(engines["transformers fp32"].tokenizer, fmt, task.labels)
    msgs = [r.messages for r in test]
    out: dict[str, Any] = {"loadavg_before": loadavg(), "shots": len(fmt.shots or []), "engines": {}}
    try:
        engines["ctranslate2 int8"].score_labels(fmt, msgs[:1], ids)
    except PotstillError as e:  # CTranslate2 4.8.5 is wrong past gemma-3's sliding window: refused
        out["engines"]["ctranslate2 int8"] = {"refused": str(e)}
        del engines["ctranslate2 int8"]
    out["three_orders"] = three_orders(args, cfg, task, engines, msgs, test)
    calls = {k: (lambda i, e=e: e.score_labels(fmt, [msgs[i]], ids, batch_size=1)) for k, e in engines.items()}
    lat = interleaved(calls, args.n_teacher_latency)
    probs = {}
    for k, e in engines.items():
        t0 = time.perf_counter()
        s = e.score_labels(fmt, msgs, ids, batch_size=8)
        wall = time.perf_counter() - t0
        p = torch.softmax(s.logits, -1)
        free = e.score_labels(fmt, [[{"role": "user", "content": c}] for c in LocalTeacher.CONTENT_FREE], ids, batch_size=1)
        prior = torch.softmax(free.logits, -1).mean(0)
        cal = p / prior
        probs[k] = (p.argmax(-1).tolist(), cal.argmax(-1).tolist())
        out["engines"][k] = {"batch1": lat[k], "batch8_per_input_s": wall / len(msgs), "prefix_tokens": s.cached_tokens[0]}
        print("teacher", k, lat[k]["p50_s"], wall / len(msgs), loadavg(), flush=True)
    gold = [task.labels.index(r.label) for r in test]
    rt, ct = probs["transformers fp32"]
    n = len(test)
    out["gold_accuracy"] = {}
    for k, (raw, cal) in probs.items():
        out["gold_accuracy"][k] = {"raw": sum(a == g for a, g in zip(raw, gold)) / n,
                                   "calibrated": sum(a == g for a, g in zip(cal, gold)) / n}
        if k != "transformers fp32":
            out["engines"][k]["same_label_raw"] = sum(a == b for a, b in zip(rt, raw)) / n
            out["engines"][k]["same_label_calibrated"] = sum(a == b for a, b in zip(ct, cal)) / n
    # The keys earlier runs wrote: CTranslate2's agreement with transformers fp32 (None where refused).
    out["same_label_raw"] = out["engines"]["ctranslate2 int8"].get("same_label_raw")
    out["same_label_calibrated"] = out["engines"]["ctranslate2 int8"].get("same_label_calibrated")
    out["loadavg_after"] = loadavg()
    return out


def extraction_part(args: argparse.Namespace, test: list[Record]) -> dict[str, Any]:
    """Greedy generation: with ``--extract-run``, that run's distilled extraction student on its own
    test split (``benchmarks/extraction_run.py``); else the bundled student, untrained, on EXTRACT
    (it answers in free prose, where precisions part ways within a few tokens)."""
    task = None
    if args.extract_run:
        run = args.extract_run
        task = get_task(load_config(run / "potstill.yaml").task)
        spec, recs = str(run / "student"), read_records(run / "test.jsonl")[: args.n_extract]
        max_new = task.cfg.max_output_tokens
    else:
        spec, recs, max_new = STUDENT, test[: args.n_extract], args.max_new_tokens
    engines = {"transformers fp32": load_engine("transformers", spec, device="cpu"),
               "transformers bf16": load_engine("transformers", spec, device="cpu", dtype="bfloat16"),
               "ctranslate2 int8": load_engine("ctranslate2", spec, device="cpu"),
               "ctranslate2 float32": load_engine("ctranslate2", spec, device="cpu", quantization="none")}
    for k in ("transformers fp32", "transformers bf16"):  # transformers' generate as a user calls it;
        engines[k].reuse_prefix, engines[k].draft_tokens = False, 0  # potstill's cache and drafts: benchmarks/generation.py
    fmt = student_format(engines["transformers fp32"], task) if task else PromptFormat(kind="chat", instruction=EXTRACT)
    msgs = [r.messages for r in recs]
    out: dict[str, Any] = {"loadavg_before": loadavg(), "n": len(msgs), "max_new_tokens": max_new,
                           "student": spec, "instruction": fmt.instruction, "engines": {}}
    texts: dict[str, list[str]] = {}
    calls = {k: (lambda i, e=e, k=k: texts.setdefault(k, []).append(
        e.generate(fmt, [msgs[i]], max_new, batch_size=1).texts[0])) for k, e in engines.items()}
    lat = interleaved(calls, len(msgs))
    for k, e in engines.items():
        texts[k] = texts[k][1:]  # drop the warm-up call's output
        t0 = time.perf_counter()
        g = e.generate(fmt, msgs, max_new, batch_size=8)
        wall = time.perf_counter() - t0
        out["engines"][k] = {"batch1": lat[k], "batch8_per_input_s": wall / len(msgs),
                             "output_tokens_mean": statistics.fmean(g.output_tokens),
                             "batch8_same_as_batch1": sum(a == b for a, b in zip(g.texts, texts[k])) / len(msgs)}
        if task is not None:  # the answers as the task reads them: valid JSON, and the rule's answer
            parsed = [task.parse(t) for t in texts[k]]
            out["engines"][k]["valid"] = sum(task.validate(x) is None for x in parsed) / len(msgs)
            out["engines"][k]["agreement_with_teacher"] = sum(
                task.agree(x, task.parse(r.output or "")) for x, r in zip(parsed, recs)) / len(msgs)
        print("extract", k, lat[k]["p50_s"], wall / len(msgs), loadavg(), flush=True)
    a, b = texts["transformers fp32"], texts["ctranslate2 int8"]
    for k in engines:
        out["engines"][k]["identical_to_fp32"] = sum(x == y for x, y in zip(a, texts[k])) / len(a)
        out["engines"][k]["speedup_batch1_mean"] = lat["transformers fp32"]["mean_s"] / lat[k]["mean_s"]
    out["identical_outputs"] = sum(x == y for x, y in zip(a, b)) / len(a)
    out["speedup_batch1_mean"] = lat["transformers fp32"]["mean_s"] / lat["ctranslate2 int8"]["mean_s"]
    f32 = out["engines"]["ctranslate2 float32"]
    out["float32"] = {"identical_outputs": f32["identical_to_fp32"], "speedup_batch1_mean": f32["speedup_batch1_mean"]}
    out["examples"] = [{"transformers": x, "ctranslate2": y} for x, y in zip(a, b) if x != y][:3]
    out["loadavg_after"] = loadavg()
    return out


def compare_part(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """Another run's trained student (``--compare-run``): batch-1 latency per engine, and its labels'
    agreement with the teacher and with gold on that run's own test split."""
    run = args.compare_run
    task = get_task(cfg.task)
    test = read_records(run / "test.jsonl")
    spec = str(run / "student")
    engines = core_engines(spec)
    fmt = student_format(engines["transformers fp32"], task)
    ids = label_token_ids(engines["transformers fp32"].tokenizer, fmt, task.labels)
    msgs = [r.messages for r in test]
    train_cfg = load_config(run / "potstill.yaml")
    out: dict[str, Any] = {"run": str(run), "layers": engines["transformers fp32"].lm.model.config.num_hidden_layers,
                           "trainable_layers": train_cfg.train.trainable_layers, "epochs": train_cfg.train.epochs,
                           "lr": train_cfg.train.lr, "loadavg_before": loadavg(), "engines": {}}
    warm_references(engines, fmt, msgs, ids)
    lat = interleaved({k: (lambda i, e=e: e.score_labels(fmt, [msgs[i]], ids, batch_size=1))
                       for k, e in engines.items()}, args.n_latency)
    labels = {k: [task.labels[j] for j in e.score_labels(fmt, msgs, ids, batch_size=args.batch_size).logits.argmax(-1)]
              for k, e in engines.items()}
    ref = labels["transformers fp32"]
    for k in engines:
        out["engines"][k] = {
            "batch1": lat[k],
            "agreement_with_teacher": sum(a == r.output for a, r in zip(labels[k], test)) / len(test),
            "gold_accuracy": sum(a == r.label for a, r in zip(labels[k], test)) / len(test),
            "agreement_with_transformers_fp32": sum(a == b for a, b in zip(labels[k], ref)) / len(ref)}
        print("compare", k, lat[k]["p50_s"], out["engines"][k], flush=True)
    out["teacher_gold_accuracy"] = sum(r.output == r.label for r in test) / len(test)
    out["loadavg_after"] = loadavg()
    return out


def serve_part(args: argparse.Namespace, cfg: Any, train: list[Record], test: list[Record], work: Path) -> dict[str, Any]:
    from benchmarks.engine_serve import serve_latency

    return serve_latency(args, cfg, train, test, work)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--only", default="student,teacher,extraction,serve")
    ap.add_argument("--n-latency", type=int, default=40)
    ap.add_argument("--n-teacher-latency", type=int, default=20)
    ap.add_argument("--n-extract", type=int, default=50)
    ap.add_argument("--n-serve", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--torch-variants", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="part student: transformers fp32 and bf16 with the decoder under torch.compile")
    ap.add_argument("--extract-run", type=Path, help="part extraction: a finished run of benchmarks/extraction_run.py")
    ap.add_argument("--compare-run", type=Path, help="part compare: another finished run, whose student to compare")
    ap.add_argument("--run", type=Path, help="a finished quickstart run: its trained student and test split "
                    "(default: the bundled untrained student on a split rebuilt here)")
    args = ap.parse_args()
    # Each part runs when called, on the run's config and splits loaded below.
    parts = {"student": lambda: student_part(args, cfg, test), "teacher": lambda: teacher_part(args, cfg, test),
             "extraction": lambda: extraction_part(args, test),
             "serve": lambda: serve_part(args, cfg, train, test, work),
             "compare": lambda: compare_part(args, cfg)}
    unknown = sorted(set(args.only.split(",")) - set(parts))
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)} (parts: {', '.join(parts)})")
    if "compare" in args.only.split(",") and not args.compare_run:
        ap.error("part compare needs --compare-run RUN (a finished run with a trained student)")
    torch.set_num_threads(os.cpu_count() or 1)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-engine-"))
    cfg, train, test = quickstart(work, args.run)
    args.student = str(args.run / "student") if args.run else STUDENT
    result["student_model"] = args.student
    result["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                         "python": sys.version.split()[0]}
    for name in args.only.split(","):
        t0 = time.perf_counter()
        result[name] = parts[name]()
        result[name]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result[name]["part_wall_s"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(result, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
        print(f"{name}: written to {args.out}", flush=True)
    exit_on_failures(quality_failures(result))


# Issue 17's quality bar for the int8 engine (the speed-only layer cut is not held to it).
MIN_SAME_LABEL, MIN_IDENTICAL_GENERATIONS = 0.99, 0.98


def quality_failures(result: dict) -> list[str]:
    """Every quality check of the parts measured, past its tolerance (the JSON is written first)."""
    out = []
    # The engines as potstill runs them: ctranslate2 with its default near-tie re-check (int8 alone
    # is reported, not held to the bar), bf16 (the CPU path with AMX).
    for part in ("student", "compare"):
        for name in (RECHECKED, RECHECKED_BF16, "transformers bf16", "transformers fp32",
                     "transformers bf16 + torch.compile (serve.compile)"):
            engine = result.get(part, {}).get("engines", {}).get(name, {})
            if engine.get("agreement_with_transformers_fp32", 1.0) < MIN_SAME_LABEL:
                out.append(f"{part}: {name} gives fp32's label on {engine['agreement_with_transformers_fp32']:.1%} "
                           f"of the test articles (tolerance {MIN_SAME_LABEL:.0%})")
    teacher = result.get("teacher", {})
    same = teacher.get("three_orders", {}).get("labels", {}).get("bf16_same_label_as_fp32")
    if same is not None and same < MIN_SAME_LABEL:  # the quickstart teacher as generate runs it
        out.append(f"teacher: bf16 gives fp32's label (three orders) on {same:.1%} (tolerance {MIN_SAME_LABEL:.0%})")
    for name, row in result.get("extraction", {}).get("engines", {}).items():
        ident = row.get("identical_to_fp32")
        if ident is not None and ident < MIN_IDENTICAL_GENERATIONS:
            out.append(f"extraction: {name}: {ident:.1%} of greedy outputs identical to fp32's "
                       f"(tolerance {MIN_IDENTICAL_GENERATIONS:.0%})")
    return out


if __name__ == "__main__":
    main()
