"""NEFTune's noise on the input embeddings of a training forward (``train.neftune_noise_alpha``)."""

from __future__ import annotations

import torch

from potstill.train.batching import Batch


def example_lengths(b: Batch) -> torch.Tensor:
    """(B, T): the token count of the example each position belongs to (padded rows: the row's
    tokens; packed rows: the segment's, where positions restart at 0; trailing padding counts as
    a segment of its own)."""
    if b.attention_mask is not None:
        return b.attention_mask.sum(1, keepdim=True).expand_as(b.attention_mask)
    rows, width = b.position_ids.shape
    seg = (b.position_ids == 0).long().cumsum(1)  # 1, 2, ... within each row
    seg = seg + torch.arange(rows, device=seg.device)[:, None] * (width + 1)  # unique across rows
    return torch.bincount(seg.flatten(), minlength=rows * (width + 1))[seg]


def neftune_noise(embeds: torch.Tensor, b: Batch, alpha: float) -> torch.Tensor:
    """NEFTune (Jain et al., 2023): uniform noise in [-s, s] for every embedding coordinate, with
    s = alpha / sqrt(L * d), d the embedding width and L the length of the token's own example.
    transformers' hook takes L from the padded (or packed) row instead, so there a token's noise
    depends on what else shares its batch."""
    scale = alpha / torch.sqrt(example_lengths(b).to(embeds.dtype).clamp(min=1) * embeds.shape[-1])
    return torch.empty_like(embeds).uniform_(-1, 1) * scale[..., None]
