"""The pydantic models of potstill.yaml: one section per stage, and the run's ``Config``.

Every field is documented once, where its model is defined, and that text is the help of its CLI flag
(``--section.field``). The task, data, teacher, price and student sections are in
``potstill.config_setup``, the shared building blocks (path roles, engine fields, ``Section``) in
``potstill.config_fields``, the train section in ``potstill.config_train``; all are re-exported
here. Loading a file, overrides and the starter YAML are in ``potstill.config``, which re-exports
all of them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from potstill.config_fields import (  # noqa: F401  (re-exported: potstill.config_models keeps every name)
    INPUT_FILE, MODEL_REF, RUN_PATH, DtypeName, EnvName, PathRole, QuantizationName, RecheckMargin, Section,
    Unbounded,
    _env_name, engine_drafts, engine_dtype, engine_guided, engine_name, engine_quantization, engine_recheck,
)
from potstill.config_setup import (  # noqa: F401  (re-exported, as above)
    DataConfig, FewShotConfig, PriceConfig, StudentConfig, TaskConfig, TeacherConfig, _default_prices,
)
from potstill.config_train import FULL_LR, LORA_LR, TrainConfig  # noqa: F401  (re-exported, as above)
from potstill.errors import undecoded_name


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
    quotas: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Inputs to keep per cell (default: n split evenly)."
    )
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

    @field_validator("cells")
    @classmethod
    def _unique_cells(cls, cells: list[str]) -> list[str]:
        # n is split over the cells by name: a cell named twice shared one quota, and fewer than n were
        # written under "quotas met".
        twice = next((c for i, c in enumerate(cells) if c in cells[:i]), None)
        if twice is not None:
            raise ValueError(f"cell {twice!r} is named twice; name each cell once")
        return cells


class PilotConfig(Section):
    n: int = Field(100, ge=1, description="Number of inputs to compare the untrained student and the teacher on.")
    seed: int = Field(0, description="Seed of the content hash that draws the pilot inputs (the lowest n; their line order does not count).")


class CurateConfig(Section):
    val: float = Field(0.1, ge=0, description="Validation split: a fraction (<1) or a count (>=1).")
    test: float = Field(0.2, ge=0, description="Test split: a fraction (<1, stable hash assignment) or a count (>=1).")
    seed: int = Field(0, description="Seed of the hash-based split assignment.")
    dedup: bool = Field(True, description="Drop exact duplicate inputs (normalised text).")
    max_train: int | None = Field(None, ge=1, description="Cap the number of training examples.")
    near_dup: bool = Field(True, description="Also drop near-duplicate inputs (Jaccard of character 5-gram sets, near_dup_threshold).")
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity of character 5-gram sets at which two inputs are near-duplicates."
    )
    min_agreement: float = Field(
        0.5, ge=0, le=1, description="Self-consistency: drop records whose majority answer holds fewer of the n samples."
    )
    min_output_chars: int = Field(1, ge=0, description="Reject teacher outputs shorter than this (characters).")
    max_output_chars: int | None = Field(None, ge=1, description="Reject teacher outputs longer than this (characters).")
    output_regex: str | None = Field(None, description="Reject teacher outputs that do not fully match this regex.")
    real_data: Annotated[str | None, INPUT_FILE] = Field(None, description="JSONL of real labelled examples (input + label, output or reference) to mix into train.")
    real_ratio: float = Field(0.0, ge=0, description="Real examples added per teacher example in train (0.25: one in five).")
    real_source: str = Field("user-provided", description="Where the real examples come from (dataset card).")
    real_license: str = Field("unspecified", description="Licence of the real examples (dataset card).")
    review: bool = Field(True, description="Apply the decisions of `potstill review` (review.sqlite in the run directory).")
    fix_text: bool = Field(
        False, description="Repair encoding damage (mojibake such as 'Â£') in inputs and teacher outputs with ftfy; "
                           "it is counted in the dataset card either way."
    )


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
    min_judge_score: float | None = Field(
        0.45, ge=0, le=1,
        description="Free text without gold, where evaluate.judge ran: the judge's mean score of the trained student "
                    "against the teacher (win 1, tie or opposite verdicts in the two orders 0.5, loss 0; 0.5 is as "
                    "good) decides in place of exact-match agreement (None: agreement decides).",
    )
    max_judge_inconsistency: float | None = Field(
        0.5, ge=0, le=1,
        description="Where the judge decides: a slice on which more than this share of its verdicts flipped when "
                    "the two answers swapped places is inconclusive, not judged on that score: each flip counts as a "
                    "tie (0.5), so a judge that always names the first answer scores any student 0.5, as good as the "
                    "teacher (None: any share).",
    )
    max_break_even_months: Unbounded = Field(
        12.0, gt=0,
        description="GO needs the one-time cost repaid within this many months at evaluate.monthly_calls (None: any).",
    )
    max_p95_latency_s: Unbounded = Field(
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
    guided_json: bool = engine_guided("Student generations in evaluate and pilot")
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


class GenerateConfig(Section):
    rpm: int | None = Field(None, ge=1, description="Client-side cap on requests per minute (None: none; server headers still apply).")
    tpm: int | None = Field(None, ge=1, description="Client-side cap on tokens per minute, input + output (None: none).")
    budget_usd: Unbounded = Field(None, ge=0, description="Stop sending once this many dollars are spent (None: no cap).")
    n: int = Field(1, ge=1, le=64, description="Samples per input; with n > 1 the output is the majority answer.")
    retry_refusals: bool = Field(
        False, description="Send again a request the teacher refused in an earlier run (billed, and as a rule refused "
        "again); false: the refusal stands and its input stays out of the data.")
    tool_rounds: int = Field(
        0, ge=0, le=8, description="A tools task under task.tool_choice auto: after the teacher answers an input with "
        "calls, the teacher also plays each called function (it writes the JSON result, from the function's "
        "declaration and the call's arguments) and answers the chat holding those results, up to this many rounds, "
        "so the data holds the turns after a result where the inputs have none (records tagged slice tool_round:N). "
        "Any generate.engine; under batch each round is two batches, one after the other. 0: off.")
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
    max_file_bytes: int = Field(200_000_000, ge=1024, description="Largest Batch API upload (413 above): a file "
                                "on POST /v1/files, or Anthropic's requests inline on POST /v1/messages/batches.")
    batch_concurrency: int = Field(32, ge=1, description="Batch API: how many of a batch's requests are in flight "
                                   "at once (so the student's batches fill; escalations go to the teacher as many).")
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
    escalate_truncated: bool = Field(
        True, description="A generated student answer (extraction, free text) that ran to task.max_output_tokens "
        "without ending goes to the teacher (reason truncated), in calibration as in serving: curate trains only on "
        "whole answers, so a student still writing there is most often repeating itself, and the client would get "
        "half an answer. false: it is served cut, finish_reason length."
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
    guided_json: bool = engine_guided("Served generations", more=(
        "; a request's response_format (json_schema: its schema; json_object: any object) guides its answer "
        "instead, for a free-text task too, as vLLM does"))
    stream_teacher: bool = Field(
        True, description="A chat completion, completion, Responses or Messages call asked with stream: true that "
        "escalates gets the teacher's answer as the teacher writes it (a teacher asked anew, openai, anthropic or "
        "local; its text, log-probs and tool calls), "
        "instead of in one chunk once it is whole; the route headers and the answer logged are the same. Needs "
        "a teacher server that reports token usage in streams (OpenAI, Anthropic, vLLM, llama.cpp's server "
        "and Ollama do); false: escalations arrive whole.")
    store_responses: bool = Field(
        True, description="Keep each /v1/responses answer (unless its request sends store: false) in the ledger, "
        "as OpenAI does, so a client continues the conversation with previous_response_id and reads it back "
        "(GET /v1/responses/{id}, its input_items; DELETE forgets it); false: nothing is kept and "
        "previous_response_id is a 400.")
    reuse_escalations: bool | None = Field(
        None, description="Answer an escalation from serve's own earlier answer to the identical teacher request "
        "(the chat, the client's max_tokens, tools, logprobs) instead of paying the teacher again. Unset: only when "
        "the teacher answers deterministically (teacher.temperature 0, not an OpenAI reasoning model); true: "
        "always; false: never (a teacher sampling at temperature > 0 gives each repeat a fresh sample).")
    max_waiting_escalations: int = Field(
        64, ge=0, description="Most escalations waiting for one of the teacher.concurrency slots; one more is a 429 "
        "(code rate_limit_exceeded) with a Retry-After, which the openai SDK waits out and retries, instead of a "
        "wait of up to teacher.timeout_s. A request identical to one waiting joins it, uncounted; Batch API lines "
        "and background responses wait regardless.")


CHECKS = 3  # watch's checks per run (input, label mix, escalation), over which their p-values are adjusted


class WatchConfig(Section):
    """How `potstill watch` compares served traffic (RUN/calls.sqlite) with the training inputs."""

    window: int = Field(200, ge=2, description="Watch the latest N answered served requests (unless a time range is given).")
    min_requests: int = Field(50, ge=2, description="Refuse to judge fewer served requests than this (too little "
                              "power); a check with fewer of its own (inputs read, labels, routed requests) is not judged.")
    reference_size: int = Field(256, ge=2, description="Training inputs (train.jsonl) embedded as the reference sample.")
    max_sample: int = Field(
        1000, ge=2, description="Embed at most this many of the watched requests for the input check, a seeded sample "
        "(its kernel holds (N + reference_size)^2 numbers); the label mix and escalation share count them all."
    )
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level of the input, label-mix and escalation tests.")
    min_effect: float = Field(
        0.1, ge=0, description="Input drift needs MMD (RBF, median bandwidth; 0..sqrt 2) to be at least this by its "
        "one-sided 95% lower bound, besides p <= alpha: a shift below it is flagged at no window size."
    )
    label_tv_max: float = Field(
        0.15, ge=0, le=1, description="Label-mix drift needs total variation to the training labels above this, besides p < alpha."
    )
    escalation_margin: float = Field(
        0.15, ge=0, le=1, description="Flag when the share escalated to the teacher exceeds the calibrated val share by "
        "more than this, besides p <= alpha (an exact test of the window's count against val's)."
    )
    escalation_bins: int = Field(5, ge=1, description="Consecutive sub-windows over which the escalation trend is measured.")
    permutations: int = Field(1000, ge=99, description="Permutations behind the MMD and label-mix p-values (at least "
                              "3 / alpha - 1: Holm's adjustment over the 3 checks multiplies the smallest p by 3).")
    seed: int = Field(0, description="Seed of the reference sample and the permutations.")
    batch_size: int = Field(16, ge=1, description="Inputs per forward pass when embedding.")

    @model_validator(mode="after")
    def _reachable_alpha(self) -> "WatchConfig":
        # The MMD and label-mix p-values are (1 + k) / (1 + permutations): never under 1 / (1 + permutations),
        # and Holm's adjustment over a run's three checks multiplies the smallest by 3 (stats.holm).
        floor = CHECKS / (1 + self.permutations)
        if floor > self.alpha + 1e-12:
            need = math.ceil(CHECKS / self.alpha - 1e-9) - 1
            raise ValueError(f"watch.alpha {self.alpha:g} is below the smallest p-value {self.permutations} permutations "
                             f"can give over a run's {CHECKS} checks (Holm: {CHECKS}/{self.permutations + 1} = {floor:.3g}), "
                             f"so the input check could never flag drift; set watch.permutations to at least {need}")
        return self


class ExportConfig(Section):
    """What `potstill export` writes for the student (formats hf and gguf)."""

    dtype: Literal["f32", "f16", "bf16"] = Field("f32", description="Weight dtype of the merged Hugging Face export (format hf).")
    gguf_types: list[Literal["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]] = Field(
        default_factory=lambda: ["f16", "q8_0"], min_length=1,
        description="GGUF files to write (format gguf): f16 (16 bits/weight), q8_0 (8.5), and llama.cpp's mixes "
                    "q6_k (6.56), q5_k_m (5.5), q4_k_m (4.5, Ollama's default tag) and q4_0 (4.5), each with its "
                    "sensitive tensors at 6-8 bits, quantized by potstill from an f32 conversion (no llama-quantize "
                    "needed); case does not matter (Q4_K_M).",
    )

    imatrix_inputs: int = Field(
        256, ge=0,
        description="Training inputs the student reads (in fp32) to measure an importance matrix for the k-quant "
                    "blocks of q6_k, q5_k_m and q4_k_m: each weight's rounding weighted by the mean square of the "
                    "activations it multiplies on the task's own inputs. `potstill train` measures it when it "
                    "finishes and keeps it with the student; export measures it where the student has none. "
                    "0: none (llama-quantize's plain weighting).",
    )

    @field_validator("gguf_types", mode="before")
    @classmethod
    def _lower_case(cls, v: Any) -> Any:
        return [x.lower() if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("gguf_types")
    @classmethod
    def _each_type_once(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))  # [q8_0, q8_0] converted one file twice and listed it twice in export.json


class RedistillConfig(Section):
    """How `potstill redistill` turns served traffic into a challenger, and when it replaces the champion."""

    student_sample: float = Field(
        0.5, ge=0, description="Student-answered requests re-asked from the teacher: a fraction (0-1; 1 = all) or a count "
        "(>1); at least those that fall in the new-traffic test (new_test), so that it holds the traffic as served."
    )
    new_test: float = Field(
        0.3, gt=0, lt=1, description="Share of the new traffic held out as the new-traffic test (stable hash split)."
    )
    new_share: float | None = Field(
        None, gt=0, lt=1, description="Share of the challenger's training examples that the new traffic makes up at "
        "least: its records are repeated (whole copies, then a seeded sample) until they do, so a little new traffic "
        "is not drowned by a large old training set. None: each record once, as many as there are."
    )
    min_new_test: int = Field(
        20, ge=1, description="Promote only if the new-traffic test holds at least this many examples (below it, "
        "one or two answers would decide; evaluate's report.min_slice_n plays this part for a slice)."
    )
    min_gain: float = Field(
        0.0, ge=0, le=1, description="Promote only if challenger minus champion agreement on new traffic exceeds this."
    )
    require_significant: bool = Field(
        True, description="Also require the paired 95% bootstrap interval of that gain to lie above zero (false: the "
        "point estimate decides, and a challenger no better than the champion is promoted about a third of the time)."
    )
    max_frozen_drop: float = Field(
        0.02, ge=0, le=1, description="Promote only if the challenger loses at most this much agreement on RUN/test.jsonl, "
        "against the champion and against the first champion of its lineage (the student the promotions started from)."
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

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, value: str) -> str:
        # An empty one is the current directory: `--run_dir "$RUN"` with RUN unset wrote the run's
        # ledger, manifest and artifacts into whatever folder the shell was in (a config file's
        # `run_dir: .` names its folder on purpose; _resolve_paths leaves an empty one empty).
        if not value.strip():
            raise ValueError("an empty path (an unset variable, as in --run_dir \"$RUN\"?): name the run's directory")
        if Path(value).exists() and not Path(value).is_dir():  # found before a model loads
            raise ValueError(f"{value} is a file, not a run directory")
        if why := undecoded_name(value):  # before the teacher is paid, not at train's tokenizer save
            raise ValueError(why)
        return value

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.task.type == "classification" and len(self.task.labels) < 2:
            raise ValueError("task.labels needs at least two labels for a classification task")
        return self
