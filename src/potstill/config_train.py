"""The ``train`` section of potstill.yaml (``TrainConfig``): its own module for its size, re-exported
by ``potstill.config_models`` and ``potstill.config`` like every other section."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from potstill.config_fields import MODEL_REF, DtypeName, Section, Unbounded

# train.lr when unset: adapters train about 10x faster than whole weights need (the quickstart's
# LoRA student: gold 24% of the teacher's at 1e-4, 100% at 1e-3; README, Train).
FULL_LR, LORA_LR = 1e-4, 1e-3


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
    gradient_checkpointing: bool = Field(
        False, description="Keep only each layer's input in the forward and recompute the layer in the backward "
        "(transformers' non-reentrant activation checkpointing): the same loss curve in much less memory (SmolLM2-135M, "
        "32 x 1,010 tokens, one H200: 4.9 instead of 30.1 GiB at 0.72x the tokens/s, benchmarks/train_memory.py).")
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
    lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules given LoRA adapters: all-linear (every linear layer but the LM head), "
        "or names as PEFT's target_modules takes them, e.g. [q_proj, v_proj].")
    epochs: float = Field(1.0, gt=0, description="Passes over the training set.")
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps to run, instead of the number epochs gives (batches keep "
        "drawing from reshuffled passes).")
    batch_size: int = Field(
        8, ge=1, description="Examples per optimizer step (all processes together), every step: a last batch "
        "short of it is topped up from the next shuffled pass, and a training set smaller than one batch repeats "
        "its examples to fill it, each floor or ceil of batch_size / examples times (3 examples, batch_size 8: "
        "3, 3 and 2 times; one step an epoch, rounded up). At least processes x grad_accum_steps.")
    grad_accum_steps: int = Field(
        1, ge=1, description="Run each step's batch_size examples as this many micro-batches, one after another, "
        "their gradients summed: the same update as one batch (each loss term is still divided by its count over "
        "the whole batch), with the activation memory of batch_size / grad_accum_steps examples.")
    max_grad_norm: Unbounded = Field(
        None, gt=0, description="Clip the gradients' global L2 norm to this before each step (TRL's default is 1.0); "
        "none: no clipping. metrics.jsonl's grad_norm is the norm before clipping.")
    lr: float | None = Field(
        None, gt=0, description="Peak learning rate (AdamW; see lr_scheduler). Unset: 1e-4 for method full, 1e-3 "
        "for lora and qlora, whose adapters need about 10x (on the quickstart's LoRA student, gold 24% of the "
        "teacher's at 1e-4, 61% at 3e-4, 100% at 1e-3).")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="After warm-up: linear decay to zero at the last step, cosine decay to zero, or "
        "constant.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, on weight matrices (biases and norm scales are not decayed).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    warmup_ratio: float | None = Field(
        None, ge=0, lt=1, description="Warm-up as a share of the run's optimizer steps (rounded up), instead of "
        "warmup_steps.")
    eval_every: int = Field(
        0, ge=0, description="Measure the loss on val.jsonl every N optimizer steps (metrics.jsonl's val_loss "
        "column, and val_label_agreement for classification; the last step's are train.json's either way). 0: "
        "only after the last step.")
    keep_best: bool = Field(
        False, description="With eval_every: save the student of the measured step with the lowest val loss, "
        "not the last step's (train.json: best_step, and its val_loss).")
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: uniform noise on the input embeddings while training (not in val passes or "
        "the saved student), scaled alpha / sqrt(L * d) with L the example's own length (TRL's setting; 5 is the "
        "paper's usual value). None: no noise.")
    early_stopping_patience: int = Field(
        0, ge=0, description="With eval_every: stop once val_loss has gone this many measurements in a row without "
        "beating the lowest so far by more than early_stopping_threshold (0: never stop early). The student saved is "
        "the last step's, or with keep_best the best step's.")
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="How much lower than the lowest so far a val_loss must be to count as better "
        "(early_stopping_patience).")
    seed: int = Field(0, description="Seed for shuffling and initialisation.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")

    @model_validator(mode="before")
    @classmethod
    def _lr_for_method(cls, data: Any) -> Any:
        # Resolved here, so every reader (the trainer, the stage fingerprint, the saved potstill.yaml)
        # sees the number: a full fine-tune hashes as it did when 1e-4 was the only default.
        if isinstance(data, dict) and data.get("lr") is None:
            data = {**data, "lr": LORA_LR if data.get("method") in ("lora", "qlora") else FULL_LR}
        return data

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _one_target(cls, v: Any) -> Any:
        # `lora_targets: q_proj` in YAML is one module; `--train.lora_targets all-linear` arrives as a list of one.
        if isinstance(v, str) and v != "all-linear":
            return [v]
        return "all-linear" if v == ["all-linear"] else v

    @model_validator(mode="after")
    def _one_warmup(self) -> "TrainConfig":
        if self.warmup_ratio is not None and self.warmup_steps:
            raise ValueError(f"train.warmup_steps {self.warmup_steps} and train.warmup_ratio {self.warmup_ratio:g} "
                             "both set the warm-up; keep one")
        return self

    @model_validator(mode="after")
    def _layers_for_full_only(self) -> "TrainConfig":
        # LoRA puts its adapters on every layer's projections; a trainable_layers beside it was ignored
        # without a word, and the run trained (and cost) what the user had asked to leave frozen.
        if self.trainable_layers is not None and self.method != "full":
            raise ValueError(f"train.trainable_layers applies to train.method full; {self.method} trains adapters on "
                             "every layer: leave trainable_layers unset, or use method full")
        return self
