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

**Smoothing** (SmoothQuant's migration, Xiao et al. 2022), when the student carries an int8
calibration (``potstill.engines.calibration``, written by ``potstill train``): a few input channels
of a layer carry activations far larger than the rest, and a per-token scale sized for them rounds
the others coarsely. Each input channel ``j`` is divided by ``s_j = a_j**alpha / w_j**(1 - alpha)``
(``a_j``: the channel's largest activation over calibration inputs, ``w_j``: the largest weight
reading it) and the weight column multiplied by it, which leaves the float product unchanged and
moves part of the range into the per-row weight scales. On the trained quickstart student (12
layers, 250 test articles; ``benchmarks/int8_calibration.json``) ``alpha = 0.65`` cut the int8
label noise (twice the largest change of a label probability against fp32) from 0.075 / 0.353
(median / max) to 0.031 / 0.119, and the labels that differ from fp32's from 2.4% to 1.2%. The
division runs fused into the activations' quantization under torch.compile.

**Outlier channels in float** (LLM.int8()'s decomposition, Dettmers et al. 2022), for a calibrated
student: the MLP's output layers (``OUTLIER_LAYERS``) take their ``OUTLIERS`` = 16 input channels of
largest calibrated range out of the int8 product (zeroed in the quantized input and in the weight,
so neither the tokens' scales nor the rows' are sized for them) and multiply them in float, a
``(tokens, 16) x (16, N)`` product added to the int8 one. ``benchmarks/int8_outliers.py`` has the
probe that chose them (label noise per layer type and per decoder layer, and the variants tried:
``down_proj``'s noise is most of it, and 16 channels took the most out of 4, 8, 16 and 32).
What the float product costs in batches of 16: ``benchmarks/engine_ab_outliers.json``.
An uncalibrated layer keeps the slots on zero weights, so it traces the calibrated one's graph.

**oneDNN's int8 product on a CPU with AMX**, for inputs of ``ONEDNN_MIN_ROWS`` tokens or more (a
batch, a prefill): ``torch._int_mm`` multiplies through oneDNN's general int8 GEMM, which does not
use AMX's tiles and repacks nothing ahead; ``torch.ops.onednn.qlinear_pointwise`` multiplies by a
weight packed once (``qlinear_prepack``) with the AMX kernel. Fed uint8 activations (zero point
128) with scale 1 and the weight's row scales, it returns the same int32 sums times the row scales;
the per-token scales are applied after it, so the result is the ``_int_mm`` path's up to float
rounding. Measured on the 2-core Xeon with AMX (an MLP of 960 x 2560, SmolLM2-360M's, compiled,
turns interleaved, median of 12): 7.6 vs 13.5 ms at 640 rows, 4.3 vs 5.4 at 256, equal at 64-128 and
slower below (0.86 vs 0.72 ms at 1 row), so short inputs keep ``_int_mm``. Capped to AVX-512 VNNI
(``ONEDNN_MAX_CPU_ISA``) the two were equal at 640 rows, so a CPU without AMX keeps ``_int_mm``.
On the trained quickstart student in batches of 16 the oneDNN path was 1.20x faster, switched on
and off in one process (``benchmarks/engine_ab.json``).
"""

from __future__ import annotations

from typing import Any

import torch

EPS = torch.finfo(torch.float32).eps
QMAX = 127.5  # (127 - (-128)) / 2: the symmetric int8 range's half-width, as torchao's choose_qparams
ALPHA = 0.65  # smoothing's migration strength: the best of 0.5, 0.65 and 0.8 on the quickstart student
OUTLIERS = 16  # calibrated layers named in OUTLIER_LAYERS multiply their largest input channels in float
OUTLIER_LAYERS = ("down_proj",)  # the MLP's output layer: its inputs carry the largest channels


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


ONEDNN_MIN_ROWS = 128  # the crossover measured above: oneDNN's AMX product for this many tokens or more


def onednn_int8() -> bool:
    """Whether int8 layers on this CPU multiply large inputs through oneDNN's packed AMX kernel."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)() and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.onednn, "qlinear_prepack"))


_LOWERING_PATCHED = False


def _allow_unfrozen_onednn() -> None:
    """Let inductor compile ``onednn.qlinear_pointwise`` on a packed weight that is a graph input.
    Its lowering (for PT2E's frozen graphs) asserts the weight is a constant; for any other, this
    lowers the call as an opaque call of the op itself, as eager runs it. Frozen graphs keep the
    original lowering. Idempotent."""
    global _LOWERING_PATCHED
    if _LOWERING_PATCHED:
        return
    from torch._inductor import lowering
    from torch._inductor.virtualized import V

    op = torch.ops.onednn.qlinear_pointwise.default
    original = lowering.lowerings.get(op)
    opaque = lowering.fallback_handler(op, add_to_fallback_set=False)

    def lower(x: Any, x_scale: Any, x_zp: Any, packed: Any, *rest: Any, **kw: Any) -> Any:
        if original is not None and packed.get_name() in V.graph.constants:
            return original(x, x_scale, x_zp, packed, *rest, **kw)
        return opaque(x, x_scale, x_zp, packed, *rest, **kw)

    lowering.lowerings[op] = lower
    _LOWERING_PATCHED = True


def smoothing(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """``(K,)`` per-input-channel divisors of the activations (and multipliers of ``weight``'s
    columns): ``a**alpha / w**(1 - alpha)``, ``a`` the calibration's largest activation of each
    channel, ``w`` the largest weight of each column of the ``(N, K)`` weight."""
    if act_absmax.shape != (weight.shape[1],):
        raise ValueError(f"smoothing of {tuple(act_absmax.shape)} for a layer of {weight.shape[1]} inputs")
    a = act_absmax.float().clamp(min=1e-5)
    w = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)


class Int8Linear(torch.nn.Module):
    """``nn.Linear`` with int8 weights and dynamically quantized int8 activations (see the module).
    ``smooth``: ``(K,)`` divisors of the activations, multiplied into the weight (:func:`smoothing`).
    ``outliers``: input channels multiplied in float instead (LLM.int8()'s decomposition): left out of
    the int8 product, so neither a token's scale nor a row's weight scale is sized for them."""

    def __init__(self, linear: torch.nn.Linear, smooth: torch.Tensor | None = None,
                 outliers: torch.Tensor | None = None, slots: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if smooth is not None:
            if smooth.shape != (self.in_features,):
                raise ValueError(f"smoothing of {tuple(smooth.shape)} for a layer of {self.in_features} inputs")
            weight = (weight.float() * smooth.to(weight.device)).to(weight.dtype)
        # Ones when not smoothed: every model then traces the same graph, so the compiled code of the
        # untrained student (pilot) serves the calibrated one (evaluate) from torch's cache.
        self.smoothed = smooth is not None
        inv = (1.0 / smooth) if smooth is not None else torch.ones(self.in_features)
        # For the same reason a layer with ``slots`` and no outliers runs the float product too, on
        # zero weights (adding 0.0 changes nothing).
        self.outliers = 0 if outliers is None else len(outliers)
        self.slots = max(slots, self.outliers)
        if self.slots:
            if outliers is not None:
                idx = outliers.to(device=weight.device, dtype=torch.long)
                # (k, N) float weight of the outlier channels, unsmoothed (they multiply the raw inputs).
                w_out = linear.weight.detach()[:, idx].t().contiguous()
                inv = inv.clone()
                inv[idx.cpu()] = 0.0  # zero in the quantized input (fused into its scaling) ...
                weight = weight.clone()
                weight[:, idx] = 0  # ... and out of the rows' weight scales
            else:
                idx = torch.arange(self.slots, device=weight.device)
                w_out = torch.zeros(self.slots, self.out_features, dtype=weight.dtype, device=weight.device)
            self.register_buffer("outlier_index", idx, persistent=False)
            self.register_buffer("outlier_weight_t", w_out, persistent=False)
        self.register_buffer("inv_smooth", inv.to(weight.device), persistent=False)
        q, scale = quantize_rows(weight)
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
        # oneDNN's packed weight for inputs of ONEDNN_MIN_ROWS tokens or more (see the module); the
        # int8 weight is then held twice (one byte per parameter each), weight_t serving short inputs.
        self.onednn = linear.weight.device.type == "cpu" and onednn_int8()
        if self.onednn:
            _allow_unfrozen_onednn()
            self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(q, None), persistent=False)
            self.register_buffer("packed_zero", torch.zeros(self.out_features, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        raw = x.reshape(-1, self.in_features)
        x = x * self.inv_smooth.to(x.dtype)  # exact when not smoothed (times 1.0)
        rows = x.reshape(-1, self.in_features)
        if self.onednn and rows.shape[0] >= ONEDNN_MIN_ROWS:
            q, scale = quantize_rows(rows, unsigned=True)
            acc = torch.ops.onednn.qlinear_pointwise(
                q, 1.0, 128, self.packed, self.weight_scale, self.packed_zero, None, 1.0, 0,
                torch.float32, "none", [], "")  # the int32 sums times the weight's row scales
            y = (acc * scale).to(x.dtype)
        else:
            q, scale = quantize_rows(rows, self.unsigned)
            acc = torch._int_mm(q, self.weight_t)
            if self.shift is not None:
                acc = acc - self.shift
            y = (acc.float() * scale).to(x.dtype) * self.weight_scale.to(x.dtype)
        if self.slots:
            y = y + raw.index_select(1, self.outlier_index) @ self.outlier_weight_t.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"smoothed={self.smoothed}, outliers={self.outliers}, onednn={self.onednn}")


def quantize_linears(module: torch.nn.Module, act_absmax: dict[str, torch.Tensor] | None = None,
                     alpha: float = ALPHA, prefix: str = "") -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Int8Linear`; the number replaced.
    ``act_absmax``: per-input-channel activation maxima keyed by the layer's name under ``module``
    (``activation_absmax``); a layer found there is smoothed with ``alpha``, and one named in
    ``OUTLIER_LAYERS`` multiplies its ``OUTLIERS`` channels of largest maxima in float."""
    n = 0
    for name, child in list(module.named_children()):
        full = f"{prefix}{name}"
        if isinstance(child, torch.nn.Linear):
            a = (act_absmax or {}).get(full)
            smooth = None if a is None else smoothing(a, child.weight, alpha)
            slots = min(OUTLIERS, child.in_features) if name in OUTLIER_LAYERS else 0
            out = a.float().topk(slots).indices.sort().values if a is not None and slots else None
            setattr(module, name, Int8Linear(child, smooth, out, slots))
            n += 1
        else:
            n += quantize_linears(child, act_absmax, alpha, f"{full}.")
    return n


class activation_absmax:
    """Context manager recording, for every ``nn.Linear`` inside ``module``, the largest absolute
    value each input channel takes in the forwards run inside it: ``.absmax``, keyed by name."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.absmax: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    def _hook(self, name: str) -> Any:
        def record(_mod: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
            self.absmax[name] = torch.maximum(self.absmax[name], m) if name in self.absmax else m
        return record

    def __enter__(self) -> "activation_absmax":
        self._hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.module.named_modules()
                       if isinstance(m, torch.nn.Linear)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def int8_linears(module: Any) -> list[Int8Linear]:
    return [m for m in module.modules() if isinstance(m, Int8Linear)]
