"""Generation with the prompt's fixed start cached and drafts from the context (issue 17), against
transformers' ``generate`` over whole prompts, on this machine's CPU.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/generation.py RUNX --out benchmarks/generation.json

RUNX is a finished run of ``benchmarks/extraction_run.py`` (a student distilled for JSON
extraction). Parts, each path side by side with its baseline, taking turns input by input:
- ``student``: that student (chat prompt; the system turn is the fixed start) on its test split,
  greedy, 64 new tokens at most: batch 1 and batches of 8, ``model.generate`` over each whole
  prompt (the baseline) against the engine's path (``TransformersEngine.generate``: the system
  turn's KV cache copied per call; at batch 1 ``greedy_lookup`` with drafts of 0, 2, 4 and 8).
- ``forwards``: one forward's seconds by the number of tokens it feeds, and the tokens decoded per
  forward at each draft length (16 inputs).
- ``teacher``: the bundled gemma-3-270m as a few-shot local teacher for the same task (a
  completion prompt with N shots answered by the task's rule, about 1,100 tokens for 20): the
  prefix recomputed with every prompt (``model.generate``, as before) against its cache copied.
  gemma-3's sliding-window layers make the cached path run prompts one at a time.

Correctness: every path's outputs must be the baseline's on at least 98% of the inputs, else the
script exits 1 after writing the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.extraction_run import INSTRUCTION, extract
from potstill.config import load_config
from potstill.engines import load_engine
from potstill.models.prompting import PromptFormat, encode_prompt
from potstill.records import read_records
from potstill.students import percentile, student_format
from potstill.tasks import get_task

TOLERANCE = 0.98


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def turns(paths: dict[str, Callable[[list], Any]], batches: list[list]) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """Each path on every batch, paths taking turns batch by batch (after one warm-up call each):
    texts in input order, seconds per input (mean, p50, p95 over batches)."""
    for f in paths.values():
        f(batches[0])
    texts: dict[str, list[str]] = {k: [] for k in paths}
    secs: dict[str, list[float]] = {k: [] for k in paths}
    for b in batches:
        for k, f in paths.items():
            t0 = time.perf_counter()
            texts[k] += f(b).texts
            secs[k].append((time.perf_counter() - t0) / len(b))
    return texts, {k: {"mean_s": statistics.fmean(v), "p50_s": percentile(v, 0.5), "p95_s": percentile(v, 0.95)}
                   for k, v in secs.items()}


def compare(texts: dict[str, list[str]], times: dict[str, dict], base: str) -> dict[str, Any]:
    rows = {}
    for k in texts:
        rows[k] = {**times[k], "speedup_mean": times[base]["mean_s"] / times[k]["mean_s"],
                   "identical_to_baseline": sum(a == b for a, b in zip(texts[base], texts[k])) / len(texts[base])}
        print(f"  {k}: {times[k]['mean_s']:.3f} s per input, {rows[k]['speedup_mean']:.2f}x, "
              f"{rows[k]['identical_to_baseline']:.0%} identical", flush=True)
    return rows


def student_part(run: Path, n: int) -> dict[str, Any]:
    task = get_task(load_config(run / "potstill.yaml").task)
    recs = read_records(run / "test.jsonl")[:n]
    msgs = [r.messages for r in recs]
    max_new = task.cfg.max_output_tokens
    e = load_engine("transformers", str(run / "student"), device="cpu")
    fmt = student_format(e, task)

    def path(reuse: bool, lookup: int, bs: int) -> Callable[[list], Any]:
        def call(batch: list) -> Any:
            e.reuse_prefix, e.draft_tokens = reuse, lookup
            return e.generate(fmt, batch, max_new, batch_size=bs)
        return call

    out: dict[str, Any] = {"student": str(run / "student"), "n": len(msgs), "max_new_tokens": max_new,
                           "prefix_tokens": e.prefix(fmt).length, "loadavg_before": loadavg()}
    print("student, batch 1", flush=True)
    b1 = {"transformers generate (baseline)": path(False, 0, 1), "cached prefix": path(True, 0, 1),
          **{f"cached prefix + drafts of {k}": path(True, k, 1) for k in (2, 4, 8)}}
    texts, times = turns(b1, [[m] for m in msgs])
    out["batch1"] = compare(texts, times, "transformers generate (baseline)")
    g = e.generate(fmt, msgs, max_new, batch_size=1)
    out["output_tokens_mean"] = statistics.fmean(g.output_tokens)
    valid = [task.validate(task.parse(t)) is None for t in texts["transformers generate (baseline)"]]
    out["valid_json"] = sum(valid) / len(valid)
    print("student, batch 8", flush=True)
    b8 = {"transformers generate (baseline)": path(False, 0, 8), "cached prefix": path(True, 2, 8)}
    texts8, times8 = turns(b8, [msgs[i : i + 8] for i in range(0, len(msgs), 8)])
    out["batch8"] = compare(texts8, times8, "transformers generate (baseline)")
    out["loadavg_after"] = loadavg()
    return out


def forwards_part(run: Path, n: int) -> dict[str, Any]:
    """Why drafts pay little on this CPU: seconds of one forward feeding 1, 2, 4 or 8 tokens after a
    cached prompt (median of 8), and the tokens kept per forward at each draft length."""
    task = get_task(load_config(run / "potstill.yaml").task)
    msgs = [r.messages for r in read_records(run / "test.jsonl")[:n]]
    e = load_engine("transformers", str(run / "student"), device="cpu")
    fmt = student_format(e, task)
    model = e.lm.model
    ids = encode_prompt(e.tokenizer, fmt, fmt.prefix() + fmt.query(e.tokenizer, msgs[0]), first=True)
    out: dict[str, Any] = {"n": len(msgs), "forward_s_by_tokens_fed": {}, "tokens_per_forward": {}}
    with torch.inference_mode():
        for width in (1, 2, 4, 8):
            ts = []
            for _ in range(8):
                past = model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
                t0 = time.perf_counter()
                model(input_ids=torch.tensor([ids[:width]]), past_key_values=past, use_cache=True, logits_to_keep=width)
                ts.append(time.perf_counter() - t0)
            out["forward_s_by_tokens_fed"][width] = statistics.median(ts)
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda mod, a, kw: calls.append(1), with_kwargs=True)
    try:
        for draft in (0, 2, 4, 8):
            calls.clear()
            e.draft_tokens = draft
            g = e.generate(fmt, msgs, task.cfg.max_output_tokens, batch_size=1)
            # a prompt's first forward (its own tokens) gives one token; the rest are decoding forwards
            decoded = sum(g.output_tokens) + sum(n < task.cfg.max_output_tokens for n in g.output_tokens) - len(msgs)
            out["tokens_per_forward"][draft] = decoded / (len(calls) - len(msgs))
    finally:
        hook.remove()
    print(" ", out, flush=True)
    return out


def teacher_part(run: Path, n: int, shots: int) -> dict[str, Any]:
    from potstill.models.generation import generate

    train = read_records(run / "train.jsonl")
    recs = read_records(run / "test.jsonl")[:n]
    msgs = [r.messages for r in recs]
    fmt = PromptFormat(kind="completion", instruction=INSTRUCTION,
                       shots=[(r.messages[0]["content"], json.dumps(extract(r.messages[0]["content"])))
                              for r in train[:shots]])
    e = load_engine("transformers", "bundled:gemma-3-270m", device="cpu")
    prefix = e.prefix(fmt)
    out: dict[str, Any] = {"teacher": "bundled:gemma-3-270m", "n": len(msgs), "shots": shots,
                           "prefix_tokens": prefix.length, "max_new_tokens": 64, "stop": ["\n"],
                           "loadavg_before": loadavg()}
    for bs in (1, 8):
        print(f"teacher, batch {bs}", flush=True)
        paths = {"transformers generate, prefix recomputed (baseline)":
                 lambda b, bs=bs: generate(e.lm, fmt, b, 64, batch_size=bs, stop=["\n"]),
                 "cached prefix": lambda b, bs=bs: e.generate(fmt, b, 64, batch_size=bs, stop=["\n"])}
        texts, times = turns(paths, [msgs[i : i + bs] for i in range(0, len(msgs), bs)])
        out[f"batch{bs}"] = compare(texts, times, "transformers generate, prefix recomputed (baseline)")
        if bs == 1:
            rule = [json.dumps(extract(r.messages[0]["content"])) for r in recs]
            got = texts["cached prefix"]
            out["teacher_matches_the_rule"] = sum(t.strip() == a for t, a in zip(got, rule)) / len(rule)
    out["loadavg_after"] = loadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a finished run of benchmarks/extraction_run.py")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--n-teacher", type=int, default=24)
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--only", default="student,forwards,teacher")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/generation.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    t0 = time.time()
    if "student" in args.only:
        result["student"] = student_part(args.run.resolve(), args.n)
    if "forwards" in args.only:
        result["forwards"] = forwards_part(args.run.resolve(), 16)
    if "teacher" in args.only:
        result["teacher"] = teacher_part(args.run.resolve(), args.n_teacher, args.shots)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["wall_s"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    bad = [f"{part} {batch} {k}: {row['identical_to_baseline']:.1%} identical (< {TOLERANCE:.0%})"
           for part in ("student", "teacher") for batch in ("batch1", "batch8")
           for k, row in result.get(part, {}).get(batch, {}).items() if row["identical_to_baseline"] < TOLERANCE]
    for line in bad:
        print("FAIL", line, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
