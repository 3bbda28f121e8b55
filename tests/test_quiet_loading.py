"""Loading a LoRA student says nothing about the libraries' internals: PEFT reads transformers'
renamed ``is_gradient_checkpointing`` on every adapter it wraps, whose FutureWarning reached
train's, evaluate's and serve's output three times a run."""

from __future__ import annotations

import warnings


def test_a_lora_student_loads_without_the_libraries_deprecation_warning(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from potstill.models.loading import load_lm

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=2, target_modules="all-linear")) \
        .save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(adapter)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lm = load_lm(str(adapter), device="cpu")
    assert lm.model is not None
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in seen]
