"""Generate: run the teacher over records, through the ledger.

Every request is hashed with the teacher's identity; a hash with an ``ok`` row in the ledger is
answered from it and never sent again. Each answer is committed to the ledger as it arrives, so
after a crash (even ``kill -9``) a rerun re-sends only what was in flight: at most
``teacher.concurrency`` requests. The output file is rebuilt from the ledger and written
atomically at the end, so a record reaches it only once its answer is committed.

Every teacher answers through its own ``run`` (API teachers on ``potstill.teachers.api.engine``:
rate limits, budget, retries). ``generate.engine: ray`` shards the
requests over Ray workers that commit into the same ledger (``potstill.generate.ray_engine``);
``generate.engine: batch`` sends them through the provider's batch API (``potstill.generate.batch_engine``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from typing import Any

from rich.markup import escape

from potstill.config import Config, GenerateConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_obj
from potstill.ledger import Call, Ledger
from potstill.progress import bar, say
from potstill.records import Record
from potstill.tasks import Task, get_task
from potstill.teachers import Response, RunStats, Teacher, get_teacher, request_hash
from potstill.teachers.base import is_refusal


def ledger_call(h: str, teacher: Teacher, stage: str, request: dict[str, Any], resp: Response) -> Call:
    """The ledger row for one answer (what ``label_records`` and the Ray workers commit)."""
    ok = resp.ok
    stop = resp.stop_reason
    return Call(
        request_hash=h, prompt_hash=teacher.prompt_hash(request), role="teacher", stage=stage,
        model=teacher.model_name, request=request,
        # A failed n-sample request keeps the samples that did answer (paid): the rerun asks for the rest.
        response=resp.to_json() if ok or resp.samples else None,
        input_tokens=resp.input_tokens, output_tokens=resp.output_tokens, cached_input_tokens=resp.cached_input_tokens,
        reasoning_tokens=resp.reasoning_tokens or 0, cost_usd=resp.cost_usd, latency_s=resp.latency_s, status="ok" if ok else "error", error=resp.error,
        stop_reason=stop if isinstance(stop, str) or stop is None else ",".join(map(str, stop)),
    )


def _fields(stats: RunStats, t0: float) -> dict[str, str]:
    dt = max(time.perf_counter() - t0, 1e-9)
    return {"req/s": f"{stats.calls / dt:.1f}", "tok": f"{stats.input_tokens + stats.output_tokens:,}",
            "spent": f"${stats.cost_usd:.4f}", "retries": str(stats.retries), "errors": str(stats.errors)}


class Todo(Sequence):
    """The requests to send, made from their records as the sender takes them: ``hashes[j]`` and
    ``records[index[j]]``'s request, index by index or slice by slice (a local teacher's chunks).
    An API teacher pulls ``teacher.concurrency`` of them at a time, so no more requests than that
    are alive at once; built up front, a million inputs' requests held ~1 KB each."""

    def __init__(self, teacher: Teacher, records: Sequence[Record], index: list[int], hashes: list[str]):
        self.teacher, self.records, self.index, self.hashes = teacher, records, index, hashes

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        return self.teacher.request(self.records[self.index[j]])

    def pairs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return ((self.hashes[j], self[j]) for j in range(len(self)))


class _Sent(Sequence):
    """``Todo``'s requests as sent: an n-sample request an earlier attempt half answered asks only for
    the rest. ``taken`` keeps each request handed out until its answer is committed (``pop``): those
    in flight, ``teacher.concurrency`` or a local teacher's chunk."""

    def __init__(self, todo: Todo, earlier: dict[str, dict[str, Any]]):
        self.todo, self.earlier = todo, earlier
        self.taken: dict[int, dict[str, Any]] = {}

    def pop(self, j: int) -> dict[str, Any]:
        """The request ``j`` as made (not as sent: the ledger keeps the whole n-sample request)."""
        return self.taken.pop(j, None) or self.todo[j]

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: Any) -> Any:
        from potstill.generate.consistency import rest_request

        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        h = self.todo.hashes[j]
        req = self.taken[j] = self.todo[j]
        return rest_request(req, self.earlier[h]) if h in self.earlier else req


def _send(teacher: Teacher, stage: str, ledger: Ledger, gcfg: GenerateConfig, stats: RunStats, todo: Todo,
          errors: dict[str, str], t0: float) -> None:
    """Ask the teacher for each request of ``todo``, committing every answer to the ledger as it arrives.

    An n-sample request whose earlier attempt failed with some samples answered (Anthropic sends n
    requests) asks only for the others; the row committed holds them all (``consistency.with_earlier``)."""
    from potstill.generate.consistency import with_earlier

    earlier = ledger.partial(todo.hashes) if gcfg.n > 1 and gcfg.engine != "batch" else {}
    if gcfg.engine == "ray" and todo:  # the Ray and batch engines show their own progress
        from potstill.generate.ray_engine import run_ray

        errors.update(run_ray(teacher, list(todo.pairs()), ledger.path, stage, gcfg, stats, earlier))
        return
    if gcfg.engine == "batch" and todo:
        from potstill.generate.batch_engine import run_batch

        errors.update(run_batch(teacher, list(todo.pairs()), ledger, stage, gcfg, stats))
        return
    sent = _Sent(todo, earlier)
    with bar(f"{stage}: teacher {teacher.model_name}", len(todo)) as advance:

        def on_result(j: int, resp: Response) -> None:
            h = todo.hashes[j]
            if h in earlier:
                resp = with_earlier(earlier[h], resp)
            call = ledger_call(h, teacher, stage, sent.pop(j), resp)
            ledger.record(call)
            stats.count(resp)
            if call.status != "ok":
                errors[h] = resp.error or "no output"
            advance(1, **_fields(stats, t0))

        teacher.run(sent, on_result, stats, gcfg)


def unpriced_budget(model: str, price: Any, gcfg: GenerateConfig) -> str | None:
    """Why ``generate.budget_usd`` cannot cap an API teacher's ``model`` (no token price: its calls
    cost $0 in the ledger, so the budget would never stop a run that the provider bills), or None."""
    from potstill.teachers.api.prices import price_for

    if gcfg.budget_usd is None or price_for(model, price, gcfg.prices):
        return None
    return (f"generate.budget_usd: no price is known for teacher.model {model!r}, so no spend would count against "
            "the budget; set teacher.price (input_per_mtok, output_per_mtok) or add the model to generate.prices")


def check_settings(teacher: Teacher, gcfg: GenerateConfig) -> None:
    """Refuse what the teacher cannot do (``generate.n`` samples, ``generate.engine`` batch) and a
    budget it cannot keep (``check_budget``). ``generate`` calls it before the ledger exists, so a
    refused run leaves nothing behind: no run row, no open batch resumed."""
    from potstill.generate.batch_providers import samples_problem

    if gcfg.n > 1 and teacher.task.cfg.type == "tools":
        raise PotstillError(f"generate.n={gcfg.n}: a tools task's answers are calls, which samples do not vote on; "
                            "use n: 1")
    if gcfg.n > 1 and not teacher.supports_samples:
        raise PotstillError(f"generate.n={gcfg.n}: the {teacher.type} teacher returns one answer per input; use n: 1")
    if gcfg.engine == "batch" and not teacher.supports_batch:
        raise PotstillError(f"generate.engine batch needs an openai or anthropic teacher, not {teacher.type!r}")
    why = samples_problem(teacher.type, gcfg.n) if gcfg.engine == "batch" else None
    if why:
        raise PotstillError(why)
    check_budget(teacher, gcfg)


def check_budget(teacher: Teacher, gcfg: GenerateConfig) -> None:
    """Refuse a budget that cannot cap an API teacher (``unpriced_budget``); say that it does not cap
    a teacher that runs here."""
    if gcfg.budget_usd is not None and not teacher.remote:
        say(f"[yellow]generate.budget_usd caps an API teacher's spend; the {teacher.type} teacher runs here, on "
            "hardware billed by the hour, and is not stopped by it[/yellow]")
        return
    why = unpriced_budget(teacher.cfg.model, teacher.cfg.price, gcfg)
    if why:
        raise PotstillError(why)


def unpriced_provider_model(teacher: Teacher, gcfg: GenerateConfig) -> str | None:
    """What to say where the teacher is a model of the provider's own API (no base_url: every call is
    billed; a self-hosted server may well be free) that no price names, or that another model's entry
    priced (``sibling_priced``: claude-opus-4-6 at claude-opus-4's, 3x its list price); else None."""
    from potstill.teachers.api.prices import price_for, sibling_priced

    model = teacher.cfg.model
    if not teacher.remote:
        return None
    sibling = sibling_priced(model, teacher.cfg.price, gcfg.prices)
    if sibling:
        p = gcfg.prices[sibling]
        return (f"generate: teacher.model {escape(repr(model))} was priced as {escape(repr(sibling))} "
                f"(${p.get('input_per_mtok', 0):g} input, ${p.get('output_per_mtok', 0):g} output per Mtok), the "
                "longest entry of generate.prices its name starts with; if its own list price differs, set "
                "teacher.price or add it to generate.prices")
    if teacher.cfg.base_url or price_for(model, teacher.cfg.price, gcfg.prices):
        return None
    return (f"generate: no price is known for teacher.model {escape(repr(teacher.cfg.model))}: the provider bills its "
            "calls, but they count $0 in the ledger, `potstill cost` and evaluate's break-even; set teacher.price "
            "(input_per_mtok, output_per_mtok) or add the model to generate.prices")


# Inputs planned, and answers written out, this many at a time: each window's requests and answers
# live only while it is handled (1,000 requests of ~1 KB: about 1 MB), and a ledger query takes 500
# hashes, so a window is two queries' worth.
WINDOW = 1000


def _windows(records: Iterable[Record]) -> Iterator[tuple[int, list[Record]]]:
    """``records`` ``WINDOW`` at a time, each window with the index of its first: a list's, or one
    pass over an ``inputs.InputFile`` (the input file read again, never held)."""
    it = iter(records)
    for start in itertools.count(0, WINDOW):
        window = list(itertools.islice(it, WINDOW))
        if not window:
            return
        yield start, window


def unsent(rec: Record) -> bool:
    """A record ``label_records`` did not send (a budget reached, a halt): it waits for a rerun and
    stays out of the output, where a failed or refused one is written with its reason."""
    return (rec.invalid_reason or "").startswith("not sent")


def label_records(records: list[Record], task: Task, teacher: Teacher, ledger: Ledger, stage: str,
                  gcfg: GenerateConfig | None = None, beyond: Iterable[Record] | None = None,
                  parent: int | None = None) -> tuple[list[Record], RunStats]:
    """Attach the teacher's answer to each record (cache first), validating it against the task.

    Records the run did not answer (budget reached) come back with ``output=None`` and
    ``invalid_reason`` starting ``not sent``. ``beyond``: the input file's records past ``data.limit``,
    not answered here but still to be paid for in `potstill cost`'s projection; with it, requests that
    earlier runs planned for inputs since removed from the file leave the projection (None: the file
    is not known, and they stay). ``parent``: the ledger run this one is a step of (a tool round's).
    The records given are left as they were (``stream_labels`` answers into them instead).
    """
    out: list[Record] = []
    stats = stream_labels(records, task, teacher, ledger, stage, out.append, gcfg, beyond, parent, copy=True)
    return out, stats


def stream_labels(records: Sequence[Record], task: Task, teacher: Teacher, ledger: Ledger, stage: str,
                  emit: Callable[[Record], None], gcfg: GenerateConfig | None = None,
                  beyond: Iterable[Record] | None = None, parent: int | None = None, copy: bool = False) -> RunStats:
    """``label_records``, handing each answered record to ``emit`` in input order instead of
    returning them all. Without ``copy``, the answer goes into the input record itself, and a list
    lets go of it once emitted (its slot becomes None): ``potstill generate`` held every request,
    every answer and a deep copy of every record at once (~4 KB an input beyond the inputs
    themselves). ``records`` may be an ``inputs.InputFile``, which reads the file again at each pass,
    so a run holds one hash an input and a window of records, requests and answers.

    Three passes over the records, ``WINDOW`` at a time: what the ledger already answers (and the
    requests to send), the sending (requests made as the teacher takes them, ``Todo``, in input
    order), and the records, each window's answers read back from the ledger where every one was
    committed.
    """
    from potstill.generate.consistency import paid

    gcfg = gcfg or GenerateConfig()
    t0 = time.perf_counter()
    stats = RunStats(inputs=len(records))
    check_settings(teacher, gcfg)
    teacher.n = gcfg.n
    ident = teacher.identity()
    if gcfg.engine == "batch":  # the batch engine hands every request to the provider at once anyway
        reqs = [teacher.request(r) for r in records]
        _collect_open(teacher, ledger, stage, gcfg, stats, dict(zip((request_hash(ident, q) for q in reqs), reqs)))
        del reqs
    hashes: list[str] = []  # each input's, after cached_answers (a cache hit's is the row that paid)
    unique: dict[str, None] = {}
    index: list[int] = []  # the first input of each request to send
    refused: dict[str, str] = {}
    for start, window in _windows(records):
        reqs = [teacher.request(r) for r in window]
        del window
        hs, answers, reused = cached_answers(ledger, teacher, reqs, [request_hash(ident, q) for q in reqs])
        stats.whole_reused += reused
        stats.cache_hits += sum(h in answers for h in hs)
        new = [(start + i, h) for i, h in enumerate(hs) if h not in answers and h not in unique]
        hashes += hs
        unique.update(dict.fromkeys(hs))
        # A request the teacher refused is billed and, as a rule, refused again: not sent again unless
        # generate.retry_refusals, and its input stays out of the data (not an error to rerun for).
        refused.update({} if gcfg.retry_refusals else ledger.refusals(list(dict.fromkeys(h for _, h in new))))
        sent = set()
        for i, h in new:
            if h not in refused and h not in sent:
                index.append(i)
                sent.add(h)
    todo = Todo(teacher, records, index, [hashes[i] for i in index])
    errors: dict[str, str] = {}
    if gcfg.engine != "batch" and todo:
        _refuse_batched(ledger, teacher, todo)
    current = None if beyond is None else [*unique, *(request_hash(ident, teacher.request(r)) for r in beyond)]
    run_id = stats.run_id = ledger.start_run(stage, teacher.model_name, len(records), list(unique), stats.cache_hits,
                                             hash_obj(ident), current, parent)
    del current
    try:
        _send(teacher, stage, ledger, gcfg, stats, todo, errors, t0)
    except BaseException as e:
        # A missing key, a crash in an adapter, Ctrl-C: the run is over, not "running" forever.
        ledger.finish_run(run_id, "error", stats.retries)
        if isinstance(e, KeyboardInterrupt):  # typer exits 130 without a word: say what a rerun does
            _say_interrupted(stage, ledger, todo.hashes, gcfg)
        raise
    for h in [h for h, e in errors.items() if is_refusal(e)]:
        refused[h] = errors.pop(h)
        stats.errors = max(0, stats.errors - 1)
    ledger.finish_run(run_id, "budget" if stats.budget_stopped else "errors" if stats.errors else "done", stats.retries)
    short: list[int] = []  # sample counts of answers with fewer than n
    answered = 0
    unlabelled = 0  # answers whose log-probs give no soft label (OpenAITeacher.soft_label)
    release = not copy and isinstance(records, MutableSequence)
    for start, window in _windows(records):
        hs = hashes[start : start + len(window)]
        # Every answer is in the ledger: a cached one, or one this run committed as it arrived.
        answers = ledger.lookup(list(dict.fromkeys(hs)))
        for i, (rec, h) in enumerate(zip(window, hs), start):
            rec = rec.model_copy(deep=True) if copy else rec
            _set_aside_earlier(rec)
            ans = answers.get(h)
            if ans is None and h in refused:
                rec.output, rec.valid = None, False
                rec.invalid_reason = f"teacher refused: {refused[h]}"[:500]
                stats.refused += 1
            elif ans is None:
                not_sent = f"not sent: {stats.halted}"[:500] if stats.halted else "not sent: budget reached"
                reason = f"teacher error: {errors[h]}" if h in errors else not_sent
                stats.unsent += h not in errors
                rec.output, rec.valid, rec.invalid_reason = None, False, reason
            else:
                _attach(rec, ans, task, teacher)
                answered += 1
                unlabelled += bool(task.labels and rec.logprobs and rec.valid and rec.label_probs is None)
                got = len(ans.get("samples") or [ans.get("output")])
                if got < gcfg.n:
                    short.append(got)
                rec.meta.update({
                    # The answer's own writer where it names one (a replay teacher's logged model).
                    "teacher": ans.get("model") or teacher.model_name, "teacher_type": teacher.type, "request_hash": h,
                    # All its samples', where a rerun completed what a failed attempt began (consistency.paid).
                    **paid(ans), "latency_s": ans.get("latency_s", 0.0),
                })
            if not rec.valid:
                stats.invalid += 1
                key = (rec.invalid_reason or "").split(":")[0]
                stats.invalid_reasons[key] = stats.invalid_reasons.get(key, 0) + 1
            emit(rec)
            if release:
                records[i] = None  # type: ignore[index]  # emitted: its memory goes
    stats.fewer_samples = len(short)
    if short:
        # Ollama's OpenAI endpoint (no n among its fields) answers one choice whatever n: those outputs were
        # never voted on, and curate.min_agreement cannot filter them (they have no agreement).
        m = min(short)
        got = f"{m} sample{'s' * (m != 1)}" if m == max(short) else f"as few as {m} samples"
        say(f"[yellow]{stage}: generate.n {gcfg.n}: the teacher answered {got} for {len(short)} of "
            f"{answered} inputs (a server that ignores n?); their outputs are not "
            "majority votes and curate.min_agreement does not filter them[/yellow]")
    if unlabelled:
        say(f"[yellow]{stage}: {unlabelled} of {answered} answers carry no label_probs: their tokens' top "
            "log-probs give the label answered no probability (a server that writes part of a character as "
            "U+FFFD, without its bytes?); they train on their answer alone[/yellow]")
    stats.seconds = time.perf_counter() - t0
    return stats


def cached_answers(ledger: Ledger, teacher: Teacher, reqs: list[dict[str, Any]],
                   hashes: list[str]) -> tuple[list[str], dict[str, dict[str, Any]], int]:
    """The ledger's answers to these requests: ``(hashes, answers by hash, inputs answered whole)``.

    A request with no answer of its own is answered by the same request sent under another output
    budget (an earlier ``teacher.max_tokens``) whose answer ended by itself, under a smaller budget
    or within this one: this budget would not have changed it. Raising ``teacher.max_tokens`` after
    curate sets aside the truncated answers, or lowering it to save, would otherwise pay again for
    every whole one. Its hash becomes that
    request's, as for any cache hit (``meta.request_hash`` names the row that paid for the answer).
    Only where the request carries its budget (API teachers)."""
    from potstill.teachers.api.engine import max_output

    unique = list(dict.fromkeys(hashes))
    answers: dict[str, dict[str, Any]] = ledger.lookup(unique)
    request_of = dict(zip(hashes, reqs))
    former = teacher.former_identity()
    if former is not None and len(answers) < len(unique):
        # Answers keyed as this teacher's were before (a local model by its path as written): its
        # request's hash becomes that row's, as a cache hit names the row that paid for it.
        old = {h: request_hash(former, request_of[h]) for h in unique if h not in answers}
        found = ledger.lookup(list(old.values()))
        moved = {h: o for h, o in old.items() if o in found}
        if moved:
            answers.update({o: found[o] for o in moved.values()})
            hashes = [moved.get(h, h) for h in hashes]
            unique = list(dict.fromkeys(hashes))
            request_of = dict(zip(hashes, reqs))
    budgets = {h: max_output(request_of[h]) for h in unique if h not in answers}
    wanted = {h: (teacher.prompt_hash(request_of[h]), b) for h, b in budgets.items() if b}
    whole = ledger.whole_answers(wanted, max_output) if wanted else {}
    if not whole:
        return hashes, answers, 0
    answers.update(ledger.lookup(list(set(whole.values()))))
    reused = sum(h in whole for h in hashes)
    return [whole.get(h, h) for h in hashes], answers, reused


# The meta fields that describe a teacher call. An input that already holds some came from another
# call: synthesize's that wrote it, or the logged answer `potstill import` read with it.
_CALL_META = ("teacher", "teacher_type", "request_hash", "input_tokens", "output_tokens", "cost_usd", "latency_s",
              "usage", "finish_reason", "response_id", "stop_reason")


def _set_aside_earlier(rec: Record) -> None:
    """Move an earlier call's fields out of the way of this answer's (``meta.synthesis`` for a
    synthetic input, ``meta.logged`` for an imported one, else ``meta.earlier``): written over, the
    synthesis call's cost was lost, and an input the teacher failed on still named the logged model
    as its teacher."""
    earlier = {k: rec.meta.pop(k) for k in _CALL_META if k in rec.meta}
    if earlier:
        key = "synthesis" if rec.meta.get("synthetic") else "logged" if rec.meta.get("format") else "earlier"
        rec.meta[key] = {**rec.meta.get(key, {}), **earlier}


def _say_interrupted(stage: str, ledger: Ledger, todo: list[str], gcfg: GenerateConfig) -> None:
    """What a rerun after Ctrl-C does. The answers are counted in the ledger, where every engine
    commits them (the batch and Ray engines hand theirs back only at the end). Requests that open
    provider batches hold are not sent again: the provider bills them, and the rerun collects them."""
    hashes = set(todo)
    answered = set(ledger.lookup(list(hashes)))
    got = len(answered)
    line = f"{stage}: interrupted; {got} new answers are in the ledger ({ledger.path}), so the same command "
    if gcfg.engine != "batch":
        say(line + f"sends only the other {len(todo) - got} requests")
        return
    batches = [b for b in ledger.batches(open_only=True) if hashes & set(ledger.batch_items(b["key"]))]
    held = {h for b in batches for h in ledger.batch_items(b["key"])} & hashes - answered
    rest = len(todo) - got - len(held)
    if not batches:
        say(line + f"submits the {rest} others in new batches")
        return
    providers = "/".join(sorted({b["provider"] for b in batches}))
    say(line + f"collects the {len(held)} requests of the {len(batches)} open {providers} batch"
        f"{'es' * (len(batches) != 1)} at the provider (billed when they end, never submitted again)"
        + (f" and submits the other {rest} in new batches" if rest else ""))


def _collect_open(teacher: Teacher, ledger: Ledger, stage: str, gcfg: GenerateConfig, stats: RunStats,
                  wanted: dict[str, dict[str, Any]]) -> None:
    """``batch_engine.collect_open`` for the requests without an answer in the ledger; Ctrl-C while
    it waits says what a rerun does, as one during the run does."""
    from potstill.generate.batch_engine import collect_open

    answered = ledger.lookup(list(wanted))
    try:
        collect_open(teacher, ledger, stage, gcfg, stats, {h: q for h, q in wanted.items() if h not in answered})
    except KeyboardInterrupt:
        say(f"{stage}: interrupted; the open batches stay at the provider (billed when they end) and the same "
            "command collects them")
        raise


def _refuse_batched(ledger: Ledger, teacher: Teacher, todo: Todo) -> None:
    """Stop before sending live a request that an open provider batch holds (a run of
    ``generate.engine: batch`` killed or switched away from): the provider bills the batch's
    answers when it ends, so the live call would pay for the same answer twice. The same stands for
    a batch holding the same prompt under other settings (another ``teacher.max_tokens``): its
    answers, once collected, may answer these requests as cached ones do (``cached_answers``)."""
    batches = ledger.batches(open_only=True)
    if not batches:
        return
    hashes = set(todo.hashes)
    prompts: set[str] | None = None
    for b in batches:
        items = ledger.batch_items(b["key"])
        held = hashes & items.keys()
        name = f"{b['provider']} batch {b['batch_id'] or b['key']} ({b['state']}) that generate.engine batch submitted"
        if held:
            raise PotstillError(
                f"generate: {len(held)} of the {len(todo)} requests to send are in the open {name}; sent live they "
                "would be paid twice. Rerun with generate.engine batch to collect its answers")
        if prompts is None:
            prompts = {teacher.prompt_hash(q) for q in todo}
        same = sum(teacher.prompt_hash(q) in prompts for q in items.values())
        if same:
            raise PotstillError(
                f"generate: the open {name} holds {same} of these {len(todo)} prompts under other settings (teacher."
                "max_tokens); billed when it ends, its answers may answer them as cached ones do, so sent live they "
                "could be paid twice. Rerun with generate.engine batch to collect it first")


def _attach(rec: Record, ans: dict[str, Any], task: Task, teacher: Teacher) -> None:
    """Copy an answer onto a record; with several samples, the output is their majority answer."""
    from potstill.generate.consistency import sample_logprobs, vote

    rec.output = task.answer_output(ans)
    rec.label_probs = teacher.label_probs(ans)
    rec.logprobs = ans.get("logprobs")
    rec.samples = ans.get("samples")
    stop = ans.get("stop_reason")  # one per sample with n above 1 (an OpenAI row before that: choice 0's)
    i = 0
    if rec.samples and len(rec.samples) > 1:
        i, agreement = vote(rec.samples, task.parse, task.validate)
        rec.output = rec.samples[i]
        # The log-probs of the sample that is the output (choice 0's may be of an outvoted text).
        rec.logprobs = sample_logprobs(ans, i)
        rec.meta["majority"] = task.parse(rec.output) if agreement > 0 else None
        rec.meta["agreement"] = agreement
        votes = [v for v in map(task.parse, rec.samples) if v in task.labels] if task.labels else []
        if votes and rec.label_probs is None:
            # With no logprobs, the shares of the valid votes are the soft label (n samples -> steps of 1/n).
            rec.label_probs = {lab: votes.count(lab) / len(votes) for lab in task.labels}
    if isinstance(stop, list):
        if rec.samples and len(stop) == len(rec.samples):
            rec.meta["sample_stop_reasons"] = stop  # curate's re-vote lets no sample cut at the token limit win
        # The stop reason of the sample that is the output: curate's truncated check reads it.
        stop = stop[i] if i < len(stop) else None
    elif i:
        stop = None  # choice 0's (an OpenAI row written before one per sample), not the output's
    if stop is not None:
        rec.meta["stop_reason"] = stop
    reason = task.validate(task.parse(rec.output or ""))
    rec.valid, rec.invalid_reason = reason is None, reason


def run_generate(cfg: Config, records: list[Record], ledger: Ledger, stage: str = "generate",
                 teacher: Teacher | None = None,
                 beyond: Iterable[Record] | None = None) -> tuple[list[Record], RunStats]:
    """``label_records`` with the config's task and teacher (``teacher``: one already made from
    ``cfg.teacher``, closed here like one made here)."""
    task = get_task(cfg.task)
    teacher = teacher or get_teacher(cfg.teacher, task)
    try:
        return label_records(records, task, teacher, ledger, stage, cfg.generate, beyond)
    finally:
        teacher.close()
