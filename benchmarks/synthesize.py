"""Synthetic inputs against real ones on BBC News, with the quickstart's local teacher.

    nice -n 5 python benchmarks/synthesize.py [--n 200] [--out benchmarks/synthesize.json]

A user who has only 25 labelled articles (5 per topic) asks the quickstart's teacher (gemma-3-270m,
a base model: completion-format few-shot) to write N more with ``potstill synthesize``, labels all
25 + N with ``generate``, curates and trains the student exactly as the quickstart does. The
baseline student is trained the same way on 25 + N *real* articles. Both are evaluated on the
quickstart's own 250-article test split (so the numbers compare with benchmarks/quickstart.json).

Three run directories under the work directory:
- ``quickstart``: the quickstart's build, ``generate`` and ``curate``, unchanged: its test and
  val splits are the yardstick, its train split is the pool the 25 seeds and the real baseline
  come from (so neither can overlap a test article);
- ``synthetic``: ``synthesize`` (25 seeds, N new inputs, quotas per topic, test and val inputs
  avoided), then ``generate``, ``curate`` (everything to train), ``train``, ``evaluate``;
- ``real``: the same from ``generate`` on, on the 25 seeds and N other real articles.
The two student runs start from a copy of the quickstart's ledger, so an article already labelled
there is a cache hit (the same teacher identity, the same answer), not a second call.

Exits 1 when an invariant breaks (a test split that differs from the quickstart's, a synthetic
train input near a test input, a seed in the test split, quotas unmet without a reason, a tally
that does not add up). The >= 90% gold-accuracy goal is reported as met or not, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from potstill.config import load_config
from potstill.curate.dedup import jaccard, shingles
from potstill.curate.stage import curate_stage
from potstill.evaluate.stage import evaluate_stage
from potstill.generate.stage import generate_stage
from potstill.quickstart import LABELS, build, quickstart_config
from potstill.records import read_records, write_jsonl
from potstill.synthesize.stage import synthesize_stage
from potstill.train.stage import train_stage

PER_TOPIC = 5
GOAL = 0.90


def teacher_rows(run: Path) -> int:
    db = sqlite3.connect(run / "calls.sqlite")
    try:
        return db.execute("SELECT COUNT(*) FROM calls WHERE role='teacher'").fetchone()[0]
    finally:
        db.close()


def timed(stages: dict[str, Any], name: str, fn: Any, cfg: Any, run: Path) -> Any:
    """Run one stage, recording its seconds and the teacher calls it added to the ledger."""
    before = teacher_rows(run) if (run / "calls.sqlite").exists() else 0
    t0 = time.perf_counter()
    out = fn(cfg, force=True)
    stages[name] = {"seconds": round(time.perf_counter() - t0, 1),
                    "teacher_calls": (teacher_rows(run) if (run / "calls.sqlite").exists() else 0) - before}
    print(f"[bench] {run.name}/{name}: {stages[name]}", flush=True)
    return out


def reference(work: Path, stages: dict[str, Any]) -> Path:
    """The quickstart's generate + curate: its test split, val split and train pool."""
    run = work / "quickstart"
    cfg = quickstart_config(run)
    timed(stages, "generate", generate_stage, cfg, run)
    timed(stages, "curate", curate_stage, cfg, run)
    return run


def pick_seeds(ref: Path, n_extra: int, seed: int = 0) -> tuple[list, list]:
    """5 seeds per gold topic and ``n_extra`` other real articles, all from the quickstart's train
    split (its teacher-labelled inputs, not its gold-mixed real articles)."""
    pool = sorted((r for r in read_records(ref / "train.jsonl") if r.meta.get("source") == "teacher"),
                  key=lambda r: r.id)
    random.Random(seed).shuffle(pool)
    seeds = [r for lab in LABELS for r in [x for x in pool if x.label == lab][:PER_TOPIC]]
    taken = {r.id for r in seeds}
    rest = [r for r in pool if r.id not in taken]
    if len(seeds) != PER_TOPIC * len(LABELS) or len(rest) < n_extra:
        raise SystemExit(f"the quickstart's train split has too few articles for 25 seeds + {n_extra}")
    return seeds, rest[:n_extra]


def as_inputs(records: list) -> list[dict[str, Any]]:
    return [{"id": r.id, "input": r.text, "label": r.label} for r in records]


def student_run(work: Path, name: str, ref: Path) -> Path:
    """A run directory with the quickstart's files (shots, teacher) and a copy of its ledger."""
    run = work / name
    build(run, n_real=0)
    shutil.copy(ref / "calls.sqlite", run / "calls.sqlite")
    return run


def train_and_evaluate(cfg: Any, run: Path, ref: Path, stages: dict[str, Any]) -> None:
    """generate, curate (everything to train), then the quickstart's val and test splits, train, evaluate."""
    timed(stages, "generate", generate_stage, cfg, run)
    timed(stages, "curate", curate_stage, cfg, run)
    for split in ("val", "test"):
        shutil.copy(ref / f"{split}.jsonl", run / f"{split}.jsonl")
    timed(stages, "train", train_stage, cfg, run)
    timed(stages, "evaluate", evaluate_stage, cfg, run)


# Curate sends every labelled article to train: val and test are the quickstart's, copied in after.
CURATE = {"curate.val": 0, "curate.test": 0, "curate.real_data": None, "curate.real_ratio": 0.0,
          "evaluate.include_untrained": False, "evaluate.latency_samples": 5}


def synthesize_settings(run: Path, n: int, temperature: float, max_tokens: int) -> dict[str, Any]:
    return {
        "synthesize.n": n, "synthesize.seeds": str(run / "data" / "seeds.jsonl"),
        "synthesize.test_inputs": str(run / "data" / "held_out.jsonl"),
        # Headline + first sentence, as every real input: the exemplars set the length, so no length axis.
        "synthesize.lengths": [], "synthesize.styles": [],
        "synthesize.topics": ["the UK", "Europe", "the United States", "Asia", "the wider world"],
        "synthesize.exemplars": 3, "synthesize.temperature": temperature, "synthesize.max_tokens": max_tokens,
        "synthesize.min_chars": 40, "synthesize.max_rounds": 3,
    }


def synthetic_arm(work: Path, ref: Path, seeds: list, args: argparse.Namespace, stages: dict[str, Any]) -> Path:
    run = student_run(work, "synthetic", ref)
    write_jsonl(run / "data" / "seeds.jsonl", as_inputs(seeds))
    held = read_records(ref / "test.jsonl") + read_records(ref / "val.jsonl")
    write_jsonl(run / "data" / "held_out.jsonl", [{"id": r.id, "input": r.text} for r in held])
    over = {**CURATE, **synthesize_settings(run, args.n, args.temperature, args.max_tokens),
            "data.inputs": str(run / "data" / "seeds.jsonl")}
    cfg = load_config(run / "potstill.yaml", over)
    # Writing is batched (4 prompts per forward pass): the labelling below stays one call at a time.
    synth_cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"batch_size": args.synth_batch})})
    timed(stages, "synthesize", synthesize_stage, synth_cfg, run)
    cfg = load_config(run / "potstill.yaml", {**over, "data.inputs": str(run / "synthetic.jsonl")})
    train_and_evaluate(cfg, run, ref, stages)
    return run


def real_arm(work: Path, ref: Path, seeds: list, extra: list, stages: dict[str, Any]) -> Path:
    run = student_run(work, "real", ref)
    write_jsonl(run / "data" / "real_inputs.jsonl", as_inputs(seeds + extra))
    cfg = load_config(run / "potstill.yaml", {**CURATE, "data.inputs": str(run / "data" / "real_inputs.jsonl")})
    train_and_evaluate(cfg, run, ref, stages)
    return run


def arm_result(run: Path, stages: dict[str, Any]) -> dict[str, Any]:
    ev = json.loads((run / "eval.json").read_text())
    card = json.loads((run / "card.json").read_text())
    s, t = ev["models"]["student"], ev["models"]["teacher"]
    train = read_records(run / "train.jsonl")
    return {"student_gold": s["gold_metric"], "student_agreement_with_teacher": s["agreement_with_teacher"],
            "teacher_gold": t["gold_metric"], "n_test": ev["n_test"], "train_examples": len(train),
            "train_synthetic": sum("synthetic" in r.slice for r in train), "curate_counts": card["counts"],
            "train": {k: v for k, v in json.loads((run / "train.json").read_text()).items()
                      if k in ("steps", "examples", "train_s", "final_loss", "val_loss")},
            "verdict": ev["verdict"]["decision"] if "decision" in ev["verdict"] else ev["verdict"].get("go"),
            "stages": stages}


def examples(run: Path, k: int = 2) -> list[dict[str, Any]]:
    """k synthetic inputs per topic as the teacher wrote and then labelled them (for the README)."""
    labelled = {r.id: r.output for r in read_records(run / "teacher.jsonl")}
    out = []
    for lab in LABELS:
        got = [r for r in read_records(run / "synthetic.jsonl") if r.meta.get("plan", {}).get("cell") == lab][:k]
        out += [{"asked_for": lab, "teacher_label": labelled.get(r.id), "plan": r.meta["plan"],
                 "text": r.text if len(r.text) <= 300 else r.text[:297] + "..."} for r in got]
    return out


def label_match(run: Path) -> dict[str, Any]:
    """How often the teacher's label of a synthetic input is the topic it was asked to write."""
    syn = [r for r in read_records(run / "teacher.jsonl") if r.meta.get("synthetic")]
    per = {lab: [r for r in syn if r.meta["plan"]["cell"] == lab] for lab in LABELS}
    return {"overall": round(sum(r.output == r.meta["plan"]["cell"] for r in syn) / max(len(syn), 1), 4),
            **{lab: round(sum(r.output == lab for r in rs) / max(len(rs), 1), 4) for lab, rs in per.items()}}


def checks(ref: Path, syn: Path, real: Path, seeds: list, extra: list, n: int) -> list[dict[str, Any]]:
    """The invariants: each a name, whether it holds, and what was seen."""
    test = read_records(ref / "test.jsonl")
    test_ids = [r.id for r in test]
    test_sh = [shingles(r.text) for r in test]
    card = json.loads((syn / "synthesize.json").read_text())
    bar = load_config(syn / "potstill.yaml").synthesize.test_threshold
    synth_train = [r for r in read_records(syn / "train.jsonl") if "synthetic" in r.slice]
    nearest = max((jaccard(shingles(r.text), t) for r in synth_train for t in test_sh), default=0.0)
    out = [
        ("both students are evaluated on the quickstart's 250 test articles",
         all([r.id for r in read_records(run / "test.jsonl")] == test_ids for run in (syn, real)) and len(test) == 250,
         len(test)),
        ("no seed or baseline article is a test article", not ({r.id for r in seeds + extra} & set(test_ids)), 0),
        (f"no synthetic train input is near a test input (max Jaccard < {bar})", nearest < bar, round(nearest, 3)),
        ("synthetic train inputs reached train", len(synth_train) > 0, len(synth_train)),
        ("written + rejected == requests", card["written"] + card["rejected"] == card["requests"],
         [card["written"], card["rejected"], card["requests"]]),
        ("quota met, or the shortfall has reasons", card["quotas_met"] and card["written"] == n
         or (card["written"] < n and card["rejected_by_reason"]), [card["written"], card["rejected_by_reason"]]),
        ("every seed is in synthetic.jsonl, tagged real",
         sum("real" in r.slice for r in read_records(syn / "synthetic.jsonl")) == len(seeds), len(seeds)),
    ]
    return [{"check": c, "pass": bool(ok), "value": v} for c, ok, v in out]


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "nice": os.nice(0),
            # Other work on the shared machine slows every stage; the load average says how much there was.
            "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="synthetic inputs to write (split evenly over the 5 topics)")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--max-tokens", type=int, default=80, help="the longest real input is about 75 gemma tokens")
    ap.add_argument("--synth-batch", type=int, default=4, help="prompts per forward pass while writing")
    ap.add_argument("--work", default=None, help="work directory (default: a new temporary one)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("synthesize.json")))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="potstill-synth-bench-"))
    load_before, t0 = os.getloadavg(), time.perf_counter()
    ref_stages: dict[str, Any] = {}
    ref = reference(work, ref_stages)
    seeds, extra = pick_seeds(ref, args.n)
    syn_stages: dict[str, Any] = {}
    syn = synthetic_arm(work, ref, seeds, args, syn_stages)
    real_stages: dict[str, Any] = {}
    real = real_arm(work, ref, seeds, extra, real_stages)
    s_res, r_res = arm_result(syn, syn_stages), arm_result(real, real_stages)
    card = json.loads((syn / "synthesize.json").read_text())
    ratio = s_res["student_gold"] / r_res["student_gold"] if r_res["student_gold"] else None
    inv = checks(ref, syn, real, seeds, extra, args.n)
    result = {
        "what": "BBC News: a student trained on 25 real + N synthetic articles (written by the quickstart's local "
                "teacher) against one trained on 25 + N real articles; both teacher-labelled, trained as the "
                "quickstart trains, evaluated on the quickstart's 250-article test split",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "nice -n 5 python benchmarks/synthesize.py " + " ".join(sys.argv[1:]),
        "machine": machine(load_before), "total_s": round(time.perf_counter() - t0, 1),
        "settings": {"seeds": len(seeds), "n_synthetic": args.n, "teacher": "bundled:gemma-3-270m (completion, base)",
                     "temperature": args.temperature, "max_tokens": args.max_tokens, "synth_batch": args.synth_batch,
                     **{k.split(".", 1)[1]: v for k, v in synthesize_settings(Path("RUN"), args.n, args.temperature,
                                                                            args.max_tokens).items()}},
        "gold_ratio_synthetic_over_real": round(ratio, 4) if ratio is not None else None,
        "goal": {"gold_ratio_at_least": GOAL, "met": ratio is not None and ratio >= GOAL},
        "synthetic_student": s_res, "real_student": r_res,
        "synthesize": {k: card[k] for k in ("requests", "calls_this_run", "written", "rejected", "rejected_by_reason",
                                             "cells", "quotas_met", "cost_usd_this_run")},
        # Wall seconds of the stage (model load included) per input kept, and per request answered.
        "synthesize_seconds_per_written": round(syn_stages["synthesize"]["seconds"] / max(card["written"], 1), 2),
        "synthesize_seconds_per_request": round(syn_stages["synthesize"]["seconds"] / max(card["requests"], 1), 2),
        "synthesize_rejected_examples": card["rejected_examples"][:8],
        "synthetic_teacher_label_matches_requested_topic": label_match(syn),
        "quickstart_reference_stages": ref_stages,
        "synthetic_examples": examples(syn),
        "checks": inv,
        "work_dir": str(work),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("gold_ratio_synthetic_over_real", "goal", "total_s")}), flush=True)
    failed = [c["check"] for c in inv if not c["pass"]]
    if failed:
        raise SystemExit("broken invariants: " + "; ".join(failed))


if __name__ == "__main__":
    main()
