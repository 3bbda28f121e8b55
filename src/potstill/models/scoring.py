"""Label scoring with a local LM, and the prompt-prefix caches that scoring and generation
(``potstill.models.generation``) share.

Label scoring reads one position per input: the logits of the label set's first tokens at the
last prompt token. Two savings make it cheap on a CPU:
- the LM head is applied to that one position and only to the K label rows of the output
  matrix (gemma's 262k-row head would otherwise cost 262,144 x 640 x T MACs per input, about
  as much as the 18 transformer layers at T=40);
- a prompt prefix shared by every input (instruction + few-shot examples, or a chat's system
  turn) is run once; its KV cache is copied and expanded to the batch for each call;
- a batch runs packed, its queries end to end with no padding, where the model allows
  (``potstill.models.packing``); otherwise right-padded after a prefix, left-padded without one.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch

from potstill.models import packing
from potstill.models.loading import LM
from potstill.models.logit_scale import logit_scale
from potstill.models.prompting import PromptFormat, encode_prompt


def cache_kw(model: Any) -> str:
    """The name a model's ``forward`` (and ``generate``) takes a ready KV cache by: ``cache`` since
    transformers 5.2x renamed ``past_key_values``, which then warns on every call."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def decoder(model: Any) -> Any:
    """The transformer body that returns hidden states (no LM head)."""
    return getattr(model, model.base_model_prefix)


def head_rows(model: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    w = head.weight[ids]
    b = head.bias[ids] if getattr(head, "bias", None) is not None else None
    return w, b


def apply_head(model: Any, hidden: torch.Tensor, ids: list[int] | None = None) -> torch.Tensor:
    """Logits for ``hidden`` (N, H) over the ``ids`` rows of the LM head (all rows if None), as the
    model's own forward gives them: times its logit scale (Granite's, Cohere's: ``logit_scale``) and
    through a final logit soft-cap where the architecture has one (gemma 2)."""
    if ids is None:
        logits = model.get_output_embeddings()(hidden)
    else:
        # The K label rows in fp32 whatever the model's dtype: bf16 logits round to steps of 0.06
        # at the quickstart's magnitudes, and close labels then tie (6 of 250 student labels flipped).
        w, b = head_rows(model, ids)
        logits = hidden.float() @ w.float().T
        if b is not None:
            logits = logits + b.float()
    scale = logit_scale(model)
    if scale is not None and scale != 1.0:
        logits = logits * scale
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass
class PrefixCache:
    ids: list[int]
    past: Any
    length: int
    rows: int = 1  # prefixes stacked along the batch (several shot orders of one length, ``stack_prefixes``)
    # Set for a prefix split off each prompt's token ids (a chat's system turn, ``build_prefix(ids=)``)
    # rather than a few-shot prefix: the sum of its last hidden states (H,), which joins each input's
    # pooled embedding so that it stays the mean over the whole prompt, as without the cache.
    hidden_sum: torch.Tensor | None = None

    def starts(self, ids: list[int]) -> bool:
        """Whether the token ids ``ids`` begin with this (single-row) prefix and go on past it."""
        return self.rows == 1 and len(ids) > self.length and ids[: self.length] == self.ids


def sliding_windows(past: Any) -> list[int]:
    """The window of each sliding-window layer in a transformers cache (none: an empty list)."""
    return [getattr(layer, "sliding_window", 0) for layer in past.layers if getattr(layer, "is_sliding", False)]


def stack_prefixes(prefixes: list[PrefixCache]) -> PrefixCache | None:
    """One cache holding several prefixes of the same length as batch rows, so one forward scores
    an input under all of them (a teacher's shot orders); None where lengths differ."""
    if len({p.length for p in prefixes}) != 1 or any(p.rows != 1 or p.hidden_sum is not None for p in prefixes):
        return None
    past = copy.deepcopy(prefixes[0].past)
    for i, layer in enumerate(past.layers):
        layer.keys = torch.cat([p.past.layers[i].keys for p in prefixes])
        layer.values = torch.cat([p.past.layers[i].values for p in prefixes])
    return PrefixCache(ids=prefixes[0].ids, past=past, length=prefixes[0].length, rows=len(prefixes))


def build_prefix(lm: LM, fmt: PromptFormat, ids: list[int] | None = None) -> PrefixCache | None:
    """Run the shared prompt prefix once and keep its KV cache: ``fmt``'s few-shot prefix, or
    ``ids``, the tokens every whole prompt of ``fmt`` starts with (``engines.base.static_ids``: a
    chat's system turn), which ``score_labels`` then splits off each prompt."""
    split = ids is not None
    if not split:
        text = fmt.prefix()
        ids = encode_prompt(lm.tokenizer, fmt, text, first=True) if text else []
    if not ids:
        return None
    with torch.inference_mode():
        out = decoder(lm.model)(input_ids=torch.tensor([ids], device=lm.device), use_cache=True)
    hidden_sum = out.last_hidden_state[0].float().sum(0) if split else None
    return PrefixCache(ids=ids, past=out.past_key_values, length=len(ids), hidden_sum=hidden_sum)


@dataclass
class Scored:
    logits: torch.Tensor  # (N, K) label logits, float32, on CPU
    prompt_tokens: list[int]  # tokens processed per input (prefix included)
    cached_tokens: list[int]  # of which read from the prefix cache
    seconds: list[float]  # wall time per input (batch time shared evenly within a batch)
    batch_seconds: list[float]  # wall time of the batch each input was in (what its caller waited)
    embeddings: torch.Tensor | None = None  # (N, H) unit embeddings: mean last hidden state over each query


def label_margin(logits: torch.Tensor) -> torch.Tensor:
    """(N,) top-1 minus top-2 label probability of (N, K) label logits (1.0 where K is 1): how close
    an input is to a tie, the routing confidence for classification."""
    if logits.shape[-1] < 2:
        return torch.ones(logits.shape[0])
    top = torch.softmax(logits.float(), -1).topk(2, -1).values
    return top[:, 0] - top[:, 1]


def pooled(hidden: torch.Tensor, mask: torch.Tensor, prefix: PrefixCache | None = None) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, H) over the positions where ``mask`` (B, T) is 1, and over a split-off
    prefix's positions where it has a ``hidden_sum``; L2-normalised, on CPU."""
    m = mask.to(hidden.device).unsqueeze(-1).float()
    return _unit_mean((hidden.float() * m).sum(1), m.sum(1), prefix)


def _unit_mean(total: torch.Tensor, count: torch.Tensor, prefix: PrefixCache | None) -> torch.Tensor:
    """Sums (B, H) of hidden states over (B, 1) positions, with a split-off prefix's, as unit means on CPU."""
    if prefix is not None and prefix.hidden_sum is not None:
        total, count = total + prefix.hidden_sum.to(total.device), count + prefix.length
    return torch.nn.functional.normalize(total / count.clamp(min=1), dim=-1).cpu()


def _batch_scores(lm: LM, fmt: PromptFormat, queries: list[list[int]], label_ids: list[int],
                  prefix: PrefixCache | None, pack: bool = True, graphs: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(label logits (B, K), unit embedding (B, H): the mean last hidden state over each query's own tokens).
    ``pack``: run the batch packed where the model allows (``potstill.models.packing``), else padded;
    ``graphs`` (a ``score_graphs.ScoreGraphs``): packed from a recorded CUDA graph where one holds it."""
    pad = lm.tokenizer.pad_token_id
    B, T = len(queries), max(len(q) for q in queries)
    dev = lm.device
    if pack and graphs is not None:
        got = graphs.run(queries, prefix, pad)
        if got is not None:
            last, total = got
            count = torch.tensor([[len(q)] for q in queries], dtype=torch.float32, device=dev)
            return apply_head(lm.model, last, label_ids).float().cpu(), _unit_mean(total, count, prefix)
    P = prefix.length if prefix is not None else 0
    # Stacked prefixes repeat each query once per prefix: one input under a teacher's shot orders is a
    # batch of equal lengths, with no padding for packing to save (it measured no faster).
    stacked = prefix is not None and prefix.rows > 1
    # A single query after a cached prefix packs too: it reads the prefix's keys in place, where the
    # padded path copies the cache per call and writes the query's keys into the copy (p50 of the
    # quickstart student: 18.3 -> 16.9 ms int8 compiled, 32.1 -> 31.1 fp32; under compile it also
    # runs the batches' graph instead of one of its own).
    if (pack and (B > 1 or prefix is not None)
            and (not stacked or (B % prefix.rows == 0 and len({len(q) for q in queries}) > 1))
            and packing.supported(lm.model, P + T)):
        keys = [(layer.keys, layer.values) for layer in prefix.past.layers] if prefix is not None else None
        hidden, lay = packing.forward(decoder(lm.model), lm.model, queries, keys, P, dev)
        last = hidden[lay.ends]
        total = torch.zeros((B, hidden.shape[-1]), device=dev).index_add_(0, lay.segment, hidden.float())
        emb = _unit_mean(total, torch.tensor(lay.lengths, dtype=torch.float32, device=dev)[:, None], prefix)
    elif prefix is None:
        # Left padding puts every prompt's last token at position -1.
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, q in enumerate(queries):
            ids[i, T - len(q):] = torch.tensor(q)
            mask[i, T - len(q):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        packing.dynamic(ids, mask)  # under torch.compile: one graph for every batch shape
        out = decoder(lm.model)(input_ids=ids, attention_mask=mask, use_cache=False)
        last = out.last_hidden_state[:, -1]
        emb = pooled(out.last_hidden_state, mask)
    else:
        # Right padding keeps positions contiguous with the cached prefix; read each row at its end.
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, prefix.length + T), dtype=torch.long)
        mask[:, : prefix.length] = 1
        for i, q in enumerate(queries):
            ids[i, : len(q)] = torch.tensor(q)
            mask[i, prefix.length : prefix.length + len(q)] = 1
        past = copy.deepcopy(prefix.past)
        if B > prefix.rows:  # each prefix row once per query: rows are (prefix, query) pairs, prefix-major
            past.batch_repeat_interleave(B // prefix.rows)
        pos = torch.arange(prefix.length, prefix.length + T).unsqueeze(0).expand(B, T).contiguous()
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        packing.dynamic(ids, mask, pos)  # under torch.compile: one graph for every batch shape
        for layer in past.layers:
            torch._dynamo.maybe_mark_dynamic(layer.keys, 0)
            torch._dynamo.maybe_mark_dynamic(layer.values, 0)
        out = decoder(lm.model)(
            input_ids=ids, attention_mask=mask, **{cache_kw(decoder(lm.model)): past}, position_ids=pos, use_cache=True,
        )
        ends = torch.tensor([len(q) - 1 for q in queries], device=dev)
        last = out.last_hidden_state[torch.arange(B, device=dev), ends]
        emb = pooled(out.last_hidden_state, mask[:, prefix.length :], prefix)
    return apply_head(lm.model, last, label_ids).float().cpu(), emb


def _queries(lm: LM, fmt: PromptFormat, messages: list[list[dict]], prefix: PrefixCache | None,
             max_length: int | None) -> tuple[list[list[int]], PrefixCache | None]:
    """Each chat's token ids after ``prefix``, and the prefix to run them with. A split-off prefix
    (``hidden_sum`` set) is dropped for the whole call, and whole prompts run, where a prompt does
    not start with its ids (tokens merged across its end) or ``max_length`` would cut the prompt:
    the results are then those of a model without the cache."""
    tok = lm.tokenizer
    if prefix is None or prefix.hidden_sum is None:
        return [encode_prompt(tok, fmt, fmt.query(tok, m), first=prefix is None)[-(max_length or 0):]
                for m in messages], prefix
    whole = [encode_prompt(tok, fmt, fmt.query(tok, m), first=True) for m in messages]
    n = prefix.length
    if all(prefix.starts(q) and len(q) <= (max_length or len(q)) for q in whole):
        return [q[n:] for q in whole], prefix
    return [q[-(max_length or 0):] for q in whole], None


def score_labels(lm: LM, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int],
                 batch_size: int = 8, prefix: PrefixCache | None = None, progress: Any = None,
                 max_length: int | None = None, pack: bool = True, graphs: Any = None) -> Scored:
    """Label logits (and input embeddings) for each chat in ``messages``; see the module docstring.

    ``max_length``: keep only the last N tokens of each query (the generation prompt, where the
    answer starts, is at the end). ``pack``: batches run packed where the model allows; ``graphs``
    (``score_graphs.ScoreGraphs``, a compiled engine's on CUDA): replayed from CUDA graphs."""
    queries, prefix = _queries(lm, fmt, messages, prefix, max_length)
    logits, secs, embs = [], [], []
    # Sorting by length makes batches of similar length, so little compute goes to padding.
    order = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            t0 = time.perf_counter()
            out, emb = _batch_scores(lm, fmt, [queries[i] for i in idx], label_ids, prefix, pack, graphs)
            dt = (time.perf_counter() - t0) / len(idx)
            logits.append((idx, out))
            embs.append((idx, emb))
            secs.append((idx, dt))
            if progress is not None:
                progress(len(idx))
    result = torch.empty((len(queries), len(label_ids)))
    per_call = [0.0] * len(queries)
    per_batch = [0.0] * len(queries)
    embeddings = torch.empty((len(queries), embs[0][1].shape[-1])) if embs else torch.zeros(0)
    for (idx, out), (_, emb) in zip(logits, embs):
        result[idx] = out
        embeddings[idx] = emb
    for idx, dt in secs:
        for i in idx:
            per_call[i] = dt
            per_batch[i] = dt * len(idx)
    cached = prefix.length if prefix is not None else 0
    return Scored(
        logits=result,
        prompt_tokens=[len(q) + cached for q in queries],
        cached_tokens=[cached] * len(queries),
        seconds=per_call,
        batch_seconds=per_batch,
        embeddings=embeddings,
    )


def score_labels_formats(lm: LM, fmts: list[PromptFormat], messages: list[list[dict]], label_ids: list[int],
                         prefixes: list[PrefixCache | None], stacked: PrefixCache | None, batch_size: int = 8,
                         max_length: int | None = None, pack: bool = True, graphs: Any = None) -> list[Scored]:
    """``score_labels`` of every chat under each format (a teacher's shot orders). With ``stacked``
    (``stack_prefixes`` of the formats' few-shot prefixes) they run in one forward per batch of
    inputs: the same work in fewer, larger matrix products, packed where the model allows (from
    ``graphs``, a ``score_graphs.ScoreGraphs``, where one of its buckets holds the batch). Seconds
    are shared so that their sum over the formats is each input's cost, and batch seconds so that
    theirs is its wait."""
    tok = lm.tokenizer
    queries = [[encode_prompt(tok, f, f.query(tok, m), first=False)[-(max_length or 0):] for m in messages]
               for f in fmts]
    if stacked is None or any(q != queries[0] for q in queries[1:]):
        return [score_labels(lm, f, messages, label_ids, batch_size=batch_size, prefix=p, max_length=max_length,
                             pack=pack, graphs=graphs) for f, p in zip(fmts, prefixes)]
    K, n = len(fmts), len(messages)
    logits = torch.empty((K, n, len(label_ids)))
    embeddings: torch.Tensor | None = None
    secs, waits = [0.0] * n, [0.0] * n
    order = sorted(range(n), key=lambda i: len(queries[0][i]))
    step = max(1, batch_size)
    with torch.inference_mode():
        for start in range(0, n, step):
            idx = order[start : start + step]
            t0 = time.perf_counter()
            out, emb = _batch_scores(lm, fmts[0], [queries[0][i] for _ in range(K) for i in idx], label_ids, stacked,
                                     pack, graphs)
            dt = time.perf_counter() - t0
            logits[:, idx] = out.view(K, len(idx), -1)
            if embeddings is None:
                embeddings = torch.empty((K, n, emb.shape[-1]))
            embeddings[:, idx] = emb.view(K, len(idx), -1)
            for i in idx:
                secs[i], waits[i] = dt / len(idx) / K, dt / K
    return [Scored(logits=logits[k], prompt_tokens=[len(q) + stacked.length for q in queries[0]],
                   cached_tokens=[stacked.length] * n, seconds=list(secs), batch_seconds=list(waits),
                   embeddings=embeddings[k] if embeddings is not None else None) for k in range(K)]
