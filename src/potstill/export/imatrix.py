"""An importance matrix for quantizing the student, measured on the run's own training inputs.

For each linear layer, per input channel, the mean square of the activations it multiplies: a
layer's output error from rounding its weights is about ``sum_i (dw_i)^2 E[x_i^2]``, so a mix fitted
with these weights (``kquants.quantize(..., importance=)``) rounds where the task's inputs are small.
llama.cpp measures the same with ``llama-imatrix`` over a text corpus; potstill already holds the
inputs the student will see, formatted as it reads them (system turn, chat template), and needs no
second tool. The output head's input is the final norm's output (label scoring computes only the
label rows of the head, not the head as a module), given to ``output.weight`` or, where the head
is tied to the embedding, to ``token_embd.weight``.

The fixed start of every prompt (the system turn) runs once outside the measurement, as in
``engines.calibration``: served with a cached prefix it is not recomputed per request, and its
first token's activations (an attention sink) are tens of times larger than any other's.

``potstill train`` measures it when it finishes (on its first ``export.imatrix_inputs`` training
inputs, beside the int8 calibration) and keeps it with the student (``imatrix.safetensors``), so
that engine ``llamacpp``'s own conversions to a mix (``quantization: q4_k_m`` in ``evaluate`` and
``serve``) and ``potstill export`` write the same file; export measures it where the student has
none (one trained before potstill kept it, or a student from elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

HEAD = "lm_head"
FLOOR = 0.01
FILE = "imatrix.safetensors"
VERSION = 1


class mean_squares:
    """Context manager: for every ``nn.Linear`` in ``model`` the running sum of its inputs' squares
    per channel (and the head's, from ``final_norm``'s output), with the rows counted."""

    def __init__(self, model: torch.nn.Module, final_norm: torch.nn.Module | None) -> None:
        self.model, self.final_norm = model, final_norm
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self._hooks: list[Any] = []

    def _add(self, name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        s = (x * x).sum(0).cpu()
        self.sums[name] = self.sums[name] + s if name in self.sums else s
        self.rows[name] = self.rows.get(name, 0) + x.shape[0]

    def __enter__(self) -> "mean_squares":
        for name, m in self.model.named_modules():
            if isinstance(m, torch.nn.Linear) and name != HEAD:
                self._hooks.append(m.register_forward_pre_hook(lambda _m, args, n=name: self._add(n, args[0])))
        if self.final_norm is not None:
            self._hooks.append(self.final_norm.register_forward_hook(lambda _m, _a, out: self._add(HEAD, out)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def means(self) -> dict[str, np.ndarray]:
        """Mean squares per channel, floored at ``FLOOR`` of the layer's mean: a channel the inputs
        barely used keeps some weight (a few hundred inputs are not every input the student meets)."""
        out = {}
        for k, v in self.sums.items():
            m = (v / max(self.rows[k], 1)).float().numpy()
            out[k] = np.maximum(m, FLOOR * float(m.mean()))
        return out


def measure(student: str | Path, task: Any, messages: list[list[dict]], batch_size: int = 16,
            num_layers: int | None = None) -> dict[str, np.ndarray]:
    """Hugging Face module name (``model.layers.0.self_attn.q_proj``, ``lm_head``) -> (in_features,)
    mean squared activations over ``messages``, the student in fp32 reading them as it is served
    (cut to ``num_layers``, ``student.num_layers``, as a LoRA folder's base must be)."""
    from potstill.engines.transformers import TransformersEngine
    from potstill.models.prompting import label_token_ids
    from potstill.models.scoring import decoder
    from potstill.students import student_format

    ref = TransformersEngine.load(str(student), device="cpu", dtype="float32", num_layers=num_layers)
    fmt = student_format(ref, task)
    ids = label_token_ids(ref.tokenizer, fmt, task.labels) if task.labels else [ref.tokenizer.eos_token_id or 0]
    ref.score_labels(fmt, messages[:1], ids, batch_size=1)  # the cached system turn, outside the measurement
    with mean_squares(ref.lm.model, getattr(decoder(ref.lm.model), "norm", None)) as rec:
        ref.score_labels(fmt, messages, ids, batch_size=batch_size)
    return rec.means()


def gguf_names(per_module: dict[str, np.ndarray], arch: str, blocks: int, tied: bool) -> dict[str, np.ndarray]:
    """The same importance keyed by GGUF tensor name (``blk.0.attn_q.weight``); modules llama.cpp's
    name map does not know are left out (their tensors are quantized without one)."""
    import gguf

    arch_id = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_id is None:
        return {}
    names = gguf.get_tensor_name_map(arch_id, blocks)
    out = {}
    for module, imp in per_module.items():
        name = names.get_name(module)
        if name is None:
            continue
        if name == "output" and tied:
            name = "token_embd"
        out[f"{name}.weight"] = imp
    return out


def for_file(per_module: dict[str, np.ndarray], gguf_path: Path) -> dict[str, np.ndarray]:
    """``gguf_names`` for the model in the GGUF file ``gguf_path`` (its architecture, block count and
    whether its head is tied to the embedding, read from the file)."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    arch = reader.fields["general.architecture"].contents()
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    tied = "output.weight" not in {t.name for t in reader.tensors}
    return gguf_names(per_module, arch, blocks, tied)


def save(student: str | Path, per_module: dict[str, np.ndarray], info: dict[str, Any]) -> Path:
    """Keep ``per_module`` with the student directory ``student``, whole or not at all."""
    from potstill import sidecar

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in per_module.items()}
    return sidecar.write(Path(student) / FILE, tensors, {"version": VERSION, **info}, "numpy")


def load(student: str | Path, inputs: int | None = None) -> dict[str, np.ndarray] | None:
    """The importance matrix kept with the student directory ``student``; None without one, or, with
    ``inputs``, where it was measured on another number of inputs. An unreadable file or one of
    another version is an error naming it."""
    from potstill import sidecar

    p = Path(student) / FILE
    if not Path(student).is_dir() or not p.exists():
        return None
    out, info = sidecar.read(p, "importance matrix", VERSION, "numpy", "delete it")
    return None if inputs is not None and info.get("inputs") != inputs else out


def layers_of(per_module: dict[str, np.ndarray]) -> int:
    """How many decoder layers ``per_module`` covers (from ``layers.N.`` in its names)."""
    import re

    found = {int(m.group(1)) for k in per_module if (m := re.search(r"layers\.(\d+)\.", k))}
    return max(found) + 1 if found else 0
