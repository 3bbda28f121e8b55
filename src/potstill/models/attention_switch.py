"""Run a transformers model with one of potstill's attention functions for the length of a block.

Both the packed scoring forward (``potstill.models.packing``) and the training forward
(``potstill.train.attention``) register a function with transformers' ``AttentionInterface``
once and point the model's config at it only inside their call, so every other call of the model
(generation, padded batches, a prefix) keeps its usual attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_registered: set[str] = set()


def register(name: str, fn: Callable[..., Any]) -> None:
    """``fn`` under ``name`` in transformers' attention registry (once per process)."""
    if name not in _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(name, fn)
        _registered.add(name)


@contextmanager
def attention_function(model: Any, name: str, fn: Callable[..., Any]) -> Iterator[None]:
    """``model`` runs its attention through ``fn`` (registered as ``name``) inside the block."""
    register(name, fn)
    cfg = model.config
    before = cfg._attn_implementation
    cfg._attn_implementation = name
    try:
        yield
    finally:
        cfg._attn_implementation = before
