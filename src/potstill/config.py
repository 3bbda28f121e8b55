"""potstill.yaml: the pydantic models of one distillation run.

Each section configures one stage; every field is documented once, here, and that text is the
help of its CLI flag (``--section.field``). Unknown fields are refused with a suggestion.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from potstill.errors import PotstillError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Section):
    type: str = Field("classification", description="Task plugin: classification, extraction or freetext.")
    instruction: str = Field(
        "Classify the text.", description="System instruction the student (and a chat teacher) receives."
    )
    labels: list[str] = Field(default_factory=list, description="Label set (classification).")
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the output must satisfy (extraction).")
    max_output_tokens: int = Field(128, ge=1, description="Longest output to generate (extraction, freetext).")


class DataConfig(Section):
    inputs: str = Field("inputs.jsonl", description="JSONL of inputs: {messages|input, label?, slice?, id?}.")
    limit: int | None = Field(None, ge=1, description="Use only the first N inputs.")
    source: str = Field("user-provided", description="Where the inputs come from (recorded in the dataset card).")
    license: str = Field("unspecified", description="Licence of the inputs (recorded in the dataset card).")


class PriceConfig(Section):
    input_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens.")
    usd_per_hour: float = Field(0.0, ge=0, description="USD per hour of the hardware a local model runs on.")


class FewShotConfig(Section):
    path: str | None = Field(None, description="JSONL of labelled examples (input + label/output) used as shots.")
    k: int = Field(0, ge=0, description="Number of shots to put in the prompt prefix.")
    seed: int = Field(0, description="Seed for choosing and ordering the shots.")


class TeacherConfig(Section):
    type: str = Field("local", description="Teacher plugin: openai, local, replay, or a third-party plugin's name.")
    model: str = Field("", description="Model id (API), hub id, local directory or .gguf file (local).")
    base_url: str | None = Field(None, description="Base URL of an OpenAI-compatible server.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the environment variable holding the API key.")
    prompt_format: Literal["chat", "completion"] = Field(
        "chat", description="chat: instruction as system message; completion: plain text prompt for base models."
    )
    answer_prefix: str = Field("Answer:", description="Text before the answer in a completion-format prompt.")
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    temperature: float = Field(0.0, ge=0, description="Sampling temperature.")
    max_tokens: int = Field(256, ge=1, description="Max output tokens per call.")
    logprobs: int = Field(0, ge=0, le=20, description="Top-k log-probabilities to request per output token (0: none).")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (API teachers).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts (SDK backoff with jitter).")
    batch_size: int = Field(1, ge=1, description="Inputs per forward pass (local teacher).")
    calibrate: bool = Field(
        False, description="Local classification teacher: divide label probabilities by their content-free prior."
    )
    replay_path: str | None = Field(None, description="Recorded traffic in OpenAI fine-tuning JSONL (replay).")
    price: PriceConfig = Field(default_factory=PriceConfig)
    terms: str = Field("", description="The teacher's terms of use, recorded in the dataset card.")


class StudentConfig(Section):
    model: str = Field(
        "bundled:smollm2-135m-instruct",
        description="Hub id, local directory, .gguf file, or bundled:smollm2-135m-instruct.",
    )
    num_layers: int | None = Field(
        None, ge=1, description="Keep only the first N transformer layers before training (depth pruning; None: all)."
    )
    usd_per_hour: float = Field(0.10, ge=0, description="USD per hour of the hardware the student runs on.")
    max_length: int = Field(256, ge=8, description="Truncate prompt+completion to this many tokens.")


class PilotConfig(Section):
    n: int = Field(100, ge=1, description="Number of inputs to compare the untrained student and the teacher on.")
    seed: int = Field(0, description="Seed for choosing the pilot inputs.")


class CurateConfig(Section):
    val: float = Field(0.1, ge=0, description="Validation split: a fraction (<1) or a count (>=1).")
    test: float = Field(0.2, ge=0, description="Test split: a fraction (<1, stable hash assignment) or a count (>=1).")
    seed: int = Field(0, description="Seed of the hash-based split assignment.")
    dedup: bool = Field(True, description="Drop exact duplicate inputs (normalised text).")
    max_train: int | None = Field(None, ge=1, description="Cap the number of training examples.")


class TrainConfig(Section):
    method: Literal["full", "lora"] = Field("full", description="full fine-tuning or LoRA adapters (peft).")
    objective: Literal["sft", "kd"] = Field(
        "sft", description="sft: cross-entropy on teacher text; kd: also match the teacher's label distribution."
    )
    kd_weight: float = Field(1.0, ge=0, description="Weight of the label-level KD term (objective kd).")
    kd_temperature: float = Field(1.0, gt=0, description="Temperature of the label-level KD term.")
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
    min_agreement: float = Field(0.85, ge=0, le=1, description="Trained student's agreement with the teacher.")
    min_relative_quality: float | None = Field(
        0.95, ge=0, description="Trained student's gold metric over the teacher's (when gold exists)."
    )


class EvaluateConfig(Section):
    latency_samples: int = Field(30, ge=1, description="Calls timed one at a time for p50/p95 latency.")
    batch_size: int = Field(16, ge=1, description="Batch size for the throughput pass.")
    monthly_calls: int = Field(1_000_000, ge=0, description="Expected calls per month, for the break-even.")
    quality_bar: QualityBar = Field(default_factory=QualityBar)
    include_untrained: bool = Field(True, description="Also evaluate the untrained student.")


class Config(Section):
    run_dir: str = Field("runs/default", description="Directory for artifacts, manifest and ledger.")
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    pilot: PilotConfig = Field(default_factory=PilotConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.task.type == "classification" and len(self.task.labels) < 2:
            raise ValueError("task.labels needs at least two labels for a classification task")
        return self


# --------------------------------------------------------------------------- loading


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at a location (for 'did you mean' suggestions)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return list(model.model_fields)
        model = field.annotation
    return list(model.model_fields)


def _explain(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(x) for x in loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(Config, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{source}: unknown config field '{where}'{hint}"
    return f"{source}: {where or 'config'}: {err['msg']}"


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise PotstillError(f"cannot set '{key}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load potstill.yaml (or defaults), apply dotted overrides, validate with clear errors."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise PotstillError(f"{path}: config file not found (write one with `potstill init`)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise PotstillError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise PotstillError(f"{path}: expected a mapping at the top level")
        # Relative paths in a config file are relative to the file, not to the shell's cwd.
        data = _resolve_paths(data, path.parent)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise PotstillError(_explain(e, source)) from None


_PATH_FIELDS = [("run_dir",), ("data", "inputs"), ("teacher", "replay_path"), ("teacher", "few_shot", "path")]


def _resolve_paths(data: dict, base: Path) -> dict:
    for loc in _PATH_FIELDS:
        node = data
        for p in loc[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(loc[-1]), str):
            p = Path(node[loc[-1]])
            if not p.is_absolute():
                node[loc[-1]] = str(base / p)
    return data


def dump_config(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def flat_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, annotation, description) for every leaf field: the CLI's flags."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(flat_fields(ann, key + "."))
        else:
            out.append((key, ann, field.description or ""))
    return out


def starter_yaml() -> str:
    """A commented potstill.yaml with every field at its default, for `potstill init`."""
    lines = ["# potstill.yaml: one distillation run. Every field can be overridden as --section.field on the CLI."]

    def walk(model: type[BaseModel], obj: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in model.model_fields.items():
            value = getattr(obj, name)
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                walk(type(value), value, indent + 1)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()
            lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    cfg = Config(task=TaskConfig(labels=["positive", "negative"]))
    walk(Config, cfg, 0)
    return "\n".join(lines) + "\n"
