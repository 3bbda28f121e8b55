"""`potstill preflight`: refuse runs that would train the wrong objective without an error.

Each check reads only tokenizers, configs and the run's JSONL files (no model weights, except the
cross-rank weight comparison under ``torchrun`` / ``accelerate launch``), so it costs seconds:

* ``inputs``: ``data.inputs`` reads as ``generate`` reads it (the file exists, each line is a
  usable record, gold labels are the task's).
* ``teacher``: ``teacher.type`` names a teacher potstill has (a built-in or a plugin), and that
  teacher accepts its config (``teacher.model`` set, a replay file found), as ``generate`` builds it.
* ``vocabulary``: token-level KD (``kd_signal`` logits) needs the teacher's tokenizer and LM
  head rows to be the student's; ``topk`` needs the API teacher's top-k tokens to map onto
  student ids (otherwise KD silently stops at the first token the tokenizers split differently).
* ``prompt``: the prompt ids the trainer builds must equal those the served student builds
  for the same messages, less the system and developer ones serve drops (chat template,
  instruction, special tokens).
* ``context``: ``student.max_length`` stays within the student's positions.
* ``labels``: each classification label must start with its own token, for the student and
  for a local teacher (label probabilities are read at the first token).
* ``weights``: under several processes, every rank loads bit-identical weights (see
  ``train/distributed.py``); with one process there is nothing to compare.
* ``budget``: the projected teacher cost of ``generate`` stays within ``generate.budget_usd``.
* ``samples``: ``generate.n`` above 1 samples at a temperature above 0 (a warning, not a refusal:
  some servers sample anyway, and n greedy answers can still differ a little).
* ``tool_turns``: a tools task under ``task.tool_choice: required`` learns first calls only; inputs
  that already hold tool calls or results are paid for and never learnt (a warning, with the fix).
* ``output_budget`` and the teacher's other settings: ``potstill.preflight_teacher``.

``potstill train`` runs the train checks and ``potstill generate`` the generate checks first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.records import INSTRUCTION_ROLES, content_text, read_records
from potstill.teachers.reasoning import reasons

# Below this share of completion tokens with mapped top-k data, topk KD trains on almost nothing.
MIN_TOPK_COVERAGE = 0.5
CHARS_PER_TOKEN = 4.0  # the usual English estimate, where no tokenizer loads
# Inputs whose tokens the budget projection counts; more are projected from their mean. A fast
# tokenizer counts ~2,000 short inputs in well under a second; 100k would take tens of seconds.
TOKEN_SAMPLE = 2000
SAMPLE = 64  # records whose prompts are compared / whose top-k data is mapped
# A chat request is billed for more than its text. Each message is wrapped in role markers
# (ChatML's "<|im_start|>user\n" ... "<|im_end|>\n": 5 tokens; Llama 3's header and <|eot_id|>: 5;
# OpenAI counts 3-4) and the reply is primed ("<|im_start|>assistant\n": 3, plus a BOS). For a
# 10-token tweet with a 10-token instruction that is 5 + 5 + 5 = 15 tokens more than the text.
TOKENS_PER_MESSAGE = 5
TOKENS_PER_REQUEST = 5
# A classification teacher asked for a label may still answer in a sentence ("The topic is sports."):
# about 8 tokens around the label, within teacher.max_tokens.
ANSWER_SENTENCE = 8
# With tools, Anthropic adds a system prompt of its own to every request, billed as input: 159 to 530
# tokens by model and tool_choice in its tool-use pricing table; the largest is counted.
ANTHROPIC_TOOL_PROMPT = 530


@dataclass
class Check:
    name: str
    status: str  # ok | skip | warn | fail (only fail stops a run; warn is said and the run goes on)
    detail: str


def _tokenizer(spec: str | Path) -> Any:
    from potstill.models.loading import load_tokenizer

    return load_tokenizer(spec)


def _model_config(spec: str) -> Any:
    """A model's transformers config (no weights), or None where none loads (a GGUF file, say)."""
    from transformers import AutoConfig

    from potstill.models.loading import pretrained_source, resolve

    src, pin = pretrained_source(resolve(spec)[1])
    try:
        return AutoConfig.from_pretrained(src, **pin)
    except (OSError, ValueError):
        return None


def _vocab_rows(spec: str) -> int | None:
    return getattr(_model_config(spec), "vocab_size", None)


class _Ctx:
    """What several checks share, loaded once."""

    def __init__(self, cfg: Config) -> None:
        from potstill.tasks import get_task

        self.cfg = cfg
        self.task = get_task(cfg.task)
        self.run = Path(cfg.run_dir)
        self._tok: Any = None
        self._inputs: tuple[list, str | None] | None = None

    @property
    def student_tok(self) -> Any:
        """Loaded once; a student that cannot be loaded fails each check that needs it, with one reason."""
        if self._tok is None:
            try:
                self._tok = _tokenizer(self.cfg.student.model)
            except PotstillError as e:
                self._tok = PotstillError(f"student.model: {e}")
        if isinstance(self._tok, PotstillError):
            raise self._tok
        return self._tok

    def inputs(self) -> tuple[list, str | None]:
        """``data.inputs`` as ``generate`` loads them, and why they cannot be (None: they can)."""
        if self._inputs is None:
            from potstill.stage import load_inputs

            try:
                self._inputs = load_inputs(self.cfg), None
            except PotstillError as e:
                self._inputs = [], str(e)
        return self._inputs

    def train_records(self) -> list:
        path = self.run / "train.jsonl"
        return read_records(path)[:SAMPLE] if path.exists() else []

    def fmt(self, tok: Any) -> Any:
        from potstill.models.prompting import PromptFormat

        return PromptFormat(kind="chat" if getattr(tok, "chat_template", None) else "completion",
                            instruction=self.task.cfg.instruction, calls_as_list=self.task.cfg.parallel_tool_calls)


def check_inputs(ctx: _Ctx) -> Check:
    """``generate`` refuses these too, but only once a run starts; the other checks skip without them."""
    records, problem = ctx.inputs()
    if problem:
        return Check("inputs", "fail", f"data.inputs: {problem}")
    return Check("inputs", "ok", f"{len(records)} records in {ctx.cfg.data.inputs}")


def check_teacher(ctx: _Ctx) -> Check:
    """The name, and the teacher built from its config as generate builds it, so that what it refuses
    there (no teacher.model, a replay_path not found, a malformed base_url) fails here: `potstill init`'s
    starter (a local teacher, model '') passed and `run` stopped on it. Nothing is loaded or called: a
    model or key is checked when it is used (a key may be set later)."""
    from potstill.plugins import load_plugin
    from potstill.teachers import get_teacher

    try:
        load_plugin("teachers", ctx.cfg.teacher.type)
    except PotstillError as e:
        return Check("teacher", "fail", f"teacher.type: {e}")
    try:
        get_teacher(ctx.cfg.teacher, ctx.task, ctx.cfg.generate.prices)
    except PotstillError as e:
        return Check("teacher", "fail", str(e))
    return Check("teacher", "ok", f"teacher type '{ctx.cfg.teacher.type}' found")


def check_vocabulary(ctx: _Ctx) -> Check:
    tcfg = ctx.cfg.train
    signal = tcfg.kd_signal
    if signal == "auto" and tcfg.objective == "kd":  # as the trainer resolves it
        from potstill.train.teacher import auto_signal

        signal = auto_signal(tcfg, ctx.task, ctx.train_records())
    if tcfg.objective != "kd" or signal == "labels":
        return Check("vocabulary", "skip", "no token-level KD")
    if tcfg.teacher_model:
        teacher = _tokenizer(tcfg.teacher_model)
        if teacher.get_vocab() != ctx.student_tok.get_vocab():
            extra = sorted(set(teacher.get_vocab()) ^ set(ctx.student_tok.get_vocab()))[:3]
            return Check("vocabulary", "fail", f"train.teacher_model '{tcfg.teacher_model}' has another tokenizer than "
                         f"the student (tokens only one of them has: {extra}); logits KD compares token i with token i, "
                         "so use kd_signal labels or a teacher of the student's family")
        rows = _vocab_rows(tcfg.teacher_model), _vocab_rows(ctx.cfg.student.model)
        tokens = len(ctx.student_tok)
        if None not in rows and rows[0] != rows[1]:
            if min(rows) < tokens:
                return Check("vocabulary", "fail", f"train.teacher_model has {rows[0]} LM-head rows, the student "
                             f"{rows[1]}, for a tokenizer of {tokens} tokens")
            # One family padded to different sizes (Qwen2.5-7B against 0.5B): the rows both have hold every token.
            return Check("vocabulary", "ok", f"teacher and student share the tokenizer ({tokens} tokens); their LM heads "
                         f"are padded to {rows[0]} and {rows[1]} rows, so KD compares the first {min(rows)}")
        return Check("vocabulary", "ok", "teacher and student share the tokenizer and LM-head rows")
    return _topk_coverage(ctx)


def _topk_coverage(ctx: _Ctx) -> Check:
    from potstill.teachers.base import token_bytes
    from potstill.train.batching import topk_for_completion

    records = [r for r in ctx.train_records() if r.logprobs]
    if not records:
        return Check("vocabulary", "skip", "no train.jsonl records with logprobs yet")
    tok, fmt = ctx.student_tok, ctx.fmt(ctx.student_tok)
    mapped = total = 0
    cache: dict = {}
    rewritten = []  # records whose answer is not the text their teacher tokens spell
    for r in records:
        target = ctx.task.target(r)
        completion = tok(fmt.completion(tok, target), add_special_tokens=False)["input_ids"]
        top = topk_for_completion(tok, completion, r.logprobs, cache)
        total += len(r.logprobs)  # each teacher token gets at most one student position
        mapped += sum(1 for x in top if x is not None)
        spelled = b"".join(token_bytes(e) for e in r.logprobs).decode("utf-8", "replace")
        if spelled.strip() != str(target).strip():
            rewritten.append(r.id)
    share = mapped / max(1, total)
    if share < MIN_TOPK_COVERAGE:
        # Same tokenizer or not, a record whose answer was edited (or whose target is not the teacher's
        # output) has no tokens to match: name that cause where it is the one.
        why = (f"{len(rewritten)} of {len(records)} records' answers are not the text their teacher tokens spell "
               f"(record {rewritten[0]}: edited after generate, or a target other than the teacher's output)"
               if rewritten else "the teacher's tokenizer differs from the student's")
        return Check("vocabulary", "fail", f"only {share:.0%} of the teacher's output tokens map onto student tokens "
                     f"({mapped} of {total} in {len(records)} records): {why}, so topk KD would train on almost "
                     "nothing; use kd_signal labels (classification) or sft")
    return Check("vocabulary", "ok", f"{share:.0%} of the teacher's output tokens map onto student tokens")


def check_prompt(ctx: _Ctx) -> Check:
    """Training builds prompt ids in ``train/batching.py``, serving in ``serve/engine.py``; the
    served model is ``run_dir/student`` once trained, with the tokenizer saved beside it (a student
    trained earlier, or one whose tokenizer was edited, can carry another chat template). A chat the
    chat template refuses (two user turns in a row under Gemma's) fails naming the record."""
    from potstill.models.prompting import RefusedChat, encode_prompt, refused_record
    from potstill.train.batching import prompt_ids

    served_dir = ctx.run / "student"
    served = _tokenizer(served_dir) if (served_dir / "tokenizer_config.json").exists() else ctx.student_tok
    records = ctx.train_records() or ctx.inputs()[0][:SAMPLE]
    if not records:
        return Check("prompt", "skip", "no inputs to render")
    tok = ctx.student_tok
    tfmt, sfmt = ctx.fmt(tok), ctx.fmt(served)
    for r in records:
        # Serve drops a client's system and developer messages (the run's instruction replaces them).
        asked = [m for m in r.messages if m.get("role") not in INSTRUCTION_ROLES]
        try:
            train_ids = prompt_ids(tok, tfmt, r.messages)
            serve_ids = encode_prompt(served, sfmt, sfmt.prefix() + sfmt.query(served, asked), first=True)
        except RefusedChat as e:
            return Check("prompt", "fail", refused_record(r.id, e))
        if train_ids != serve_ids and len(asked) < len(r.messages):
            return Check("prompt", "fail", f"record {r.id} has its own system or developer message, which training "
                         "reads after task.instruction and serve drops (the run's instruction replaces a client's), "
                         "so the served student would see prompts it was not trained on: rerun generate and curate "
                         "(generate moves such a message of data.inputs to meta.system, as `potstill import` does "
                         "for curate.real_data)")
        if train_ids != serve_ids:
            i = next((k for k, (a, b) in enumerate(zip(train_ids, serve_ids)) if a != b), min(len(train_ids),
                                                                                               len(serve_ids)))
            return Check("prompt", "fail", f"the training prompt and the serving prompt differ from token {i} "
                         f"(train: {tok.decode(train_ids[i:i + 8])!r}, serve: {served.decode(serve_ids[i:i + 8])!r}); "
                         f"the served student ({served_dir}) would see prompts it was not trained on: give both "
                         "the same tokenizer and chat template")
    return Check("prompt", "ok", f"{len(records)} prompts tokenise the same for training and serving")


def check_context(ctx: _Ctx) -> Check:
    """Train cuts an example to ``student.max_length`` tokens; more than the student's positions and a
    model with learned ones (GPT-2) fails on the first example that long with an IndexError, a rotary
    one trains past what it was made for."""
    from potstill.engines.base import model_positions

    positions = model_positions(_model_config(ctx.cfg.student.model))
    n = ctx.cfg.student.max_length
    if positions is None:
        return Check("context", "skip", "the student's config names no positions")
    if n > positions:
        return Check("context", "fail", f"student.max_length {n} is more than the student's {positions} positions; "
                     f"set student.max_length {positions} or less")
    return Check("context", "ok", f"student.max_length {n} within the student's {positions} positions")


def check_labels(ctx: _Ctx) -> Check:
    from potstill.models.prompting import PromptFormat, label_token_ids

    if not ctx.task.labels:
        return Check("labels", "skip", "not a classification task")
    tokenizers = [("student", ctx.student_tok, ctx.fmt(ctx.student_tok))]
    if ctx.cfg.teacher.type == "local" and ctx.cfg.teacher.model:
        ttok = _tokenizer(ctx.cfg.teacher.model)
        tokenizers.append(("teacher", ttok, PromptFormat(kind=ctx.cfg.teacher.prompt_format,
                                                         answer_prefix=ctx.cfg.teacher.answer_prefix)))
    for who, tok, fmt in tokenizers:
        try:
            label_token_ids(tok, fmt, ctx.task.labels)
        except PotstillError as e:
            return Check("labels", "fail", f"{who}: {e}")
    return Check("labels", "ok", f"{len(ctx.task.labels)} labels start with distinct tokens")


def check_weights(ctx: _Ctx) -> Check:
    """Several processes: load every model the trainer will and compare checksums across ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Check("weights", "skip", "one process: nothing to compare (the trainer checks again under torchrun)")
    import torch
    import torch.distributed as dist

    from potstill.models.loading import load_lm
    from potstill.train.distributed import check_same_weights, load_on_every_rank

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    with load_on_every_rank():
        models = {"student": load_lm(ctx.cfg.student.model, device="cpu", num_layers=ctx.cfg.student.num_layers).model}
        if ctx.cfg.train.teacher_model:
            models["teacher (train.teacher_model)"] = load_lm(ctx.cfg.train.teacher_model, device="cpu").model
    try:
        check_same_weights(models, torch.device("cpu"))
    except PotstillError as e:
        return Check("weights", "fail", str(e))
    return Check("weights", "ok", f"{len(models)} models bit-identical on {dist.get_world_size()} ranks")


class _Counter:
    """Token counts for the budget projection: the teacher's tokenizer when it is a local model, else
    the student's (always at hand: preflight loads it for its other checks) as a proxy, else
    ``CHARS_PER_TOKEN``. Characters / 4 holds for English prose; code, numbers and most other
    scripts take two or more times as many tokens, which a real tokenizer counts."""

    def __init__(self, ctx: _Ctx) -> None:
        from potstill.models.loading import resolve

        self.tok, self.how = None, f"{CHARS_PER_TOKEN:g} characters a token"
        t = ctx.cfg.teacher
        try:
            if t.type == "local" and t.model and isinstance(resolve(t.model)[1], Path):
                self.tok, self.how = _tokenizer(t.model), "tokens by the teacher's tokenizer"
        except PotstillError:  # the labels check names why; fall back to the student's
            pass
        if self.tok is None:
            try:
                self.tok, self.how = ctx.student_tok, "tokens by the student's tokenizer (a proxy for the teacher's)"
            except PotstillError:
                pass

    def __call__(self, texts: list[str]) -> list[int]:
        if self.tok is None:
            return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def projected_cost(ctx: _Ctx) -> tuple[float, int, str]:
    """(USD, inputs, how) for ``generate`` over ``data.inputs``: an upper-ish estimate. In: each
    message's tokens (``_Counter``; over ``TOKEN_SAMPLE`` inputs, a seeded sample's mean) plus its
    chat-format tokens, plus the reply's priming; out: the longest label in a short sentence
    (classification) or ``teacher.max_tokens``, times ``generate.n``."""
    import random

    from potstill.teachers.api.prices import price_for, token_cost

    cfg = ctx.cfg
    records, problem = ctx.inputs()
    if problem:
        raise PotstillError(problem)
    price = price_for(cfg.teacher.model, cfg.teacher.price, cfg.generate.prices)
    if price is None:
        return 0.0, len(records), f"no price known for '{cfg.teacher.model}'"
    total = len(records)
    records = _unanswered(ctx, records)
    count = _Counter(ctx)
    fs = cfg.teacher.few_shot
    if cfg.teacher.type in ("openai", "anthropic"):  # they send no shots, and each input once
        fs = fs.model_copy(update={"k": 0, "orders": 1})
    # A shot is its input and its answer (read as the local teacher reads the file: JSONL or a table).
    lines = [f"{r.text}\n{r.label if r.label is not None else r.output}" for r in read_records(fs.path)
             if r.label or r.output] if fs.k and fs.path and Path(fs.path).exists() else []
    shots = math.ceil(fs.k * sum(count(lines)) / len(lines)) if lines else 0

    # The instruction goes as a system message (Task.messages), the same in every request.
    per_request = count([ctx.task.cfg.instruction])[0] + TOKENS_PER_MESSAGE + TOKENS_PER_REQUEST + shots
    counted = records if len(records) <= TOKEN_SAMPLE else random.Random(0).sample(records, TOKEN_SAMPLE)
    # A message's text as a teacher receives it: content parts joined (their repr counted the JSON
    # around them), a tool-call turn its calls (it was the word "None").
    contents = [[content_text(m.get("content")) + (json.dumps(m["tool_calls"]) if m.get("tool_calls") else "")
                 for m in r.messages] for r in counted]
    sizes = iter(count([t for texts in contents for t in texts]))
    text_tokens = sum(next(sizes) + TOKENS_PER_MESSAGE for texts in contents for _ in texts)
    tokens_in = math.ceil(text_tokens * len(records) / max(1, len(counted))) + per_request * len(records)
    tools = _tool_tokens(ctx, count, records)
    out_tokens = cfg.teacher.max_tokens
    if ctx.task.labels and not reasons(cfg.teacher):
        out_tokens = min(out_tokens, max(count(list(ctx.task.labels))) + ANSWER_SENTENCE)
    # Every shot order is a call. The n samples of generate.n are n calls only where the API has no
    # ``n`` (Anthropic's: the teacher sends n requests); OpenAI's one request carries them all, so its
    # prompt is billed once and only the output n times.
    samples = cfg.generate.n
    calls = fs.orders * (samples if cfg.teacher.type == "anthropic" else 1)
    usd = token_cost(price, tokens_in * calls, out_tokens * len(records) * fs.orders * samples)
    tools_usd = token_cost(price, tools * len(records) * calls, 0)
    how = f"{len(records)} inputs x {calls} call{'s' if calls > 1 else ''}"
    if samples > 1 and calls < samples * fs.orders:
        how += f" of {samples} samples"
    sampled = f" counted on a sample of {len(counted)} inputs" if len(counted) < len(records) else ""
    how += (f", up to {out_tokens} output tokens each" + (" sample" if samples > 1 else "")
            + (" (teacher.max_tokens)" if out_tokens == cfg.teacher.max_tokens else " (a label in a short sentence)")
            + f", {count.how}{sampled} and {TOKENS_PER_MESSAGE} tokens of chat format per message")
    if tools:
        how += f", and {tools} tokens of task.tools in each request"
    rounds = cfg.generate.tool_rounds if ctx.task.cfg.type == "tools" and ctx.task.cfg.tool_choice == "auto" else 0
    if rounds:
        # At most, each round plays one function (a short prompt: its declaration and arguments) and asks
        # the turn after it (the input and the call and result grown on it): counted as two more calls
        # each the size of the first; a teacher that replies in words, or calls several functions at once,
        # makes it fewer or more. Only the turn after carries task.tools: one more time per round.
        usd *= 1 + 2 * rounds
        tools_usd *= 1 + rounds
        how += f", times {1 + 2 * rounds} for generate.tool_rounds {rounds} (one function played and one turn " \
               "after it per round and input, at most where each answer is one call" \
               + (f"; task.tools {1 + rounds} times, in the turns" if tools else "") + ")"
    usd += tools_usd
    if len(records) < total:
        how += f"; {total - len(records)} more answered in the ledger (a rerun pays nothing for them)"
    if cfg.generate.engine == "batch":  # billed at the provider's batch share of the live price
        share = cfg.generate.batch_price.get(cfg.teacher.type, 1.0)
        usd, how = usd * share, how + f", at {share:g} of the live price (batch)"
    return usd, len(records), how


def _tool_tokens(ctx: _Ctx, count: _Counter, records: list) -> int:
    """Tokens of the function tools a tools task's teacher sends with every request, billed as input:
    the ``tools`` of its request (OpenAI's form, or Anthropic's ``input_schema``), plus Anthropic's
    tool-use system prompt; 0 where the teacher calls no tools (a local one)."""
    if ctx.task.cfg.type != "tools" or not records:
        return 0
    from potstill.plugins import load_plugin
    from potstill.teachers import get_teacher

    try:
        if not load_plugin("teachers", ctx.cfg.teacher.type).supports_tools:
            return 0
        teacher = get_teacher(ctx.cfg.teacher, ctx.task)
    except PotstillError:  # the teacher check names why; count the task's tools as written
        tools: Any = ctx.task.cfg.tools
    else:
        try:
            tools = teacher.request(records[0]).get("tools")  # the same in every request
        finally:
            teacher.close()
    if not tools:
        return 0
    return count([json.dumps(tools, ensure_ascii=False)])[0] + (
        ANTHROPIC_TOOL_PROMPT if ctx.cfg.teacher.type == "anthropic" else 0)


def _unanswered(ctx: _Ctx, records: list) -> list:
    """The records ``generate`` would send: one each per request not answered in the run's ledger.
    ``generate.budget_usd`` caps what one run spends, and a run stopped by it says to raise it and
    rerun; what the ledger answered is not sent again, so it is not projected again."""
    path = ctx.run / "calls.sqlite"
    if not path.exists():
        return records
    from potstill.generate import cached_answers
    from potstill.ledger import Ledger
    from potstill.teachers import get_teacher, request_hash

    try:
        teacher = get_teacher(ctx.cfg.teacher, ctx.task)
    except PotstillError:  # the teacher check names why; project every input meanwhile
        return records
    try:
        teacher.n = ctx.cfg.generate.n  # as label_records sets it: the request asks for n samples
        ident = teacher.identity()
        reqs = [teacher.request(r) for r in records]
        with Ledger(path, readonly=True) as ledger:
            # As generate finds them: an answer under another teacher.max_tokens that ended by itself within this one counts.
            hashes, answered, _ = cached_answers(ledger, teacher, reqs, [request_hash(ident, q) for q in reqs])
    finally:
        teacher.close()
    todo = dict.fromkeys(h for h in hashes if h not in answered)  # duplicates are sent once
    first = {h: r for h, r in reversed(list(zip(hashes, records)))}
    return [first[h] for h in todo]


def check_budget(ctx: _Ctx) -> Check:
    budget = ctx.cfg.generate.budget_usd
    if budget is None:
        return Check("budget", "skip", "generate.budget_usd not set")
    if ctx.inputs()[1]:
        return Check("budget", "skip", "data.inputs cannot be read (see inputs)")
    from potstill.generate import unpriced_budget
    from potstill.plugins import load_plugin

    t = ctx.cfg.teacher
    why = unpriced_budget(t.model, t.price, ctx.cfg.generate)
    if why:  # nothing to project: not "$0"
        try:
            remote = load_plugin("teachers", t.type).remote
        except PotstillError:  # the teacher check names it
            remote = False
        if remote:  # generate refuses it too (generate.check_budget)
            return Check("budget", "fail", why)
        return Check("budget", "skip", f"no token price for teacher.model {t.model!r}: nothing to project")
    usd, _, how = projected_cost(ctx)
    if usd > budget:
        return Check("budget", "fail", f"the teacher would cost about ${usd:.4g} ({how}), above generate.budget_usd "
                     f"${budget:g}: the run would stop part-way; raise the budget or set data.limit")
    return Check("budget", "ok", f"projected ${usd:.4f} of ${budget:g} ({how})")


def check_samples(ctx: _Ctx) -> Check:
    """generate.n samples are paid n times (OpenAI: n outputs; Anthropic: n whole requests); greedy
    ones (temperature 0, the default) are near-identical, so the vote learns almost nothing."""
    n, t = ctx.cfg.generate.n, ctx.cfg.teacher
    if n == 1:
        return Check("samples", "skip", "generate.n is 1")
    if reasons(t) and t.type == "openai":  # sent no temperature: OpenAI's reasoning models sample at 1
        return Check("samples", "ok", f"generate.n {n}: {t.model} samples at its own temperature (1)")
    if t.temperature > 0:
        return Check("samples", "ok", f"generate.n {n} at teacher.temperature {t.temperature:g}")
    return Check("samples", "warn", f"generate.n {n} at teacher.temperature 0: greedy samples are near-identical, so "
                 f"the teacher is paid about {n} times for one answer and a vote that agrees with itself; set "
                 "teacher.temperature (0.7 is usual for self-consistency) or generate.n 1")


def check_tool_turns(ctx: _Ctx) -> Check:
    """Inputs a tools task under tool_choice required pays for and never learns (a warning: the rest run)."""
    from potstill.generate.tool_rounds import first_calls_only

    if ctx.cfg.task.type != "tools" or ctx.cfg.task.tool_choice != "required":
        return Check("tool_turns", "skip", "not a tools task under task.tool_choice required")
    wasted = first_calls_only(ctx.cfg, ctx.inputs()[0])
    return Check("tool_turns", "warn", wasted) if wasted else Check("tool_turns", "ok", "every input is a first request")


from potstill.preflight_teacher import check_kd_signal, check_output_budget  # noqa: E402 (it imports Check from here)

# ``train`` leaves the weights to the trainer, which compares the very models it loaded (a second
# load here would double the start-up and open a gloo group before accelerate opens NCCL).
CHECKS: dict[str | None, list[Callable[[_Ctx], Check]]] = {
    "generate": [check_labels, check_budget, check_samples, check_tool_turns, check_output_budget, check_kd_signal],
    "train": [check_context, check_vocabulary, check_prompt, check_labels, check_kd_signal],
    None: [check_inputs, check_teacher, check_context, check_vocabulary, check_prompt, check_labels, check_weights,
           check_budget, check_samples, check_tool_turns, check_output_budget, check_kd_signal],
}


def run_checks(cfg: Config, stage: str | None = None) -> list[Check]:
    """Every check for ``stage`` (``generate``, ``train``) or all of them (None)."""
    ctx = _Ctx(cfg)
    return [_run(fn, ctx) for fn in CHECKS[stage]]


def _run(fn: Callable[[_Ctx], Check], ctx: _Ctx) -> Check:
    """One check; one that cannot load what it reads (a student path that does not exist) fails
    alone with the reason, and the others still run, so the table shows every result."""
    try:
        return fn(ctx)
    except (PotstillError, OSError) as e:  # OSError: a file it reads that cannot be read (no permission, ...)
        if isinstance(e, OSError) and os.environ.get("POTSTILL_DEBUG"):
            raise
        why = str(e).splitlines()[0] if str(e) else repr(e)
        if isinstance(e, OSError) and getattr(e, "filename", None):
            why = f"{e.filename}: {e.strerror or why}"
        return Check(fn.__name__.removeprefix("check_"), "fail", why)


def require(cfg: Config, stage: str | None = None) -> list[Check]:
    """Raise one ``PotstillError`` line naming the first failed check; say each warning in one line."""
    from potstill.progress import say

    checks = run_checks(cfg, stage)
    for c in checks:
        if c.status == "fail":
            raise PotstillError(f"preflight {c.name}: {c.detail}")
    for c in checks:
        if c.status == "warn":
            say(f"[yellow]preflight {c.name}: {c.detail}[/yellow]")
    return checks
