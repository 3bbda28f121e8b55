"""`potstill evaluate`: eval.json and a self-contained report.html, a printed table and a verdict.

Every number written here is either read from the ledger (the teacher's answers, an API teacher's
latency and cost), read from an earlier stage's artifact (train.json's measured training time), or
measured by this command on this machine (the students' answers, latency and throughput, and a
local teacher's batch-1 latency, timed in turns with the student's: ``evaluate.teacher_latency_samples``);
``sources`` in eval.json says which, and report.html prints it beside each table.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.markup import escape

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.evaluate import break_even, break_even_curve, verdict
from potstill.evaluate.exact import share_interval
from potstill.evaluate.html import write_report
from potstill.evaluate.metrics import task_metrics
from potstill.evaluate.slices import field_table, length_edges, output_fields, slice_names, slice_table
from potstill.hashing import hash_obj
from potstill.ledger import Ledger
from potstill.progress import bar, say
from potstill.records import Record, read_json, read_records, write_json
from potstill.report import measure_student, measure_teacher, print_slices, print_table
from potstill.rundir import RunDir
from potstill.students import (Beside, Predictions, evaluation_engine, latency_stats, predict, readable,
                               unreadable, untrained_student_engine, untrained_task)
from potstill.tasks import Task, get_task
from potstill.teachers import get_teacher
from potstill.teachers.api.prices import hourly_cost, hourly_rate


def measure_batched(lm: Any, task: Task, records: list[Record], batch_size: int, n_batches: int) -> dict[str, Any]:
    """p50/p95 wall time of whole batches: what each caller in a batch waits (after one warm-up batch)."""
    chunks = [records[i : i + batch_size] for i in range(0, len(records), batch_size)][:n_batches]
    chunks = [c for c in chunks if len(c) == batch_size] or chunks[:1]  # a short last batch would flatter p50
    if not chunks:
        return {"n": 0}
    predict(lm, task, chunks[0], batch_size=batch_size, desc="")
    times = []
    with bar(f"latency (batch {batch_size})", len(chunks)) as advance:
        for c in chunks:
            t0 = time.perf_counter()
            predict(lm, task, c, batch_size=batch_size, desc="")
            times.append(time.perf_counter() - t0)
            advance(1)
    return {**latency_stats(times), "batch_size": len(chunks[0])}


def finite(obj: Any) -> Any:
    """NaN/inf (a percentile of no rows, say) become null, so eval.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def confidences(task: Task, preds: Predictions) -> list[float]:
    """Probability the student gave its own answer: top label probability, or exp(mean token logprob)."""
    if task.labels:
        return [max(p.values()) if p else 0.0 for p in preds.label_probs]
    return [math.exp(c) for c in preds.confidence]


def _metrics_for(task: Task, parsed: list[Any], teacher: list[Any], gold: list[Any],
                 conf: list[float] | None) -> dict[str, Any]:
    kw = {"labels": task.labels, "confidence": conf, "validate": task.validate}
    out = {"vs_teacher": task_metrics(task.name, parsed, teacher, **kw)}
    if any(g is not None for g in gold):
        out["vs_gold"] = task_metrics(task.name, parsed, gold, **kw)
    return out


def _show(x: Any) -> Any:
    """A parsed output as JSON-friendly data for the worst-case table."""
    if x is None or isinstance(x, (str, int, float, bool, list, dict)):
        return x
    return getattr(x, "reason", repr(x))


def worst_cases(task: Task, test: list[Record], preds: Predictions, teacher: list[Any], gold: list[Any],
                conf: list[float], names: list[list[str]], k: int) -> list[dict[str, Any]]:
    """The k inputs where the student disagrees with the teacher while most confident."""
    wrong = [i for i in range(len(test)) if teacher[i] is not None and task.agree(preds.parsed[i], teacher[i]) < 1]
    wrong.sort(key=lambda i: -conf[i])
    return [{"id": test[i].id, "input": test[i].text[:800], "teacher": _show(teacher[i]), "student": _show(preds.parsed[i]),
             "student_raw": preds.outputs[i][:400], "gold": _show(gold[i]), "confidence": conf[i], "slices": names[i]}
            for i in wrong[:k]]


def _secs(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f} s"


def latency_cost(models: dict[str, dict[str, Any]], batched: dict[str, dict[str, Any]],
                 usd_per_hour: float) -> list[dict[str, Any]]:
    rows = []
    for name, m in models.items():
        lat = m.get("latency_batch1", {})
        row = {"model": name, "p50_s": lat.get("p50_s"), "p95_s": lat.get("p95_s"), "latency_n": lat.get("n"),
               "usd_per_call": m["cost_per_1k_calls_usd"] / 1000, "usd_per_1k_calls": m["cost_per_1k_calls_usd"]}
        if name == "teacher" and "ledger_latency_batch1" in m:
            row["source"] = (f"timed by this command on this machine: {lat.get('n')} single calls in turns with the "
                             f"student's; $ = {m['cost_source']}; the ledger's rows for these inputs (generate's "
                             f"timing): p50 {_secs(m['ledger_latency_batch1'].get('p50_s'))}, "
                             f"${m['ledger_cost_per_1k_calls_usd']:.4g} per 1k calls")
        elif name == "teacher":
            priced = "ledger_cost_per_1k_calls_usd" in m  # teacher.price in place of the recorded cost
            left = lat.get("batch_api_left_out")
            latency = ("latency not measured: every call was answered through a provider batch API, which times no "
                       "interactive call" if left and not lat.get("n") else
                       "ledger (calls.sqlite): latency of the recorded calls for these test inputs"
                       + (f" ({left} answered through a provider batch API left out)" if left else ""))
            row["source"] = (latency + "; $ = "
                             + (f"{m['cost_source']}; the ledger's recorded spend: "
                                f"${m['ledger_cost_per_1k_calls_usd']:.4g} per 1k calls" if priced
                                else "mean cost_usd of those rows"))
        else:
            b = batched.get(name, {})
            row.update({"batched_p50_s": b.get("p50_s"), "batched_p95_s": b.get("p95_s"), "batch_size": b.get("batch_size"),
                        "batched_n": b.get("n"),
                        "calls_per_s": m["throughput"]["calls_per_s"],
                        "usd_per_1k_calls_batched": m.get("cost_per_1k_calls_batched_usd")})
            t = m.get("batched_in_turns")
            batched_src = (f"batched $ from {t['n']} batches of {t['batch_size']} timed in turns with the teacher's calls"
                           if t else "batched $ from the throughput over the whole test split")
            row["source"] = (f"measured by this command on this machine: {lat.get('n')} single calls timed one at a time, "
                             f"{b.get('n')} batches of {b.get('batch_size')} timed, throughput over the whole test split; "
                             f"$ = mean batch-1 seconds x student.usd_per_hour={usd_per_hour} / 3600; {batched_src}")
        if "samples_note" in m:  # the teacher's rows of generate.n > 1 samples, each priced as one answer
            row["source"] += f"; {m['samples_note']}"
        rows.append(row)
    return rows


def evaluate_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import STAGES

    return STAGES["evaluate"].run(cfg, force)


def evaluate_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    e, rep = cfg.evaluate, cfg.report
    task, test = _test_split(cfg, run)
    n_test = len(test)
    models, preds, batched, spend, test = _measure_models(cfg, run, task, test)
    teacher = [task.parse(r.output) for r in test]
    gold = [task.gold(r) for r in test]
    conf = {k: confidences(task, p) for k, p in preds.items()}
    metrics = _all_metrics(task, preds, conf, teacher, gold)

    edges = length_edges(test)
    # Label slices only where there is a label set: a free-text or JSON reference is one value per example.
    names = [slice_names(r, (g if g is not None else t) if task.labels else None, edges)
             for r, g, t in zip(test, gold, teacher)]
    agree = {k: [task.agree(p.parsed[i], teacher[i]) for i in range(len(test))] for k, p in preds.items()}
    judged, judge_scores, judge_flips = None, None, None
    if e.judge.enabled and not task.labels:
        from potstill.evaluate.judge import automatic_metric, flips, run_judge, scores

        metric_name, metric = automatic_metric(task, preds["student"].parsed, teacher, agree["student"])
        with run.ledger() as ledger:
            judged = run_judge(cfg, task, test, preds["student"].outputs, metric, names, ledger, metric_name)
        if task.name == "freetext":  # JSON keeps exact agreement, which a good extraction reaches
            judge_scores, judge_flips = scores(judged, len(test)), flips(judged, len(test))
    slices = _slices(cfg, task, preds, teacher, gold, names, agree, judge_scores, judge_flips)
    agreement_ci = {k: share_interval(v) for k, v in agree.items()}

    one_time, train_s = _one_time_costs(cfg, run, spend)
    escalated = served_escalations(cfg, task, preds["student"])
    be = _break_even(cfg, models, one_time, n_test - len(test), n_test, escalated)
    v = verdict(models, e.quality_bar, slices, be)

    result = {
        "task": cfg.task.type, "n_test": len(test), "test_hash": hash_obj(sorted(r.id for r in test)),
        # Test inputs longer than the student's context: served, the teacher's (reason too_long); not in n_test.
        "n_too_long": n_test - len(test),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_dir": str(run.path),
        "models": models, "agreement_ci": agreement_ci, "metrics": metrics,
        "slices": slices, "length_edges_words": list(edges),
        "worst_cases": worst_cases(task, test, preds["student"], teacher, gold, conf["student"], names, rep.worst_cases),
        "latency_cost": latency_cost(models, batched, cfg.student.usd_per_hour),
        "one_time": one_time, "break_even": be, "verdict": v, "judge": judged,
        "quality_bar": e.quality_bar.model_dump(), "min_slice_n": rep.min_slice_n,
        "bootstrap_samples": rep.bootstrap_samples,
        "sources": _sources(cfg, spend, train_s, models["teacher"], n_test - len(test), n_test, be),
    }
    if judged is not None:
        result["sources"]["judge"] = (f"judge {judged['model']}: both orders per input, answers and cost in the ledger "
                                      "(role judge); config evaluate.judge")
    result = finite(result)
    write_report(run / "report.html", result, [])
    write_json(run / "eval.json", result)
    print_table(f"evaluate: {len(test)} held-out inputs", models)
    print_slices(slices)
    cut = models["student"].get("cut_at_budget")
    if cut:
        say(f"evaluate: the student ran to its {cfg.task.max_output_tokens}-token budget without ending on "
            f"{round(cut * len(test))} of {len(test)} test inputs ({100 * cut:.1f}%); serve sends such answers to the "
            "teacher (serve.escalate_truncated). Most often it is repeating itself (see the worst cases); where the "
            "teacher's own answers run that long, raise task.max_output_tokens")
    if judged is not None:
        from potstill.evaluate.judge import summary_line

        say(escape(summary_line(judged)))
    # The reason names slices (the user's tags and labels) and the path: printed as written, not as markup.
    say(escape(f"verdict: {v['decision']}: {v['reason']}. Report: {run / 'report.html'}"))
    if judged is not None and judged["failed_calls"]:
        # As generate does: not marked done, so a plain rerun asks the failed calls again (the
        # answered ones are cached); done, the rerun was skipped and the inputs stayed "bad".
        raise PotstillError(f"evaluate: {judged['failed_calls']} judge calls failed "
                            f"({judged['first_error']}); eval.json counts their inputs as bad. Rerun to retry them")
    return {"verdict": v["go"], "agreement": models["student"]["agreement_with_teacher"]}


def _test_split(cfg: Config, run: RunDir) -> tuple[Task, list[Record]]:
    """The task and the test records that carry a teacher output, or one clear error."""
    for need in ("test.jsonl", "student"):
        if not (run / need).exists():
            raise PotstillError(f"{run / need} not found: run the stages before evaluate (`potstill run`)")
    task = get_task(cfg.task)
    test = [r for r in read_records(run / "test.jsonl") if r.output is not None]
    if not test:
        raise PotstillError(f"{run / 'test.jsonl'}: no records with a teacher output to evaluate on")
    return task, test


def _measure_models(cfg: Config, run: RunDir, task: Task, test: list[Record]):
    """Each model's answers, latency and cost: the students measured here, the teacher from the ledger;
    and the test records they were measured on, those the trained student reads (``students.readable``:
    serve sends a longer one to the teacher)."""
    e = cfg.evaluate
    n_batches = max(3, e.latency_samples // e.batch_size)
    models: dict[str, dict[str, Any]] = {}
    preds: dict[str, Predictions] = {}
    batched: dict[str, dict[str, Any]] = {}

    def measure(name: str, lm: Any, beside: Beside | None = None, asked: Task = task) -> None:
        with run.ledger() as ledger:
            models[name], preds[name] = measure_student(
                lm, asked, test, cfg.student.usd_per_hour, e.batch_size, e.latency_samples, name, ledger,
                beside=beside)
        batched[name] = measure_batched(lm, asked, test, e.batch_size, n_batches)

    # The trained student first: it decides which inputs are read (those serve gives it), and is let go
    # before the untrained one loads, so that one model at a time is in memory.
    student = evaluation_engine(cfg, str(run / "student"))
    test = readable(student, task, test, "evaluate")
    timed_teacher = _local_teacher(cfg, task, test)
    measure("student", student, timed_teacher)
    del student
    if e.include_untrained:
        _measure_untrained(cfg, task, test, measure)
    with run.ledger() as ledger:
        models["teacher"] = measure_teacher(task, test, ledger, timed_teacher.latency if timed_teacher else None,
                                            cfg.teacher.price, cfg.generate.prices, hourly=cfg.teacher.type != "local")
        spend = _generation_spend(cfg, ledger)
    # Keep the three-way order of the table: untrained, teacher, trained.
    models = {k: models[k] for k in ("untrained student", "teacher", "student") if k in models}
    preds = {k: preds[k] for k in ("untrained student", "student") if k in preds}
    batched = {k: batched[k] for k in ("untrained student", "student") if k in batched}
    return models, preds, batched, spend, test


def _measure_untrained(cfg: Config, task: Task, test: list[Record], measure: Any) -> None:
    """The untrained student's row, asked as pilot asks it (``untrained_task``: a tools task's
    instruction spells out every tool), or one line where that longer prompt does not fit its context
    on some of the inputs the trained student read. A GPT-2 student failed on those with an IndexError.
    The row is then left out rather than measured on the inputs that fit: every figure (the table,
    each slice's and field's untrained agreement, the intervals) pairs the models input by input on
    one test split, and a row over the shorter inputs alone would stand beside the trained student's
    over all of them with nothing in the table to say so."""
    lm, asked = untrained_student_engine(cfg), untrained_task(task)
    over = unreadable(lm, asked, test)
    tools = task.cfg.type == "tools"
    if over:
        say(escape(f"evaluate: the untrained student is left out: {len(over)} of {len(test)} test inputs are longer "
                   f"than its context as it is asked them (record {test[over[0][0]].id}: {over[0][1]}"
                   + ("; its instruction spells out every tool's schema" if tools else "")
                   + "), and evaluate compares the models on the same inputs (evaluate.include_untrained false "
                   "leaves it out without this line)"))
        return
    measure("untrained student", lm, asked=asked)
    if tools:
        say("evaluate: the untrained student was shown the tools and the call's form in its system prompt "
            "(zero-shot); the trained student is asked without them, having learnt both")


def _local_teacher(cfg: Config, task: Task, test: list[Record]) -> Beside | None:
    """A local teacher, loaded here to be timed in turns with the student (``evaluate.teacher_latency_samples``
    > 0), or None: an API teacher, or one that does not load here, whose latency and cost then come
    from the ledger (the latter said in one line). Its timed calls are measurements, not answers:
    neither logged to the ledger nor billed."""
    n = min(cfg.evaluate.teacher_latency_samples, cfg.evaluate.latency_samples, len(test))
    if cfg.teacher.type != "local" or n == 0:
        return None
    try:
        say(f"evaluate: loading the local teacher to time it beside the student ({n} calls)")
        teacher = get_teacher(cfg.teacher, task)
        teacher.lm()
    except Exception as e:  # noqa: BLE001 - an optional measurement: the ledger still has the teacher's timings
        first = str(e).splitlines()[0] if str(e) else ""
        say(escape(f"evaluate: the local teacher did not load here ({type(e).__name__}: {first[:200]}); its latency "
                   "and cost come from the ledger rows generate wrote"))
        return None

    def call(r: Record) -> None:
        teacher.run([teacher.request(r)], lambda i, resp: None)

    return Beside(call, n)


def _all_metrics(task: Task, preds: dict[str, Predictions], conf: dict[str, list[float]], teacher: list[Any],
                 gold: list[Any]) -> dict[str, Any]:
    metrics = {k: _metrics_for(task, p.parsed, teacher, gold, conf[k] if task.labels else None)
               for k, p in preds.items()}
    if any(g is not None for g in gold):
        metrics["teacher"] = {"vs_gold": task_metrics(task.name, teacher, gold, labels=task.labels,
                                                      validate=task.validate)}
    return metrics


def _slices(cfg: Config, task: Task, preds: dict[str, Predictions], teacher: list[Any], gold: list[Any],
            names: list[list[str]], agree: dict[str, list[float]],
            judge_scores: list[float | None] | None = None,
            judge_flips: list[bool | None] | None = None) -> list[dict[str, Any]]:
    """Per-slice agreement (and per-field, for JSON outputs) against the quality bar; on free text the
    judge's scores, where it ran, decide in place of exact-match agreement."""
    e, rep = cfg.evaluate, cfg.report
    s_gold = [task.agree(preds["student"].parsed[i], g) if g is not None else None for i, g in enumerate(gold)]
    t_gold = [task.agree(t, g) if g is not None else None for t, g in zip(teacher, gold)]
    slices = slice_table(names, agree["student"], agree.get("untrained student"), s_gold, t_gold,
                         e.quality_bar, rep.min_slice_n, rep.bootstrap_samples, rep.seed, judge_scores, judge_flips)
    if any(isinstance(t, dict) for t in teacher):
        untrained = preds.get("untrained student")
        slices += field_table(output_fields(cfg.task.json_schema, teacher), preds["student"].parsed,
                              untrained.parsed if untrained else None, teacher, gold, e.quality_bar,
                              rep.min_slice_n, rep.bootstrap_samples, rep.seed)
    return slices


def _generation_spend(cfg: Config, ledger: Ledger) -> dict[str, Any]:
    """The teacher's spend on distilling (``Ledger.summary``): served requests escalated to the teacher
    are the cost of running, paid per call whichever model serves, not of building the student.

    A teacher on a server of the user's own priced by the hour (``prices.hourly_rate``) has calls the
    ledger bills at no token price ($0): its answers cost the seconds its server was busy with them
    (``prices.hourly_cost``, as `potstill cost` and its cost per call price them) at that rate, in place
    of what the ledger recorded for them (``hourly`` says both)."""
    spend = ledger.summary("teacher", served=False)
    rate, model = hourly_rate(cfg.teacher), cfg.teacher.model
    if rate is None:
        return spend
    h = hourly_cost(ledger.spans("teacher", model, served=False), rate)
    if h["busy_s"] <= 0:  # nothing timed its calls (a replay): the ledger's figure stands
        return spend
    recorded = sum(g["cost_usd"] for g in ledger.spend_by_stage("teacher")
                   if g["model"] == model and g["stage"] != "serve")
    return {**spend, "cost_usd": spend["cost_usd"] - recorded + h["usd"],
            "hourly": {**h, "model": model, "usd_per_hour": rate, "recorded_usd": recorded}}


def _one_time_costs(cfg: Config, run: RunDir, spend: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Generation spend from the ledger plus training time from train.json, priced at student.usd_per_hour."""
    path = run / "train.json"
    train_s = read_json(path).get("train_s", 0.0) if path.exists() else 0.0
    if not isinstance(train_s, (int, float)) or isinstance(train_s, bool) or train_s < 0:
        raise PotstillError(f"{path}: train_s is {train_s!r}, not the seconds training took (run `potstill train` again)")
    one_time = {"generation_usd": spend["cost_usd"], "generation_calls": spend["calls"], "train_s": train_s,
                "train_usd": train_s / 3600 * cfg.student.usd_per_hour}
    one_time["total_usd"] = one_time["generation_usd"] + one_time["train_usd"]
    return one_time, train_s


def served_escalations(cfg: Config, task: Task, preds: Predictions) -> dict[str, int]:
    """How many of the student's test answers serve sends to the teacher whatever its calibrated
    thresholds, by the reason ``serve.routing.Routing.decide`` gives first: an answer failing the
    task's check (``invalid_output``), then a generated one that ran to ``task.max_output_tokens``
    without ending (``truncated``, under ``serve.escalate_truncated``). The low-confidence and
    out-of-distribution rules read thresholds serve calibrates on val when it starts, on its own
    engine's scores and embeddings: not known here, and left out (``_sources`` says so)."""
    out = {"invalid_output": 0, "truncated": 0}
    budget = None if task.labels or not cfg.serve.escalate_truncated else task.cfg.max_output_tokens
    for parsed, n in zip(preds.parsed, preds.output_tokens):
        if task.validate(parsed) is not None:
            out["invalid_output"] += 1
        elif budget is not None and n >= budget:
            out["truncated"] += 1
    return out


def _break_even(cfg: Config, models: dict[str, dict[str, Any]], one_time: dict[str, Any], too_long: int = 0,
                n_test: int = 0, escalated: dict[str, int] | None = None) -> dict[str, Any]:
    """The break-even on each basis, the student's cost per call being that of a call served after
    the switch: of the ``n_test`` test inputs, the ``too_long`` ones longer than its context go to the
    teacher (serve's reason too_long), at the teacher's price. 10% of them at a teacher's $1 per 1k
    calls beside a student's $0.10 is 0.9 x 0.10 + 0.1 x 1 = $0.19 per 1k served calls, and the
    saving a call 0.9 x $0.90, not $0.90: the one-time cost takes 1/0.9 as many calls to repay.

    Of the inputs it reads, those serve escalates after the student answered (``escalated``, counts by
    reason of the ``n_test - too_long`` it read: ``served_escalations``) cost the student's seconds and
    the teacher's price both: 5% of them add 0.05 x $1 to the student's $0.10, $0.15 per 1k calls it
    reads, and with the 10% too long 0.9 x 0.15 + 0.1 x 1 = $0.235 per 1k served calls."""
    e = cfg.evaluate
    t_call = models["teacher"]["cost_per_1k_calls_usd"] / 1000
    share = too_long / n_test if n_test else 0.0
    read = n_test - too_long
    by_reason = {k: v for k, v in (escalated or {}).items() if v}
    esc = sum(by_reason.values()) / read if read > 0 else 0.0

    def served(s: float) -> dict[str, Any]:
        return {"student_cost_per_call_usd": (1 - share) * (s + esc * t_call) + share * t_call,
                "student_alone_cost_per_call_usd": s}

    # evaluate.cost_basis names the student's cost per call behind the headline break-even.
    basis = "cost_per_1k_calls_batched_usd" if e.cost_basis == "batched" else "cost_per_1k_calls_usd"
    head = served((models["student"].get(basis) or models["student"]["cost_per_1k_calls_usd"]) / 1000)
    s_call = head["student_cost_per_call_usd"]
    be = break_even(t_call, s_call, one_time["total_usd"], e.monthly_calls)
    # The verdict's cost checks read these, so that they and the headline break-even share one basis.
    be.update(cost_basis=e.cost_basis, teacher_cost_per_call_usd=t_call, too_long_share=share,
              escalated_share=esc, escalated_by_reason=by_reason, **head)
    be["curve"] = break_even_curve(t_call, s_call, one_time["total_usd"], e.monthly_calls, be["months"])
    one = served(models["student"]["cost_per_1k_calls_usd"] / 1000)
    be["batch1"] = {**one, **break_even(t_call, one["student_cost_per_call_usd"], one_time["total_usd"],
                                        e.monthly_calls)}
    # The same sum with the student serving batches (its throughput pass): the case of a busy endpoint.
    batched_1k = models["student"].get("cost_per_1k_calls_batched_usd")
    if batched_1k is not None:
        b = served(batched_1k / 1000)
        be["batched"] = {"batch_size": e.batch_size, **b,
                         **break_even(t_call, b["student_cost_per_call_usd"], one_time["total_usd"], e.monthly_calls)}
    return be


def _by_the_hour(h: dict[str, Any] | None) -> str:
    if h is None:
        return ""
    return (f"; the teacher {h['model']}'s {h['calls']} answers priced by the hour in place of the ledger's "
            f"${h['recorded_usd']:.4f} for them: its server was busy {h['busy_s']:.1f} s with them (the union of their "
            f"in-flight times, so calls batched together count once) at teacher.price.usd_per_hour={h['usd_per_hour']:g}, "
            f"${h['usd']:.4f}")


def _routed(cfg: Config, be: dict[str, Any] | None, n_read: int) -> str:
    """What the served call's cost counts of serve's routing, and what it leaves out."""
    by = (be or {}).get("escalated_by_reason") or {}
    words = {"invalid_output": "failing the task's check", "truncated": "cut at task.max_output_tokens"}
    t = (be or {}).get("teacher_cost_per_call_usd") or 0.0
    counted = (f"of the {n_read} test inputs it reads, the {sum(by.values())} answers serve escalates whatever its thresholds ("
               + ", ".join(f"{n} {words[k]}" for k, n in by.items()) + ") cost the student's seconds and the "
               "teacher's price; " if by else "")
    return (counted + "left out: the low-confidence and out-of-distribution escalations, whose thresholds serve "
            "calibrates on val when it starts (serve.target_escalation, serve.target_agreement)"
            + f": each 1% of calls escalated adds the teacher's ${10 * t:.4g} per 1,000 calls, and the "
            "teacher's latency to those calls")


def _sources(cfg: Config, spend: dict[str, Any], train_s: float, teacher: dict[str, Any],
             too_long: int = 0, n_test: int = 0, be: dict[str, Any] | None = None) -> dict[str, str]:
    """Where each number in eval.json comes from, printed beside its table in report.html
    (``too_long``: of the ``n_test`` test inputs, those longer than the student's context, which it was not asked)."""
    e, rep = cfg.evaluate, cfg.report
    teacher_timed = "ledger_latency_batch1" in teacher
    priced = "" if "ledger_cost_per_1k_calls_usd" not in teacher else f"; cost per call: {teacher['cost_source']}"
    return {
        "student": ("measured by this command: the student answered every test input on this machine"
                    + (f" but the {too_long} longer than its context (served, the teacher's: reason too_long), "
                       "left out of every figure but the cost per call and the break-even, which count them at "
                       "the teacher's price" if too_long else "")),
        "teacher": ("the teacher's recorded answers in test.jsonl; its batch-1 latency timed by this command in turns "
                    "with the student's (evaluate.teacher_latency_samples), cost per call = that mean x "
                    f"teacher.price.usd_per_hour={cfg.teacher.price.usd_per_hour}; tokens from the ledger (calls.sqlite)"
                    if teacher_timed else
                    "the teacher's recorded answers in test.jsonl; latency and cost from the ledger (calls.sqlite)"
                    + priced) + (f"; {teacher['samples_note']}" if "samples_note" in teacher else ""),
        "gold": "the label/reference fields of test.jsonl (gold supplied with the inputs)",
        "intervals": ("agreement (a share): Clopper-Pearson's exact binomial interval; the judge's score and the "
                      f"gold gap and ratio: percentile bootstrap over test examples, {rep.bootstrap_samples} resamples, "
                      f"seed {rep.seed}, never narrower than the exact bound of a sample all at its mean (README, rule 1)"),
        "generation_usd": (f"ledger: sum of cost_usd over all {spend['calls']} successful teacher calls of this run "
                           "and what failed ones were billed (served requests escalated to the teacher left out)"
                           + _by_the_hour(spend.get("hourly"))),
        "train_usd": (f"train.json train_s={train_s:.1f} (measured by `potstill train`) x "
                      f"student.usd_per_hour={cfg.student.usd_per_hour} / 3600"),
        "monthly_calls": f"config evaluate.monthly_calls={e.monthly_calls}",
        "quality_bar": ("config evaluate.quality_bar and report.min_slice_n; cost per call and break-even from "
                        "the latency and cost table and evaluate.monthly_calls"
                        + (f"; the student's cost per call is that of a call served after the switch: the {too_long} "
                           f"of {n_test} test inputs longer than its context go to the teacher (reason "
                           "too_long), at the teacher's price" if too_long else "")
                        + "; " + _routed(cfg, be, n_test - too_long)),
        "served_call": _routed(cfg, be, n_test - too_long),
    }
