"""Which weights a run trains (``train.method``): all of them or the top ``trainable_layers`` (full),
LoRA adapters on every linear layer, or LoRA over a 4-bit NF4 reload of the student (QLoRA)."""

from __future__ import annotations

from typing import Any

import torch

from potstill.config import TrainConfig
from potstill.errors import PotstillError
from potstill.models.loading import LM, keep_layers
from potstill.models.scoring import decoder


def freeze_for(model: Any, cfg: TrainConfig) -> None:
    """Full method: train everything, or only the top ``trainable_layers`` layers and the final norm
    (all layers when the model has no more than that, e.g. a student cut by ``student.num_layers``)."""
    if cfg.trainable_layers is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    for p in model.parameters():
        p.requires_grad_(False)
    body = decoder(model)
    layers = body.layers
    for layer in layers[max(0, len(layers) - cfg.trainable_layers) :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if cfg.trainable_layers and getattr(body, "norm", None) is not None:
        for p in body.norm.parameters():
            p.requires_grad_(True)


def apply_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets
    if targets != "all-linear":
        head = model.get_output_embeddings()
        heads = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if head is not None and m is head}
        # The loss reads the output head as a plain weight (the chunked KD and label heads never run the
        # module), so an adapter there never trained: on its own, the first step raised "element 0 of
        # tensors does not require grad"; beside others, it stayed zero and was saved as trained.
        # ("all-linear" leaves the head out, as PEFT has it.)
        on_head = sorted(set(targets) & heads)
        if on_head:
            raise PotstillError(f"train.lora_targets: {', '.join(on_head)} is the output head, which potstill's loss "
                                "reads as a plain weight: an adapter there would never train; leave it out")
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not head}
        missing = sorted(set(targets) - names)
        if missing:  # PEFT names only the first miss, after building the model's wrapper
            raise PotstillError(f"train.lora_targets: {', '.join(missing)} name{'s' if len(missing) == 1 else ''} no "
                                f"linear layer of this student (its linear layers: {', '.join(sorted(names))})")
    conf = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, conf)


def load_qlora_base(lm: LM) -> Any:
    """The student reloaded with 4-bit NF4 linear layers (bitsandbytes), ready for LoRA adapters."""
    if lm.device.type != "cuda":
        raise PotstillError("train.method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); "
                            "use train.method lora on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PotstillError("train.method qlora needs bitsandbytes: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    n_layers = lm.model.config.num_hidden_layers
    model = AutoModelForCausalLM.from_pretrained(lm.model.config._name_or_path, quantization_config=quant,
                                                 dtype=torch.bfloat16, device_map={"": lm.device})
    if model.config.num_hidden_layers != n_layers:
        keep_layers(model, n_layers)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
