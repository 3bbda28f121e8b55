"""Causal attention for training batches, without a materialised mask where none is needed.

transformers turns the attention inputs of a decoder into a mask before the layers run. In
eager mode it can leave the mask out and let sdpa apply ``is_causal``, which lets the fast
kernels skip the masked half and keep grouped-query heads grouped. Under ``torch.compile`` it
cannot (torch 2.11 with transformers 5.17, measured; transformers' own comment says torch 2.14
lifts this): the check that allows the skip fails while compiling, so every compiled step
builds a ``B x 1 x T x T`` mask. Attention then runs the full square,
with the key/value heads copied out to the query heads. On SmolLM2-135M at B=16, T=1024
(H100) that made attention about a third of a compiled training step.

Training batches need less than the general case (``batching.collate``):

* unpacked rows are right-padded, so a causal mask alone is exact at every real position: a
  real token never sees the padding after it. Pad positions compute something, but every loss
  ignores them, so their gradient is zero and they leave the real positions untouched;
* packed rows need a block-diagonal causal mask. It is built here from the position resets,
  outside any compiled region.

:func:`causal_attention` switches the model to an attention function registered with
transformers' ``AttentionInterface`` for the duration of a training forward.
transformers builds no mask for a registered name that has no mask function, so the function
gets exactly what :func:`decoder_inputs` passed: ``None`` (sdpa with ``is_causal=True``, and
``enable_gqa`` for grouped heads) or the packed 4D mask (transformers' own sdpa path).
Models this does not fit keep their attention and their usual inputs (see :func:`supported`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from potstill.models.attention_switch import attention_function

NAME = "potstill_causal"


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query ``(B, Hq, T, D)``, key/value ``(B, Hkv, T, D)`` -> ``((B, T, Hq, D), None)``.

    Training forwards run without a KV cache, so query and key always have one length and
    ``is_causal=True`` is right at every length (a constant: a test on ``T`` would be a symbolic
    bool under dynamic shapes and break the compiled graph)."""
    if attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def supported(model: Any) -> bool:
    """Plain causal sdpa models: no sliding window, no attention soft-cap, no alternating layer
    types, query and key of one length (the training forward never uses a KV cache)."""
    cfg = model.config
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if not getattr(model, "_supports_attention_backend", False):
        return False
    if getattr(cfg, "attn_logit_softcapping", None):
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        return False
    layer_types = getattr(cfg, "layer_types", None) or []
    return all(t == "full_attention" for t in layer_types)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` positions that restart at 0 for each packed example -> ``(B, 1, T, T)`` bool,
    True where query ``i`` may attend to key ``j``: the same example and ``j <= i``."""
    seg = (position_ids == 0).cumsum(-1)
    T = position_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    return ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]


def decoder_inputs(model: Any, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                   packed: bool) -> dict[str, Any]:
    """Keyword arguments for the decoder body of a right-padded (``packed=False``) or packed batch."""
    if not supported(model):
        return {"attention_mask": attention_mask, "position_ids": position_ids}
    if packed:
        return {"attention_mask": block_causal_mask(position_ids), "position_ids": position_ids}
    # Right padding: positions 0..n-1 of a row equal the default arange, and causality is the whole mask.
    return {"attention_mask": None, "position_ids": None}


@contextmanager
def causal_attention(model: Any) -> Iterator[bool]:
    """Run ``model`` with :func:`_attention` inside the block (if :func:`supported`); yields whether it does."""
    if not supported(model):
        yield False
        return
    with attention_function(model, NAME, _attention):
        yield True
