"""kd_signal labels vs topk on a reduced quickstart (BBC News topics, gemma-3-270m teacher, SmolLM2 student).

    PYTHONPATH=src python benchmarks/kd_signal.py --inputs 150 --test 40 --val 20 --shots 10

The quickstart's teacher is local, so its records carry label_probs but no API logprobs. To put
the two signals side by side on the same data, each training record also gets the ``logprobs``
an OpenAI-compatible server would return for it with ``top_logprobs: 5``: one entry for the
answer's first token, its alternatives being each label's first token in the *teacher's*
tokenizer (Gemma), decoded to text as an API sends it, with the teacher's label log-probability.
That is the case issue 16.3 describes: the API tokens are re-encoded with the student's
tokenizer (SmolLM2), and only those that come out as one student token survive. Everything else
(curated splits, seed, steps) is identical between the two students; each is evaluated on the
same held-out articles. Writes kd_signal.json beside this script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def api_logprobs(tok, labels: list[str], probs: dict[str, float], output: str) -> list[dict]:
    """What ``top_logprobs: 5`` would hold for a one-token answer: the teacher tokenizer's first token per label."""
    first = {lab: tok.decode(tok(lab, add_special_tokens=False)["input_ids"][:1]) for lab in labels}
    top = sorted(({"token": first[lab], "logprob": math.log(max(probs.get(lab, 0.0), 1e-12))} for lab in labels),
                 key=lambda t: -t["logprob"])
    return [{"token": first[output], "logprob": math.log(max(probs.get(output, 0.0), 1e-12)), "top": top}]


def train_unchecked(cfg) -> dict:
    """train_stage without its preflight, which now refuses this topk run (the teacher's tokens mostly
    do not map onto the student's): the point here is to measure what that run would have given."""
    from potstill.models.loading import load_lm
    from potstill.records import read_records, write_json
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.trainer import train

    run = Path(cfg.run_dir)
    task = get_task(cfg.task)
    lm = load_lm(cfg.student.model, device=cfg.train.device, num_layers=cfg.student.num_layers)
    summary = train(lm, student_format(lm, task), task, read_records(run / "train.jsonl"),
                    read_records(run / "val.jsonl"), cfg.train, cfg.student.max_length, run / "student",
                    run / "metrics.jsonl")
    write_json(run / "train.json", summary)
    return summary


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", type=int, default=240)
    p.add_argument("--test", type=int, default=80)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--signals", nargs="+", default=["labels", "topk"], choices=["labels", "topk"],
                   help="which students to train here (results already in kd_signal.json are kept)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/potstill-kd-signal"))
    args = p.parse_args()
    os.environ.setdefault("POTSTILL_PROGRESS", "never")
    from potstill.config import load_config
    from potstill.curate.stage import curate_stage
    from potstill.evaluate.stage import evaluate_stage
    from potstill.generate.stage import generate_stage
    from potstill.models.loading import load_lm
    from potstill.quickstart import LABELS, build
    from potstill.records import read_records, write_jsonl
    from potstill.train.stage import train_stage

    base = args.dir / "base"
    t0 = time.perf_counter()
    cfg_path = build(base, n_inputs=args.inputs, n_shots=args.shots, n_test=args.test, orders=1)
    small = {"evaluate.include_untrained": False, "evaluate.latency_samples": 5, "curate.val": args.val}
    cfg = load_config(cfg_path, small)
    generate_stage(cfg)
    curate_stage(cfg)
    prep_s = time.perf_counter() - t0
    gemma = load_lm("bundled:gemma-3-270m").tokenizer
    student_tok = load_lm("bundled:smollm2-135m-instruct").tokenizer
    train = read_records(base / "train.jsonl")
    for r in train:
        if r.label_probs and r.output in LABELS:
            r.logprobs = api_logprobs(gemma, LABELS, r.label_probs, r.output)
    first = {lab: gemma.decode(gemma(lab, add_special_tokens=False)["input_ids"][:1]) for lab in LABELS}
    mapped = {lab: len(student_tok(t, add_special_tokens=False)["input_ids"]) == 1 for lab, t in first.items()}
    out = ROOT / "kd_signal.json"
    results = json.loads(out.read_text())["results"] if out.exists() else {}
    for signal in args.signals:
        run = args.dir / signal
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run, ignore=shutil.ignore_patterns("student*", "eval.json", "report.html", "train.json",
                                                                 "metrics.jsonl"))
        write_jsonl(run / "train.jsonl", train)
        c = load_config(run / "potstill.yaml", {**small, "run_dir": str(run), "train.kd_signal": signal})
        t1 = time.perf_counter()
        summary = train_unchecked(c) if signal == "topk" else train_stage(c, force=True)
        evaluate_stage(c, force=True)
        ev = json.loads((run / "eval.json").read_text())
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        results[signal] = {
            "agreement_with_teacher": ev["models"]["student"]["agreement_with_teacher"],
            "agreement_ci": ev["agreement_ci"]["student"],
            "gold_accuracy": ev["metrics"]["student"].get("vs_gold", {}).get("accuracy"),
            "teacher_gold_accuracy": ev["metrics"].get("teacher", {}).get("vs_gold", {}).get("accuracy"),
            "kd_terms_first_step": {k: v for k, v in metrics[0].items() if k.startswith("kd")},
            "train_steps": len(metrics), "seconds": time.perf_counter() - t1, "train_summary_signal": summary.get("kd_signal"),
        }
        print(signal, json.dumps(results[signal]), flush=True)
    n_test = len(read_records(base / "test.jsonl"))
    res = {
        "what": ("kd_signal labels vs topk on a reduced quickstart; topk records carry the logprobs an API with "
                 "top_logprobs 5 would return, built from the local teacher's label distribution and its own (Gemma) "
                 "tokens, re-encoded with the student's (SmolLM2) tokenizer by potstill's topk path"),
        "sizes": {"inputs": args.inputs, "shots": args.shots, "orders": 1, "val": args.val, "test": n_test,
                  "train": len(train)},
        "teacher_first_tokens": first, "one_student_token": mapped, "results": results,
        "winner_by_agreement": max(results, key=lambda s: results[s]["agreement_with_teacher"]),
        "winner_by_gold_accuracy": max(results, key=lambda s: results[s]["gold_accuracy"] or 0.0),
        "prep_seconds": prep_s, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_1m": os.getloadavg()[0]},
    }
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
