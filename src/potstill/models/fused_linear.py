"""Sibling projections of one input as one matrix product: a layer's q, k and v, and its MLP's gate
and up.

A SmolLM2-135M-shaped model decoding one token at a time on an H200 spends its step in small
kernels: 210 GEMMs of ~3.5 us each out of 532 kernels a step (``benchmarks/step_profile_probe.json``).
Seven products a layer become four when q/k/v and gate/up are each one product over concatenated
weights: 90 fewer launches a step for 30 layers, the same bytes of weights read. Measured there,
8 steps per CUDA graph replay, batch 1: 1.35 ms a step against 1.64 (GPU kernels 1.08 ms against
1.35), logits equal to the unfused model's; served 64-token answers 119.7 vs 138.4 ms per input at
batch 1 and 16.9 vs 21.1 at batch 8, answers identical (``benchmarks/fused_decode.json``).
``TransformersEngine.compile`` fuses on CUDA.

The model's modules keep their names and call order: ``q_proj`` becomes a :class:`Part` whose call
computes the whole product and hands each sibling its slice when it is called next on the same
input. A part called on another input (a model that calls its projections otherwise) computes its
own slice, so the answer is the same either way. Inference only: the weights do not train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Sibling projections by parent module attribute: (module holding them, their names in call order).
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class FusedLinear(nn.Module):
    """The weights (and biases) of sibling ``nn.Linear`` layers of one input, concatenated by rows."""

    def __init__(self, parts: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]), requires_grad=False)
        self.bias = None
        if parts[0].bias is not None:
            self.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts]), requires_grad=False)
        self.sizes = [p.out_features for p in parts]
        self.rows = [slice(sum(self.sizes[:i]), sum(self.sizes[: i + 1])) for i in range(len(parts))]  # each part's
        self.in_features = parts[0].in_features
        # The product's slices for the siblings still to be called, and the input they came from.
        self._x: torch.Tensor | None = None
        self._out: tuple[torch.Tensor, ...] = ()

    def slice(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Part ``i``'s product alone."""
        rows = self.rows[i]
        return nn.functional.linear(x, self.weight[rows], None if self.bias is None else self.bias[rows])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.sizes}, bias={self.bias is not None}"


class Part(nn.Module):
    """One sibling of a :class:`FusedLinear`, in the place of its ``nn.Linear``."""

    def __init__(self, fused: FusedLinear, i: int):
        super().__init__()
        self.i = i
        self.__dict__["fused"] = fused  # not a submodule: its parent holds the weights once
        self.in_features, self.out_features = fused.in_features, fused.sizes[i]

    @property
    def weight(self) -> torch.Tensor:
        """This projection's rows of the fused weight (a view), for code that reads ``.weight``."""
        return self.fused.weight[self.fused.rows[self.i]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fused
        last = self.i == len(f.sizes) - 1
        if self.i == 0:
            f._x, f._out = x, nn.functional.linear(x, f.weight, f.bias).split(f.sizes, -1)
            return f._out[0]
        if f._x is not x or not f._out:  # not the first sibling's input: this slice alone
            return f.slice(x, self.i)
        out = f._out[self.i]
        if last:  # nothing held between calls (and no tensor left for a compiled graph to return)
            f._x, f._out = None, ()
        return out

    def extra_repr(self) -> str:
        return f"part {self.i} of {self.fused.sizes}"


def fuse_projections(model: Any) -> int:
    """Fuse each decoder layer's q/k/v and gate/up of ``model`` (a causal LM or its body) in place,
    where they are plain ``nn.Linear`` layers of one input size (not quantized, not LoRA); returns
    the number of groups fused (0: nothing to fuse)."""
    body = getattr(model, "model", model)
    layers = getattr(body, "layers", None)
    if layers is None:
        layers = getattr(getattr(body, "language_model", None), "layers", [])
    n = 0
    for layer in layers:
        for owner_name, names in GROUPS:
            owner = getattr(layer, owner_name, None)
            linears = [getattr(owner, x, None) for x in names]
            if owner is None or not all(type(m) is nn.Linear for m in linears):
                continue
            if len({m.in_features for m in linears}) > 1 or len({m.bias is None for m in linears}) > 1:
                continue
            if len({(m.weight.dtype, m.weight.device) for m in linears}) > 1 or linears[0].weight.is_meta:
                continue
            if any(hasattr(m, "_hf_hook") for m in linears):  # accelerate moves these weights itself (offload)
                continue
            fused = FusedLinear(linears)
            owner.add_module("fused_" + "_".join(x.split("_")[0] for x in names), fused)
            for i, x in enumerate(names):
                setattr(owner, x, Part(fused, i))
            n += 1
    return n
