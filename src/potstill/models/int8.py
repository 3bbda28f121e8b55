"""Linear layers in int8: int8 weights with one scale per output row, multiplying int8 activations
quantized per token as they arrive (symmetric, round to nearest), the product in int32 through
``torch._int_mm`` and rescaled in float. The arithmetic of torchao's
``Int8DynamicActivationInt8WeightConfig`` and of CTranslate2's int8, written as plain tensor
operations on plain buffers.

Why not torchao's layers themselves: their weights are tensor subclasses, and ``torch.compile``
traces every linear through the subclass's Python dispatch. On the 2-core CPU, compiling the
quickstart's 12-layer student (frozen, batch 1 and a packed batch) spent most of its 166 s there
(tracing and AOT graph capture; inductor itself about 40 s), and the compiled graph guarded on
84 subclass weights. These layers trace as a handful of ordinary ops each
(``benchmarks/engine_int8.py`` has the numbers).
"""

from __future__ import annotations

from typing import Any

import torch

EPS = torch.finfo(torch.float32).eps
QMAX = 127.5  # (127 - (-128)) / 2: the symmetric int8 range's half-width, as torchao's choose_qparams


def quantize_rows(x: torch.Tensor, unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, K)`` float -> (``(M, K)`` int8, ``(M, 1)`` float32 scales): each row symmetric in int8
    (torchao's rounding: ``round(x * (1 / scale))``). ``unsigned``: the same values plus 128, as uint8."""
    scale = (x.abs().amax(dim=-1, keepdim=True) / QMAX).float().clamp(min=EPS)
    q = torch.round(x.float() * (1.0 / scale)).clamp(-128, 127)
    return (q + 128).to(torch.uint8) if unsigned else q.to(torch.int8), scale


def unsigned_activations() -> bool:
    """Whether to feed the product uint8 activations (shifted by 128) instead of int8: on a CPU with
    AVX-512 VNNI and no AMX, whose int8 dot-product instruction multiplies unsigned by signed bytes
    (torchao decides the same way). The shift is undone by subtracting ``128 * column sums``."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_vnni_supported", lambda: False)()
                and not getattr(cpu, "_is_amx_tile_supported", lambda: False)())


class Int8Linear(torch.nn.Module):
    """``nn.Linear`` with int8 weights and dynamically quantized int8 activations (see the module)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight.detach())
        # (K, N), the transpose of a contiguous (N, K), as torchao passes it to torch._int_mm.
        self.register_buffer("weight_t", q.t(), persistent=False)
        self.register_buffer("weight_scale", scale.view(-1), persistent=False)
        self.unsigned = linear.weight.device.type == "cpu" and unsigned_activations()
        # What the +128 shift of the activations adds to each output column, computed once here
        # (torchao's layers compute it in every call unless the graph is frozen).
        shift = (q.sum(dim=1, dtype=torch.int32) * 128) if self.unsigned else None
        self.register_buffer("shift", shift, persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, scale = quantize_rows(x.reshape(-1, self.in_features), self.unsigned)
        acc = torch._int_mm(q, self.weight_t)
        if self.shift is not None:
            acc = acc - self.shift
        y = (acc.float() * scale).to(x.dtype) * self.weight_scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linears(module: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Int8Linear`; the number replaced."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Int8Linear(child))
            n += 1
        else:
            n += quantize_linears(child)
    return n


def int8_linears(module: Any) -> list[Int8Linear]:
    return [m for m in module.modules() if isinstance(m, Int8Linear)]
