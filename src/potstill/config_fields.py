"""The building blocks of potstill.yaml's models: path roles, the engine fields that several stages
share, the ``Section`` base every section derives from, and ``EnvName`` (a variable's name, never a key).

The sections themselves are in ``potstill.config_setup`` (task, data, teacher, prices, student) and
``potstill.config_models`` (each stage's settings and the run's ``Config``); ``potstill.config``
re-exports them all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from potstill.errors import looks_like_key


@dataclass(frozen=True)
class PathRole:
    """Marks a field whose value names a path: ``field: Annotated[str, INPUT_FILE]``.

    ``resolve``: a relative value in a config file is relative to that file's directory (and the
    run's saved potstill.yaml stores it relative to the run directory). ``content``: in a stage's
    fingerprint an existing file counts by its sha256, not its name, so editing the file reruns
    the stage and moving the project does not.
    """

    resolve: bool
    content: bool


RUN_PATH = PathRole(resolve=True, content=False)
INPUT_FILE = PathRole(resolve=True, content=True)
# A hub id or a local path: left as written (``org/name`` is not a path) unless written ./x or ../x,
# which resolves as a RUN_PATH does; a local file or directory counts by content.
MODEL_REF = PathRole(resolve=False, content=True)


DtypeName = Literal["auto", "float32", "bfloat16"]  # engines' and training's dtype (models.loading.DTYPES)
QuantizationName = Literal["auto", "int8", "none", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]  # engines.QUANTIZATIONS


def engine_dtype(what: str) -> Any:
    return Field("auto", description=f"{what} with engine transformers (and in another engine's near-tie re-check, "
                 "recheck_margin): auto (bf16 on GPU, fp32 on CPU), float32, "
                 "or bfloat16 (on a CPU with AMX or AVX-512 BF16, 1.4-2x faster than fp32; see potstill.models.loading.bf16_native).")


def engine_name(what: str) -> Any:
    return Field("transformers", description=f"Engine that runs {what}: transformers (fp32 on CPU, bf16 on GPU) or "
                 "ctranslate2 (int8 unless `quantization` says none, fixed prompt prefix cached; pip install "
                 "'potstill[ctranslate2]') or llamacpp (a GGUF file, q8_0 unless `quantization` says none, run by "
                 "llama.cpp's llama-server, which must be on PATH; pip install 'potstill[gguf]' for the converter); "
                 "see potstill.engines.")


def engine_quantization(what: str) -> Any:
    return Field("auto", description=f"{what}: auto (the engine's own: ctranslate2 int8, transformers none), "
                 "int8 (engine ctranslate2; engine transformers with compile: true, int8 layers in the "
                 "decoder), or none (unquantized: ctranslate2 float32 on CPU, llamacpp f32, "
                 "float16 on GPU), or, with engine llamacpp, one of llama.cpp's smaller GGUF mixes: q6_k, q5_k_m, "
                 "q4_k_m, q4_0. int8 is the fast one; none keeps greedy generations identical to transformers "
                 "fp32's where int8 changes some (README, Engines).")


def engine_drafts(what: str) -> Any:
    return Field(2, ge=0, le=32, description=f"{what} with engine transformers, one greedy prompt at a time: up to "
                 "this many next tokens drafted from what followed the latest earlier match of the last 1-3 tokens "
                 "(prompt lookup) and checked in one forward; the text is greedy decoding's either way. 0: no drafts. "
                 "2 was the fastest on a 2-core CPU, where a wider forward costs more (README, Engines).")


def engine_recheck(what: str) -> Any:
    return Field("auto", description=f"{what} with an engine other than transformers, or with quantization "
                 "int8: inputs whose top two "
                 "label probabilities are closer than this are scored again by engine transformers at `dtype`, "
                 "since int8 flips labels only near ties. auto: the margin calibrated for a student that `potstill "
                 "train` wrote (engine transformers int8: the label noise on training inputs that all but 1% "
                 "stay under, with 95% confidence; potstill.engines.calibration), else 0.3 "
                 "(24.8% re-checked, 97.6% -> 100%; potstill.engines.recheck, "
                 "potstill.engines.calibration). 0: never.")


# A re-check margin: a probability gap, or auto (``engine_recheck``).
RecheckMargin = Annotated[float, Field(ge=0, le=1)] | Literal["auto"]


class Section(BaseModel):
    # YAML types bare scalars: `labels: [1, 2, 3, 4, 5]` (star ratings) or `--data.source 2026`
    # arrive as numbers, and their text is what a text field means. No infinity or NaN (`.inf`, `.nan`,
    # or 1e400, which a float reads as inf): a gt=0 bound let `train.epochs: .inf` through to an
    # OverflowError traceback at the first int() of it, and NaN passes every comparison as False.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)


def _inf_is_none(value: float | None) -> float | None:
    if value is not None and math.isnan(value):
        raise ValueError("Input should be a finite number")
    return None if value == math.inf else value


# A limit that infinity plainly means "none" for, as null does (generate.budget_usd: no cap;
# train.max_grad_norm: no clipping; a quality bar's maximum: any): `.inf` is taken there, and kept
# as null, so no artifact (train.json, eval.json) holds JSON's non-standard Infinity.
Unbounded = Annotated[Annotated[float, Field(allow_inf_nan=True)] | None, AfterValidator(_inf_is_none)]


def _env_name(value: str) -> str:
    """An environment variable's name ('' for none). A key pasted here instead (``api_key: sk-...`` in
    an OpenAI-style config maps to this field) is refused without being repeated in the error: the
    name is printed in 'environment variable NAME is not set', and a key would be with it."""
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be the NAME of an environment variable (letters, digits and _), not the key "
                         "itself; the value given is not shown")
    if value and looks_like_key(value):
        raise ValueError("looks like a key itself; give the NAME of the environment variable that holds it "
                         "(export MY_KEY=..., then api_key_env: MY_KEY); the value given is not shown")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


def engine_guided(what: str, more: str = "") -> Any:
    return Field(False, description=f"{what}, extraction, engine transformers (or llamacpp, through llama.cpp's own "
                 "grammar sampler and its JSON Schema subset): decode greedily under task.json_schema "
                 "(each token kept to one that continues a JSON document the schema can accept, as vLLM's guided "
                 f"decoding), so every answer parses{more}; free text with task.grammar: under the grammar; keywords it does not follow (an unanchored pattern, "
                 "not, if, allOf parts that disagree, formats other than date, time, uuid, ipv4, ipv6, email, hostname and duration) are left to the task's validation. No drafts; on a compiled GPU engine's static "
                 "caches one step at a time, each replayed from a CUDA graph, elsewhere model.generate with a logits processor.")
