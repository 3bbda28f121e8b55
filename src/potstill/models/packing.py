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
whose attention goes through that interface with plain causal sdpa: no logit soft-cap, and a
sliding window, if any, that every packed token's keys fit in (:func:`supported`); gemma-3's
512-token window under a 2,079-token few-shot prefix does not, and such a call stays padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

NAME = "potstill_packed"
_registered = False


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


def layout(lengths: list[int], prefix_length: int, dtype: torch.dtype, device: torch.device | str) -> Layout:
    """``L`` is the longest query rounded up so that the keys, ``P + L``, are a multiple of 8: under
    ``torch.compile`` on a GPU, inductor specialises attention on that alignment, and a batch of the
    other kind compiled a second graph (40 s on an H200) in the middle of serving."""
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
    return Layout(lengths=list(lengths), gather=gather.to(device), valid=valid.to(device),
                  segment=segment.to(device), ends=(length.cumsum(0) - 1).to(device),
                  positions=positions.to(device), mask=mask.to(device))


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
    if prefix is not None:
        pk, pv = prefix[module.layer_idx]  # (1, Hkv, P, D)
        k = torch.cat([pk.expand(B, -1, -1, -1), k], 2)
        v = torch.cat([pv.expand(B, -1, -1, -1), v], 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=lay.mask, scale=scaling,
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


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, _attention)
        _registered = True


def supported(model: Any, span: int) -> bool:
    """Whether ``model`` can run a packed batch whose tokens reach ``span`` positions (prefix plus
    the longest query): sdpa through transformers' attention interface, no attention soft-cap,
    and no sliding window shorter than the span (its cached prefix keys would be cut and the mask
    would need the window)."""
    cfg = model.config
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or not getattr(model, "_supports_attention_backend", False):
        return False
    if getattr(cfg, "attn_logit_softcapping", None):
        return False
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None) or []
    windowed = (any(t != "full_attention" for t in layer_types) if layer_types
                else getattr(cfg, "use_sliding_window", True) is not False)
    return not (window and windowed and span >= window - 1)


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    _register()
    cfg = model.config
    before = cfg._attn_implementation
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before


def forward(decoder: Any, model: Any, queries: list[list[int]], prefix_keys: list[tuple[torch.Tensor, torch.Tensor]] | None,
            prefix_length: int, device: torch.device | str) -> tuple[torch.Tensor, Layout]:
    """The last hidden states ``(T, H)`` of ``queries`` packed, after a prefix whose per-layer
    ``(key, value)`` are ``prefix_keys`` (None: no prefix), and the batch's layout."""
    lay = layout([len(q) for q in queries], prefix_length, model.dtype, device)
    ids = torch.tensor([[t for q in queries for t in q]], device=device)
    dynamic(ids, lay.positions, lay.gather, lay.valid, lay.segment, lay.ends, lay.mask)
    with packed_attention(model):
        out = decoder(input_ids=ids, position_ids=lay.positions, use_cache=False, potstill_layout=lay,
                      potstill_prefix=prefix_keys)
    return out.last_hidden_state[0], lay
