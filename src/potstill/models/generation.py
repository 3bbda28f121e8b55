"""Generation with a local LM: greedy or sampled, the prompt's fixed start (few-shot prefix or chat
system turn) computed once and its KV cache reused (``scoring.build_prefix``), drafts from the
context checked in one forward for a single greedy prompt (``greedy_lookup``), static KV caches
with a compiled step on a GPU (``static_decode``), and the routing embedding pooled from the
prefill that generation runs anyway (``generate(embed=True)``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from potstill.models.loading import LM
from potstill.models.prompting import PromptFormat, encode_prompt, stop_token_ids
from potstill.models.scoring import PrefixCache, cache_kw, decoder, pooled, sliding_windows
from potstill.models.static_decode import bucket_length, bucket_rows, fill_prefix, greedy, greedy_is_argmax


@dataclass
class Generated:
    texts: list[str]
    prompt_tokens: list[int]
    output_tokens: list[int]
    seconds: list[float]
    mean_logprob: list[float]
    tokens: list[list[int]] | None = None  # each output's token ids (up to its end token, excluded)
    # (N, H) unit input embeddings (``generate(embed=True)``): the mean last hidden state over each
    # whole prompt, from the prefill that generation runs anyway; None when not asked or not available.
    embeddings: torch.Tensor | None = None


class StopOnText:
    """A row is done once its decoded new text holds a stop string. Decoding the text, unlike
    transformers' ``stop_strings`` (which maps every vocabulary entry to its bytes and fails on
    some tokenizers), works with any tokenizer; it costs one decode per step of a few dozen tokens."""

    def __init__(self, tokenizer: Any, start: int, stop: Sequence[str]):
        self.tok, self.start, self.stop = tokenizer, start, list(stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tok.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to and including the first stop string (the last token may run past it)."""
    ends = [text.index(s) + len(s) for s in stop if s in text]
    return text[: min(ends)] if ends else text


class TextStream:
    """One prompt's answer handed on as text while it is decoded (``generate``'s ``on_text``). Called
    with the new tokens so far, it hands ``on_text`` the text past what went out, as the answer's
    final text (``generate``: up to its end token, up to and including its first ``stop`` string)
    will start: held back are a character still being spelled (a trailing U+FFFD) and trailing white
    space (a tokenizer may tidy a space before what follows). Once the answer has ended (``final``,
    an end token, or a stop string), the rest of its text goes out and nothing after it."""

    def __init__(self, tokenizer: Any, ends: set[int], stop: Sequence[str], on_text: Callable[[str], None]):
        self.tok, self.ends, self.stop, self.on_text = tokenizer, ends, list(stop), on_text
        self.sent, self.done = "", False

    def __call__(self, toks: Sequence[int], final: bool = False) -> None:
        if self.done:
            return
        toks = list(toks)
        n = next((j for j, t in enumerate(toks) if t in self.ends), None)
        text = self.tok.decode(toks[:n], skip_special_tokens=True)
        cut = cut_at_stop(text, self.stop)
        self.done = final or n is not None or cut != text or any(s in text for s in self.stop)
        if not self.done:
            cut = cut.rstrip("\ufffd").rstrip()
        if len(cut) > len(self.sent) and cut.startswith(self.sent):
            piece, self.sent = cut[len(self.sent):], cut
            self.on_text(piece)


class _TokenStreamer:
    """transformers' streamer protocol (``put`` / ``end``) for ``model.generate`` at batch 1: the
    first ``put`` is the prompt, each later one a new token, handed on to ``stream``."""

    def __init__(self, stream: TextStream):
        self.stream, self.toks, self.prompt_seen = stream, [], False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.toks += value.reshape(-1).tolist()
        self.stream(self.toks)

    def end(self) -> None:
        pass


def draft_from_context(seq: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of ``seq``'s last n-gram
    (n from ``max_ngram`` down to 1) in ``seq`` itself: prompt lookup. An extraction copies runs
    of its input, and a JSON answer repeats the keys and punctuation its instruction shows."""
    for n in range(min(max_ngram, len(seq) - 1), 0, -1):
        tail = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start : start + n] == tail:
                return seq[start + n : start + n + k]
    return []


def _dynamic_step(ids: torch.Tensor, past: Any) -> None:
    """Under ``torch.compile``: the fed tokens and the cache's length dynamic from the first call, so
    that a compiled decoder runs one graph for every multi-token feed and one for single tokens
    (dynamo always specialises a size of 1). Left to dynamo, the first call's sizes compiled as
    constants and each later kind recompiled: 6 graphs instead of 3 in the engines' test, and 646 s
    instead of 203 s to compile and warm the 30-layer extraction student in int8 on 2 cores."""
    torch._dynamo.maybe_mark_dynamic(ids, 1)
    for layer in getattr(past, "layers", None) or ():
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            torch._dynamo.maybe_mark_dynamic(layer.keys, 2)
            torch._dynamo.maybe_mark_dynamic(layer.values, 2)


def _contiguous(past: Any) -> None:
    """A prefill's keys (transposed views) and a cropped cache's (views with the old length's
    strides) are not laid out as a step's output is: compiled, the next forward would guard on the
    strides and compile again. Copied contiguous (a few hundred KB per layer)."""
    for layer in getattr(past, "layers", None) or ():
        if getattr(layer, "keys", None) is not None and not layer.keys.is_contiguous():
            layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()


def greedy_lookup(lm: LM, ids: list[int], prefix: PrefixCache | None, max_new_tokens: int, ends: set[int],
                  stop: Sequence[str] = (), draft: int = 8,
                  on_tokens: Callable[[list[int]], None] | None = None) -> tuple[list[int], list[float]]:
    """Greedy decoding of one prompt with drafts from the context (``draft_from_context``)
    verified in one forward each: every draft token the model would have chosen itself is kept,
    then the model's own next token, so the output is greedy decoding's (up to the float
    rounding of a wider matrix product, the same class of difference as another batch size) at
    a fraction of the forwards. ``prefix``'s KV cache (the prompt's fixed start) is copied, not
    recomputed. Returns the new tokens (up to and including an end token) and each one's
    log-probability. ``on_tokens``: given the new tokens so far after each forward."""
    tok = lm.tokenizer
    # Only a compiled decoder needs the cache's layout and dynamic sizes set: marking them costs
    # about 1.2 ms per step for 30 layers, and the copies a few more, for nothing in eager mode.
    compiled = isinstance(decoder(lm.model), torch._dynamo.eval_frame.OptimizedModule)
    if prefix is not None and prefix.starts(ids):
        past, feed = copy.deepcopy(prefix.past), ids[prefix.length :]
        if compiled:
            _contiguous(past)  # a prefill's keys are transposed views; later steps' are contiguous
    else:
        past, feed = None, ids  # the first forward makes the cache
    seq = list(ids)
    out: list[int] = []
    logps: list[float] = []
    proposal: list[int] = []
    kw = cache_kw(lm.model)  # once, not each step
    while True:
        x = torch.tensor([feed + proposal], device=lm.device)
        if compiled:
            _dynamic_step(x, past)
        res = lm.model(input_ids=x, **{kw: past}, use_cache=True, logits_to_keep=len(proposal) + 1)
        if not out:  # the first forward: the cache now exists, and its layers' windows are known
            past = res.past_key_values
            windows = sliding_windows(past)
            if windows and len(ids) + max_new_tokens + draft >= min(windows) - 1:
                draft = 0  # a sliding-window layer past its window cannot take back a rejected draft
        logits = res.logits[0].float()
        lp = torch.log_softmax(logits, -1)
        best = lp.argmax(-1).tolist()
        take = 0
        while take < len(proposal) and proposal[take] == best[take]:
            take += 1
        chosen = proposal[:take] + [best[take]]
        done = False
        for j, t in enumerate(chosen):
            out.append(t)
            logps.append(float(lp[j, t]))
            if t in ends or len(out) >= max_new_tokens or (
                    stop and any(s in tok.decode(out, skip_special_tokens=True) for s in stop)):
                done = True
                break
        if on_tokens is not None:
            on_tokens(out)
        if done:
            return out, logps
        seq += chosen
        # The cache holds every fed token: the rejected draft's are dropped, and the model's own
        # choice (not yet in the cache) is fed next.
        if len(proposal) > take:
            past.crop(take - len(proposal))
            if compiled:
                _contiguous(past)
        feed = [chosen[-1]]
        proposal = draft_from_context(seq, min(draft, max_new_tokens - len(out) - 1)) if draft else []


def generate(lm: LM, fmt: PromptFormat, messages: list[list[dict]], max_new_tokens: int,
             batch_size: int = 8, progress: Any = None, temperature: float = 0.0, stop: Sequence[str] = (),
             seed: int = 0, prefix: PrefixCache | None = None, lookup: int = 0,
             static: Any = None, embed: bool = False,
             json_schema: dict | Sequence[dict | None] | None = None,
             on_text: Callable[[str], None] | None = None) -> Generated:
    """Generation, batched with left padding; also the mean log-prob of the chosen tokens.

    Greedy at ``temperature`` 0, else sampled (top-k 50, top-p 0.95) from a
    generator seeded with ``seed`` per batch, so the same request samples the same text. A batch
    stops once every row has produced one of the ``stop`` strings (kept in the text) or EOS.
    Greedy is the argmax of the logits, as ``model.generate`` chooses under the model's generation
    config; where that config changes the choice (a repetition penalty, ...), every batch runs
    ``model.generate`` (no drafts, no own decoding loop).

    ``prefix``: the KV cache of the prompts' fixed start (``build_prefix``), copied into each
    batch instead of recomputed; a prompt that does not start with its ids runs whole. Greedy
    decoding at batch size 1 runs ``greedy_lookup`` with drafts of up to ``lookup`` tokens (0: none);
    with neither a prefix nor drafts it is ``model.generate`` as before.
    With a prefix, a batch's prompts are padded between the prefix and their own tokens; where a
    model's sliding window could then cover padding, the batch's prompts run one at a time.

    ``static`` (``static_decode.StaticCaches``; a compiled engine on CUDA sets it): every
    batch, a single prompt included, decodes on a reused static KV cache through a compiled,
    CUDA-graphed step (``static_decode.greedy``; sampling: ``model.generate`` on that cache); no
    drafts (a step is one graph replay whatever it feeds). A batch for which a frozen ``static``
    gives no cache (``StaticCaches.get``) runs on the dynamic cache, through the uncompiled body
    (nothing compiles while a server's client waits).

    ``embed``: also each prompt's input embedding (``Generated.embeddings``), pooled from the
    prefill's last hidden states, so a server's out-of-distribution check costs no second forward
    over the prompt. None where a batch's cached prefix is a few-shot prefix (its hidden states are
    not kept).

    ``json_schema`` (greedy only): decode under that schema (``json_guide.JsonSchemaLogits``),
    or a list of one per message (None: that one unguided); a batch that holds a guided row takes
    no drafts, and decodes on ``static`` (one step at a time, replayed from the cache's guided CUDA
    graph on a GPU, ``static_decode.greedy``'s guide) where it gets a cache, else through ``model.generate`` with the processor; the mean
    log-prob is still the model's own, from its unprocessed logits.

    ``on_text`` (one message only): each piece of the answer's text as it is decoded
    (``TextStream``; on ``static`` caches, every few steps, as the tokens come to the host).
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from potstill.models.json_guide import JsonSchemaLogits

    schemas = None if json_schema is None else [json_schema] * len(messages) if isinstance(json_schema, dict) \
        else list(json_schema)
    if schemas is not None and len(schemas) != len(messages):
        raise ValueError(f"{len(schemas)} JSON schemas for {len(messages)} messages")
    if schemas is not None and not any(x is not None for x in schemas):
        schemas = None
    if schemas is not None and temperature > 0:
        raise ValueError("decoding under a JSON schema is greedy only")

    if on_text is not None and len(messages) != 1:
        raise ValueError(f"on_text streams one answer, not {len(messages)}")
    tok = lm.tokenizer
    # Nucleus 0.95 over transformers' top-50: the unlikely tail is where a small model's junk comes from.
    sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_k": 50, "top_p": 0.95} \
        if temperature > 0 else {"do_sample": False}
    prompts = [encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True) for m in messages]
    ends = set(stop_token_ids(tok, getattr(lm.model, "generation_config", None)))
    stream = TextStream(tok, ends, stop, on_text) if on_text is not None else None
    texts, n_out, secs, mlp = [""] * len(prompts), [0] * len(prompts), [0.0] * len(prompts), [0.0] * len(prompts)
    out_ids: list[list[int]] = [[] for _ in prompts]
    P = prefix.length if prefix is not None and prefix.rows == 1 else 0
    cached = [P > 0 and prefix.starts(p) for p in prompts]
    # A few-shot prefix keeps no hidden states, so a prompt whose start it caches cannot be pooled whole.
    embed = embed and (not any(cached) or prefix.hidden_sum is not None)
    embeddings = torch.zeros(len(prompts), lm.model.config.hidden_size) if embed else None
    # Padding between the prefix and a prompt's own tokens is masked, but a sliding window counts
    # it: a batch whose rows could outgrow the shortest window runs one prompt at a time.
    windows = sliding_windows(prefix.past) if P else []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rank = {i: k for k, i in enumerate(order)}  # a batch's sampling seed: its first row's rank
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if windows:
        batches = [part for idx in batches for part in (
            [[i] for i in idx] if max(len(prompts[i]) for i in idx) + max_new_tokens > min(windows) else [idx])]

    def finish(i: int, toks: list[int], logps: list[float], dt: float) -> None:
        n = next((j for j, t in enumerate(toks) if t in ends), len(toks))
        texts[i] = cut_at_stop(tok.decode(toks[:n], skip_special_tokens=True), stop)
        if stream is not None:
            stream(toks, final=True)
        out_ids[i] = list(toks[:n])
        n_out[i] = n
        secs[i] = dt
        mlp[i] = float(sum(logps[: max(n, 1)]) / len(logps[: max(n, 1)]))

    argmax = greedy_is_argmax(lm.model)  # else model.generate: its processors choose the tokens

    def ended(new: list[int]) -> int | None:
        """How many of a row's new tokens it keeps once it has ended, as ``model.generate`` ends it
        (its end token, or ``StopOnText`` on its decoded text), else None."""
        end = next((j + 1 for j, t in enumerate(new) if t in ends), None)
        if stop and any(s in tok.decode(new[:end], skip_special_tokens=True) for s in stop):
            return next(j + 1 for j in range(len(new))
                        if any(s in tok.decode(new[: j + 1], skip_special_tokens=True) for s in stop))
        return end

    with torch.inference_mode():
        for idx in batches:
            guides = [schemas[i] for i in idx] if schemas is not None else []
            guided = any(x is not None for x in guides)
            use = P > 0 and all(cached[i] for i in idx)
            t0 = time.perf_counter()
            T = max(len(prompts[i]) for i in idx)
            # A static cache's rows come in buckets: a short batch is filled with its last prompt again.
            # Greedy decoding runs up to graph_steps - 1 steps past the budget (``static_decode.Steps``,
            # which ``get`` records on the plain body, as ``greedy`` runs them).
            with _plain_body(lm.model, static is not None):
                past = static.get(bucket_rows(len(idx)), bucket_length(T + max_new_tokens + static.graph_steps - 1),
                                  greedy=temperature <= 0 and argmax and not guided,
                                  guided=temperature <= 0 and argmax and guided) \
                    if static is not None and (argmax or not guided) else None
            if past is None and len(idx) == 1 and temperature <= 0 and (use or lookup > 0) and argmax \
                    and not guided:
                with _plain_body(lm.model, static is not None), \
                        _prefill_hidden(lm.model, embed) as seen:  # a frozen engine's fallback compiles nothing
                    toks, logps = greedy_lookup(lm, prompts[idx[0]], prefix if use else None, max_new_tokens, ends,
                                                stop=stop, draft=lookup, on_tokens=stream)
                if embeddings is not None:
                    embeddings[idx] = _prefill_embeddings(seen, torch.ones(1, len(prompts[idx[0]])), 1,
                                                          prefix if use else None)
                finish(idx[0], toks, logps, time.perf_counter() - t0)
                if progress is not None:
                    progress(1)
                continue
            on_static = past is not None
            rows = idx + idx[-1:] * (bucket_rows(len(idx)) - len(idx)) if on_static else idx
            ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for r, i in enumerate(rows):
                own = prompts[i][P:] if use else prompts[i]
                ids[r, T - len(own):] = torch.tensor(own)
                mask[r, T - len(own):] = 1
            extra: dict[str, Any] = {}
            if use:  # [prefix][padding][own tokens]: positions follow the mask, so the padding is skipped
                ids[:, :P] = torch.tensor(prefix.ids)
                mask[:, :P] = 1
            if on_static:
                if use:
                    fill_prefix(past, prefix.past, len(rows))
                if temperature <= 0 and argmax:
                    guide = JsonSchemaLogits(tok, [schemas[i] for i in rows], 0, sorted(ends)) if guided else None
                    with _plain_body(lm.model, True), _prefill_hidden(lm.model, embed) as seen:
                        toks, logps = greedy(static, ids.to(lm.device), mask.to(lm.device), past, P if use else 0,
                                             max_new_tokens, ended if stream is None else streamed(ended, stream),
                                             guide=guide)
                    if embeddings is not None:
                        embeddings[idx] = _prefill_embeddings(seen, mask, len(idx), prefix if use else None)
                    dt = (time.perf_counter() - t0) / len(idx)
                    for r, i in enumerate(idx):
                        finish(i, toks[r], logps[r], dt)
                    if progress is not None:
                        progress(len(idx))
                    continue
                extra[cache_kw(lm.model)] = past
            elif use:
                past = copy.deepcopy(prefix.past)
                past.batch_repeat_interleave(len(idx))
                extra[cache_kw(lm.model)] = past
            # The global RNG is forked, so seeding here leaves the caller's random state alone.
            with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []), \
                    _plain_body(lm.model, static is not None), _prefill_hidden(lm.model, embed) as seen:
                torch.manual_seed(seed + rank[idx[0]])
                out = lm.model.generate(
                    input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id, eos_token_id=sorted(ends), output_scores=True,
                    return_dict_in_generate=True,
                    stopping_criteria=StoppingCriteriaList([StopOnText(tok, T, stop)]) if stop else None,
                    logits_processor=LogitsProcessorList([JsonSchemaLogits(tok, guides, T, sorted(ends))])
                    if guided else None, output_logits=guided,
                    streamer=_TokenStreamer(stream) if stream is not None else None,
                    **sampling, **extra,
                )
            if embeddings is not None:
                embeddings[idx] = _prefill_embeddings(seen, mask, len(idx), prefix if use else None)
            dt = (time.perf_counter() - t0) / len(idx)
            new = out.sequences[:, T:]
            # Each chosen token's log-probability, gathered where the scores are: (rows, steps) to the
            # host, not (rows, steps, vocabulary) (200 MB for 16 rows of 64 tokens over 49k).
            # Under a schema the scores are the processor's (one finite logit a row): the model's own logits.
            raw = out.logits if guided else out.scores
            chosen = torch.stack([torch.log_softmax(s.float(), -1).gather(-1, new[:, j : j + 1]).squeeze(-1)
                                  for j, s in enumerate(raw)], 1).cpu()
            new = new.cpu()
            for r, i in enumerate(idx):
                finish(i, new[r].tolist(), chosen[r].tolist(), dt)
            if progress is not None:
                progress(len(idx))
    return Generated(texts=texts, prompt_tokens=[len(p) for p in prompts], output_tokens=n_out, seconds=secs,
                     mean_logprob=mlp, tokens=out_ids, embeddings=embeddings)


def streamed(ended: Callable[[list[int]], int | None], stream: TextStream) -> Callable[[list[int]], int | None]:
    """``ended`` for ``static_decode.greedy`` that also hands a row's tokens so far to ``stream``
    (one prompt: every row of its bucket is that prompt, and ``stream`` sends only new text)."""
    def check(new: list[int]) -> int | None:
        stream(new)
        return ended(new)

    return check


@contextlib.contextmanager
def _prefill_hidden(model: Any, want: bool) -> Iterator[list[torch.Tensor]]:
    """While active, the last hidden states ``(rows, fed tokens, H)`` of the body's first forward
    (generation's prefill), read by a forward hook on whatever body is in place then (compiled or
    not) that removes itself on that call, so no later decoding step, compiled or recorded, sees it."""
    seen: list[torch.Tensor] = []
    if not want:
        yield seen
        return
    handle: Any = None

    def hook(module: Any, args: Any, out: Any) -> None:
        handle.remove()
        seen.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

    handle = decoder(model).register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _prefill_embeddings(seen: list[torch.Tensor], mask: torch.Tensor, rows: int,
                        prefix: PrefixCache | None) -> torch.Tensor:
    """(rows, H) unit mean of a prefill's last hidden states over the fed tokens ``mask`` marks (its
    last columns: the prompt after what the cache held) and, where the cache held a split-off
    prefix, that prefix's: the whole prompt's mean, as ``TransformersEngine.embed`` takes it."""
    hidden = seen[0][:rows]
    return pooled(hidden, mask[:rows, mask.shape[1] - hidden.shape[1]:], prefix)


@contextlib.contextmanager
def _plain_body(model: Any, swap: bool) -> Iterator[None]:
    """With ``swap``, the model's body as it was before ``torch.compile`` while ``generate`` runs:
    the step transformers compiles (CUDA graphs) is then its own, the graph of its documented
    static-cache ``generate``, not one around an already compiled body."""
    body = decoder(model)
    orig = getattr(body, "_orig_mod", None)
    if not swap or orig is None:
        yield
        return
    setattr(model, model.base_model_prefix, orig)
    try:
        yield
    finally:
        setattr(model, model.base_model_prefix, body)


@torch.inference_mode()
def token_logprobs(lm: LM, prompt: list[int], answer: list[int], top: int = 0) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each ``answer`` token's log-probability after ``prompt`` and the ones before it, and the ``top``
    most likely tokens at its position with theirs: one forward over prompt + answer (teacher forcing),
    log-softmax over the whole vocabulary in float32. Run on the model's eager body (a compiled one
    would compile a new graph while a client waits), so the numbers match generation's up to the
    float rounding of another batch shape."""
    if not answer:
        return []
    ids = torch.tensor([prompt + answer], device=lm.device)
    with _plain_body(lm.model, True):
        logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=len(answer) + 1).logits[0]
    # Position j of the kept logits predicts the token after it: the last len(answer) + 1 positions
    # are the prompt's last token (predicting answer[0]) to the answer's last (predicting nothing).
    return read_logprobs(torch.log_softmax(logits[:-1].float(), -1), answer, top)


def read_logprobs(lp: torch.Tensor, answer: list[int], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """``token_logprobs``' answer from ``lp``, (len(answer), vocabulary) log-probabilities, row j at
    the position that predicts ``answer[j]``: each answer token's own, and the ``top`` likeliest."""
    chosen = lp.gather(-1, torch.tensor(answer, device=lp.device)[:, None])[:, 0].tolist()
    if top <= 0:
        return [(c, []) for c in chosen]
    best = lp.topk(min(top, lp.shape[-1]), -1)
    return [(c, list(zip(i, v))) for c, i, v in zip(chosen, best.indices.tolist(), best.values.tolist())]
