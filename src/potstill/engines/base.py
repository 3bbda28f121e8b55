"""The engine protocol, and the split of a prompt into its fixed part and the input's own part."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Callable, Protocol

import torch

from potstill.models.prompting import PromptFormat, encode_prompt
from potstill.models.generation import Generated
from potstill.models.scoring import Scored

Progress = Callable[[int], None] | None


class Engine(Protocol):
    """What routing, evaluation and a local teacher need from a model that runs.

    Messages are chats without the task instruction: ``fmt`` (a ``PromptFormat``) adds it, and a
    teacher's few-shot examples. Results come back in input order.

    Optional: ``token_logprobs(prompt, answer, top)``, each answer token's log-probability and the
    ``top`` likeliest at its position (``models.generation.token_logprobs``'s contract), for served
    ``logprobs``; an engine without it, and without a transformers model as ``lm``, answers them
    with a 400.
    """

    name: str  # the engine's registry name: "transformers", "ctranslate2", ...
    identity: str  # model identity + engine (ledger rows, calibration caches)
    tokenizer: Any  # a transformers tokenizer (chat template, label token ids)
    num_parameters: int

    @classmethod
    def load(cls, spec: str, device: str = "auto", num_layers: int | None = None, dtype: str = "auto",
             quantization: str = "auto") -> "Engine":
        """``dtype``: auto, float32 or bfloat16, for engines whose precision is a dtype; ``quantization``:
        auto, int8 or none, the weights. An engine refuses a value it has no path for with one error.
        ``compile`` (True) and ``draft_tokens`` (other than 2) are passed only when a config sets them."""
        ...

    def score_labels(self, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int],
                     batch_size: int = 16, progress: Progress = None, max_length: int | None = None) -> Scored:
        """Label logits (N, K) at the answer position, and (N, H) unit input embeddings."""
        ...

    def score_labels_formats(self, fmts: list[PromptFormat], messages: list[list[dict]], label_ids: list[int],
                             batch_size: int = 16) -> list[Scored]:
        """``score_labels`` of every chat under each format (a local teacher's shot orders), one
        ``Scored`` per format; an engine may run the formats together. Each input's seconds summed
        over the formats are its cost, and its batch seconds summed are what its caller waited."""
        ...

    def generate(self, fmt: PromptFormat, messages: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 16, progress: Progress = None, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, embed: bool = False) -> Generated:
        """Outputs (greedy at ``temperature`` 0, else sampled with ``seed``), each ending at the first
        ``stop`` string it produced, with the mean log-prob of the tokens chosen. ``embed``: also
        ``Generated.embeddings`` as ``embed`` gives them, where the engine gets them on the way (else
        None). An engine written before ``embed`` existed is still served (``serve.engine``).
        An engine that can decode under a JSON Schema also takes ``json_schemas`` (one per message,
        None for none), as the transformers engine does; ``serve.guided_json`` needs it."""
        ...

    def embed(self, fmt: PromptFormat, messages: list[list[dict]]) -> torch.Tensor:
        """(N, H) unit input embeddings, comparable only with the same engine's."""
        ...


def generate_takes(engine: Any, name: str) -> bool:
    """Whether ``engine.generate`` takes the keyword ``name`` (``embed``, ``json_schemas``): a plugin
    engine written before it was added does not, and is called without it."""
    return name in inspect.signature(engine.generate).parameters


def model_positions(config: Any) -> int | None:
    """Most positions a transformers model config gives: ``max_position_embeddings``, GPT-2's
    ``n_positions`` (a multimodal config's ``text_config`` first); None where it names none."""
    cfg = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def context_length(engine: Any) -> int | None:
    """Most positions (prompt and answer tokens) the model has: an engine's own ``context`` where it
    has one (llamacpp's positions per slot), else from the model's config (``model_positions``) or
    else its tokenizer's ``model_max_length``; None where none says. A wrapping engine (the near-tie
    re-check) is asked through the engine it wraps."""
    for e in (engine, getattr(engine, "fast", None)):
        n = getattr(e, "context", None)
        if isinstance(n, int) and n > 0:
            return n
        n = model_positions(getattr(getattr(getattr(e, "lm", None), "model", None), "config", None))
        if n is not None:
            return n
    n = getattr(getattr(engine, "tokenizer", None), "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10**7 else None  # transformers' "no limit" is 1e30


def prompt_length(tokenizer: Any, fmt: PromptFormat, messages: list[dict]) -> int:
    """Tokens of one chat's whole prompt (``fmt``'s prefix and query), as the engines and serve encode it."""
    return len(encode_prompt(tokenizer, fmt, fmt.prefix() + fmt.query(tokenizer, messages), first=True))


def past_context(engine: Any, fmt: PromptFormat, messages: list[list[dict]], budget: int = 0) -> list[tuple[int, str]]:
    """(index, why) of each chat whose prompt and answer ``budget`` (0 for a label) run past the
    model's context (``context_length``), as serve measures them (``ServedStudent.over_context``,
    which sends such a chat to the teacher, reason ``too_long``). A model with learned positions
    (GPT-2) fails on one with an IndexError; a rotary one answers past what it was trained on.
    None are past an unknown context."""
    context = context_length(engine)
    if context is None:
        return []
    out = []
    for i, m in enumerate(messages):
        n = prompt_length(engine.tokenizer, fmt, m)
        if n + budget > context:
            out.append((i, f"{n} prompt tokens{f' + {budget} to answer' if budget else ''} > {context} positions"))
    return out


def warm_batches(items: list, batch_size: int, row_buckets: bool = False) -> list[list]:
    """One batch of each kind a caller of a compiled engine makes, to run before timing or serving:
    single inputs at up to three lengths, two inputs, and a batch of up to ``batch_size``.
    ``row_buckets``: also a batch of every power of two of rows below ``batch_size`` (generation on
    static caches records a step for each, ``models.static_decode``)."""
    sizes = [2]
    while row_buckets and sizes[-1] * 2 < batch_size:
        sizes.append(sizes[-1] * 2)
    return [[x] for x in items[:3]] + [items[:n] for n in sizes] + [items[:batch_size]]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def static_ids(tokenizer: Any, fmt: PromptFormat) -> list[int]:
    """Token ids every prompt of ``fmt`` starts with: the few-shot prefix, or the chat template's
    system turn (found as the common token prefix of three probe chats, so a template's exact
    tokenisation is respected)."""
    if fmt.prefix():
        return encode_prompt(tokenizer, fmt, fmt.prefix(), first=True)
    probes = [encode_prompt(tokenizer, fmt, fmt.query(tokenizer, [{"role": "user", "content": t}]), first=True)
              for t in ("", "alpha", "Zulu 9")]
    return probes[0][: min(common_prefix(probes[0], p) for p in probes[1:])]


def split_prompt(static: list[int], ids: list[int]) -> tuple[list[int], list[int]]:
    """(fixed part, the input's own part) of one prompt's ids; no fixed part where ``ids`` does not
    start with ``static`` (a tokeniser that merged across the boundary) or nothing would be left."""
    n = len(static)
    if n and len(ids) > n and ids[:n] == static:
        return static, ids[n:]
    return [], ids
