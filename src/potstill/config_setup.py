"""What a run distils, from whom and into what: the task and its data, the teacher (and the prices
its calls are billed at), the student. Each stage's own settings are in ``potstill.config_models``.

Every field is documented once, here, and that text is the help of its CLI flag (``--section.field``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from potstill.config_fields import (
    INPUT_FILE, MODEL_REF, DtypeName, EnvName, QuantizationName, RecheckMargin, Section, engine_drafts, engine_dtype,
    engine_name, engine_quantization, engine_recheck,
)


class TaskConfig(Section):
    type: str = Field("classification", description="Task plugin: classification, extraction, freetext or tools.")
    instruction: str = Field(
        "Classify the text.", description="System instruction the student (and a chat teacher) receives."
    )
    labels: list[str] = Field(default_factory=list, description="Label set (classification).")

    @field_validator("labels", mode="before")
    @classmethod
    def _whole_numbers(cls, v: Any) -> Any:
        # YAML's 5.0 is the label 5, as a gold label 5.0 is (records._coerce): '5.0' would match no gold.
        if isinstance(v, list):
            return [int(x) if isinstance(x, float) and x.is_integer() else x for x in v]
        return v
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the output must satisfy (extraction; "
                                               "a tools task's is derived from task.tools).")
    tools: list[dict[str, Any]] | None = Field(
        None, description="Tool calling (task.type tools): the OpenAI function tools ({type: function, function: "
        "{name, description, parameters}}) the student learns to call, one call an answer (several: "
        "task.parallel_tool_calls), written {name, arguments}; an API teacher is asked with them (a call "
        "required), and serve answers a request that "
        "carries the same tools with the student's call.")
    parallel_tool_calls: bool = Field(
        False, description="A tools task whose answers may call several functions at once (OpenAI's "
        "parallel_tool_calls, Claude's parallel tool use): each answer is a list of one or more calls, "
        "[{name, arguments}, ...], in a fixed order (sorted), and the teacher is asked with parallel calls "
        "allowed. Off: one call an answer, and the teacher is told so.")
    tool_choice: Literal["required", "auto"] = Field(
        "required", description="A tools task's answers: required, a call every time (the teacher is asked "
        "with tool_choice required); auto, a call or a reply in words, written {content} (the teacher "
        "decides, as OpenAI's tool_choice auto lets it), and the inputs may hold earlier calls and their "
        "results (an agent's turns), which the student reads as text: an assistant's calls as it writes "
        "them, each tool result a line 'Result of NAME: ...' of a user turn.")

    @model_validator(mode="before")
    @classmethod
    def _tools_schema(cls, data: Any) -> Any:
        # Derived here, so every reader of task.json_schema (curate, guided decoding, evaluate's field
        # table, the dataset card) sees a tools task's answers as the extraction they are.
        if not isinstance(data, dict):
            return data
        from potstill.tool_calls import tools_problem, tools_schema

        if data.get("type") != "tools":
            if data.get("tools") is not None:
                raise ValueError("task.tools is for task.type tools (a task whose answers are tool calls)")
            # (Their defaults pass: a config written back with every field set loads again.)
            for key, default in (("parallel_tool_calls", False), ("tool_choice", "required")):
                if data.get(key) not in (None, default):
                    raise ValueError(f"task.{key} is for task.type tools (a task whose answers are tool calls)")
            return data
        problem = tools_problem(data.get("tools"))
        if problem:
            raise ValueError(problem)
        try:  # as the field will read it ('true', 1, yes); the field's own check says why where it is not a bool
            parallel = TypeAdapter(bool).validate_python(data.get("parallel_tool_calls", False))
        except ValidationError:
            parallel = False
        schema = tools_schema(data["tools"], parallel=parallel, text=data.get("tool_choice") == "auto")
        if data.get("json_schema") not in (None, schema):
            raise ValueError("task.json_schema: a tools task's schema is derived from task.tools; leave it out")
        return {**data, "json_schema": schema}
    grammar: str | None = Field(
        None, description="Free text: a grammar, GBNF (llama.cpp's format, rule root) or Lark (rule start), as "
        "vLLM's guided_grammar takes them, that every output, its surrounding white space stripped, must be "
        "derived by: curate drops teacher answers it does not derive, evaluate counts the student's as invalid, "
        "and guided_json (evaluate, serve) and teacher.structured_outputs (a local teacher) decode under it.")

    @field_validator("grammar")
    @classmethod
    def _grammar(cls, v: str | None) -> str | None:
        if v is not None:
            from potstill.models.grammar_constraint import grammar_problem

            problem = grammar_problem(v)
            if problem:
                raise ValueError(f"not a grammar: {problem}")
        return v
    max_output_tokens: int = Field(128, ge=1, description="Longest output to generate (extraction, freetext).")
    json_key_order: Literal["teacher", "schema", "sorted"] = Field(
        "teacher", description="Key order of the JSON the student learns (extraction): the teacher's, the order of "
        "json_schema's properties (nested objects too), or sorted.",
    )


class DataConfig(Section):
    inputs: Annotated[str, INPUT_FILE] = Field("inputs.jsonl", description="Inputs: JSONL, or a CSV, TSV or Parquet table by its suffix: {messages|input, label?, slice?, id?}; a local path, or hf://datasets/OWNER/NAME[@REVISION]/PATH on the Hugging Face Hub.")
    columns: dict[Literal["input", "messages", "label", "reference", "slice", "id"], str] = Field(
        default_factory=dict, description="The column of data.inputs that holds each field, for a table or dataset "
        "whose columns are named otherwise, e.g. {input: text, label: label_text}; only the named columns are read.")
    label_names: list[str] = Field(
        default_factory=list, description="Gold labels stored as class indices (0, 1, ...; a Hugging Face ClassLabel "
        "column): gold label i is label_names[i]. Empty: labels are read as written.")
    limit: int | None = Field(None, ge=1, description="Use only the first N inputs.")
    max_unknown_gold: float = Field(
        0.05, ge=0, le=1,
        description="Classification: refuse the inputs when more than this share of their gold labels is not in "
        "task.labels (after case-insensitive matching); below it, those records are warned about and kept without gold.",
    )
    source: str = Field("user-provided", description="Where the inputs come from (recorded in the dataset card).")
    license: str = Field("unspecified", description="Licence of the inputs (recorded in the dataset card).")

    @field_validator("columns")
    @classmethod
    def _one_text(cls, v: dict[str, str]) -> dict[str, str]:
        if "input" in v and "messages" in v:
            raise ValueError("name a column for input (the text) or for messages (a chat), not both")
        if any(not c.strip() for c in v.values()):
            raise ValueError("a column name is empty")
        return v


class PriceConfig(Section):
    input_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens.")
    cached_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens read from the provider's prompt cache (OpenAI's "
        "automatic cache of prompts over 1,024 tokens, Anthropic cache reads); None: the input price.")
    cache_write_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens written to the provider's prompt cache (Anthropic's "
        "cache_creation_input_tokens); None: 1.25x the input price, Anthropic's 5-minute cache write.")
    cache_write_1h_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens written to Anthropic's 1-hour prompt cache (usage "
        "cache_creation.ephemeral_1h_input_tokens); None: 2x the input price, Anthropic's 1-hour cache write.")
    usd_per_hour: float = Field(
        0.0, ge=0, description="USD per hour of the hardware the teacher runs on: a local teacher bills each call its "
        "seconds at this rate; a server of your own behind an API (vLLM, TGI) with no token price is priced in pilot, "
        "evaluate and `potstill cost` at the seconds the ledger shows it busy with the calls (concurrent calls "
        "counted once) at this rate.")
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
    reasoning: bool | Literal["auto"] = Field(
        "auto", description="Whether the model is a reasoning model, sent max_completion_tokens (which counts its "
        "hidden reasoning) and no temperature, and asked for no logprobs: auto (by OpenAI's ids: o-series, gpt-5 but "
        "gpt-5-chat), true (an Azure deployment or a proxy's alias of one), false.")
    reasoning_effort: str | None = Field(
        None, description="Sent as reasoning_effort (minimal, low, medium, high) when set: OpenAI's reasoning models "
        "(o-series, gpt-5) count their reasoning in max_tokens, so a short answer needs a low effort. An Anthropic "
        "teacher refuses it (see teacher.thinking_budget).")
    thinking_budget: int | None = Field(
        None, ge=1024, description="Anthropic: extended thinking, sent as thinking {type: enabled, budget_tokens}: "
        "tokens Claude may think before it answers (at least 1024), counted in teacher.max_tokens, which must exceed "
        "it; no temperature is sent (thinking samples at 1). The thinking stays out of the answers. Other teachers "
        "refuse it (OpenAI's reasoning models take teacher.reasoning_effort).")
    structured_outputs: Literal["off", "on", "strict"] = Field(
        "off", description="Extraction with an API teacher: ask for task.json_schema as the answer's format, so each "
        "answer is JSON that fits (OpenAI-compatible servers: response_format json_schema, with strict: true for "
        "'strict', which OpenAI takes only for schemas in its strict subset; Anthropic: output_config.format). "
        "It changes the requests: answers cached without it are asked again.")
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
    replay_path: Annotated[str | None, INPUT_FILE] = Field(None, description="Recorded traffic (replay): OpenAI fine-tuning JSONL, or the records `potstill import` writes.")
    price: PriceConfig = Field(default_factory=PriceConfig)
    terms: str = Field("", description="The teacher's terms of use, recorded in the dataset card.")

    @field_validator("structured_outputs", mode="before")
    @classmethod
    def _on_off(cls, v: object) -> object:
        # YAML 1.1 (PyYAML, and the CLI's flag values) reads a bare on / off as true / false.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


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
        # A family's smaller or larger sibling is its own entry, or the prefix rule bills it as its
        # elder: o3-mini at o3's price (1.8x), claude-opus-4-5 at claude-opus-4's (3x). gpt-5.1 is no
        # gpt-5 prefix (the rule wants "-" or ":" after one).
        "gpt-5.1": (1.25, 10.0, 0.125), "gpt-5-pro": (15.0, 120.0, 15.0), "o3-mini": (1.10, 4.40, 0.55),
        "o3-pro": (20.0, 80.0, 20.0), "o1": (15.0, 60.0, 7.50), "o1-mini": (1.10, 4.40, 0.55),
        "o1-pro": (150.0, 600.0, 150.0), "gpt-4o-2024-05-13": (5.0, 15.0, 5.0), "gpt-3.5-turbo": (0.50, 1.50, 0.50),
        "claude-opus-4": (15.0, 75.0, 1.50), "claude-opus-4-5": (5.0, 25.0, 0.50), "claude-sonnet-4": (3.0, 15.0, 0.30),
        "claude-haiku-4-5": (1.0, 5.0, 0.10), "claude-3-5-haiku": (0.80, 4.0, 0.08),
        "claude-3-7-sonnet": (3.0, 15.0, 0.30), "claude-3-5-sonnet": (3.0, 15.0, 0.30),
        "claude-3-opus": (15.0, 75.0, 1.50), "claude-3-haiku": (0.25, 1.25, 0.03),
        # Fine-tuned OpenAI models (``ft:gpt-4o-mini-2024-07-18:org::id``) bill above their base model.
        "ft:gpt-4o": (3.75, 15.0, 1.875), "ft:gpt-4o-mini": (0.30, 1.20, 0.15), "ft:gpt-4.1": (3.0, 12.0, 0.75),
        "ft:gpt-4.1-mini": (0.80, 3.20, 0.20), "ft:gpt-4.1-nano": (0.20, 0.80, 0.05),
    }
    return {k: {"input_per_mtok": i, "output_per_mtok": o, "cached_input_per_mtok": c}
            for k, (i, o, c) in table.items()}
