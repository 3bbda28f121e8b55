"""kd_signal labels vs topk on a reduced quickstart (BBC News topics, gemma-3-270m teacher, SmolLM2 student).

    PYTHONPATH=src:. python benchmarks/kd_signal.py --inputs 150 --test 40 --val 20 --shots 10
    PYTHONPATH=src:. python benchmarks/kd_signal.py --check-only benchmarks/kd_signal.json

The quickstart's teacher is local, so its records carry label_probs but no API logprobs. To put
the two signals side by side on the same data, each training record also gets the ``logprobs``
an OpenAI-compatible server would return for it with ``top_logprobs: 5``: one entry for the
answer's first token, its alternatives being each label's first token in the *teacher's*
tokenizer (Gemma), decoded to text as an API sends it, with the teacher's label log-probability.
That is the case issue 16.3 describes: the API tokens are re-encoded with the student's
tokenizer (SmolLM2), and only those that come out as one student token survive. Everything else
(curated splits, seed, steps) is identical between the two students; each is evaluated on the
same held-out articles. Writes kd_signal.json beside this script, then checks it (``failures``):
exit 1 when the comparison is not one (see ``check``); ``--check-only FILE`` checks a written file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.checks import exit_on_failures

ROOT = Path(__file__).resolve().parent
SIGNALS = ("labels", "topk")


def _rate(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= 1


def check(res: dict[str, Any]) -> list[str]:
    """Why ``res`` (kd_signal.json) is no comparison of the two signals; empty when it is one.

    Both students present, each trained with its own signal and a finite, non-zero KD term (a topk run
    whose records carry no logprobs, or whose labels' teacher tokens map to no student token, trains on
    cross-entropy alone: a 'topk' result that is really an SFT one); both evaluated on the same test
    set (same size; same ids where recorded; the teacher's gold accuracy, which depends on the test
    set only, equal); agreement and gold accuracy finite rates.
    """
    failures = []
    results, sizes = res.get("results") or {}, res.get("sizes") or {}
    for signal in SIGNALS:
        r = results.get(signal)
        if not isinstance(r, dict):
            failures.append(f"results.{signal}: missing (the comparison needs both students)")
            continue
        for key in ("agreement_with_teacher", "gold_accuracy"):
            if not _rate(r.get(key)):
                failures.append(f"results.{signal}.{key} is {r.get(key)!r}, not a rate in [0, 1]")
        if r.get("train_summary_signal") != signal:
            failures.append(f"results.{signal}: trained with kd_signal {r.get('train_summary_signal')!r}, not {signal!r}")
        terms = r.get("kd_terms_first_step") or {}
        bad = {k: v for k, v in terms.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        if bad:
            failures.append(f"results.{signal}: KD terms not finite at the first step: {bad}")
        # Steps whose batch held any KD positions of this signal (metrics.jsonl's kd_<signal>); older
        # files have only the first step's terms.
        steps = r.get("kd_steps")
        if steps is not None and not steps > 0:
            failures.append(f"results.{signal}: no training step had a {signal} KD term (kd_steps {steps}): zero KD tokens")
        elif steps is None and not (terms.get(f"kd_{signal}") or 0) > 0:
            failures.append(f"results.{signal}: no kd_{signal} term at the first step: trained without its KD signal")
        n = (r.get("agreement_ci") or {}).get("n")
        if n != sizes.get("test"):
            failures.append(f"results.{signal}: evaluated on {n} test examples, sizes.test is {sizes.get('test')}")
    if "train_with_logprobs" in sizes and not sizes["train_with_logprobs"] > 0:
        failures.append("sizes.train_with_logprobs is 0: no training record carried the top-k logprobs")
    mapped = res.get("one_student_token")
    if isinstance(mapped, dict) and not any(mapped.values()):
        failures.append("one_student_token: no label's teacher token is one student token, so topk had no signal")
    both = [results[s] for s in SIGNALS if isinstance(results.get(s), dict)]
    if len(both) == 2:
        a, b = both
        for key in ("test_ids_sha256", "teacher_gold_accuracy", "train_steps"):
            if key in a and key in b and a[key] != b[key]:
                failures.append(f"results.labels.{key} {a[key]!r} != results.topk.{key} {b[key]!r}: "
                                + ("the two students were evaluated on different test sets" if key != "train_steps"
                                   else "the two students were not trained alike"))
    return failures


def ids_sha256(path: Path) -> str:
    """A test set's identity: the sha256 of its record ids, one a line, in file order."""
    ids = [json.loads(line).get("id", "") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


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
    p.add_argument("--check-only", type=Path, metavar="FILE",
                   help="run nothing: check a kd_signal.json already written (exit 1 on a failure)")
    args = p.parse_args()
    if args.check_only is not None:
        try:
            res = json.loads(args.check_only.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{args.check_only}: cannot read it as JSON ({e})") from None
        exit_on_failures(check(res if isinstance(res, dict) else {}))
        print(f"{args.check_only}: ok")
        return
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
            "kd_steps": sum(1 for m in metrics if f"kd_{signal}" in m), "test_ids_sha256": ids_sha256(run / "test.jsonl"),
        }
        print(signal, json.dumps(results[signal]), flush=True)
    n_test = len(read_records(base / "test.jsonl"))
    res = {
        "what": ("kd_signal labels vs topk on a reduced quickstart; topk records carry the logprobs an API with "
                 "top_logprobs 5 would return, built from the local teacher's label distribution and its own (Gemma) "
                 "tokens, re-encoded with the student's (SmolLM2) tokenizer by potstill's topk path"),
        "sizes": {"inputs": args.inputs, "shots": args.shots, "orders": 1, "val": args.val, "test": n_test,
                  "train": len(train), "train_with_logprobs": sum(1 for r in train if r.logprobs)},
        "teacher_first_tokens": first, "one_student_token": mapped, "results": results,
        "winner_by_agreement": max(results, key=lambda s: results[s]["agreement_with_teacher"]),
        "winner_by_gold_accuracy": max(results, key=lambda s: results[s]["gold_accuracy"] or 0.0),
        "prep_seconds": prep_s, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_1m": os.getloadavg()[0]},
    }
    res["failures"] = check(res)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    exit_on_failures(res["failures"])


if __name__ == "__main__":
    main()
