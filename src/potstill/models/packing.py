"""Packed scoring batches: the queries of a batch laid end to end, no padding through the layers.

A padded batch of 16 quickstart queries (21 to 64 tokens after the cached system turn) spends
about a quarter of every matrix product on padding (``benchmarks/engine.json``, ``padded_share``).
Packed, the decoder sees one row of the batch's real tokens: every linear layer, norm and MLP
runs on those alone. Only attention needs the queries apart. It gathers each query's tokens into
a ``(B, L)`` block (``L`` the longest query, rounded up: :func:`layout`), puts the shared prefix's cached keys in front of
every row and runs one sdpa call with a mask that lets each token see the whole prefix and its own
query up to itself; the outputs go back to the packed row. Attention is a small share of the
arithmetic, so its padding costs little; what packing saves is the padding everywhere else.

The function is registered with transformers' ``AttentionInterface`` and switched on only for the
packed forward (as ``potstill.train.attention`` does for training), so every other call of the
model (generation, padded batches, the prefix itself) runs its usual attention. It fits a model
whose attention goes through that interface with plain causal sdpa and no logit soft-cap
(:func:`supported`). A sliding-window layer (gemma-3's 512 tokens under the quickstart teacher's
2,079-token few-shot prefix) gets its own mask: a token at position ``p`` sees keys after
``p - window``, among the prefix keys its cache kept (transformers keeps the last ``window - 1``)
and its own query's. Several prefixes stacked as rows (a teacher's shot orders,
``scoring.stack_prefixes``) pack too: query row ``b`` reads prefix row ``b // (B / rows)``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from potstill.models.attention_switch import attention_function

NAME = "potstill_packed"


@dataclass
class Layout:
    """Where each of a batch's packed tokens sits, for attention and for reading results."""

    lengths: list[int]  # each query's own tokens
    gather: torch.Tensor  # (B, L) index of row b's slot j in the packed row (pad slots read token 0; see ``layout``)
    valid: torch.Tensor  # (T,) index into the B * L slots of each packed token
    segment: torch.Tensor  # (T,) the query each packed token belongs to
    ends: torch.Tensor  # (B,) each query's last token in the packed row
    positions: torch.Tensor  # (1, T) position ids: the prefix length plus the place in the query
    mask: torch.Tensor  # (B, 1, L, P + L) additive: the prefix, then the query's own tokens up to the slot
    # (cached prefix keys, window) -> (B, 1, L, kept + L) additive mask of a sliding-window layer
    windowed: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    prefix_of: torch.Tensor | None = None  # (B,) the prefix row each query reads, when prefixes are stacked


def layout(lengths: list[int], prefix_length: int, dtype: torch.dtype, device: torch.device | str,
           windows: tuple[tuple[int, int], ...] = (), prefix_rows: int = 1) -> Layout:
    """``L`` is the longest query rounded up so that the keys, ``P + L``, are a multiple of 8: under
    ``torch.compile`` on a GPU, inductor specialises attention on that alignment, and a batch of the
    other kind compiled a second graph (40 s on an H200) in the middle of serving. ``windows``: the
    ``(kept prefix keys, window)`` of the model's sliding-window layers, each given its mask.
    ``prefix_rows``: prefixes stacked as rows, the queries prefix-major (``len(lengths)`` a multiple)."""
    B, P = len(lengths), prefix_length
    L = max(lengths) + (-(P + max(lengths))) % 8
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    slot = torch.arange(L)
    length = torch.tensor(lengths)
    real = slot[None, :] < length[:, None]  # (B, L)
    gather = torch.where(real, torch.tensor(starts)[:, None] + slot[None, :], 0)
    valid = (torch.arange(B)[:, None] * L + slot[None, :])[real]
    segment = torch.repeat_interleave(torch.arange(B), length)
    positions = torch.cat([torch.arange(P, P + n) for n in lengths])[None]
    # Own keys: slot j is seen from slot i when j <= i (pad keys sit after every real slot of
    # their row, so a real query never sees one; a pad query's output is dropped).
    own = slot[None, :] <= slot[:, None]  # (L, L)
    mask = torch.zeros((B, 1, L, P + L), dtype=dtype)
    mask[:, :, :, P:].masked_fill_(~own, float("-inf"))
    windowed = {}
    for kept, window in windows:
        # Slot i sits at position P + i and sees keys after P + i - window: the j-th of the kept
        # prefix keys is position P - kept + j, its own slot j is position P + j.
        seen = torch.cat([torch.arange(kept)[None, :] > kept + slot[:, None] - window,
                          own & (slot[None, :] > slot[:, None] - window)], 1)  # (L, kept + L)
        w = torch.zeros((L, kept + L), dtype=dtype).masked_fill_(~seen, float("-inf"))
        windowed[(kept, window)] = w.expand(B, 1, L, kept + L).to(device)
    prefix_of = None
    if prefix_rows > 1:
        prefix_of = (torch.arange(B) // (B // prefix_rows)).to(device)
    return Layout(lengths=list(lengths), gather=gather.to(device), valid=valid.to(device),
                  segment=segment.to(device), ends=(length.cumsum(0) - 1).to(device),
                  positions=positions.to(device), mask=mask.to(device), windowed=windowed, prefix_of=prefix_of)


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query ``(1, Hq, T, D)``, key/value ``(1, Hkv, T, D)`` of the packed row -> ``((1, T, Hq, D), None)``."""
    lay: Layout = kwargs["potstill_layout"]
    prefix = kwargs.get("potstill_prefix")
    B, L = lay.gather.shape
    Hq, D = query.shape[1], query.shape[3]
    q = query[0][:, lay.gather].transpose(0, 1)  # (B, Hq, L, D)
    k = key[0][:, lay.gather].transpose(0, 1)
    v = value[0][:, lay.gather].transpose(0, 1)
    kept = 0
    if prefix is not None:
        pk, pv = prefix[module.layer_idx]  # (rows, Hkv, kept, D): kept < P in a sliding-window layer
        kept = pk.shape[2]
        if lay.prefix_of is None:
            pk, pv = pk.expand(B, -1, -1, -1), pv.expand(B, -1, -1, -1)
        else:
            pk, pv = pk[lay.prefix_of], pv[lay.prefix_of]
        k = torch.cat([pk, k], 2)
        v = torch.cat([pv, v], 2)
    window = kwargs.get("sliding_window")
    mask = lay.windowed[(kept, window)] if window else lay.mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                         enable_gqa=k.shape[1] != Hq)  # (B, Hq, L, D)
    return out.transpose(1, 2).reshape(B * L, Hq, D)[lay.valid].unsqueeze(0), None


def dynamic(*tensors: torch.Tensor) -> None:
    """Mark every dimension of a compiled forward's inputs dynamic from its first call. Otherwise
    dynamo compiles the first shapes it sees as constants and recompiles when one changes, and a
    size that the warm-up calls happened to share (two batches whose longest input rounds to the
    same ``L``) recompiled later, inside a timed or served call. No effect without compile."""
    for t in tensors:
        for d in range(t.dim()):
            torch._dynamo.maybe_mark_dynamic(t, d)


def _window_reaches_interface(model: Any) -> bool:
    """Whether the model's attention layers hand their sliding window to the attention function
    (transformers' gemma-2/3, mistral, qwen2/3 do, for flash-attention): only then can the packed
    function apply it. Read from the attention module's own code."""
    layers = getattr(getattr(model, getattr(model, "base_model_prefix", "model"), None), "layers", None)
    attn = getattr(layers[0], "self_attn", None) if layers is not None and len(layers) else None
    return attn is not None and _forwards_window(type(attn))


@functools.cache
def _forwards_window(attention: type) -> bool:
    """Whether ``attention.forward``'s source passes ``sliding_window=`` on: read once per class, since
    ``supported`` asks before every packed batch and reading the source took 1.2 ms (gemma-3, 2-core CPU)."""
    try:
        return "sliding_window=" in inspect.getsource(attention.forward)
    except (OSError, TypeError):
        return False


def windows(model: Any, prefix_keys: list[tuple[torch.Tensor, torch.Tensor]] | None) -> tuple[tuple[int, int], ...]:
    """The ``(kept prefix keys, window)`` pairs the model's sliding-window layers will ask for."""
    window = getattr(model.config, "sliding_window", None)
    if not window:
        return ()
    return tuple(sorted({(k.shape[2], window) for k, _ in prefix_keys})) if prefix_keys else ((0, window),)


def supported(model: Any, span: int) -> bool:
    """Whether ``model`` can run a packed batch whose tokens reach ``span`` positions (prefix plus
    the longest query): sdpa through transformers' attention interface, no attention soft-cap,
    and a sliding window shorter than the span only where the layers pass it to the interface."""
    cfg = model.config
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or not getattr(model, "_supports_attention_backend", False):
        return False
    if getattr(cfg, "attn_logit_softcapping", None):
        return False
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None) or []
    windowed = (any(t != "full_attention" for t in layer_types) if layer_types
                else getattr(cfg, "use_sliding_window", True) is not False)
    return not (window and windowed and span >= window - 1) or _window_reaches_interface(model)


def forward(decoder: Any, model: Any, queries: list[list[int]], prefix_keys: list[tuple[torch.Tensor, torch.Tensor]] | None,
            prefix_length: int, device: torch.device | str) -> tuple[torch.Tensor, Layout]:
    """The last hidden states ``(T, H)`` of ``queries`` packed, after a prefix whose per-layer
    ``(key, value)`` are ``prefix_keys`` (None: no prefix; several rows: stacked prefixes, the
    queries prefix-major), and the batch's layout."""
    rows = prefix_keys[0][0].shape[0] if prefix_keys else 1
    lay = layout([len(q) for q in queries], prefix_length, model.dtype, device, windows(model, prefix_keys), rows)
    ids = torch.tensor([[t for q in queries for t in q]], device=device)
    return run(decoder, model, ids, lay, prefix_keys), lay


def run(decoder: Any, model: Any, ids: torch.Tensor, lay: Layout,
        prefix_keys: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
    """The last hidden states ``(T, H)`` of the packed row ``ids`` ``(1, T)`` laid out as ``lay``."""
    dynamic(ids, lay.positions, lay.gather, lay.valid, lay.segment, lay.ends, lay.mask, *lay.windowed.values())
    with attention_function(model, NAME, _attention):
        out = decoder(input_ids=ids, position_ids=lay.positions, use_cache=False, potstill_layout=lay,
                      potstill_prefix=prefix_keys)
    return out.last_hidden_state[0]
