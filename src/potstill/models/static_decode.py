"""Generation on a GPU with a static KV cache, so that each decoding step replays a CUDA graph.

``TransformersEngine.compile`` switches it on when the model is on CUDA. In bf16 its outputs part
from the eager dynamic-cache path's only at near ties (the eager model's own token ahead by at most
0.125 nats at batch 1 and 0.188 at batch 16, on an H100 and an H200; ``benchmarks/gpu_generation.json``);
float32 gives the eager tokens exactly (``tests/test_generation.py``).

Decoding with transformers' default (dynamic) cache launches every kernel of every layer from
Python at each new token: a small model on a GPU then waits on its host, not its math
(``model.generate`` of 8 tokens from SmolLM2-135M took about 270 ms on an H100, ``../shared/GPU.md``).
With a ``transformers.StaticCache`` the cache's tensors keep their shapes and addresses, and the
one-token step compiles (``torch.compile``) and replays as CUDA graphs (8 steps to a graph, below).

``generate`` decodes greedy batches through its own loop (``greedy``), not ``model.generate``:
each step is one compiled call (forward, argmax and the chosen token's log-probability) whose
inputs already sit on the device, so nothing waits on the host between steps; the loop looks at
the tokens (one copy to the host) every ``CHECK_EVERY`` steps to stop once every row has ended.
On a GPU those ``CHECK_EVERY`` steps are recorded as one CUDA graph per cache (``Steps``) and
replayed at once, where ``reduce-overhead`` replays a graph per step from Python: 64-token answers
from a SmolLM2-135M-shaped model on an H200 took 145 ms instead of 157 at batch 1 and 19.7 ms per
input instead of 23.8 at batch 8 (``graph_steps.json``); the GPU is then busy for most of a step
(1.64 ms a step, 1.35 ms of it kernels: 532 of them; ``step_profile_probe.json``), which is why
``compile`` on CUDA also fuses sibling projections (``models.fused_linear``: 1.35 ms a step).
transformers' ``generate`` on a compiled step of its own runs per-step Python (processors, stopping
criteria, input preparation) and a finished-rows check that waits on the device each step: it took
2.1x as long per input at batch 1 and 1.6x at 16 on an H200 (``gpu_generation.json`` run_6).
Sampling, and a model whose generation config changes greedy choices (a repetition penalty, ...),
keep ``model.generate`` on the static cache.

The graphs are recorded for one cache shape, so caches come in buckets and are reused:
rows rounded up to a power of two (a short batch gets copies of its last prompt, whose outputs are
dropped) and lengths to a power of two of at least 256. The step compiles once for every bucket
(twice: one row is its own): it marks rows and lengths dynamic and builds its own 4D attention mask,
since transformers' mask for a static cache takes the cache's length as a Python int, which makes
a second length compile the step again (15-25 s for SmolLM2-135M on an H200) before dynamo's
automatic dynamic shapes take over, and kept a warmed server from making caches of new lengths. A prompt prefix whose KV cache the engine
keeps (a few-shot prefix, a chat's system turn) is copied into each row of the static cache
instead of recomputed, as the dynamic path copies it.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

MIN_LENGTH = 256
# SDPA kernels for the prefill on CUDA: not cuDNN's, which builds a plan for each new prompt length
# (26-110 ms more for an answer's first time on an H200, first_sight_probe.json). The decoding steps
# keep the default dispatch (cuDNN there): their shapes are few, and they ran faster on it (63 steps
# in 176-192 ms against 193-202 with cuDNN off). None: the prefill keeps the default too.
PREFILL_SDPA: list[SDPBackend] | None = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
CHECK_EVERY = 8  # decoding steps between two looks at the tokens: at most this many steps too many
GUIDE_TOP = 32  # the candidates a guided step brings to the host (JsonSchemaLogits' first try)


def bucket_rows(n: int) -> int:
    """The smallest power of two holding ``n`` rows."""
    return 1 << max(n - 1, 0).bit_length()


def bucket_length(n: int) -> int:
    """The smallest power of two of at least ``MIN_LENGTH`` holding ``n`` positions."""
    return max(MIN_LENGTH, 1 << max(n - 1, 0).bit_length())


class StaticCaches:
    """One ``StaticCache`` per (rows, length) bucket of a model, emptied and reused by each batch:
    a new cache object would be new tensor addresses, and the compiled step would record its CUDA
    graph again (a new cache's first batch took 0.4-0.9 s instead of 0.2-0.3 on an H200,
    static_lengths.json). A batch takes the shortest cache of its rows that holds its length, an
    existing longer one before a new one of its own bucket. ``frozen`` (set once a server has
    warmed them): a new cache only where it compiles nothing (any length, with a step that builds
    its own mask) and, on a GPU, takes at most a quarter of its free memory; otherwise None, and the
    batch runs on the dynamic cache instead of compiling while a client waits."""

    def __init__(self, model: Any, compile: bool = False, graph_steps: int | None = None):
        self.model = model
        self._caches: dict[tuple[int, int], Any] = {}
        # Greedy steps recorded as one CUDA graph per cache (``Steps``); 1: a compiled call per step.
        # Default: CHECK_EVERY compiled on CUDA, the steps between two looks at the tokens.
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.graph_steps = graph_steps or (CHECK_EVERY if compile and on_cuda else 1)
        self._steps: dict[int, Steps] = {}  # by id of the cache they run on
        self._guided: dict[int, Steps] = {}  # a guided step (``Steps(guided=True)``) per cache, likewise
        self.frozen = False
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self._positions = "cache_position" in params  # transformers 4.x: the cache is told where to write
        self.compiled = compile
        # The attention mask the step builds: a boolean one for sdpa, an additive one for eager
        # attention; None (other kernels: flash, flex, ...): transformers builds it from the 2D mask,
        # with the cache's length as a Python int, so a new length can compile the step again.
        self.mask_kind = _MASKS.get(getattr(model.config, "_attn_implementation", None))
        self.dtype = next(model.parameters()).dtype
        # reduce-overhead: CUDA graphs, recorded once per cache (its tensors keep their addresses).
        # ``greedy`` marks rows and lengths dynamic, so one compiled graph serves every bucket of
        # rows above one and every length instead of a compile per bucket (15-25 s each for
        # SmolLM2-135M on an H200: a server's warm-up up to 16 rows took 109 s instead of 184 once
        # rows were dynamic, static_rows.json).
        # With graph_steps above 1 on CUDA, ``Steps`` records the CUDA graphs itself (K steps each),
        # so the step compiles without reduce-overhead's.
        mode = "default" if self.graph_steps > 1 and on_cuda else "reduce-overhead"
        self.step: Callable[..., Any] = torch.compile(self._step, mode=mode) if compile else self._step
        # Guided decoding's step (``greedy`` with a guide): the likeliest GUIDE_TOP tokens, compiled on first use.
        self.step_top: Callable[..., Any] = torch.compile(self._step_top, mode=mode) if compile else self._step_top

    @classmethod
    def for_model(cls, model: Any, compile: bool | None = None,
                  graph_steps: int | None = None) -> "StaticCaches | None":
        """Caches for ``model``, or None where its cache has sliding-window layers (gemma 2 and 3,
        ...): their prefix copy and padded batches would need the window handled, so those keep the
        dynamic cache. ``compile`` (default: the model is on CUDA) compiles the decoding step."""
        from transformers import StaticCache

        probe = StaticCache(config=model.config, max_cache_len=MIN_LENGTH)
        if any(getattr(layer, "is_sliding", False) for layer in probe.layers):
            return None
        if compile is None:
            compile = next(model.parameters()).device.type == "cuda"
        return cls(model, compile, graph_steps)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: Any,
                at: torch.Tensor | None) -> torch.Tensor:
        """The last position's logits (float32) of ``ids`` fed at positions ``pos`` after what
        ``cache`` holds; ``mask`` covers the cache's whole length. ``at``: where the cache writes
        (transformers 4.x only)."""
        kw: dict[str, Any] = {self._cache_kw: cache}
        if self._positions:
            kw["cache_position"] = at
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1].float()

    @property
    def any_length(self) -> bool:
        """Whether a cache of a new length runs the step without compiling it again."""
        return not self.compiled or self.mask_kind is not None

    def _step(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: Any,
              at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One greedy step: each row's next token and its log-probability, both (rows, 1). ``mask``
        (rows, cache length) marks padding; ``at`` is where this step's token is written."""
        logits = self.logits(ids, pos, mask, cache, at)
        nxt = logits.argmax(-1, keepdim=True)
        return nxt, torch.log_softmax(logits, -1).gather(-1, nxt)

    def _step_top(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: Any,
                  at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_step`` for guided decoding: each row's GUIDE_TOP likeliest tokens, best first, and
        their log-probabilities, both (rows, GUIDE_TOP), and the step's whole log-probabilities
        (rows, vocabulary; float32), read only where none of those tokens fits a row's schema."""
        lps = torch.log_softmax(self.logits(ids, pos, mask, cache, at), -1)
        top_lp, top = lps.topk(GUIDE_TOP, -1)
        return top, top_lp, lps

    def logits(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: Any,
               at: torch.Tensor) -> torch.Tensor:
        """A decoding step's logits (rows, vocabulary; float32), as ``_step`` and ``_step_top``
        compute them."""
        if self.mask_kind is not None:  # (rows, 1, 1, length): the written positions up to ``at`` that are not padding
            keep = (mask.bool() & (torch.arange(mask.shape[1], device=mask.device) <= at))[:, None, None, :]
            mask = keep if self.mask_kind == "bool" else \
                torch.zeros(keep.shape, dtype=self.dtype, device=keep.device).masked_fill(~keep, torch.finfo(self.dtype).min)
        return self.forward(ids, pos, mask, cache, at)

    def get(self, rows: int, length: int, greedy: bool = False, guided: bool = False) -> Any:
        """An empty cache of ``rows`` x at least ``length`` positions (both already bucketed), or
        None when frozen and none holds them, unless a new one is allowed (see the class).
        ``greedy``: ``greedy`` will decode on it, so its ``Steps`` are made now (they run steps on
        the cache, which is emptied after); ``guided``: ``greedy`` will decode on it with a guide,
        so its guided step is made now, likewise."""
        from transformers import StaticCache

        fits = [n for r, n in self._caches if r == rows and n >= length]
        if fits:
            cache = self._caches[rows, min(fits)]
        elif self.frozen and not (self.any_length and self._room_for(rows, length)):
            return None
        else:
            cache = self._caches[rows, length] = StaticCache(config=self.model.config, max_cache_len=length)
        if greedy and self.graph_steps > 1 and id(cache) not in self._steps:
            self._steps[id(cache)] = Steps(self, cache, rows)
        if guided and self.graph_steps > 1 and id(cache) not in self._guided:
            self._guided[id(cache)] = Steps(self, cache, rows, guided=True)
        cache.reset()
        return cache

    def _room_for(self, rows: int, length: int) -> bool:
        """Whether a cache of ``rows`` x ``length`` takes at most a quarter of the GPU's free memory
        (a CPU: always), so that a long request held in a cache for good leaves room for the rest."""
        device = next(self.model.parameters()).device
        if device.type != "cuda":
            return True
        c = self.model.config.get_text_config()
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        need = 2 * c.num_hidden_layers * rows * length * heads * head_dim * self.dtype.itemsize  # keys and values
        return need <= torch.cuda.mem_get_info(device)[0] / 4


class Steps:
    """``StaticCaches.graph_steps`` (K) greedy decoding steps on one cache, reading and writing
    buffers of their own. On a GPU they are recorded once as one CUDA graph: replaying it launches K
    tokens' kernels at once, where K compiled calls each checked their guards and replayed a graph
    of their own from Python (see the module's docstring for the times). Elsewhere ``replay`` runs
    the same K steps one call at a time (what the CPU tests check).

    ``guided``: one step of guided decoding (``StaticCaches.step_top``), whose likeliest tokens,
    their log-probabilities and the whole log-probabilities land in ``top``, ``top_lp`` and
    ``lps``; the host then picks each row's token and writes it into ``tok``. On an H100 a guided
    step replayed so took 1.88 ms at batch 1, the same compiled step called from Python 6.66 ms, and
    an unguided one (8 a graph) 1.45 ms (guided_json_gpu.json, 2026-12-05): its kernels take a few
    microseconds each, and launching them one by one was most of the step."""

    def __init__(self, static: StaticCaches, cache: Any, rows: int, guided: bool = False):
        self.static, self.cache, self.guided = static, cache, guided
        self.k = 1 if guided else static.graph_steps
        dev = next(static.model.parameters()).device
        length = cache_length(cache)
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=dev)  # the last token, then each next one
        self.p = torch.zeros(rows, 1, dtype=torch.long, device=dev)  # its position
        self.full = torch.ones(rows, length, dtype=torch.long, device=dev)  # padding mask over the cache
        self.at = torch.zeros(1, dtype=torch.long, device=dev)  # where the next step writes
        self.toks = torch.zeros(rows, self.k, dtype=torch.long, device=dev)
        self.logps = torch.zeros(rows, self.k, dtype=torch.float32, device=dev)
        self.top = self.top_lp = self.lps = torch.empty(0)  # guided: the step's outputs (the graph's own tensors)
        self.graph: Any = None
        # The cache's tensors exist after a first forward (transformers allocates them lazily); on a
        # GPU the step compiles and loads its kernels in a run before the recording (nothing may
        # compile or synchronise inside it). ``get`` empties the cache after.
        static.forward(self.tok, self.p, self.full, cache, self.at)
        mark_dynamic(static, cache, (self.tok, self.p, self.full))
        if dev.type == "cuda":
            self.graph = record_graph(self._run, dev)

    def _run(self) -> None:
        if self.guided:
            self.p += 1
            self.top, self.top_lp, self.lps = self.static.step_top(self.tok, self.p, self.full, self.cache, self.at)
            self.at += 1
            return
        for j in range(self.k):
            nxt, lp = advance(self.static, self.cache, self.tok, self.p, self.full, self.at)
            self.toks[:, j : j + 1].copy_(nxt)
            self.logps[:, j : j + 1].copy_(lp)

    def replay(self) -> None:
        """The next K tokens and their log-probabilities into ``toks`` and ``logps`` (guided: the
        next step's candidates into ``top``, ``top_lp`` and ``lps``)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()


def record_graph(run: Callable[[], None], device: torch.device, pool: Any = None) -> Any:
    """``run`` recorded as a CUDA graph (in the memory ``pool``, where given). It runs once on a side
    stream first, as torch asks of the work before a recording: there it compiles and loads its
    kernels, since nothing may compile or synchronise while recording."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        run()
    return graph


def advance(static: StaticCaches, cache: Any, tok: torch.Tensor, p: torch.Tensor, full: torch.Tensor,
            at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy step on ``cache`` after the token ``tok`` at position ``p``: its next token and
    that token's log-probability, both (rows, 1); ``tok``, ``p`` and the write position ``at`` move
    on by one in place (so a recorded CUDA graph replays the next step)."""
    p += 1
    nxt, lp = static.step(tok, p, full, cache, at)
    tok.copy_(nxt)
    at += 1
    return nxt, lp


def cache_length(cache: Any) -> int:
    """A static cache's positions (an attribute of each layer in transformers 5.x)."""
    return getattr(cache, "max_cache_len", None) or cache.layers[0].max_cache_len


def mark_dynamic(static: StaticCaches, cache: Any, inputs: tuple[torch.Tensor, ...]) -> None:
    """Rows (and, where the step builds its own mask, lengths) of the step's inputs and the cache
    marked dynamic, so that one compiled step serves every bucket (one row stays its own: torch
    specialises 1); nothing in that step reads the cache's length as an int."""
    if not static.compiled:
        return
    kv = [x for layer in cache.layers for x in (layer.keys, layer.values)]
    for t in (*inputs, *kv):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    if static.mask_kind is not None:
        for t, dim in ((inputs[-1], 1), *((x, 2) for x in kv)):
            torch._dynamo.maybe_mark_dynamic(t, dim)


# Attention implementations whose mask the decoding step builds, and the kind each takes.
_MASKS = {"sdpa": "bool", "eager": "float"}


def fill_prefix(cache: Any, prefix_past: Any, rows: int) -> None:
    """Write a single-row prefix's keys and values (a dynamic cache from ``scoring.build_prefix``)
    into the first positions of every row of the empty static ``cache``."""
    layers = prefix_past.layers
    length = layers[0].keys.shape[-2]
    pos = torch.arange(length, device=layers[0].keys.device)
    for i, layer in enumerate(layers):
        k = layer.keys.expand(rows, -1, -1, -1).contiguous()
        v = layer.values.expand(rows, -1, -1, -1).contiguous()
        cache.update(k, v, i, {"cache_position": pos})


# Settings of a generation config under which transformers' greedy choice is not the argmax of the
# logits (its logits processors): with any of them set, generation keeps ``model.generate``.
_PROCESSORS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
               "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": None,
               "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
               "forced_eos_token_id": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
               "forced_decoder_ids": None}


def greedy_is_argmax(model: Any) -> bool:
    """Whether ``model.generate``'s greedy token is the argmax of the logits for ``model``."""
    config = getattr(model, "generation_config", None)
    return config is None or all(getattr(config, k, d) in (d, None, 0, [], {}) for k, d in _PROCESSORS.items())


def greedy(static: StaticCaches, ids: torch.Tensor, mask: torch.Tensor, cache: Any, start: int,
           max_new_tokens: int, ended: Callable[[list[int]], int | None],
           guide: Any = None) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy decoding of the left-padded batch ``ids`` / ``mask`` (on the model's device) on the
    empty static ``cache``, whose first ``start`` positions already hold ``ids[:, :start]`` (a
    copied prefix). Returns each row's new tokens and their log-probabilities, as
    ``model.generate`` would choose them: ``ended`` maps a row's new tokens so far to how many of
    them it keeps once it has ended (through its end token or stop string), else None; a row's
    tokens stop there, and the batch stops once every row has ended or at ``max_new_tokens``.

    ``guide`` (``json_guide.JsonSchemaLogits``, a schema per row): decoding under JSON Schemas,
    one step per call (``step_top``; replayed from the cache's guided CUDA graph where ``get``
    recorded one), whose likeliest ``GUIDE_TOP`` tokens and their log-probabilities come to the
    host: a row keeps the first its schema accepts (``guide.pick``), as the guide's logits
    processor does in ``model.generate``; where none does, the step's whole log-probabilities come
    to the host too and the guide chooses from them (``guide.choose``). The log-probability is the
    model's own for the token kept.
    """
    rows, T = ids.shape
    dev = ids.device
    length = cache_length(cache)
    full = torch.ones(rows, length, dtype=mask.dtype, device=dev)
    full[:, :T] = mask  # positions past the prompt: causality hides those not yet written
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    at = torch.arange(start, T, device=dev)
    with sdpa_kernel(PREFILL_SDPA) if dev.type == "cuda" and PREFILL_SDPA else contextlib.nullcontext():
        logits = static.forward(ids[:, start:], pos[:, start:], full, cache, at)
    steps = static._steps.get(id(cache)) if guide is None else None  # K steps a call, where ``get`` made them
    guided = static._guided.get(id(cache)) if guide is not None else None  # likewise, one guided step a call
    k = steps.k if steps is not None else 1
    toks = torch.empty(rows, max_new_tokens + k - 1, dtype=torch.long, device=dev)  # up to k - 1 steps too many
    logps = torch.empty(rows, max_new_tokens + k - 1, dtype=torch.float32, device=dev)
    gens: list[list[int]] = [[] for _ in range(rows)]  # each row's tokens so far, on the host (guided only)
    if guide is not None:
        lps = torch.log_softmax(logits, -1)
        top_lp, top = lps.topk(GUIDE_TOP, -1)
        nxt, lp = _guided(guide, gens, top, top_lp, lps)
    else:
        nxt = logits.argmax(-1, keepdim=True)
        lp = torch.log_softmax(logits, -1).gather(-1, nxt)
    toks[:, :1] = nxt
    logps[:, :1] = lp
    # Fresh (rows, 1) tensors: a slice of ``pos`` keeps its strides, which follow the prompt's
    # length (even for one row), and the compiled step would compile again for every new length.
    tok = torch.empty_like(nxt, memory_format=torch.contiguous_format).copy_(nxt)
    p = torch.empty((rows, 1), dtype=pos.dtype, device=dev).copy_(pos[:, -1:])
    at = torch.tensor([T], device=dev)
    for own in (steps, guided):
        if own is not None:
            own.tok.copy_(tok)
            own.p.copy_(p)
            own.full.copy_(full)
            own.at.copy_(at)
    if steps is None and guided is None:
        mark_dynamic(static, cache, (tok, p, full))
    n, kept = 1, [None] * rows
    while True:
        if n >= max_new_tokens or n % CHECK_EVERY == 0 or (steps is not None and n > 1) or guide is not None:
            host = gens if guide is not None else toks[:, : min(n, max_new_tokens)].tolist()  # guided: already here
            kept = [c if c is not None else ended(h) for c, h in zip(kept, host)]
            if n >= max_new_tokens or all(c is not None for c in kept):
                break
        if steps is not None:
            steps.replay()
            toks[:, n : n + k] = steps.toks
            logps[:, n : n + k] = steps.logps
            n += k
            continue
        if static.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        if guided is not None:
            guided.replay()
            nxt, lp = _guided(guide, gens, guided.top, guided.top_lp, guided.lps)
            guided.tok.copy_(nxt)
        elif guide is not None:
            p += 1
            top, top_lp, lps = static.step_top(tok, p, full, cache, at)
            at += 1
            nxt, lp = _guided(guide, gens, top, top_lp, lps)
            tok.copy_(nxt)
        else:
            nxt, lp = advance(static, cache, tok, p, full, at)
        toks[:, n : n + 1] = nxt
        logps[:, n : n + 1] = lp
        n += 1
    out = [h[:k] if k is not None else h for h, k in zip(host, kept)]
    return out, [lp[: len(o)] for lp, o in zip(logps[:, : min(n, max_new_tokens)].tolist(), out)]


def _guided(guide: Any, gens: list[list[int]], top: torch.Tensor, top_lp: torch.Tensor,
            lps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A guided step's tokens and their log-probabilities, both (rows, 1), from its likeliest tokens
    ``top`` and their log-probabilities (``greedy``); ``lps``: the step's whole log-probabilities,
    brought to the host (once, for every row: the guide reads many of them one at a time) only
    where no candidate fits a row's schema. Each row's token joins ``gens``."""
    cands, cand_lps = top.tolist(), top_lp.tolist()
    at = guide.pick(gens, cands)
    chosen = [c[j] if j >= 0 else c[0] for c, j in zip(cands, at)]
    chosen_lp = [v[j] if j >= 0 else v[0] for v, j in zip(cand_lps, at)]
    if any(j < 0 for j in at):
        full = lps.cpu()
        more = guide.choose(gens, full)
        for r, j in enumerate(at):
            if j < 0 and more[r] is not None:
                chosen[r] = more[r]
                chosen_lp[r] = float(full[r, more[r]])
    for g, t in zip(gens, chosen):
        g.append(t)
    return (torch.tensor(chosen, device=top.device)[:, None],
            torch.tensor(chosen_lp, dtype=top_lp.dtype, device=top.device)[:, None])
