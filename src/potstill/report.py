"""Measurements of a model on records, and the comparison table pilot and evaluate print."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.markup import escape
from rich.table import Table

from potstill.config import GenerateConfig, PriceConfig
from potstill.hashing import hash_obj
from potstill.ledger import Call, Ledger
from potstill.engines.base import warm_batches
from potstill.metrics import compare, teacher_gold_metric
from potstill.progress import out, say
from potstill.records import Record
from potstill.students import Beside, Predictions, as_engine, measure_latency, percentile, predict
from potstill.tasks import Task
from potstill.teachers.api.prices import hourly_cost, price_for, token_cost


def log_student_calls(ledger: Ledger, stage: str, lm: Any, records: list[Record], preds: Predictions,
                      usd_per_hour: float) -> None:
    """One ``role='student'`` ledger row per answered record, so `potstill cost` bills the student too.

    Latency and cost per row are the record's share of its batch's wall time (``preds.seconds``)
    at ``usd_per_hour``; the extra timing passes (batch-1 latency, throughput) are measurements,
    not answers, and are not billed."""
    ledger.record_many([
        Call(request_hash=hash_obj(["student", stage, lm.identity, r.messages]), role="student", stage=stage,
             model=lm.identity, request={"messages": r.messages},
             response={"output": preds.outputs[i], "label_probs": preds.label_probs[i]},
             input_tokens=preds.prompt_tokens[i], output_tokens=preds.output_tokens[i],
             cost_usd=preds.seconds[i] * usd_per_hour / 3600, latency_s=preds.seconds[i])
        for i, r in enumerate(records)
    ])


def measure_student(lm: Any, task: Task, records: list[Record], usd_per_hour: float, batch_size: int,
                    latency_samples: int, desc: str, ledger: Ledger | None = None,
                    stage: str = "evaluate", beside: Beside | None = None) -> tuple[dict[str, Any], Any]:
    """Quality, latency (batch 1), throughput (batched) and cost per 1,000 calls, all measured here.

    ``lm``: an engine (``potstill.engines``) or an ``LM`` (run through transformers). With a
    ``ledger``, each answered record is also logged there as a student call of ``stage``. With
    ``beside``, a second model's batch-1 calls are timed in turns with this one's (``measure_latency``)."""
    lm = as_engine(lm)
    if getattr(lm, "compiled", False):  # evaluate.compile: compile every kind of call timed below, untimed
        say(f"{stage}: compiling the {desc} (torch.compile); minutes on a small CPU")
        seconds = lm.warm_compiled("evaluate", lambda: [predict(lm, task, part, batch_size=len(part), desc="")
                                                        for part in warm_batches(records, batch_size)])
        say(f"{stage}: {desc} compiled and warmed in {seconds:.0f} s")
    preds = predict(lm, task, records, batch_size=batch_size, desc=desc)
    if ledger is not None:
        log_student_calls(ledger, stage, lm, records, preds, usd_per_hour)
    quality = compare(task, preds.parsed, records)
    latency = measure_latency(lm, task, records, latency_samples, beside, batch_size)
    batched_s = preds.wall_s / max(1, len(records))
    single_s = latency.get("mean_s", batched_s)
    # Beside a timed teacher, the batched cost is that of the batches timed in its turns (the same
    # minutes as the teacher's calls), not the answering pass's, timed before them.
    in_turns = beside.student_batched if beside is not None else None
    batched_cost_s = in_turns["per_call_s"] if in_turns else batched_s
    return {
        **quality,
        "latency_batch1": latency,
        "throughput": {"calls_per_s": len(records) / preds.wall_s if preds.wall_s else None,
                       "batch_size": batch_size, "wall_s": preds.wall_s},
        "input_tokens_per_call": sum(preds.prompt_tokens) / max(1, len(records)),
        "output_tokens_per_call": sum(preds.output_tokens) / max(1, len(records)),
        # Generated answers that ran to the task's budget without ending: serve sends the trained
        # student's to the teacher (serve.escalate_truncated), so this share is paid at the teacher's price.
        **({} if task.labels else {"cut_at_budget": sum(n >= task.cfg.max_output_tokens for n in preds.output_tokens)
                                   / max(1, len(records))}),
        # Same basis as a teacher's ledger rows: one call at a time.
        "cost_per_1k_calls_usd": single_s * usd_per_hour / 3600 * 1000,
        "cost_per_1k_calls_batched_usd": batched_cost_s * usd_per_hour / 3600 * 1000,
        **({"batched_in_turns": in_turns} if in_turns else {}),
        "cost_source": f"mean batch-1 latency measured here x student.usd_per_hour={usd_per_hour}",
        "parameters": lm.num_parameters,
        "model": lm.identity,
        "engine": lm.name,
    }, preds


def measure_teacher(task: Task, records: list[Record], ledger: Ledger, timed: dict[str, Any] | None = None,
                    price: PriceConfig | None = None,
                    prices: dict[str, dict[str, float]] | None = None, hourly: bool = False) -> dict[str, Any]:
    """The teacher's quality from its recorded answers; latency, tokens and cost from the ledger.

    ``timed``: the teacher's batch-1 latency measured here (a local teacher, timed in turns with the
    student: ``students.Beside``). It then gives the latency and the cost per call (mean seconds x
    ``price.usd_per_hour``, the rate a local teacher bills its calls at), and the ledger's figures stay
    beside them as ``ledger_latency_batch1`` and ``ledger_cost_per_1k_calls_usd``: those were timed
    whenever generate ran, maybe on a busier or quieter machine than the student's timing.

    Else ``price`` (``teacher.price``), when it names one, prices the calls in place of the ledger's
    recorded cost: ``usd_per_call`` flat (a replay teacher, whose recorded traffic cost nothing to
    replay), or the token price over each row's recorded tokens, or, for a teacher that is not local
    (``hourly``: a self-hosted server behind an API, e.g. vLLM) priced by ``usd_per_hour`` alone, the
    seconds its server was busy with these calls (``prices.hourly_cost``) at that rate. The ledger's
    recorded spend stays beside it as ``ledger_cost_per_1k_calls_usd``.

    Every way prices a call at the live (interactive) price: the calls the student would take over
    are interactive, so a generate through a provider's batch API (``price_multiplier`` 0.5) must not
    halve the teacher's cost per call in the break-even. What was paid stays the recorded spend.

    Every way prices one answer too: a row of generate.n > 1 samples counts as one call of one
    sample (``_one_call``), split at ``price`` or else at the row's model in ``prices``
    (``generate.prices``; left out, the built-in table), and ``samples_note`` says so."""
    m, rows = _teacher_from_ledger(task, records, ledger, price, GenerateConfig().prices if prices is None else prices)
    recorded = sum(r["cost_usd"] for r in rows) / max(1, len(rows)) * 1000
    if timed and timed.get("n"):
        usd_per_hour = price.usd_per_hour if price is not None else 0.0
        m["ledger_latency_batch1"], m["ledger_cost_per_1k_calls_usd"] = m["latency_batch1"], recorded
        m["latency_batch1"] = {**timed, "source": f"timed by this command at batch 1 on {timed['n']} test inputs, in "
                                                  f"{timed['turns']} turns with the student's timed calls"}
        m["cost_per_1k_calls_usd"] = timed["mean_s"] * usd_per_hour / 3600 * 1000
        m["cost_source"] = (f"mean batch-1 latency timed here beside the student x teacher.price.usd_per_hour="
                            f"{usd_per_hour}")
    elif price is not None and price.usd_per_call is not None:
        m["ledger_cost_per_1k_calls_usd"] = recorded
        m["cost_per_1k_calls_usd"] = price.usd_per_call * 1000
        m["cost_source"] = f"teacher.price.usd_per_call={price.usd_per_call} (the ledger's recorded cost beside it)"
    elif price is not None and (price.input_per_mtok or price.output_per_mtok) and rows:
        usd = [token_cost(price, r["input_tokens"], r["output_tokens"], r["cached_input_tokens"], *r["cache_writes"])
               for r in rows]
        m["ledger_cost_per_1k_calls_usd"] = recorded
        m["cost_per_1k_calls_usd"] = sum(usd) / len(usd) * 1000
        m["cost_source"] = (f"the ledger's tokens of these calls at teacher.price (${price.input_per_mtok:g} input, "
                            f"${price.output_per_mtok:g} output per Mtok), the live price"
                            + (", batch answers too" if any(_batched(r) for r in rows) else ""))
    elif price is not None and price.usd_per_hour and hourly:
        m["ledger_cost_per_1k_calls_usd"] = recorded
        live = [r for r in rows if not _batched(r)]
        h = hourly_cost(live, price.usd_per_hour)
        if h["busy_s"] > 0:
            m["cost_per_1k_calls_usd"] = h["usd_per_call"] * 1000
            m["cost_source"] = (
                f"teacher.price.usd_per_hour={price.usd_per_hour:g} x the {h['busy_s']:.1f} s its server was busy with "
                f"these {h['calls']} calls (the union of their in-flight times in the ledger, so calls batched "
                f"together count once: {h['calls'] / h['busy_s']:.2f} calls/s at teacher.concurrency), shared over them")
        else:  # a replay teacher, or answers all from a provider batch: nothing timed them
            m["cost_source"] += (f"; teacher.price.usd_per_hour={price.usd_per_hour:g} is unused: the ledger times "
                                 "none of these calls (set teacher.price.usd_per_call)")
    if "samples_note" in m and not (timed and timed.get("n")) and (price is None or price.usd_per_call is None):
        m["cost_source"] += "; one answer a call: one sample's share of each row of n (samples_note)"
    return m


def _answer(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row's response (``Response.to_json()``), or {} where it holds none or no object."""
    try:
        resp = json.loads(row.get("response") or "{}")
    except (ValueError, TypeError):
        return {}
    return resp if isinstance(resp, dict) else {}


def _cache_writes(resp: dict[str, Any]) -> tuple[int, int]:
    """Prompt-cache writes of a ledger row (Anthropic's ``cache_creation_input_tokens``) and the part of
    them kept an hour (``ephemeral_1h_input_tokens``), both kept in its response ``resp``."""
    try:
        return int(resp.get("cache_write_input_tokens") or 0), int(resp.get("cache_write_1h_input_tokens") or 0)
    except (ValueError, TypeError):
        return 0, 0


def _one_call(row: dict[str, Any], price: PriceConfig | None) -> dict[str, Any]:
    """``row`` as the call a served student replaces: one answer. Its tokens (``cache_writes`` added)
    and recorded cost are one sample's where the row holds generate.n > 1 of them (``samples``).

    Sent as one request (OpenAI's ``n``), the prompt was billed once and ``output_tokens`` counts all n
    answers; sent as n requests (Anthropic: the answer's ``sample_tokens`` holds each one's [input,
    output]), the prompt was billed n times too. One call is the prompt once and the mean sample's
    output: 1,000 prompt + 5 x 200 output tokens at $2/$8 per Mtok is a $0.0100 row and a $0.0036 call.
    Its cost is the row's recorded cost x the call's share of the row's tokens at ``price`` (by their
    count where no price is known: a teacher priced at $0 recorded $0 anyway)."""
    answer = _answer(row)
    writes, samples = _cache_writes(answer), answer.get("samples") or ()
    if len(samples) < 2:
        return {**row, "cache_writes": writes, "samples": 1}
    each = answer.get("sample_tokens")
    if each:  # n requests, each with its prompt: the mean one (all n, those of an earlier failed attempt too)
        n_in, n_out = sum(t[0] for t in each) / len(each), sum(t[1] for t in each) / len(each)
    else:
        n_in, n_out = row["input_tokens"], row["output_tokens"] / len(samples)
    # Cache reads and writes are parts of the row's prompt tokens, in the same shares in one call's.
    part = n_in / row["input_tokens"] if row["input_tokens"] else 0.0
    one = {"input_tokens": n_in, "output_tokens": n_out, "cached_input_tokens": row["cached_input_tokens"] * part,
           "cache_writes": tuple(w * part for w in writes)}
    whole = token_cost(price, row["input_tokens"], row["output_tokens"], row["cached_input_tokens"], *writes)
    share = (token_cost(price, n_in, n_out, one["cached_input_tokens"], *one["cache_writes"]) / whole if whole
             else (n_in + n_out) / max(1, row["input_tokens"] + row["output_tokens"]))
    return {**row, **one, "cost_usd": row["cost_usd"] * share, "samples": len(samples)}


def _samples_note(calls: list[dict[str, Any]]) -> str | None:
    """What ``_one_call`` did to rows of n > 1 samples, and why their latency stays as recorded."""
    n = sorted({c["samples"] for c in calls if c["samples"] > 1})
    if not n:
        return None
    k = "/".join(map(str, n))
    return (f"{sum(c['samples'] > 1 for c in calls)} of {len(calls)} ledger rows hold generate.n = {k} samples (one "
            f"request billing the prompt once and {k} answers, or {k} requests billing it each time): the tokens and "
            f"cost per call are one sample's (the prompt once and the mean answer), the call a student replaces; the "
            f"latency is the whole {k}-sample request's, not one answer's (the ledger does not time the samples apart), "
            "so it reads high")


def _batched(row: dict[str, Any]) -> bool:
    """A call answered through a provider's batch API, billed at ``price_multiplier`` of the live price."""
    return (row.get("price_multiplier") or 1.0) != 1.0


def _live_cost(row: dict[str, Any]) -> float:
    """A row's cost at the live price: a batch answer's recorded cost over its share of the live price."""
    share = row.get("price_multiplier") or 1.0
    return row["cost_usd"] / share if share > 0 else row["cost_usd"]


def _teacher_from_ledger(task: Task, records: list[Record], ledger: Ledger, price: PriceConfig | None,
                         prices: dict[str, dict[str, float]]) -> tuple[dict[str, Any], list[dict]]:
    """The teacher's measures from its ledger rows for ``records``, each row as one call (``_one_call``,
    split at ``price`` or the row model's in ``prices``), and those calls."""
    hashes = [r.meta["request_hash"] for r in records if r.meta.get("request_hash")]
    rows = [_one_call(r, price_for(r["model"], price or PriceConfig(), prices)) for r in ledger.rows_for(hashes)]
    note = _samples_note(rows)
    # A row of n samples is timed as a whole: the slowest of n answers in one request, or n requests at
    # teacher.concurrency at a time. One answer's time is not in the ledger, so it stays so (samples_note).
    # A batch-API answer carries no interactive latency (the ledger records it as 0.0 s): it is left out,
    # or a teacher generated in batches read p50 / p95 0.000 s and every student looked slower than it.
    lat = [r["latency_s"] for r in rows if not _batched(r)]
    n = max(1, len(rows))
    batched = sum(map(_batched, rows))
    if not batched:
        lat_source = "ledger (calls.sqlite), as the calls were made"
    elif lat:
        lat_source = (f"ledger (calls.sqlite), as the calls were made: the {len(lat)} live calls; the {batched} answered "
                      "through a provider batch API are left out (a batch times no interactive call)")
    else:
        lat_source = (f"not measured: all {batched} calls were answered through a provider batch API, which times no "
                      "interactive call")
    cost = ({"cost_per_1k_calls_usd": sum(map(_live_cost, rows)) / n * 1000,
             "ledger_cost_per_1k_calls_usd": sum(r["cost_usd"] for r in rows) / n * 1000,
             "cost_source": (f"ledger (calls.sqlite): mean cost of these calls at the live price ({batched} of "
                             f"{len(rows)} were answered through a provider batch API at a discount, undone here: "
                             "the calls a student takes over are interactive)")}
            if batched else {"cost_per_1k_calls_usd": sum(r["cost_usd"] for r in rows) / n * 1000,
                             "cost_source": "ledger (calls.sqlite): mean cost of these calls"})
    return {
        "n": len(records),
        "agreement_with_teacher": 1.0,
        "gold_metric": teacher_gold_metric(task, records),
        "latency_batch1": {"n": len(lat), "p50_s": percentile(lat, 0.5) if lat else None,
                           "p95_s": percentile(lat, 0.95) if lat else None, "source": lat_source,
                           **({"batch_api_left_out": batched} if batched else {})},
        "input_tokens_per_call": sum(r["input_tokens"] for r in rows) / n,
        "output_tokens_per_call": sum(r["output_tokens"] for r in rows) / n,
        "cached_tokens_per_call": sum(r["cached_input_tokens"] for r in rows) / n,
        **cost,
        **({"samples_note": note} if note else {}),
        "model": rows[0]["model"] if rows else None,
    }, rows


def _fmt(x: Any, pct: bool = False, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):  # nan: a mean or percentile of no rows
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _seconds(x: Any) -> str:
    f = _fmt(x)
    return f if f == "-" else f + " s"


def _p95(lat: dict[str, Any]) -> str:
    """p95 latency and how many timed calls it came from (a p95 of 2 calls is their slower one, nearly)."""
    p95 = _seconds(lat.get("p95_s"))
    return p95 if p95 == "-" or lat.get("n") is None else f"{p95} (n={lat['n']})"


def print_table(title: str, models: dict[str, dict[str, Any]]) -> None:
    t = Table(title=title)
    # Free text: exact agreement is near 0 for any model but the teacher; chrF shows how close each came.
    text = any("chrf_with_teacher" in m for m in models.values())
    for col in ("model", "gold metric", "agreement w/ teacher", *(["chrF w/ teacher"] if text else []), "p50 latency",
                "p95 latency", "tokens/call in + out", "$ per 1k calls"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, m in models.items():
        lat = m.get("latency_batch1", {})
        chrf = [_fmt(m.get("chrf_with_teacher"), digits=3)] if text else []
        t.add_row(
            name, _fmt(m.get("gold_metric"), pct=True), _fmt(m.get("agreement_with_teacher"), pct=True), *chrf,
            _seconds(lat.get("p50_s")), _p95(lat),
            _fmt(m.get("input_tokens_per_call"), digits=0) + " + " + _fmt(m.get("output_tokens_per_call"), digits=0),
            _fmt(m.get("cost_per_1k_calls_usd"), digits=5),
        )
    out.print(t)


def print_slices(slices: list[dict[str, Any]]) -> None:
    """Each slice's verdict and why, as evaluate's verdict reads them (pass / fail / inconclusive / too small)."""
    t = Table(title="per slice: 95% interval against the bar")
    for col in ("slice", "n", "judged on", "verdict", "why"):
        t.add_column(col, justify="right" if col == "n" else "left")
    style = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    for r in slices:
        v = r["verdict"]
        # Slice names are the user's tags and labels, printed as written ("[en] news" is no markup).
        t.add_row(escape(r["slice"]), str(r["n"]), r.get("judged_on", "-"), f"[{style.get(v, 'dim')}]{v}[/]",
                  escape(r["reason"]))
    out.print(t)
