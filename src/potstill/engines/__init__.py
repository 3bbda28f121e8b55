"""Engines: how a trained model *runs* (serve, evaluate, pilot, the local teacher), apart from training.

One small protocol (``Engine`` in ``base``), four operations over chats rendered by a ``PromptFormat``:
- ``score_labels``: the logits of the label set's first tokens at the answer position (only the
  K label rows), plus a unit input embedding per chat for the out-of-distribution check;
- ``score_labels_formats``: the same under several formats at once (a local teacher's shot orders);
- ``generate``: greedy generation with the mean token log-prob of the chosen tokens;
- ``embed``: the input embeddings alone.
A prompt's fixed part (the chat's system instruction, a teacher's few-shot prefix) is computed
once and reused by the engines that can (see each engine's docstring).

Built-in engines:
- ``transformers``: the model as loaded for training, fp32 on CPU, bf16 on GPU (``dtype``
  bfloat16 asks for bf16 on a CPU, where it pays off only with AMX); ``quantization`` int8 (with
  ``compile``) gives its decoder int8 layers (``potstill.models.int8``);
- ``ctranslate2``: int8 weights through CTranslate2 (``pip install 'potstill[ctranslate2]'``), or
  float32 ones with ``quantization`` none, converted on first use and cached by the model's content
  hash and the weight type (``convert``);
- ``llamacpp``: a GGUF file (q8_0, or f32 with ``quantization`` none) converted by llama.cpp's
  converter (``pip install 'potstill[gguf]'``) and run by llama.cpp's own ``llama-server``, which the
  user installs (on PATH, or ``POTSTILL_LLAMA_SERVER``); fast greedy generation on a CPU.
``quantization`` (``QUANTIZATIONS``) names an engine's weights apart from ``dtype``, its arithmetic:
auto is each engine's own, and an engine refuses a value it has no path for with one error.
Label scores of an engine other than transformers, or of int8 weights, can be re-checked near ties
at full precision
(``recheck``; ``recheck_margin`` in the teacher, evaluate and serve sections); a student that
``potstill train`` wrote carries an int8 calibration (``calibration``): activation ranges that
smooth its int8 layers and the re-check margin its label noise calls for.
A third party adds one with ``[project.entry-points."potstill.engines"] mine = "pkg:MyEngine"``,
a class taking ``(spec, device=..., **options)``; built-ins are listed in ``BUILTIN`` so they
work without reinstalling the package's metadata.
"""

from __future__ import annotations

import json
from typing import Any

from potstill.engines import calibration
from potstill.engines.base import Engine
from potstill.engines.recheck import RecheckedEngine
from potstill.errors import PotstillError
from potstill import plugins

QUANTIZATIONS = ("auto", "int8", "none", "q6_k", "q5_k_m", "q4_k_m", "q4_0")  # the last four: GGUF mixes, engine llamacpp

BUILTIN = plugins.BUILTIN["engines"]  # the built-in engines


def engine_class(name: str) -> Any:
    return plugins.load_plugin("engines", name, what="engine")


def _load(name: str, spec: str, device: str, num_layers: int | None, dtype: str, quantization: str,
          compile: bool = False, draft_tokens: int = 2) -> Engine:
    if quantization not in QUANTIZATIONS:
        raise PotstillError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not '{quantization}'")
    # Options left at their defaults are not passed: third-party engines written before them keep loading.
    options: dict[str, Any] = {k: v for k, v in (("dtype", dtype), ("quantization", quantization)) if v != "auto"}
    if compile:
        options["compile"] = True
    if draft_tokens != 2:
        options["draft_tokens"] = draft_tokens
    return plugins.build("engines", name, spec, what="engine", method="load", device=device, num_layers=num_layers,
                         **options)


def load_engine(name: str, spec: str, device: str = "auto", num_layers: int | None = None,
                dtype: str = "auto", recheck_margin: float | str = 0.0, quantization: str = "auto",
                compile: bool = False, draft_tokens: int = 2) -> Engine:
    """Load the model ``spec`` (hub id, directory, GGUF, bundled:...) into the engine called ``name``,
    with weights as ``quantization`` says (``QUANTIZATIONS``), compiled where ``compile`` asks
    (engine transformers: ``TransformersEngine.compile``), drafting up to ``draft_tokens`` in greedy
    generation (engine transformers: ``models.generation.greedy_lookup``).

    ``recheck_margin`` > 0 with an engine other than transformers, or with int8 weights: label scores
    whose top two probabilities are closer than it come from engine transformers at ``dtype`` instead
    (``recheck.RecheckedEngine``, which loads it on the first near tie); the fast engine then
    loads at its own precision (transformers' int8 layers: activations in ``dtype``). ``"auto"``:
    ``recheck_margin_for``."""
    recheck_margin = recheck_margin_for(recheck_margin, name, spec, quantization)
    if recheck_margin > 0 and (name != "transformers" or quantization == "int8"):
        # CTranslate2 keeps its own arithmetic; transformers' int8 layers take activations in ``dtype``.
        fast = _load(name, spec, device, num_layers, dtype if name == "transformers" else "auto", quantization,
                     compile, draft_tokens)
        return RecheckedEngine(fast, lambda: _load("transformers", spec, device, num_layers, dtype, "auto"),
                               recheck_margin, dtype)
    return _load(name, spec, device, num_layers, dtype, quantization, compile, draft_tokens)


def recheck_margin_for(margin: float | str, name: str, spec: str, quantization: str) -> float:
    """A configured re-check margin as a number: ``"auto"`` is the margin calibrated with the student
    (``calibration``; engine transformers with int8 layers, whose noise it measured), else
    ``calibration.DEFAULT_MARGIN``."""
    if margin != "auto":
        return float(margin)
    if name == "transformers" and quantization == "int8":
        cal = calibration.load(spec)
        if cal is not None and cal.recheck_margin is not None:
            return float(cal.recheck_margin)
    return calibration.DEFAULT_MARGIN


def section_engine(section: Any, spec: str, device: str = "auto", num_layers: int | None = None,
                   compile: bool = False, task: Any = None, client_formats: bool = False,
                   command: str | None = None) -> Engine:
    """``spec`` in the engine a config section names: the ``teacher``, ``evaluate`` and ``serve``
    sections each carry ``engine``, ``dtype``, ``quantization``, ``recheck_margin`` and ``draft_tokens``;
    ``evaluate`` and ``serve`` also ``guided_json`` (decoding under ``task``'s JSON Schema, ``guide``;
    ``client_formats``: serve's, which also decodes under a client's format, so a free-text task
    takes it with no schema of its own).
    An error names the section, whose fields it is about (``serve: engine ctranslate2 runs its own
    compiled kernels; compile is for ...``: serve.compile, which a quickstart's config sets).
    ``command``: the command running, where it is not the section's (pilot loads the untrained
    student as evaluate's settings say): it leads, and the section follows, since "evaluate: ..."
    sent a pilot's user to look for an evaluate that never ran."""
    try:
        schema = _guided_schema(section, task, client_formats)
        engine = load_engine(section.engine, spec, device=device, num_layers=num_layers, dtype=section.dtype,
                             recheck_margin=section.recheck_margin, quantization=section.quantization,
                             compile=compile, draft_tokens=section.draft_tokens)
        if schema is not None:
            guide(engine, schema)
        return engine
    except PotstillError as e:
        name = type(section).__name__.removesuffix("Config").lower()
        named = str(e).startswith((f"{name}.", f"{name}:"))  # already names it (serve.compile: torch.compile failed ...)
        if command not in (None, name):
            raise PotstillError(f"{command}: {e}" if named else
                                f"{command}: {e} (loaded with the {name} section's engine settings)") from None
        if named:
            raise
        raise PotstillError(f"{name}: {e}") from None


def _guided_schema(section: Any, task: Any, client_formats: bool = False) -> dict | None:
    """The JSON Schema a section's ``guided_json`` decodes under (a free-text task's ``grammar`` as
    its guide, ``grammar_constraint.grammar_guide``), None where it is off (or, with
    ``client_formats``, where a free-text task has no grammar: only clients' formats guide)."""
    if not getattr(section, "guided_json", False):
        return None
    if section.engine == "ctranslate2":  # before a conversion
        raise PotstillError("guided_json: the ctranslate2 engine cannot decode under a schema; use engine "
                            "transformers or llamacpp")
    from potstill.tasks import extraction_schema

    cfg = getattr(task, "cfg", task)
    if getattr(cfg, "type", None) == "freetext" and getattr(cfg, "grammar", None) is not None:
        from potstill.models.grammar_constraint import grammar_guide

        return grammar_guide(cfg.grammar)
    if client_formats and getattr(cfg, "type", None) == "freetext":
        return None
    schema = extraction_schema(cfg, "guided_json", "decode under", "false",
                               also=" (or free text with task.grammar" +
                               (", or served to clients' response_format)" if client_formats else ")"))
    # Engine llamacpp writes an object's properties in the order its schema lists them (potstill's own
    # guide lets the model choose): a student taught sorted keys (task.json_key_order) is guided so.
    return json.loads(json.dumps(schema, sort_keys=True)) if getattr(cfg, "json_key_order", None) == "sorted" else schema


def guide(engine: Engine, schema: dict) -> None:
    """Make ``engine`` decode its generations under ``schema`` (``models.json_constraint``; llama.cpp's
    own grammar sampler for engine llamacpp): the transformers or llamacpp engine, or the one that
    generates inside a re-checking pair."""
    target = getattr(engine, "fast", engine)
    if not hasattr(target, "json_schema"):
        raise PotstillError(f"guided_json: the {getattr(target, 'name', type(target).__name__)} engine cannot decode "
                            "under a schema; use engine transformers or llamacpp")
    target.json_schema = schema


__all__ = ["BUILTIN", "Engine", "engine_class", "guide", "load_engine", "section_engine"]
