"""Generation on a GPU with a static KV cache, so that each decoding step replays a CUDA graph.

``TransformersEngine.compile`` switches it on when the model is on CUDA. In bf16 its outputs part
from the eager dynamic-cache path's only at near ties (the eager model's own token ahead by at most
0.125 nats at batch 1 and 0.188 at batch 16, on an H100; ``benchmarks/gpu_generation.json``);
float32 gives the eager tokens exactly (``tests/test_generation.py``).

Decoding with transformers' default (dynamic) cache launches every kernel of every layer from
Python at each new token: a small model on a GPU then waits on its host, not its math
(``model.generate`` of 8 tokens from SmolLM2-135M took about 270 ms on an H100, ``../shared/GPU.md``).
With a ``transformers.StaticCache`` the cache's tensors keep their shapes and addresses, and
``generate`` compiles the one-token step (``torch.compile``, mode ``reduce-overhead``: CUDA graphs).

The graphs are recorded for one cache shape, so caches come in buckets and are reused:
rows rounded up to a power of two (a short batch gets copies of its last prompt, whose outputs are
dropped) and lengths to a power of two of at least 256. A prompt prefix whose KV cache the engine
keeps (a few-shot prefix, a chat's system turn) is copied into each row of the static cache
instead of recomputed, as the dynamic path copies it.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_LENGTH = 256


def bucket_rows(n: int) -> int:
    """The smallest power of two holding ``n`` rows."""
    return 1 << max(n - 1, 0).bit_length()


def bucket_length(n: int) -> int:
    """The smallest power of two of at least ``MIN_LENGTH`` holding ``n`` positions."""
    return max(MIN_LENGTH, 1 << max(n - 1, 0).bit_length())


class StaticCaches:
    """One ``StaticCache`` per (rows, length) bucket of a model, emptied and reused by each batch:
    a new cache object would be new tensor addresses, and the compiled step would record again
    (tens of seconds). A batch takes the shortest cache of its rows that holds its length, an
    existing longer one before a new one of its own bucket. ``frozen`` (set once a server has
    warmed them): no new caches, so a batch that fits none gets None and runs on the dynamic cache
    instead of compiling while a client waits."""

    def __init__(self, model: Any):
        self.model = model
        self._caches: dict[tuple[int, int], Any] = {}
        self.frozen = False

    @classmethod
    def for_model(cls, model: Any) -> "StaticCaches | None":
        """Caches for ``model``, or None where its cache has sliding-window layers (gemma 2 and 3,
        ...): their prefix copy and padded batches would need the window handled, so those keep the
        dynamic cache."""
        from transformers import StaticCache

        probe = StaticCache(config=model.config, max_cache_len=MIN_LENGTH)
        if any(getattr(layer, "is_sliding", False) for layer in probe.layers):
            return None
        return cls(model)

    def get(self, rows: int, length: int) -> Any:
        """An empty cache of ``rows`` x at least ``length`` positions (both already bucketed), or
        None when frozen and none holds them."""
        from transformers import StaticCache

        fits = [n for r, n in self._caches if r == rows and n >= length]
        if fits:
            cache = self._caches[rows, min(fits)]
            cache.reset()
            return cache
        if self.frozen:
            return None
        cache = self._caches[rows, length] = StaticCache(config=self.model.config, max_cache_len=length)
        return cache


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
