"""Near-ties re-checked at full precision: an int8 engine's label scores (CTranslate2's, or engine
transformers' with int8 layers), with the inputs whose top two labels it nearly ties
scored again by the unquantized transformers engine.

int8 weights and activations move label logits by a little everywhere, so an input changes label
only where the model is close to a tie. On the quickstart's 12-layer student
(``benchmarks/engine.json``), CTranslate2 int8 gave the fp32 label on 97.2% of 250 test articles;
re-scored in fp32 below a margin (top-1 minus top-2 label probability, as int8 sees it) of 0.3:
25% of the inputs, 100% same label. On the earlier 30-layer student: 94.0-94.4% alone, 99.6% at
0.3 (21% re-checked), 97.6% at 0.1 (7-9%; in a probe the flips had int8 margins from 0.013 to
0.31). The median call pays nothing; the mean pays the re-checked share of a reference call.

Only label scoring is re-checked: generation and embeddings are the fast engine's, so routing's
embedding reference and its requests still come from one engine.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from potstill.engines.base import Engine, Progress, generate_takes
from potstill.errors import PotstillError
from potstill.models.prompting import PromptFormat
from potstill.models.generation import Generated
from potstill.models.scoring import Scored, label_margin


def with_recheck_time(s: Scored, r: Scored, near: list[int]) -> Scored:
    """``s`` with the re-check ``r`` of its inputs ``near`` timed in: each re-checked input's share of
    the re-check is its cost, and every input of the call waited for all of it."""
    secs = list(s.seconds)
    for j, i in enumerate(near):
        secs[i] += r.seconds[j]
    extra = sum(r.seconds)
    return dataclasses.replace(s, seconds=secs, batch_seconds=[w + extra for w in s.batch_seconds])


RECHECK_PARTS = ("fast", "reference", "near_ties", "rechecked")


def rechecking(lm: Any) -> bool:
    """Whether ``lm`` re-checks near ties against a reference engine: a ``RecheckedEngine``, or any
    engine (a plugin's) that has its parts: ``fast`` and ``reference`` engines, ``near_ties(logits)``
    giving the rows to re-check, and a ``rechecked`` count. A caller that re-checks a combined answer
    itself (the local teacher over shot orders) uses those parts. The parts are looked up without
    being called, so a reference loaded on first use stays unloaded."""
    return all(_has(lm, part) for part in RECHECK_PARTS)


def _has(obj: Any, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True


class RecheckedEngine:
    """``fast``'s answers, with label scores under ``margin`` taken from the reference engine
    instead, which ``load_reference`` loads on the first near tie (a generation task never loads it)."""

    def __init__(self, fast: Engine, load_reference: Callable[[], Engine], margin: float, dtype: str):
        self.fast, self.margin = fast, float(margin)
        self._load_reference = load_reference
        self._reference: Engine | None = None
        self.name = fast.name
        self.tokenizer = fast.tokenizer
        # Calibrations and caches key on the identity: the re-check changes the labels, and so does
        # the reference's precision. The fast engine's identity stays its head (served model names
        # are built from its tail).
        self.identity = f"{fast.identity}+recheck{self.margin:g}-{dtype}"
        self.rechecked = 0  # inputs re-scored so far (benchmarks report the share)

    @property
    def reference(self) -> Engine:
        if self._reference is None:
            self._reference = self._load_reference()
        return self._reference

    @property
    def num_parameters(self) -> int:
        return self.fast.num_parameters

    @property
    def compiled(self) -> bool:  # a compiled fast engine (transformers int8) is warmed by its caller
        return getattr(self.fast, "compiled", False)

    def warm_compiled(self, section: str, run: Callable[[], Any]) -> float:
        return self.fast.warm_compiled(section, run)

    def near_ties(self, logits: torch.Tensor) -> list[int]:
        """Rows of (N, K) label logits whose top two probabilities are closer than the margin."""
        return (label_margin(logits) < self.margin).nonzero().flatten().tolist()

    def _recheck(self, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int], s: Scored,
                 batch_size: int, max_length: int | None) -> Scored:
        near = self.near_ties(s.logits)
        if not near:
            return s
        self.rechecked += len(near)
        r = self.reference.score_labels(fmt, [messages[i] for i in near], label_ids, batch_size=batch_size,
                                        max_length=max_length)
        logits = s.logits.clone()
        logits[near] = r.logits.to(logits.dtype)
        return dataclasses.replace(with_recheck_time(s, r, near), logits=logits)

    def score_labels(self, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int],
                     batch_size: int = 16, progress: Progress = None, max_length: int | None = None) -> Scored:
        s = self.fast.score_labels(fmt, messages, label_ids, batch_size=batch_size, progress=progress,
                                   max_length=max_length)
        return self._recheck(fmt, messages, label_ids, s, batch_size, max_length)

    def score_labels_formats(self, fmts: list[PromptFormat], messages: list[list[dict]], label_ids: list[int],
                             batch_size: int = 16) -> list[Scored]:
        return [self._recheck(f, messages, label_ids, s, batch_size, None)
                for f, s in zip(fmts, self.fast.score_labels_formats(fmts, messages, label_ids, batch_size=batch_size))]

    def generate(self, fmt: PromptFormat, messages: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 16, progress: Progress = None, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, embed: bool = False,
                 json_schemas: Sequence[dict | None] | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generated:
        # A plugin's engine written before ``embed`` takes none: its caller then calls ``embed`` itself.
        more: dict = {"embed": True} if embed and generate_takes(self.fast, "embed") else {}
        if json_schemas is not None:
            if not generate_takes(self.fast, "json_schemas"):
                raise PotstillError(f"the {self.fast.name} engine cannot decode under a JSON schema")
            more["json_schemas"] = json_schemas
        if on_text is not None and generate_takes(self.fast, "on_text"):  # else the answer goes whole
            more["on_text"] = on_text
        return self.fast.generate(fmt, messages, max_new_tokens, batch_size=batch_size, progress=progress,
                                  temperature=temperature, stop=stop, seed=seed, **more)

    def embed(self, fmt: PromptFormat, messages: list[list[dict]]) -> torch.Tensor:
        return self.fast.embed(fmt, messages)
