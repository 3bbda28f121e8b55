"""The pydantic models of potstill.yaml: one section per stage, and the run's ``Config``.

Every field is documented once, here, and that text is the help of its CLI flag
(``--section.field``). Loading a file, overrides and the starter YAML are in ``potstill.config``,
which also re-exports these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

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
QuantizationName = Literal["auto", "int8", "none"]  # an engine's weights (engines.QUANTIZATIONS)


def engine_dtype(what: str) -> Any:
    return Field("auto", description=f"{what} with engine transformers (and in another engine's near-tie re-check, "
                 "recheck_margin): auto (bf16 on GPU, fp32 on CPU), float32, "
                 "or bfloat16 (on a CPU with AMX or AVX-512 BF16, 1.4-2x faster than fp32; see potstill.models.loading.bf16_native).")


def engine_name(what: str) -> Any:
    return Field("transformers", description=f"Engine that runs {what}: transformers (fp32 on CPU, bf16 on GPU) or "
                 "ctranslate2 (int8 unless `quantization` says none, fixed prompt prefix cached; pip install "
                 "'potstill[ctranslate2]'); see potstill.engines.")


def engine_quantization(what: str) -> Any:
    return Field("auto", description=f"{what}: auto (the engine's own: ctranslate2 int8, transformers none), "
                 "int8 (engine ctranslate2; engine transformers with compile: true, int8 layers in the "
                 "decoder), or none (unquantized: ctranslate2 float32 on CPU, "
                 "float16 on GPU). int8 is the fast one; none keeps greedy generations identical to transformers "
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
    # arrive as numbers, and their text is what a text field means.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class TaskConfig(Section):
    type: str = Field("classification", description="Task plugin: classification, extraction or freetext.")
    instruction: str = Field(
        "Classify the text.", description="System instruction the student (and a chat teacher) receives."
    )
    labels: list[str] = Field(default_factory=list, description="Label set (classification).")
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the output must satisfy (extraction).")
    max_output_tokens: int = Field(128, ge=1, description="Longest output to generate (extraction, freetext).")
    json_key_order: Literal["teacher", "schema", "sorted"] = Field(
        "teacher", description="Key order of the JSON the student learns (extraction): the teacher's, the order of "
        "json_schema's properties (nested objects too), or sorted.",
    )


class DataConfig(Section):
    inputs: Annotated[str, INPUT_FILE] = Field("inputs.jsonl", description="JSONL of inputs: {messages|input, label?, slice?, id?}.")
    limit: int | None = Field(None, ge=1, description="Use only the first N inputs.")
    max_unknown_gold: float = Field(
        0.05, ge=0, le=1,
        description="Classification: refuse the inputs when more than this share of their gold labels is not in "
        "task.labels (after case-insensitive matching); below it, those records are warned about and kept without gold.",
    )
    source: str = Field("user-provided", description="Where the inputs come from (recorded in the dataset card).")
    license: str = Field("unspecified", description="Licence of the inputs (recorded in the dataset card).")


class PriceConfig(Section):
    input_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens.")
    cached_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens read from the provider's prompt cache (OpenAI's "
        "automatic cache of prompts over 1,024 tokens, Anthropic cache reads); None: the input price.")
    cache_write_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens written to the provider's prompt cache (Anthropic's "
        "cache_creation_input_tokens); None: 1.25x the input price, Anthropic's 5-minute cache write.")
    usd_per_hour: float = Field(0.0, ge=0, description="USD per hour of the hardware a local model runs on.")
    usd_per_call: float | None = Field(
        None, ge=0, description="USD per teacher call as pilot and evaluate price the teacher (cost per call, break-even, "
        "verdict) in place of the ledger's: a replay teacher's recorded traffic costs nothing to replay, but each "
        "call cost this when it was made. None: the token price above, else the ledger's recorded cost.")


class FewShotConfig(Section):
    path: Annotated[str | None, INPUT_FILE] = Field(None, description="JSONL of labelled examples (input + label/output) used as shots.")
    k: int = Field(0, ge=0, description="Number of shots to put in the prompt prefix.")
    seed: int = Field(0, description="Seed for choosing and ordering the shots.")
    orders: int = Field(
        1, ge=1, description="Self-consistency: average the label distribution over this many shot orders (cost x N)."
    )


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


class TeacherConfig(Section):
    type: str = Field("local", description="Teacher plugin: openai, local, replay, or a third-party plugin's name.")
    model: Annotated[str, MODEL_REF] = Field("", description="Model id (API), hub id, local directory or .gguf file (local).")
    base_url: str | None = Field(None, description="Base URL of an OpenAI-compatible server.")
    api_key_env: EnvName = Field("OPENAI_API_KEY", description="Name of the environment variable holding the API key.")
    prompt_format: Literal["chat", "completion"] = Field(
        "chat", description="chat: instruction as system message; completion: plain text prompt for base models."
    )
    answer_prefix: str = Field("Answer:", description="Text before the answer in a completion-format prompt.")
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    temperature: float = Field(0.0, ge=0, description="Sampling temperature.")
    max_tokens: int = Field(256, ge=1, description="Max output tokens per call.")
    stop: list[str] = Field(default_factory=list, description="Local teacher, free text: end an answer at the first of these strings.")
    logprobs: int = Field(0, ge=0, le=20, description="Top-k log-probabilities to request per output token (0: none).")
    reasoning_effort: str | None = Field(
        None, description="Sent as reasoning_effort (minimal, low, medium, high) when set: OpenAI's reasoning models "
        "(o-series, gpt-5) count their reasoning in max_tokens, so a short answer needs a low effort.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (API teachers).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts (SDK backoff with jitter).")
    batch_size: int | None = Field(
        None, ge=1, description="Inputs per forward pass (local teacher); unset: 1 on a CPU, 16 on a GPU.")
    engine: str = engine_name("the local teacher")
    dtype: DtypeName = engine_dtype("Weights and activations of the local teacher")
    quantization: QuantizationName = engine_quantization("The local teacher's weights")
    recheck_margin: RecheckMargin = engine_recheck("The local teacher's labels")
    draft_tokens: int = engine_drafts("The local teacher's generated answers")
    compile: bool = Field(
        False, description="Local teacher, engine transformers: run it under torch.compile (CPU; needed for "
        "quantization: int8; the first calls of each shape compile).")
    calibrate: bool = Field(
        False, description="Local classification teacher: divide label probabilities by their content-free prior."
    )
    replay_path: Annotated[str | None, INPUT_FILE] = Field(None, description="Recorded traffic in OpenAI fine-tuning JSONL (replay).")
    price: PriceConfig = Field(default_factory=PriceConfig)
    terms: str = Field("", description="The teacher's terms of use, recorded in the dataset card.")


class StudentConfig(Section):
    model: Annotated[str, MODEL_REF] = Field(
        "bundled:smollm2-135m-instruct",
        description="Hub id, local directory, .gguf file, or bundled:smollm2-135m-instruct.",
    )
    num_layers: int | None = Field(
        None, ge=1, description="Keep only the first N transformer layers before training (depth pruning; None: all)."
    )
    usd_per_hour: float = Field(0.10, ge=0, description="USD per hour of the hardware the student runs on.")
    max_length: int = Field(256, ge=8, description="Truncate prompt+completion to this many tokens.")


class SynthesizeConfig(Section):
    """`potstill synthesize`: the teacher writes new inputs from the task, the labels and a few seeds."""

    n: int = Field(100, ge=1, description="Synthetic inputs to keep, over all plan cells.")
    seeds: Annotated[str | None, INPUT_FILE] = Field(None, description="JSONL of real example inputs (input, label?): shown as exemplars, kept in the output, never copied.")
    test_inputs: Annotated[str | None, INPUT_FILE] = Field(
        None, description="JSONL of held-out test inputs no synthetic input may come near (RUN/test.jsonl is added when it exists)."
    )
    cells: list[str] = Field(
        default_factory=list, description="Plan cells to fill (default: task.labels for classification, else one cell 'all')."
    )
    quotas: dict[str, int] = Field(default_factory=dict, description="Inputs to keep per cell (default: n split evenly).")
    topics: list[str] = Field(default_factory=list, description="Topics to rotate through in the prompts.")
    lengths: list[str] = Field(
        default_factory=lambda: ["one or two sentences", "a short paragraph", "several paragraphs"],
        description="Lengths to rotate through.",
    )
    styles: list[str] = Field(default_factory=list, description="Styles or registers to rotate through (formal, chatty, ...).")
    difficulties: list[str] = Field(
        default_factory=lambda: ["clear-cut", "ambiguous"], description="Difficulties to rotate through."
    )
    exemplars: int = Field(3, ge=0, description="Seed inputs shown per prompt, rotated from call to call.")
    temperature: float = Field(1.0, ge=0, description="Teacher sampling temperature for writing inputs.")
    max_tokens: int = Field(512, ge=1, description="Longest input the teacher may write (tokens).")
    min_chars: int = Field(20, ge=1, description="Reject inputs shorter than this (characters).")
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard of character 5-gram sets at which an input duplicates another or a seed."
    )
    test_threshold: float = Field(
        0.5, gt=0, le=1, description="Lower bar for test inputs: reject a synthetic input this similar to any of them."
    )
    max_rounds: int = Field(3, ge=1, description="Rounds of requests to refill cells whose candidates were rejected.")
    seed: int = Field(0, description="Seed of the plan (which topic, length, style and exemplars each request gets).")


class PilotConfig(Section):
    n: int = Field(100, ge=1, description="Number of inputs to compare the untrained student and the teacher on.")
    seed: int = Field(0, description="Seed for choosing the pilot inputs.")


class CurateConfig(Section):
    val: float = Field(0.1, ge=0, description="Validation split: a fraction (<1) or a count (>=1).")
    test: float = Field(0.2, ge=0, description="Test split: a fraction (<1, stable hash assignment) or a count (>=1).")
    seed: int = Field(0, description="Seed of the hash-based split assignment.")
    dedup: bool = Field(True, description="Drop exact duplicate inputs (normalised text).")
    max_train: int | None = Field(None, ge=1, description="Cap the number of training examples.")
    near_dup: bool = Field(True, description="Also drop near-duplicate inputs (MinHash LSH over character shingles).")
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity of character 5-gram sets at which two inputs are near-duplicates."
    )
    min_agreement: float = Field(
        0.5, ge=0, le=1, description="Self-consistency: drop records whose majority answer holds fewer of the n samples."
    )
    min_output_chars: int = Field(1, ge=0, description="Reject teacher outputs shorter than this (characters).")
    max_output_chars: int | None = Field(None, ge=1, description="Reject teacher outputs longer than this (characters).")
    output_regex: str | None = Field(None, description="Reject teacher outputs that do not fully match this regex.")
    real_data: Annotated[str | None, INPUT_FILE] = Field(None, description="JSONL of real labelled examples (input + label/output) to mix into train.")
    real_ratio: float = Field(0.0, ge=0, description="Real examples added per teacher example in train (0.25: one in five).")
    real_source: str = Field("user-provided", description="Where the real examples come from (dataset card).")
    real_license: str = Field("unspecified", description="Licence of the real examples (dataset card).")
    review: bool = Field(True, description="Apply the decisions of `potstill review` (review.sqlite in the run directory).")
    fix_text: bool = Field(
        False, description="Repair encoding damage (mojibake such as 'Â£') in inputs and teacher outputs with ftfy; "
                           "it is counted in the dataset card either way."
    )


class TrainConfig(Section):
    method: Literal["full", "lora", "qlora"] = Field(
        "full", description="full fine-tuning, LoRA adapters (peft), or QLoRA (4-bit base via bitsandbytes; CUDA only)."
    )
    int8_calibration: int = Field(
        512, ge=0, description="After training, this many training inputs (the first of train.jsonl; no labels "
        "read) calibrate the student for int8: activation ranges that smooth its int8 layers and, for "
        "classification, the re-check margin that `recheck_margin: auto` uses (written to "
        "student/int8_calibration.safetensors; on CPU, about 20 s for the quickstart student). 0: none.")
    objective: Literal["sft", "kd"] = Field(
        "sft", description="sft: cross-entropy on teacher text; kd: also match the teacher's distribution (kd_signal)."
    )
    kd_signal: Literal["auto", "labels", "topk", "logits"] = Field(
        "auto",
        description="Teacher signal for objective kd: labels (label_probs, any tokenizer), topk (records' top-k "
        "logprobs mapped to student ids; same tokenizer), logits (full logits of train.teacher_model on the fly); "
        "auto: logits if teacher_model is set (its vocabulary is checked to be the student's), else labels for "
        "classification, else topk if records carry logprobs.",
    )
    kd_kind: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"] = Field(
        "forward_kl", description="Divergence of the token-level KD term and of on-policy batches."
    )
    kd_beta: float = Field(0.5, ge=0, le=1, description="beta of kd_kind jsd (0: forward KL, 1: reverse KL).")
    kd_alpha: float = Field(0.1, ge=0, le=1, description="Skew alpha of kd_kind skew_kl / skew_reverse_kl.")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the KD term (loss = CE + kd_weight * KD).")
    kd_temperature: float = Field(1.0, gt=0, description="Temperature of the KD term (T^2-scaled).")
    teacher_model: Annotated[str | None, MODEL_REF] = Field(
        None, description="Local teacher (hub id, dir, GGUF) with the student's tokenizer, for kd_signal logits and "
        "on-policy batches."
    )
    onpolicy_fraction: float = Field(
        0.0, ge=0, le=1, description="GKD lambda: fraction of batches built from student samples scored by "
        "teacher_model (needs teacher_model)."
    )
    onpolicy_max_new_tokens: int = Field(32, ge=1, description="Longest student sample in an on-policy batch.")
    onpolicy_temperature: float = Field(1.0, gt=0, description="Sampling temperature of on-policy student samples.")
    pack: bool = Field(
        False, description="Pack examples into rows of student.max_length; no attention across packed examples."
    )
    dtype: DtypeName = Field(
        "auto", description="Matmul precision: auto (bf16 autocast on GPU, fp32 on CPU), float32, or bfloat16 "
        "(autocast on a CPU too: 1.5x faster steps with AMX); weights, norms and the optimiser stay fp32."
    )
    compile: bool = Field(
        False, description="torch.compile the transformer body, and a local KD teacher's forward (one H100: "
        "2.2x the tokens/s of a plain transformers step on SmolLM2-135M, benchmarks/train_step.py; the first "
        "two steps compile: about a minute for a 135M student, about 4 minutes with a 1.7B teacher on one H200)."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a resumable checkpoint every N steps under student.ckpt/ (0: never)."
    )
    resume: bool = Field(True, description="Resume from the latest checkpoint when one exists.")
    trainable_layers: int | None = Field(
        None, ge=0, description="Full method: train only the top N transformer layers (None: all)."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training set.")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW, linear decay).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    seed: int = Field(0, description="Seed for shuffling and initialisation.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")


class QualityBar(Section):
    """What GO needs: each check is judged by its 95% interval, pass only when wholly at or above the bar."""

    min_agreement: float = Field(
        0.85, ge=0, le=1,
        description="Trained student's agreement with the teacher; judged only where a slice has no gold labels.",
    )
    min_relative_quality: float | None = Field(
        0.95, ge=0,
        description="Trained student's gold metric over the teacher's, judged where gold exists (None: judge agreement).",
    )
    max_break_even_months: float | None = Field(
        12.0, gt=0,
        description="GO needs the one-time cost repaid within this many months at evaluate.monthly_calls (None: any).",
    )
    max_p95_latency_s: float | None = Field(
        None, gt=0, description="GO needs the student's p95 single-call latency at or under this, in seconds (None: any).",
    )


class JudgeConfig(Section):
    """Teacher as judge (`evaluate.judge`): pairwise student-vs-teacher verdicts for extraction and free text."""

    enabled: bool = Field(False, description="Ask a judge model to compare student and teacher outputs (extraction, freetext).")
    teacher: TeacherConfig | None = Field(
        None, description="The judge model, as a teacher section (an API teacher); None: the run's teacher."
    )
    rubric: str = Field(
        "Judge which answer follows the task instruction better: correct, complete, faithful to the input, concise.",
        description="What the judge weighs, put in its system prompt.",
    )
    max_examples: int | None = Field(None, ge=1, description="Judge only the first N test examples (None: all; 2 calls each).")
    max_tokens: int = Field(8, ge=1, description="Longest judge reply (it is asked for one word: A, B or TIE).")


class EvaluateConfig(Section):
    latency_samples: int = Field(30, ge=1, description="Calls timed one at a time for p50/p95 latency.")
    teacher_latency_samples: int = Field(
        100, ge=0, description="A local teacher (teacher.type local) is timed at batch 1 too, on the first N of the "
        "student's timed test inputs, the two taking turns so that both are timed in the same minutes; its cost "
        "per call is then that mean x teacher.price.usd_per_hour. 0, or an API teacher: latency and cost from the "
        "ledger rows generate wrote (kept beside the timed ones either way).")
    batch_size: int = Field(16, ge=1, description="Batch size for the throughput pass.")
    monthly_calls: int = Field(1_000_000, ge=0, description="Expected calls per month, for the break-even.")
    quality_bar: QualityBar = Field(default_factory=QualityBar)
    include_untrained: bool = Field(True, description="Also evaluate the untrained student.")
    engine: str = engine_name("the student in evaluate and pilot")
    dtype: DtypeName = engine_dtype("Student precision in evaluate and pilot")
    quantization: QuantizationName = engine_quantization("Student weights in evaluate and pilot")
    recheck_margin: RecheckMargin = engine_recheck("Student labels in evaluate and pilot")
    draft_tokens: int = engine_drafts("Student generations in evaluate and pilot")
    compile: bool = Field(
        False, description="Engine transformers: run the students in evaluate (and pilot's untrained one) with "
        "the decoder under torch.compile, as serve.compile serves them, so that eval.json's latency and cost "
        "are the compiled path's. Each student is compiled and warmed before its timed calls: a minute or more "
        "per student on a small CPU. Other engines refuse it.")
    cost_basis: Literal["batch1", "batched"] = Field(
        "batch1", description="Student cost per call behind the break-even: batch1 (interactive, one call at a "
        "time) or batched (sustained throughput at evaluate.batch_size, a busy endpoint); both are reported."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


def _default_prices() -> dict[str, dict[str, float]]:
    # USD per million tokens (input, output, cached input), list prices of late 2025; a model id
    # matches its longest prefix here (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``). Edit or
    # extend in potstill.yaml. Cached input: OpenAI bills a prompt-cache hit at 10% (gpt-5), 25%
    # (gpt-4.1, o3, o4-mini) or 50% (gpt-4o) of the input price, Anthropic a cache read at 10%.
    table = {
        "gpt-5": (1.25, 10.0, 0.125), "gpt-5-mini": (0.25, 2.0, 0.025), "gpt-5-nano": (0.05, 0.40, 0.005),
        "gpt-4.1": (2.0, 8.0, 0.50), "gpt-4.1-mini": (0.40, 1.60, 0.10), "gpt-4.1-nano": (0.10, 0.40, 0.025),
        "gpt-4o": (2.50, 10.0, 1.25), "gpt-4o-mini": (0.15, 0.60, 0.075), "o3": (2.0, 8.0, 0.50),
        "o4-mini": (1.10, 4.40, 0.275),
        "claude-opus-4": (15.0, 75.0, 1.50), "claude-sonnet-4": (3.0, 15.0, 0.30),
        "claude-haiku-4-5": (1.0, 5.0, 0.10), "claude-3-5-haiku": (0.80, 4.0, 0.08),
        "claude-3-7-sonnet": (3.0, 15.0, 0.30),
        # Fine-tuned OpenAI models (``ft:gpt-4o-mini-2024-07-18:org::id``) bill above their base model.
        "ft:gpt-4o": (3.75, 15.0, 1.875), "ft:gpt-4o-mini": (0.30, 1.20, 0.15), "ft:gpt-4.1": (3.0, 12.0, 0.75),
        "ft:gpt-4.1-mini": (0.80, 3.20, 0.20), "ft:gpt-4.1-nano": (0.20, 0.80, 0.05),
    }
    return {k: {"input_per_mtok": i, "output_per_mtok": o, "cached_input_per_mtok": c}
            for k, (i, o, c) in table.items()}


class GenerateConfig(Section):
    rpm: int | None = Field(None, ge=1, description="Client-side cap on requests per minute (None: none; server headers still apply).")
    tpm: int | None = Field(None, ge=1, description="Client-side cap on tokens per minute, input + output (None: none).")
    budget_usd: float | None = Field(None, ge=0, description="Stop sending once this many dollars are spent (None: no cap).")
    n: int = Field(1, ge=1, le=64, description="Samples per input; with n > 1 the output is the majority answer.")
    engine: Literal["async", "ray", "batch"] = Field(
        "async", description="async: one process; ray: shard inputs over Ray workers; batch: the provider's batch API "
        "(openai, anthropic teachers; answers within 24 h at generate.batch_price of the live price).")
    ray_workers: int = Field(2, ge=1, description="Ray workers (shards) for engine ray.")
    ray_gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs each Ray worker reserves (1: a local teacher model on each worker's own GPU)."
    )
    ray_endpoints: list[str] = Field(
        default_factory=list,
        description="Base URLs for engine ray with an API teacher: worker i calls endpoints[i % n] (several vLLM servers).",
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=_default_prices,
        description="USD per million tokens by model id prefix ({input_per_mtok, output_per_mtok}); used when teacher.price "
        "is all zero. A config's entries extend the built-in table (and replace the entries of the same name).",
    )

    batch_price: dict[str, float] = Field(
        default_factory=lambda: {"openai": 0.5, "anthropic": 0.5},
        description="Batch price as a share of the live price, per provider (engine batch; a provider missing here pays the live price).",
    )
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between two status checks of the open batches (engine batch).")
    batch_max_requests: int | None = Field(
        None, ge=1, description="Most requests per batch (None: the provider's limit, openai 50,000, anthropic 100,000).")
    batch_resubmits: int = Field(3, ge=0, description="Times an expired or failed batch item is resubmitted before it is an error row.")

    @model_validator(mode="after")
    def _check_prices(self) -> "GenerateConfig":
        for provider, share in self.batch_price.items():
            if not 0 < share <= 1:
                raise ValueError(f"generate.batch_price.{provider}: {share} is not a share of the live price in (0, 1]")
        for model, price in self.prices.items():
            try:
                PriceConfig.model_validate(price)
            except ValidationError as e:
                raise ValueError(f"generate.prices.{model}: {e.errors()[0]['msg']} ({e.errors()[0]['loc'][0]})") from None
        return self


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Address `potstill serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port `potstill serve` listens on (0: any free port).")
    api_key_env: EnvName = Field(
        "POTSTILL_SERVE_KEY",
        description="Environment variable holding the Bearer key clients must send ('' serves without auth).",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 above).")
    max_messages: int = Field(64, ge=1, description="Most messages one chat request may carry (400 above).")
    model_aliases: list[str] = Field(
        default_factory=lambda: ["potstill"],
        description="Names clients may send as `model` besides the student's versioned name and the teacher's; "
        "listed by /v1/models. Any other name is a 404 model_not_found.",
    )
    target_escalation: float = Field(
        0.2, ge=0, le=1, description="Calibrate the confidence threshold so at most this share of val inputs escalate."
    )
    target_agreement: float | None = Field(
        None, ge=0, le=1,
        description="If set, instead pick the lowest threshold whose end-to-end val agreement reaches this.",
    )
    ood_quantile: float = Field(
        0.98, gt=0, le=1, description="Inputs farther from the training inputs than this quantile of the distances of "
        "val and of held-out training inputs (see ood_reference) are escalated."
    )
    ood_reference: int = Field(
        256, ge=1, description="Training inputs embedded as the in-distribution reference; up to as many other "
        "training inputs calibrate the OOD threshold beside val."
    )
    batch_size: int = Field(16, ge=1, description="Most concurrent requests the student answers in one forward pass.")
    batch_wait_ms: float = Field(2.0, ge=0, description="How long a batch waits for more requests to join it, "
                                 "under load only (after a batch of several); a lone request goes at once.")
    engine: str = engine_name("the served student")
    dtype: DtypeName = engine_dtype("Served student precision")
    quantization: QuantizationName = engine_quantization("Served student weights")
    compile: bool = Field(
        False, description="Engine transformers: run the student's decoder under torch.compile (inductor, "
        "default mode). The service compiles and warms it on val inputs while loading, before it takes a "
        "request (129 s for the quickstart student on 2 CPU cores, 71 s with torch's on-disk cache of "
        "compiled code warm). With dtype bfloat16 on an AMX CPU it was the fastest path at batch 16 measured "
        "(README, Engines). Other engines refuse it.")
    recheck_margin: RecheckMargin = engine_recheck("Served labels")
    draft_tokens: int = engine_drafts("Served generations")


class WatchConfig(Section):
    """How `potstill watch` compares served traffic (RUN/calls.sqlite) with the training inputs."""

    window: int = Field(200, ge=2, description="Watch the latest N answered served requests (unless a time range is given).")
    min_requests: int = Field(50, ge=2, description="Refuse to judge fewer served requests than this (too little power).")
    reference_size: int = Field(256, ge=2, description="Training inputs (train.jsonl) embedded as the reference sample.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level of the input and label-mix tests.")
    min_effect: float = Field(
        0.1, ge=0, description="Input drift needs MMD (RBF, median bandwidth; 0..sqrt 2) at least this, besides p < alpha."
    )
    label_tv_max: float = Field(
        0.15, ge=0, le=1, description="Label-mix drift needs total variation to the training labels above this, besides p < alpha."
    )
    escalation_margin: float = Field(
        0.15, ge=0, le=1, description="Flag when the share escalated to the teacher exceeds the calibrated val share by more than this."
    )
    escalation_bins: int = Field(5, ge=1, description="Consecutive sub-windows over which the escalation trend is measured.")
    permutations: int = Field(1000, ge=99, description="Permutations behind the MMD p-value.")
    seed: int = Field(0, description="Seed of the reference sample and the permutations.")
    batch_size: int = Field(16, ge=1, description="Inputs per forward pass when embedding.")


class ExportConfig(Section):
    """What `potstill export` writes for the student (formats hf and gguf)."""

    dtype: Literal["f32", "f16", "bf16"] = Field("f32", description="Weight dtype of the merged Hugging Face export (format hf).")
    gguf_types: list[Literal["f16", "q8_0"]] = Field(
        default_factory=lambda: ["f16", "q8_0"], min_length=1,
        description="GGUF files to write (format gguf): f16 (2 bytes/weight) and/or q8_0 (~1.06 bytes/weight).",
    )


class RedistillConfig(Section):
    """How `potstill redistill` turns served traffic into a challenger, and when it replaces the champion."""

    student_sample: float = Field(
        0.5, ge=0, description="Student-answered requests re-asked from the teacher: a fraction (0-1; 1 = all) or a count (>1)."
    )
    new_test: float = Field(
        0.3, gt=0, lt=1, description="Share of the new traffic held out as the new-traffic test (stable hash split)."
    )
    min_new_test: int = Field(
        20, ge=1, description="Promote only if the new-traffic test holds at least this many examples (below it, "
        "one or two answers would decide; evaluate's report.min_slice_n plays this part for a slice)."
    )
    min_gain: float = Field(
        0.0, ge=0, le=1, description="Promote only if challenger minus champion agreement on new traffic exceeds this."
    )
    require_significant: bool = Field(
        False, description="Also require the 95% bootstrap interval of that gain to lie above zero."
    )
    max_frozen_drop: float = Field(
        0.02, ge=0, le=1, description="Promote only if the challenger loses at most this much agreement on RUN/test.jsonl."
    )
    promote: bool = Field(True, description="Promote a winning challenger (false: compare and record only).")
    seed: int = Field(0, description="Seed of the student-answered sample and of the new-traffic split.")
    reload_poll_s: float = Field(
        5.0, ge=0, description="How often a running `potstill serve` checks RUN/student for a promoted student (0: never)."
    )


class ReportConfig(Section):
    """How `potstill evaluate` cuts the test split into slices and judges them (eval.json, report.html)."""

    min_slice_n: int = Field(30, ge=1, description="Slices with fewer test examples are reported as too small to judge.")
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples behind each 95% interval.")
    worst_cases: int = Field(10, ge=0, description="Confident disagreements with the teacher shown side by side.")
    seed: int = Field(0, description="Seed of the bootstrap resampling.")


class Config(Section):
    run_dir: Annotated[str, RUN_PATH] = Field("runs/default", description="Directory for artifacts, manifest and ledger.")
    tracking: list[Literal["mlflow", "wandb", "tensorboard"]] = Field(
        default_factory=list,
        description="Experiment trackers that train, evaluate and redistill log to (mlflow: MLFLOW_TRACKING_URI or RUN/mlruns).",
    )
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    pilot: PilotConfig = Field(default_factory=PilotConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    redistill: RedistillConfig = Field(default_factory=RedistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if Path(self.run_dir).exists() and not Path(self.run_dir).is_dir():  # found before a model loads
            raise ValueError(f"run_dir {self.run_dir} is a file, not a run directory")
        if self.task.type == "classification" and len(self.task.labels) < 2:
            raise ValueError("task.labels needs at least two labels for a classification task")
        return self
