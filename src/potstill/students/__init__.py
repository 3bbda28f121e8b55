"""The student at inference: predictions, confidence and measured latency on this machine.

Used by pilot, evaluate and serve alike, so the three report the same kind of number. The model
runs through an engine (``potstill.engines``); a plain ``LM`` runs through the transformers one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.markup import escape

from potstill.engines import Engine, section_engine
from potstill.engines.base import context_length, past_context
from potstill.errors import PotstillError
from potstill.models.loading import LM
from potstill.models.prompting import PromptFormat, RefusedChat, label_token_ids, refused_record
from potstill.models.scoring import label_margin
from potstill.progress import bar, say
from potstill.records import Record
from potstill.tasks import Task


def evaluation_engine(cfg: Any, spec: str, num_layers: int | None = None, command: str = "evaluate") -> Engine:
    """The student ``spec`` in the engine evaluate runs it in (``evaluate.engine``, ``dtype``,
    ``recheck_margin``, ``quantization``); pilot measures the untrained student in the same one.
    ``command``: the one running, which an error names first."""
    return section_engine(cfg.evaluate, spec, num_layers=num_layers, compile=cfg.evaluate.compile, task=cfg.task,
                          command=command)


def untrained_student_engine(cfg: Any, command: str = "evaluate") -> Engine:
    """The model train starts from (``student.model`` cut to ``student.num_layers``), as evaluated."""
    return evaluation_engine(cfg, cfg.student.model, cfg.student.num_layers, command)


def untrained_task(task: Task) -> Task:
    """The task as the untrained student is asked it (pilot, evaluate): a tools task's instruction
    with the functions and the call's form spelt out (``tool_calls.shown_tools``), which untrained it
    cannot know and the trained student, asked without them, learnt; any other task as it is."""
    cfg = task.cfg
    if cfg.type != "tools":
        return task
    from potstill.tasks import get_task
    from potstill.tool_calls import shown_tools

    return get_task(cfg.model_copy(update={"instruction": shown_tools(cfg.instruction, cfg.tools or [],
                                                                      cfg.parallel_tool_calls,
                                                                      cfg.tool_choice == "auto")}))


def student_format(lm: Any, task: Task) -> PromptFormat:
    """A short zero-shot prompt: the chat template when the model has one, plain text otherwise.

    ``lm``: anything with a ``tokenizer`` (an ``LM`` or an engine)."""
    return tokenizer_format(lm.tokenizer, task)


def tokenizer_format(tokenizer: Any, task: Task) -> PromptFormat:
    """``student_format`` of a student known by its tokenizer alone (curate loads no weights)."""
    kind = "chat" if getattr(tokenizer, "chat_template", None) else "completion"
    return PromptFormat(kind=kind, instruction=task.cfg.instruction, calls_as_list=task.cfg.parallel_tool_calls)


def refusal(tokenizer: Any, fmt: PromptFormat, messages: list[dict[str, Any]]) -> RefusedChat | None:
    """Whether the student's chat template refuses this chat (``RefusedChat``, which serve answers with a
    400 and train, evaluate, pilot and preflight refuse naming the record), else None."""
    try:
        fmt.query(tokenizer, messages)
    except RefusedChat as e:
        return e
    return None


@dataclass
class Predictions:
    outputs: list[str]
    parsed: list[Any]
    label_probs: list[dict[str, float] | None]
    confidence: list[float]
    prompt_tokens: list[int]
    output_tokens: list[int]
    seconds: list[float]
    wall_s: float = 0.0
    batch_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def as_engine(lm: Any) -> Any:
    """An engine for ``lm``: itself when it already is one, the transformers engine for an ``LM``."""
    if isinstance(lm, LM):
        from potstill.engines.transformers import TransformersEngine

        return TransformersEngine(lm)
    return lm


def unreadable(lm: Any, task: Task, records: list[Record]) -> list[tuple[int, str]]:
    """(index, why) of the ``records`` the student does not read, asked ``task``: a prompt that with,
    generating, the task's ``max_output_tokens`` runs past its context (``engines.base.past_context``)."""
    engine = as_engine(lm)
    budget = 0 if task.labels else task.cfg.max_output_tokens
    return past_context(engine, student_format(engine, task), [r.messages for r in records], budget)


def readable(lm: Any, task: Task, records: list[Record], stage: str) -> list[Record]:
    """The ``records`` the student reads, in order: those whose prompt (and, generating, the task's
    ``max_output_tokens``) fit its context. Serve sends a longer chat to the teacher unread (reason
    ``too_long``), and a student with learned positions (GPT-2) fails on it with an IndexError, so
    pilot and evaluate set them aside too and say how many; one line and no figures where none fits.
    A chat the student's chat template refuses, which serve answers with a 400 and train refuses, is
    one line naming the record (``refused_record``)."""
    engine = as_engine(lm)
    fmt = student_format(engine, task)
    for r in records:
        if (e := refusal(engine.tokenizer, fmt, r.messages)) is not None:
            raise PotstillError(f"{stage}: {refused_record(r.id, e)}")
    over = unreadable(lm, task, records)
    if not over:
        return records
    context, first = context_length(as_engine(lm)), records[over[0][0]].id
    if len(over) == len(records):
        raise PotstillError(f"{stage}: every one of the {len(records)} inputs is longer than the student's context "
                            f"({context} positions; record {first}: {over[0][1]}), so it can answer none: pick a "
                            "student with a longer context or shorten the inputs")
    say(escape(f"{stage}: {len(over)} of {len(records)} inputs are longer than the student's context "
               f"({context} positions; record {first}: {over[0][1]}) and left out of the figures, teacher's and "
               "students' alike: served, they go to the teacher unread (reason too_long), each at the teacher's price"))
    skip = {i for i, _ in over}
    return [r for i, r in enumerate(records) if i not in skip]


def predict(lm: Any, task: Task, records: list[Record], batch_size: int = 16, desc: str = "student") -> Predictions:
    """Answer every record; classification scores the label set, other tasks generate greedily.

    ``lm``: an engine, or an ``LM`` (run through the transformers engine)."""
    engine = as_engine(lm)
    fmt = student_format(engine, task)
    msgs = [r.messages for r in records]
    t0 = time.perf_counter()
    with bar(desc, len(records)) as advance:
        if task.labels:
            ids = label_token_ids(engine.tokenizer, fmt, task.labels)
            s = engine.score_labels(fmt, msgs, ids, batch_size=batch_size, progress=advance)
            probs = torch.softmax(s.logits, -1)
            outputs = [task.labels[i] for i in probs.argmax(-1).tolist()]
            return Predictions(
                outputs=outputs, parsed=outputs,
                label_probs=[dict(zip(task.labels, p)) for p in probs.tolist()],
                # Margin between the two most likely labels: the routing signal for classification.
                confidence=label_margin(s.logits).tolist(),
                prompt_tokens=s.prompt_tokens, output_tokens=[1] * len(records), seconds=s.seconds,
                wall_s=time.perf_counter() - t0, batch_size=batch_size,
            )
        g = engine.generate(fmt, msgs, task.cfg.max_output_tokens, batch_size=batch_size, progress=advance)
    return Predictions(
        outputs=g.texts, parsed=[task.parse(t) for t in g.texts], label_probs=[None] * len(records),
        confidence=g.mean_logprob, prompt_tokens=g.prompt_tokens, output_tokens=g.output_tokens,
        seconds=g.seconds, wall_s=time.perf_counter() - t0, batch_size=batch_size,
    )


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


TURN = 25  # the student's calls per turn when another model is timed beside it (``measure_latency``)


@dataclass
class Beside:
    """Another model timed at batch 1 in turns with the student (evaluate's local teacher):
    ``call(record)`` answers one record; ``measure_latency`` times it on the first ``n`` of the
    student's records and fills ``latency`` (n, p50_s, p95_s, mean_s, turns), and, given a
    ``batch_size``, ``student_batched``: the student's batches timed in the same turns (n batches,
    batch_size, per_call_s: their seconds over the calls they answered)."""

    call: Callable[[Record], Any]
    n: int
    latency: dict[str, Any] | None = None
    student_batched: dict[str, Any] | None = None


def measure_latency(lm: Any, task: Task, records: list[Record], n: int, beside: Beside | None = None,
                    batch_size: int | None = None) -> dict[str, float]:
    """p50/p95/mean of single calls (batch 1), timed one at a time after one warm-up call.

    ``beside``: a second model timed on the first ``beside.n`` of the same records, the two taking
    turns (``TURN`` of ``lm``'s calls, then an even share of the other's), so that both are timed
    in the same minutes and a machine whose speed drifts (a shared VM: +-30% from one minute to the
    next here) moves both alike. Turns of a few seconds rather than one call each: each model runs
    a stretch of calls with its own weights in the CPU's caches, as it does serving or generating.
    With ``batch_size``, each turn also times one full batch of ``lm``'s (the next ``batch_size``
    records, cyclically): the batched cost on the same minutes' footing (``Beside.student_batched``)."""
    lm = as_engine(lm)
    sample = records[:n]
    if not sample:
        return {"n": 0}
    other = sample[: beside.n] if beside is not None else []
    predict(lm, task, sample[:1], batch_size=1, desc="warm-up")
    if other:
        beside.call(other[0])  # its warm-up (a first call loads caches, a label prior, ...)
    turns = -(-len(sample) // TURN)
    batched = bool(other) and bool(batch_size)
    times: list[float] = []
    others: list[float] = []
    batches: list[float] = []
    with bar("latency (batch 1)", len(sample) + len(other)) as advance:
        for k in range(turns):
            for r in sample[k * TURN : (k + 1) * TURN]:
                t0 = time.perf_counter()
                predict(lm, task, [r], batch_size=1, desc="")
                times.append(time.perf_counter() - t0)
                advance(1)
            if batched:
                chunk = [records[(k * batch_size + j) % len(records)] for j in range(batch_size)]
                t0 = time.perf_counter()
                predict(lm, task, chunk, batch_size=batch_size, desc="")
                batches.append(time.perf_counter() - t0)
            for r in other[k * len(other) // turns : (k + 1) * len(other) // turns]:
                t0 = time.perf_counter()
                beside.call(r)
                others.append(time.perf_counter() - t0)
                advance(1)
    if beside is not None:
        beside.latency = {**latency_stats(others), "turns": turns} if others else {"n": 0}
        if batches:
            beside.student_batched = {"n": len(batches), "batch_size": batch_size,
                                      "per_call_s": sum(batches) / (len(batches) * batch_size)}
    return latency_stats(times)


def latency_stats(times: list[float]) -> dict[str, float]:
    """n, p50_s, p95_s and mean_s of call times in seconds, and the times themselves, sorted (``times_s``:
    the verdict counts those over the latency bar, ``evaluate.slow_calls``)."""
    return {"n": len(times), "p50_s": percentile(times, 0.5), "p95_s": percentile(times, 0.95),
            "mean_s": statistics.fmean(times), "times_s": sorted(times)}
