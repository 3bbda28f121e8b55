"""Format ``hf``: the student as plain Hugging Face weights that need neither peft nor potstill.

A full fine-tune is saved as is; a LoRA/QLoRA adapter (RUN/student/adapter_config.json) is loaded
on its base and folded in with ``merge_and_unload`` (W + B @ A * alpha/r), so the output is one
ordinary checkpoint: safetensors, tokenizer, chat template and generation config, loadable with
``AutoModelForCausalLM.from_pretrained(dir)``. The generation config is greedy, as potstill evaluated
and serves the student (``_greedy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.export import register
from potstill.models.loading import LM, load_lm
from potstill.models.prompting import end_of_turn
from potstill.progress import bar, say, size_text
from potstill.records import atomic_dir

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def load_student(cfg: Config, run: Path) -> LM:
    """RUN/student on the CPU in float32, an adapter merged into its base (see ``load_lm``)."""
    student = run / "student"
    if not (student / "config.json").exists() and not (student / "adapter_config.json").exists():
        raise PotstillError(f"{student} has no trained student: run `potstill train` first")
    return load_lm(str(student), device="cpu", dtype=torch.float32, num_layers=cfg.student.num_layers)


def save_merged(model: Any, tokenizer: Any, out: Path, dtype: str = "f32") -> None:
    """Write ``model`` (already merged) and ``tokenizer`` into ``out`` as one atomic directory."""
    model = model.to(DTYPES[dtype])
    model.config.dtype = DTYPES[dtype]
    _stop_at_turn_end(model, tokenizer)
    _greedy(getattr(model, "generation_config", None))
    with atomic_dir(out) as tmp:  # which gives the folder and its files ordinary modes (safetensors writes 0600)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _temperature_zero(tmp / "generation_config.json")


def _stop_at_turn_end(model: Any, tokenizer: Any) -> None:
    """List the chat template's turn end (``<end_of_turn>`` for Gemma) among generation_config.json's
    EOS ids where it is not the EOS: the student learned to write it after an answer and potstill's
    own generation stops there (``stop_token_ids``); transformers and vLLM stop only at these ids."""
    config = getattr(model, "generation_config", None)
    turn = end_of_turn(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if config is None or not turn or turn == tokenizer.eos_token:
        return
    tid = tokenizer.convert_tokens_to_ids(turn)
    if not isinstance(tid, int) or tid < 0 or tid == getattr(tokenizer, "unk_token_id", None):
        return
    eos = config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids += [tokenizer.eos_token_id, tid]
    config.eos_token_id = [i for i in dict.fromkeys(ids) if isinstance(i, int) and i >= 0]


# Flags that only shape sampling; transformers refuses to save any of them, set, beside do_sample false.
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff")


def _greedy(config: Any) -> None:
    """Greedy decoding, as potstill's evaluation and server ran the student (``generate`` passes
    ``do_sample=False`` over the rest of the model's generation config, so a repetition penalty
    stays). A base model's sampling defaults (Qwen2.5-Instruct: do_sample, temperature 0.7, top_p 0.8,
    top_k 20) made a plain ``model.generate`` sample answers the report never measured."""
    if config is None:
        return
    from transformers import GenerationConfig

    default = GenerationConfig()  # this transformers' own values (None in 5.x, temperature 1.0 in 4.x)
    config.do_sample = False
    for name in SAMPLING_ONLY:
        if hasattr(config, name):
            setattr(config, name, getattr(default, name, None))


def _temperature_zero(path: Path) -> None:
    """``"temperature": 0.0`` in the saved generation_config.json: vLLM (and SGLang) read the
    temperature, not ``do_sample``, and sample at 1.0 without one. transformers will not save it
    (it calls a temperature beside do_sample false invalid), so it is added to the file; it loads
    with a one-line note that the flag is ignored, and ``generate(do_sample=True)`` then needs a
    temperature of its own."""
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.update(do_sample=False, temperature=0.0)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@register("hf")
def export_hf(cfg: Config, run: Path, out_dir: Path) -> list[Path]:
    adapter = (run / "student" / "adapter_config.json").exists()
    with bar("export hf (load, merge, save)", 2) as advance:
        lm = load_student(cfg, run)
        advance(1)
        save_merged(lm.model, lm.tokenizer, out_dir, cfg.export.dtype)
        advance(1)
    size = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    say(f"export: {out_dir} ({'LoRA adapter merged, ' if adapter else ''}{cfg.export.dtype}, "
        f"{size_text(size)} of weights)")
    return sorted(out_dir.iterdir())
