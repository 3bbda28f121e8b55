"""Rewrite an f32 GGUF file as one of llama.cpp's quantized mixes: q4_K_M, q5_K_M, q6_K or q4_0.

A mix is a type per tensor, as ``llama-quantize`` chooses it for these names (its tensor-type
rules for non-MoE models): the block type of the mix for the layers' 2-D weights; ``attn_v`` and
``ffn_down`` in Q6_K on the layers that matter most to quality in the K_M mixes (the first and last
eighth of the layers and every third in between); the output head (or the token embedding where
the head is tied to it) in Q6_K, Q8_0 where its rows are not a multiple of 256; norms, biases and
other 1-D tensors left in f32. A k-quant needs rows of a multiple of 256 weights: a narrower
tensor falls back as llama-quantize does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; f16 if even
32 does not divide its rows). SmolLM2-135M's hidden size, 576, is such a case: only its
``ffn_down`` (1,536 wide) takes k-quant blocks, so its q4_K_M is mostly Q5_0.

Q4_K, Q5_K and Q6_K blocks come from ``potstill.export.kquants`` (with the run's importance matrix
where given); Q4_0, Q5_0, Q5_1 and Q8_0 from gguf-py's own quantizers, which write the same bytes
as ggml's reference ones and as llama-quantize does without an importance matrix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from potstill.errors import PotstillError
from potstill.export import kquants

# mix -> (the block type of most 2-D weights, llama.cpp's file type)
MIXES: dict[str, tuple[str, str]] = {
    "q4_k_m": ("Q4_K", "MOSTLY_Q4_K_M"),
    "q5_k_m": ("Q5_K", "MOSTLY_Q5_K_M"),
    "q6_k": ("Q6_K", "MOSTLY_Q6_K"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def more_bits(layer: int, layers: int) -> bool:
    """The layers whose attn_v and ffn_down a K_M mix keeps at 6 bits."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], mix: str, layers: int, tied: bool) -> str:
    """The GGML type ``name`` (numpy ``shape``, rows x cols) gets in ``mix``."""
    base = MIXES[mix][0]
    if len(shape) != 2 or not name.endswith(".weight") or "norm" in name:
        return "F32"
    cols = shape[-1]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K" if cols % kquants.QK == 0 else "Q8_0"
    kind = base
    layer = _LAYER.match(name)
    if mix in ("q4_k_m", "q5_k_m") and layer and (".attn_v." in name or ".ffn_down." in name):
        if more_bits(int(layer.group(1)), layers):
            kind = "Q6_K"
    elif mix == "q4_k_m" and ".attn_qkv." in name:
        kind = "Q5_K"
    elif mix == "q5_k_m" and ".attn_qkv." in name:
        kind = "Q6_K"
    if kind in FALLBACK and cols % kquants.QK:
        kind = FALLBACK[kind]
    if cols % 32:
        kind = "F16"
    return kind


def _blocks(data: np.ndarray, kind: str, importance: np.ndarray | None) -> np.ndarray:
    """A float (rows, cols) tensor as ``kind``'s bytes, a chunk of rows at a time."""
    from gguf import GGMLQuantizationType, quants

    if kind in kquants.BLOCKS:
        return kquants.quantize(data, kind, importance)
    qtype = GGMLQuantizationType[kind]
    parts = [quants.quantize(np.asarray(data[i:i + 4096], dtype=np.float32), qtype) for i in range(0, len(data), 4096)]
    return np.concatenate(parts)


def requantize(src: Path, dst: Path, mix: str, advance: Callable[[int], Any] | None = None,
               importance: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """Write the f32 GGUF ``src`` as ``mix`` to ``dst`` (its metadata copied, the file type set); the
    count of tensors per GGML type back. ``advance(n)`` is told of each tensor written.
    ``importance``: GGUF tensor name -> per-column importance (``export.imatrix``), for the k-quant blocks."""
    import gguf

    if mix not in MIXES:
        raise PotstillError(f"unknown quantized mix {mix!r}; available: {', '.join(MIXES)}")
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    names = [t.name for t in reader.tensors]
    tied = "output.weight" not in names
    layers = len({m.group(1) for n in names if (m := _LAYER.match(n))})
    writer = gguf.GGUFWriter(dst, arch)
    skip = {"general.architecture", "general.file_type", "general.quantization_version"}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType[MIXES[mix][1]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if importance:  # as llama-quantize records an importance matrix
        writer.add_string("quantize.imatrix.dataset", "potstill: the run's training inputs")
        writer.add_uint32("quantize.imatrix.entries_count", len(importance))
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise PotstillError(f"{src.name}: tensor {t.name} is {t.tensor_type.name}; quantizing needs f32 or f16")
        data = np.asarray(t.data)
        kind = tensor_type(t.name, data.shape, mix, layers, tied)
        if kind == "F32":
            writer.add_tensor(t.name, data.astype(np.float32))
        elif kind == "F16":
            writer.add_tensor(t.name, data.astype(np.float16))
        else:
            imp = (importance or {}).get(t.name)
            writer.add_tensor(t.name, _blocks(data, kind, imp), raw_dtype=gguf.GGMLQuantizationType[kind])
        counts[kind] = counts.get(kind, 0) + 1
        if advance:
            advance(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts
