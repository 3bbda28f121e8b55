"""Format ``gguf``: the student as GGUF files for llama.cpp and Ollama, plus a Modelfile for each.

Written with gguf-py's ``GGUFWriter`` and following llama.cpp's ``convert_hf_to_gguf.py`` for the
``llama`` architecture (SmolLM2 is one), so the files read like the converter's own:

- tensor names from ``gguf.TensorNameMap`` (``model.layers.3.self_attn.q_proj.weight`` ->
  ``blk.3.attn_q.weight``); a tied LM head writes no ``output.weight`` (llama.cpp reuses
  ``token_embd.weight``, and transformers reads its absence as ``tie_word_embeddings``);
- Q and K rows permuted from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved
  one (``permute`` below; transformers' GGUF loader undoes it);
- 1-D tensors and norms stay F32 in every file; 2-D weights are F16, or Q8_0 (blocks of 32
  weights sharing one f16 scale: 34 bytes per 32 weights = 8.5 bits), falling back to F16 for a
  row length that is not a multiple of 32, as llama.cpp does;
- the tokenizer as a byte-level BPE (``tokenizer.ggml.model = gpt2``): tokens in id order,
  token types (control for special added tokens), merges, special ids, add-BOS/EOS flags and the
  chat template; ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer split that matches the
  tokenizer's own (``gpt-2`` for a plain byte-level split, ``smollm`` when digits are split too).

Only llama-architecture students without rope scaling or biases are supported; anything else is
one clear error rather than a file llama.cpp would misread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.export import register
from potstill.progress import bar, say
from potstill.records import atomic_dir, write_json

QTYPES = ("f16", "q8_0")


def check_supported(config: Any) -> None:
    """Raise a one-line error for a model this writer would convert wrongly."""
    arch = getattr(config, "model_type", None)
    if arch != "llama":
        raise PotstillError(f"GGUF export supports llama-architecture students (SmolLM2, Llama); this student is {arch!r}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise PotstillError(f"GGUF export does not support rope scaling ({rope.get('rope_type')!r}) yet")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise PotstillError("GGUF export does not support llama students with attention or MLP biases")


def rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """HF -> llama.cpp row order of a Q or K projection (``convert_hf_to_gguf.LlamaModel.permute``).

    Hugging Face rotates the two halves of each head (dims i and i + d/2 form a pair); llama.cpp
    rotates adjacent pairs (2i, 2i + 1). Per head, rows [a0..a(d/2-1), b0..] become [a0, b0, a1, b1..].
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, in the model's order."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        data = tensor.detach().to("cpu").float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute(data, config.num_attention_heads, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, config.num_attention_heads, config.num_key_value_heads)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise PotstillError(f"GGUF export: no llama.cpp name for tensor {name!r}")
        yield new, data


def _pre_tokenizer_name(spec: dict[str, Any] | None) -> str:
    """llama.cpp's name for the pre-tokenizer split this tokenizer.json describes."""
    def byte_level(p: dict[str, Any]) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if spec and byte_level(spec):
        return "gpt-2"
    if spec and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
                and byte_level(parts[1])):
            return "smollm"
    raise PotstillError("GGUF export: the tokenizer's pre-tokenizer is not one llama.cpp names "
                        f"({json.dumps(spec)[:120]}); supported: plain byte-level (gpt-2), digits + byte-level (smollm)")


def gguf_vocab(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The tokenizer as llama.cpp's ``gpt2`` vocabulary (``convert_hf_to_gguf.get_vocab_base``)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PotstillError("GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise PotstillError("GGUF export supports byte-level BPE tokenizers (tokenizer.ggml.model gpt2) only")
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise PotstillError(f"GGUF export: the tokenizer has {len(vocab)} tokens but the model only {vocab_size} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (padding to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    # Whether the tokenizer adds BOS/EOS on its own, measured rather than read from config keys
    # that differ between transformers versions.
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) - len(plain)
    add_bos = extra > 0 and tokenizer.bos_token_id is not None and with_special[0] == tokenizer.bos_token_id
    add_eos = extra > 0 and tokenizer.eos_token_id is not None and with_special[-1] == tokenizer.eos_token_id
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre, "add_bos": add_bos, "add_eos": add_eos,
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
            "pad": tokenizer.pad_token_id, "chat_template": getattr(tokenizer, "chat_template", None)}


def write_gguf(model: Any, tokenizer: Any, path: Path, qtype: str, meta: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``model`` + ``tokenizer`` to the GGUF file ``path`` with 2-D weights as ``qtype``.

    ``meta``: general.* strings (name, license, description, base_model). Returns a summary (tensor
    types counted, bytes). The caller makes the write atomic (``atomic_dir``)."""
    import gguf
    from gguf.quants import QuantError, quantize

    if qtype not in QTYPES:
        raise PotstillError(f"unknown GGUF type {qtype!r}; available: {', '.join(QTYPES)}")
    config = model.config
    check_supported(config)
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    wanted, file_type = {
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }[qtype]
    meta = meta or {}
    w = gguf.GGUFWriter(path, "llama")
    w.add_type("model")
    w.add_name(meta.get("name", "potstill student"))
    if meta.get("license"):
        w.add_license(meta["license"])
    if meta.get("description"):
        w.add_description(meta["description"])
    if meta.get("base_model"):
        w.add_base_model_count(1)
        w.add_base_model_name(0, meta["base_model"])
    # hparams, as LlamaModel.set_gguf_parameters writes them
    w.add_vocab_size(config.vocab_size)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(rope_theta(config))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        w.add_key_length(head_dim(config))
        w.add_value_length(head_dim(config))
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # tokenizer
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    for key, adder in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                       ("pad", w.add_pad_token_id)):
        if vocab[key] is not None:
            adder(int(vocab[key]))
    w.add_add_bos_token(bool(vocab["add_bos"]))
    w.add_add_eos_token(bool(vocab["add_eos"]))
    w.add_add_space_prefix(False)
    if vocab["chat_template"]:
        w.add_chat_template(vocab["chat_template"])

    counts: dict[str, int] = {}
    n_tensors = len([k for k in model.state_dict() if not k.endswith("inv_freq")])
    with bar(f"gguf {qtype}", n_tensors) as advance:
        for name, data in gguf_tensors(model):
            kind = wanted
            if data.ndim <= 1 or name.endswith("_norm.weight"):
                kind = gguf.GGMLQuantizationType.F32
            try:
                q = quantize(data, kind)
            except QuantError:  # a row length that is not a multiple of the block size (32)
                kind = gguf.GGMLQuantizationType.F16
                q = quantize(data, kind)
            w.add_tensor(name, q, raw_dtype=kind)
            counts[kind.name] = counts.get(kind.name, 0) + 1
            advance(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"file": path.name, "type": qtype, "bytes": path.stat().st_size, "tensor_types": counts,
            "pre_tokenizer": vocab["pre"]}


def output_tokens(task: Any, tokenizer: Any) -> int:
    """num_predict for the Modelfile: the longest label (+ its end-of-turn token), or the task's limit."""
    if task.labels:
        end = tokenizer.eos_token or ""
        return max(len(tokenizer(label + end, add_special_tokens=False)["input_ids"]) for label in task.labels)
    return int(task.cfg.max_output_tokens)


def _meta(cfg: Config, run: Path) -> dict[str, str]:
    from potstill.models.loading import BUNDLED

    base = cfg.student.model
    licence = BUNDLED[base.split(":", 1)[1]][2] if base.startswith("bundled:") and base.split(":", 1)[1] in BUNDLED else ""
    return {
        "name": f"potstill student ({Path(run).resolve().name}, {cfg.task.type})",
        "license": licence,
        "base_model": base,
        "description": f"Distilled by potstill from the run directory {Path(run).resolve().name!r}: task {cfg.task.type}, "
                       f"teacher {cfg.teacher.model}, base {base}.",
    }


@register("gguf")
def export_gguf(cfg: Config, run: Path, out_dir: Path) -> list[Path]:
    from potstill.export.merged import load_student
    from potstill.export.modelfile import render_modelfile
    from potstill.tasks import get_task

    task = get_task(cfg.task)
    lm = load_student(cfg, run)
    check_supported(lm.model.config)
    meta = _meta(cfg, run)
    summaries = []
    with atomic_dir(out_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes 0700; an export is an ordinary directory
        for qtype in cfg.export.gguf_types:
            t0 = time.perf_counter()
            s = write_gguf(lm.model, lm.tokenizer, tmp / f"student-{qtype}.gguf", qtype, meta)
            s["seconds"] = round(time.perf_counter() - t0, 2)
            (tmp / f"Modelfile.{qtype}").write_text(render_modelfile(
                f"./student-{qtype}.gguf", lm.tokenizer, cfg.task.instruction, output_tokens(task, lm.tokenizer)))
            summaries.append(s)
        write_json(tmp / "export.json", {"source": str(run / "student"), "files": summaries})
    say("export: " + ", ".join(f"{s['file']} ({s['bytes'] / 1e6:.0f} MB, {s['seconds']:.1f} s)" for s in summaries)
        + f"; Modelfile.<type> beside each (ollama create NAME -f {out_dir}/Modelfile.{cfg.export.gguf_types[-1]})")
    return sorted(out_dir.iterdir())
