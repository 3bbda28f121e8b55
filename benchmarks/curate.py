"""Curation on the quickstart data: real counts, and the filter's effect on student agreement.

Reads a quickstart run's teacher.jsonl (gemma-3-270m's real answers on the 900 BBC inputs), curates
it twice, with the filters (validation, exact + near dedup, self-consistency) and without (dedup
off), trains the quickstart student on each train split with the quickstart's settings, and
measures each student's agreement with the teacher:

- on its own test split (what each pipeline would report);
- on the test records the unfiltered split leaked (an exact or near duplicate sits in its train);
- on a common clean set: the filtered test records with no duplicate in either train split.

    python benchmarks/curate.py --run runs/quickstart --out benchmarks/curate.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from potstill.config import load_config
from potstill.curate.dedup import find_duplicates, jaccard, shingles
from potstill.curate.stage import curate_stage
from potstill.models.loading import load_lm
from potstill.records import Record, read_records
from potstill.students import predict
from potstill.tasks import get_task
from potstill.train.stage import train_stage

NEAR = 0.8


def has_twin(text: str, pool: list[set[str]], exact: set[str]) -> bool:
    from potstill.curate.dedup import normalise

    if normalise(text) in exact:
        return True
    s = shingles(text)
    return any(jaccard(s, p) >= NEAR for p in pool)


def agreement(lm, task, records: list[Record]) -> dict:
    if not records:
        return {"n": 0}
    preds = predict(lm, task, records, batch_size=32, desc="")
    teacher = [task.parse(r.output) for r in records]
    gold = [task.gold(r) for r in records]
    agree = [task.agree(p, t) for p, t in zip(preds.parsed, teacher)]
    acc = [task.agree(p, g) for p, g in zip(preds.parsed, gold) if g is not None]
    return {"n": len(records), "agreement_with_teacher": round(sum(agree) / len(agree), 4),
            "gold_accuracy": round(sum(acc) / len(acc), 4) if acc else None}


def corpus_duplicates() -> dict | None:
    try:
        from potstill.quickstart.bbc import load_articles

        arts = load_articles()
    except Exception as e:  # the corpus package is optional where the benchmark runs
        return {"error": str(e)}
    d = find_duplicates([a["text"] for a in arts], threshold=NEAR)
    kinds = [d.kind[i] for i in d.of]
    return {"articles": len(arts), "exact": kinds.count("exact"), "near": kinds.count("near"),
            "cross_label": sum(arts[i]["label"] != arts[j]["label"] for i, j in d.of.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="quickstart run directory (potstill.yaml + teacher.jsonl)")
    ap.add_argument("--work", default="/tmp/potstill-curate-bench")
    ap.add_argument("--student", default=None, help="override student.model (e.g. a .gguf path)")
    ap.add_argument("--out", default="benchmarks/curate.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (one student each)")
    args = ap.parse_args()
    run, work = Path(args.run), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    result: dict = {"command": "python benchmarks/curate.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if v),
                    "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"},
                    "bbc_corpus_duplicates": corpus_duplicates(), "variants": {}}
    variants = {"filtered": {}, "unfiltered": {"curate.dedup": False, "curate.near_dup": False, "curate.min_agreement": 0.0}}
    cfgs, splits = {}, {}
    for name, over in variants.items():
        rd = work / name
        rd.mkdir(parents=True)
        shutil.copy(run / "teacher.jsonl", rd / "teacher.jsonl")
        overrides = {"run_dir": str(rd), **over}
        if args.student:
            overrides["student.model"] = args.student
        cfgs[name] = load_config(run / "potstill.yaml", overrides)
        counts = curate_stage(cfgs[name])
        card = json.loads((rd / "card.json").read_text())
        splits[name] = {s: read_records(rd / f"{s}.jsonl") for s in ("train", "test")}
        result["variants"][name] = {"curate_counts": {k: v for k, v in counts.items() if k != "skipped"},
                                    "rejected_reasons": card["rejected_reasons"], "teacher_accuracy": card["teacher_accuracy"],
                                    "seeds": {}}
    task = get_task(cfgs["filtered"].task)

    def index(rs: list[Record]) -> tuple[list[set[str]], set[str]]:
        from potstill.curate.dedup import normalise

        return [shingles(r.text) for r in rs], {normalise(r.text) for r in rs}

    u_train = index(splits["unfiltered"]["train"])
    f_train = index(splits["filtered"]["train"])
    leaked = [r for r in splits["unfiltered"]["test"] if has_twin(r.text, *u_train)]
    clean = [r for r in splits["filtered"]["test"] if not has_twin(r.text, *u_train) and not has_twin(r.text, *f_train)]
    result["unfiltered_test_leaked_into_train"] = len(leaked)
    result["common_clean_test"] = len(clean)
    for seed in args.seeds:
        for name, v in result["variants"].items():
            cfg = cfgs[name].model_copy(update={"train": cfgs[name].train.model_copy(update={"seed": seed})})
            t0 = time.perf_counter()
            summary = train_stage(cfg, force=True)
            row = {"train_s": round(time.perf_counter() - t0, 1), "train_examples": summary.get("examples")}
            lm = load_lm(str(Path(cfg.run_dir) / "student"), device="cuda" if torch.cuda.is_available() else "cpu")
            row["own_test"] = agreement(lm, task, splits[name]["test"])
            row["common_clean_test"] = agreement(lm, task, clean)
            if name == "unfiltered":
                row["leaked_test_records"] = agreement(lm, task, leaked)
            v["seeds"][str(seed)] = row
            del lm
    for v in result["variants"].values():
        vals = [r["common_clean_test"]["agreement_with_teacher"] for r in v["seeds"].values()]
        gold = [r["common_clean_test"]["gold_accuracy"] for r in v["seeds"].values()]
        v["common_clean_test_mean"] = {"agreement_with_teacher": round(sum(vals) / len(vals), 4),
                                       "agreement_min_max": [min(vals), max(vals)],
                                       "gold_accuracy": round(sum(gold) / len(gold), 4), "seeds": len(vals)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
