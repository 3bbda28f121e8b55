"""Chunked linear + loss heads: KD (full local teacher), sparse top-k KD and cross-entropy.

Each head takes hidden states and ``lm_head`` weights instead of logits. The forward pass walks
over blocks of ``chunk_size`` tokens; per block it computes the logits with one matmul, runs one
fused row kernel that turns them into per-row losses *and* ``dLoss/dlogits`` (written over the
logits buffer), then immediately folds that gradient into ``grad_hidden`` and ``grad_weight``
with two more matmuls. The backward pass therefore only scales stored gradients, and the largest
temporary is one block of logits (``chunk_size x V``, student and teacher), never ``N x V``.

Precision: matmuls take the inputs' dtype (bf16 on GPU; cuBLAS accumulates in fp32); softmax,
log and divergence maths run in fp32 (fp64 for fp64 inputs). The KD head asks the GEMMs for fp32
logits and accumulates ``grad_weight`` across blocks in fp32 by default for bf16/fp16 inputs:
bf16 logits carry 8 significant bits, so when the student is close to the teacher (late in
training) the small difference of the two distributions drowns in rounding, a 2.8% gradient
error against a float64 reference on an H200 (issue 19). ``logits_dtype`` / ``accum_dtype`` set
to the input dtype restore the faster bf16 path (benchmarks/kd_head.py measures both). The CE and
sparse heads keep input-dtype logits (their gradient is not a small difference) and take
``accum_dtype`` (default: the weight's dtype).

Two backends compute the per-block row maths: Triton kernels (default for CUDA tensors when
Triton imports; each program streams whole rows of V in slices, with an online log-sum-exp, or,
for KD on CUDA, a few programs share a row held in registers, see ``SPLIT_SLICE``) and plain torch
(CPU, and the reference the tests check the kernels against).
Only scalar losses (``reduction`` ``"mean"`` or ``"sum"``) are supported: the gradients are
computed in the forward pass and merely scaled by the incoming scalar gradient.
"""

from __future__ import annotations

import math

import torch

from . import losses as L

try:  # Triton ships with CUDA builds of torch; CPU-only installs simply use the torch path.
    import triton

    from .row_kernels import ce_rows_kernel, kd_rows_kernel, kd_rows_split_kernel, sparse_rows_kernel

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False

# Row-kernel tuning knobs, the best of benchmarks/kd_head.py --sweep on an H100 (V = 49,152).
TRITON_BLOCK = 4096  # V is streamed in slices of this many columns
TRITON_WARPS = 16
# > 0: a persistent grid of this many programs per SM, each looping over rows. On the H100 it did
# not beat one program per row (0): the KD kernel is bound by its exp/log/div work, not by DRAM.
PROGRAMS_PER_SM = 0
GRID_PROGRAMS: int | None = None  # explicit grid size (tests use it to exercise the row loop)
# KD rows on CUDA: K = ceil(V / SPLIT_SLICE) programs share a row and hold it in registers
# (row_kernels.kd_rows_split_kernel), so a row pair's logits are read once instead of three times.
# 0 turns it off (the three-sweep kd_rows_kernel). The grid is at most SPLIT_PROGRAMS_PER_SM
# programs per SM and never more than fit at once, because a row's programs wait for each other.
# 2,048 columns x 4 warps x up to 8 programs per SM was the fastest of the shapes tried on an H200
# (V = 49,152, fp32 logits): the KD head about 8% faster than with the three-sweep kernel at
# 32,768 tokens (benchmarks/KD_HEAD.md).
SPLIT_SLICE = 2048
SPLIT_WARPS = 4
SPLIT_PROGRAMS_PER_SM = 8
# Each split program asks L2 for its slice of its next row (one prefetch per 128-byte line) as soon as
# it has loaded this row's, so DRAM keeps streaming while the row's programs meet. On an H200: the
# kernel 5% faster alone, the KD head 2% at 32,768 tokens (benchmarks/KD_HEAD.md). False: no prefetch.
SPLIT_PREFETCH = True
FAST_LOG = True  # log through the MUFU lg2 instruction in the KD row kernels (off under the interpreter)
# Default chunk: the largest power of two of rows whose logits buffers fit in this many bytes
# (512 MiB: 1,024 rows of fp32 student + teacher logits at V = 49,152).
CHUNK_BYTES = 1 << 29
# The KD head's budget: 2,048 rows of fp32 student + teacher logits at V = 49,152 (on an H200 its
# GEMMs ran 7% faster than at 1,024 rows; peak 912 MiB at 32,768 tokens, Liger's own is 954).
KD_CHUNK_BYTES = 1 << 30

__all__ = ["fused_linear_kd", "fused_linear_sparse_kd", "fused_linear_cross_entropy", "default_chunk_size"]


def default_chunk_size(n_rows: int, vocab: int, bytes_per_element: int = 4, budget_bytes: int | None = None) -> int:
    """Rows per block so that ``rows * vocab * bytes_per_element <= budget`` (power of two, >= 16)."""
    budget = budget_bytes or CHUNK_BYTES
    rows = 1 << max(4, int(math.log2(max(1, budget // (vocab * bytes_per_element)))))
    return max(1, min(n_rows, rows))


_SM_COUNT: dict = {}


def _launch(n_rows, V, device):
    block = min(TRITON_BLOCK, triton.next_power_of_2(V))
    if GRID_PROGRAMS:
        programs = GRID_PROGRAMS
    elif PROGRAMS_PER_SM > 0 and device.type == "cuda":
        if device.index not in _SM_COUNT:
            _SM_COUNT[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
        programs = _SM_COUNT[device.index] * PROGRAMS_PER_SM
    else:
        programs = n_rows
    return (max(1, min(n_rows, programs)),), block


_RESIDENT: dict = {}


def _resident_programs(kernel, args, kw, device) -> int:
    """How many programs of ``kernel[...](*args, **kw)`` fit on the GPU at once (one wave)."""
    key = (kernel.fn.__name__, device.index, tuple(sorted(kw.items())), tuple(getattr(a, "dtype", None) for a in args))
    if key not in _RESIDENT:
        prop = torch.cuda.get_device_properties(device)
        try:  # the compiled kernel's registers and shared memory (Triton 3.x internals)
            ck = kernel.warmup(*args, grid=(1,), **kw)
            ck._init_handles()
            warps, regs, shared = ck.metadata.num_warps, ck.n_regs, ck.metadata.shared
        except (AttributeError, TypeError):  # unknown Triton: one program per SM always fits
            _RESIDENT[key] = (prop.multi_processor_count, None)
            return _RESIDENT[key][0]
        regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256  # allocated per warp in 256-register units
        per_sm = min(65536 // regs_per_warp // warps, prop.max_threads_per_multi_processor // (32 * warps), 32)
        if shared:
            per_sm = min(per_sm, prop.shared_memory_per_multiprocessor // (shared + 1024))
        _RESIDENT[key] = (prop.multi_processor_count * max(per_sm, 0), regs)
    return _RESIDENT[key][0]


def _kd_rows_split(s, t, out, scale, mode, params, kd_coef, ce_coef):
    """kd_rows_split_kernel on one block, or None when its grid cannot hold a row's K programs."""
    C, V = s.shape
    K = triton.cdiv(V, SPLIT_SLICE)
    loss = torch.empty((C, K), dtype=torch.float32, device=s.device)
    lse = torch.empty(C, dtype=torch.float32, device=s.device)
    part = torch.empty((C, K, 8), dtype=torch.float32, device=s.device)
    cnt = torch.zeros(C, dtype=torch.int32, device=s.device)
    a, wp, wq = params
    args = (s, t, out, loss, lse, part, cnt, C, s.stride(0), t.stride(0), out.stride(0), V, float(scale), float(a),
            float(wp), float(wq), -(wp + wq), float(kd_coef), float(ce_coef))
    kw = dict(MODE=mode, K=K, KP=triton.next_power_of_2(K), SLICE=SPLIT_SLICE, FAST=FAST_LOG,
              PREFETCH=SPLIT_PREFETCH, num_warps=SPLIT_WARPS)
    resident = _resident_programs(kd_rows_split_kernel, args, kw, s.device)
    sms = torch.cuda.get_device_properties(s.device).multi_processor_count
    programs = min(resident, sms * SPLIT_PROGRAMS_PER_SM, C * K) // K * K
    if GRID_PROGRAMS:
        programs = min(programs, max(K, GRID_PROGRAMS // K * K))
    if programs < K:
        return None
    kd_rows_split_kernel[(programs,)](*args, **kw)
    return loss.sum(1), lse


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --- per-block row maths: (triton | torch) ----------------------------------------------------


def _kd_rows(s, t, out, scale, params, kd_coef, ce_coef, backend):
    """KD rows of one block -> (per-row divergence, student lse); dlogits go to ``out``, which is
    ``s`` itself or (fp32 logits) a half-width view of ``s``'s storage."""
    a, wp, wq = params
    C, V = s.shape
    if backend == "triton":
        mode = 1 if a == 0.0 else (2 if a == 1.0 else 0)
        if SPLIT_SLICE and s.is_cuda:  # not under the interpreter, whose programs run one by one
            res = _kd_rows_split(s, t, out, scale, mode, params, kd_coef, ce_coef)
            if res is not None:
                return res
        loss = torch.empty(C, dtype=torch.float32, device=s.device)
        lse = torch.empty_like(loss)
        alias = out.data_ptr() == s.data_ptr() and out.dtype != s.dtype
        grid, block = _launch(C, V, s.device)
        kd_rows_kernel[grid](s, t, out, loss, lse, C, s.stride(0), t.stride(0), out.stride(0), V, float(scale),
                              float(a), float(wp), float(wq), -(wp + wq), float(kd_coef), float(ce_coef),
                              MODE=mode, ALIAS=alias, BLOCK=block, FAST=FAST_LOG and s.is_cuda,
                              num_warps=TRITON_WARPS)
        return loss, lse
    x = s.to(_acc_dtype(s)) * scale
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    ls = x - lse
    lt = torch.log_softmax(t.to(x.dtype) * scale, dim=-1)
    loss, h = L.family_terms(ls, lt, a, wp, wq, need_h=True)
    q = ls.exp()
    out.copy_(kd_coef * (h - q * h.sum(-1, keepdim=True)) + ce_coef * q)
    return loss, lse.squeeze(-1)


def _torch_lse(z, scale):
    return torch.logsumexp(z.to(_acc_dtype(z)) * scale, dim=-1)


def _torch_exp_scale_(z, shift, coef, scale):
    """``z <- exp(z * scale - shift[row]) * coef[row]`` in place."""
    x = z.to(_acc_dtype(z)) * scale
    z.copy_(torch.exp(x - shift[:, None].to(x.dtype)) * coef[:, None].to(x.dtype))


# --- the shared chunk loop --------------------------------------------------------------------


def _logits(h, w, dtype):
    if dtype is None or dtype == h.dtype:
        return h @ w.t()
    if h.is_cuda:
        try:  # fp32 output straight from the bf16 GEMM: a cast afterwards cannot restore the bits
            return torch.mm(h, w.t(), out_dtype=dtype)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return h.to(dtype) @ w.t().to(dtype)


def _accumulate_grad_weight(gw, dz, h):
    if gw.dtype == dz.dtype:
        gw.addmm_(dz.t(), h)
        return
    if gw.is_cuda:
        try:  # one cuBLAS call with fp32 output from bf16 operands (torch >= 2.8)
            torch.addmm(gw, dz.t(), h, out_dtype=gw.dtype, out=gw)
            return
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    gw.add_((dz.t() @ h).to(gw.dtype))


def _run_chunks(hs, ws, chunk_size, need_h, need_w, accum_dtype, chunk_fn, logits_dtype=None):
    """Loop over row blocks; ``chunk_fn(z, c0, c1)`` turns logits ``z`` into dlogits and returns
    ``(block loss sum, dlogits)``. Returns ``(loss_sum, grad_hidden, grad_weight)``."""
    N = hs.shape[0]
    grad_h = torch.empty_like(hs) if need_h else None
    gw = torch.zeros(ws.shape, dtype=accum_dtype or ws.dtype, device=ws.device) if need_w else None
    total = torch.zeros((), dtype=_acc_dtype(hs), device=hs.device)
    for c0 in range(0, N, chunk_size):
        c1 = min(N, c0 + chunk_size)
        h = hs[c0:c1]
        z = _logits(h, ws, logits_dtype)
        loss, dz = chunk_fn(z, c0, c1)
        total += loss
        if need_h:
            torch.mm(dz, ws, out=grad_h[c0:c1])
        if need_w:
            _accumulate_grad_weight(gw, dz, h)
        del z, dz
    return total, grad_h, gw


def _select_rows(labels, ignore_index, n, *tensors, valid_rows=None):
    """Drop ignored rows up front: they cost no matmul and need no masking downstream. Counting them
    waits for the device; ``valid_rows`` (the count, when the caller knows it) avoids that wait."""
    if labels is None:
        return None, n, tensors
    keep = labels.reshape(-1) != ignore_index
    n_valid = int(keep.sum()) if valid_rows is None else int(valid_rows)
    if n_valid == n:
        return None, n, tensors
    if valid_rows is None:
        idx = keep.nonzero().squeeze(1)
    else:  # a known count: the indices without a sync
        idx = torch.nonzero_static(keep, size=n_valid).squeeze(1)
    return idx, n_valid, tuple(None if x is None else x.index_select(0, idx) for x in tensors)


def _resolve_backend(backend, x):
    if backend == "auto":
        return "triton" if HAS_TRITON and x.is_cuda else "torch"
    if backend == "triton" and not HAS_TRITON:
        raise RuntimeError("backend='triton' requested but triton is not importable")
    if backend not in ("triton", "torch"):
        raise ValueError(f"unknown backend {backend!r}")
    return backend


class _ChunkedHead(torch.autograd.Function):
    """``body(need_h, need_w)`` runs the whole chunk loop and returns (loss, grad_h, grad_w)."""

    @staticmethod
    def forward(ctx, hs, ws, idx, n_rows, body):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, gh, gw = body(need_h, need_w)
        if need_h and idx is not None:
            gh = torch.zeros((n_rows, hs.shape[-1]), dtype=gh.dtype, device=gh.device).index_copy_(0, idx, gh)
        if need_w:
            gw = gw.to(ws.dtype)
        ctx.save_for_backward(gh, gw)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        # Always scaled: testing grad_out == 1 first would wait for the device at the start of the
        # backward pass, and a loss divided by a count (the trainer's) is never scaled by 1 anyway.
        gh, gw = ctx.saved_tensors
        if gh is not None:
            gh = gh * grad_out.to(gh.dtype)
        if gw is not None:
            gw = gw * grad_out.to(gw.dtype)
        return gh, gw, None, None, None


def _empty_result(hs, ws, need_h, need_w):
    loss = torch.zeros((), dtype=_acc_dtype(hs), device=hs.device)
    gh = torch.zeros((0, hs.shape[-1]), dtype=hs.dtype, device=hs.device) if need_h else None
    gw = torch.zeros_like(ws) if need_w else None
    return loss, gh, gw


def _check(reduction, hs, ws):
    if reduction not in ("mean", "sum"):
        raise ValueError("fused heads support reduction 'mean' or 'sum' only")
    if hs.shape[-1] != ws.shape[-1] or hs.dtype != ws.dtype:
        raise ValueError(f"hidden {tuple(hs.shape)}/{hs.dtype} does not match weight {tuple(ws.shape)}/{ws.dtype}")


# --- public heads -----------------------------------------------------------------------------


def fused_linear_kd(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kind: L.Divergence = "jsd",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    ignore_index: int = L.IGNORE_INDEX,
    reduction: str = "mean",
    valid_rows: int | None = None,
    chunk_size: int | None = None,
    accum_dtype: torch.dtype | str | None = "auto",
    logits_dtype: torch.dtype | str | None = "auto",
    backend: str = "auto",
) -> torch.Tensor:
    """KD loss from hidden states of a student and a same-tokenizer local teacher.

    Equals ``losses.distillation_loss(hs @ Ws.T, ht @ Wt.T, labels, ...)`` (``kd_divergence``
    when ``ce_weight == 0``) without materialising either ``(N, V)`` logits tensor.

    Args:
        student_hidden: ``(..., Hs)``; gets a gradient if it requires one.
        student_weight: ``(V, Hs)`` student ``lm_head`` weight; gets a gradient if it requires one.
        teacher_hidden: ``(..., Ht)``; teacher_weight: ``(V, Ht)``; both treated as constants.
        labels: optional ``(...)``: the ``ignore_index`` mask, and the CE targets when
            ``ce_weight > 0`` (fused CE mixing needs ``temperature == 1``).
        kind, beta, alpha, temperature: as in :mod:`potstill.train.losses`.
        valid_rows: how many ``labels`` are not ``ignore_index``, when the caller already knows
            (the trainer counts them on the host): the head then never waits for the device to
            count them. It must be exact. The other heads take it too.
        chunk_size: rows per block (default :func:`default_chunk_size` of ``CHUNK_BYTES``).
        logits_dtype, accum_dtype: ``"auto"`` (fp32 for bf16/fp16 inputs, see Precision above),
            ``None`` (the input dtype) or a dtype.
    Returns:
        scalar loss (fp32; fp64 for fp64 inputs).
    """
    logits_dtype, accum_dtype = _kd_dtypes(student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
                                           reduction, ce_weight, temperature, logits_dtype, accum_dtype)
    params = L.divergence_params(kind, beta=beta, alpha=alpha)
    be = _resolve_backend(backend, student_hidden)
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    lab = None if labels is None else labels.reshape(-1)
    n = hs.shape[0]
    idx, n_valid, (hs_v, ht_v, lab_v) = _select_rows(lab, ignore_index, n, hs.detach(), ht, lab,
                                                     valid_rows=valid_rows)
    V = student_weight.shape[0]
    lg_dtype = logits_dtype or student_weight.dtype
    cs = chunk_size or default_chunk_size(n_valid, V, 2 * torch.finfo(lg_dtype).bits // 8, KD_CHUNK_BYTES)
    gs = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
    chunk_fn = _kd_chunk_fn(ht_v, teacher_weight.detach(), student_weight.detach(), lab_v, logits_dtype, be,
                            1.0 / temperature, params, ce_weight, gs)
    body = _head_body(hs, student_weight, hs_v, n_valid, cs, accum_dtype, chunk_fn, gs, logits_dtype)
    return _ChunkedHead.apply(hs, student_weight, idx, n, body)


def _kd_dtypes(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, reduction, ce_weight,
               temperature, logits_dtype, accum_dtype):
    """Check fused_linear_kd's arguments; resolve its "auto" dtypes (fp32 for half-precision weights)."""
    _check(reduction, student_hidden, student_weight)
    if teacher_hidden.shape[-1] != teacher_weight.shape[-1] or teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError("teacher hidden/weight shapes do not match the student vocabulary")
    if teacher_hidden.dtype != teacher_weight.dtype:
        raise ValueError("teacher hidden and weight dtypes differ")
    if ce_weight and (labels is None or temperature != 1.0):
        raise ValueError("fused CE mixing needs labels and temperature == 1")
    half = student_weight.dtype in (torch.bfloat16, torch.float16)
    if logits_dtype == "auto":
        logits_dtype = torch.float32 if half else None
    if accum_dtype == "auto":
        accum_dtype = torch.float32 if half else None
    if logits_dtype not in (None, torch.float32, student_weight.dtype):
        raise ValueError("logits_dtype must be 'auto', None or torch.float32")
    return logits_dtype, accum_dtype


def _kd_chunk_fn(ht_v, wt_d, ws_d, lab_v, logits_dtype, be, scale, params, ce_weight, gs):
    """One block of fused_linear_kd: the teacher's logits, the KD (+ CE) rows, and the dlogits in ``out``."""
    V = ws_d.shape[0]

    def chunk_fn(z, c0, c1):
        t = _logits(ht_v[c0:c1], wt_d, logits_dtype)
        if z.dtype == ws_d.dtype:
            out = z
        elif be == "triton" and z.element_size() == 2 * ws_d.element_size():
            out = z.view(ws_d.dtype)[:, :V]  # write bf16 dlogits over the fp32 logits' storage
        else:
            out = torch.empty(z.shape, dtype=ws_d.dtype, device=z.device)
        if ce_weight:
            target = lab_v[c0:c1, None]
            z_lab = z.gather(1, target).squeeze(1).to(_acc_dtype(z))
        kd_rows, lse = _kd_rows(z, t, out, scale, params, (1.0 - ce_weight) * gs * scale, ce_weight * gs, be)
        del t
        total = (1.0 - ce_weight) * kd_rows.sum()
        if ce_weight:
            total = total + ce_weight * (lse.to(z_lab.dtype) - z_lab).sum()
            # The one-hot part of the CE gradient; the kernel already wrote ce_coef * q.
            out.scatter_add_(1, target, torch.full_like(z_lab, -ce_weight * gs).to(out.dtype)[:, None])
        return total, out

    return chunk_fn


def _head_body(hs, weight, hs_v, n_valid, cs, accum_dtype, chunk_fn, gs, logits_dtype=None):
    """What _ChunkedHead runs: the chunk loop's sum scaled by ``gs`` (zeros when no row is valid)."""

    def body(need_h, need_w):
        if n_valid == 0:
            return _empty_result(hs, weight, need_h, need_w)
        total, gh, gw = _run_chunks(hs_v, weight.detach(), cs, need_h, need_w, accum_dtype, chunk_fn, logits_dtype)
        return total * gs, gh, gw

    return body


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = L.IGNORE_INDEX,
    reduction: str = "mean",
    valid_rows: int | None = None,
    chunk_size: int | None = None,
    accum_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``labels`` without an ``(N, V)`` tensor.

    Shapes: hidden ``(..., H)``, weight ``(V, H)``, labels ``(...)``. Returns a scalar.
    """
    _check(reduction, hidden, weight)
    be = _resolve_backend(backend, hidden)
    hs = hidden.reshape(-1, hidden.shape[-1])
    lab = labels.reshape(-1)
    n = hs.shape[0]
    idx, n_valid, (hs_v, lab_v) = _select_rows(lab, ignore_index, n, hs.detach(), lab, valid_rows=valid_rows)
    V = weight.shape[0]
    cs = chunk_size or default_chunk_size(n_valid, V, weight.element_size())
    gs = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0

    def chunk_fn(z, c0, c1):
        target = lab_v[c0:c1]
        if be == "triton":
            loss = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
            grid, block = _launch(z.shape[0], V, z.device)
            ce_rows_kernel[grid](z, target, loss, z.shape[0], z.stride(0), V, float(gs), BLOCK=block,
                                  num_warps=TRITON_WARPS)
            return loss.sum(), z
        z_lab = z.gather(1, target[:, None]).squeeze(1).to(_acc_dtype(z))
        lse = _torch_lse(z, 1.0)
        _torch_exp_scale_(z, lse, torch.full_like(lse, gs), 1.0)
        # softmax - 1 at the target, from fp32 values rather than adding -1 to a rounded entry
        z.scatter_(1, target[:, None], (((z_lab - lse).exp() - 1.0) * gs).to(z.dtype)[:, None])
        return (lse - z_lab).sum(), z

    return _ChunkedHead.apply(hs, weight, idx, n, _head_body(hs, weight, hs_v, n_valid, cs, accum_dtype, chunk_fn, gs))


def fused_linear_sparse_kd(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kind: L.Divergence = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = L.IGNORE_INDEX,
    reduction: str = "mean",
    valid_rows: int | None = None,
    chunk_size: int | None = None,
    accum_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Chunked :func:`losses.sparse_topk_kd` from student hidden states (top-k + rest bucket).

    Shapes: student_hidden ``(..., H)``, student_weight ``(V, H)``, topk_ids / topk_logprobs
    ``(..., k)``, labels ``(...)`` (mask only). Per block this costs what cross-entropy costs: a
    log-sum-exp sweep over the logits with the k ids masked out (the student's rest mass) and one
    sweep writing the gradient; the ``k + 1``-bucket divergence itself is tiny.
    """
    _check(reduction, student_hidden, student_weight)
    params = L.divergence_params(kind, beta=beta, alpha=alpha)
    be = _resolve_backend(backend, student_hidden)
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    n = hs.shape[0]
    V = student_weight.shape[0]
    ids, topk_lp, left_out = L.fit_topk_to_vocab(topk_ids.reshape(n, -1), topk_logprobs.reshape(n, -1), V)
    k = ids.shape[1]
    lp = L.teacher_bucket_logprobs(topk_lp, V, left_out)
    # Padding entries (-inf) are no buckets: those ids stay in the student's rest (see sparse_topk_kd).
    pad = torch.isneginf(lp[:, :k]) if k < V else torch.zeros_like(ids, dtype=torch.bool)
    lp = lp.clamp(min=torch.finfo(lp.dtype).min)
    lab = None if labels is None else labels.reshape(-1)
    idx, n_valid, (hs_v, ids_v, lp_v, pad_v) = _select_rows(lab, ignore_index, n, hs.detach(), ids, lp, pad,
                                                            valid_rows=valid_rows)
    cs = chunk_size or default_chunk_size(n_valid, V, student_weight.element_size())
    gs = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
    scale = 1.0 / temperature
    has_rest = k < V
    if be == "triton":
        ids_v = ids_v.contiguous()
        lp_v = lp_v.float().contiguous()
    chunk_fn = _sparse_chunk_fn(ids_v, lp_v, pad_v, params, scale, gs, has_rest, be, V, k)
    body = _head_body(hs, student_weight, hs_v, n_valid, cs, accum_dtype, chunk_fn, gs)
    return _ChunkedHead.apply(hs, student_weight, idx, n, body)


def _sparse_chunk_fn(ids_v, lp_v, pad_v, params, scale, gs, has_rest, be, V, k):
    """One block of fused_linear_sparse_kd: the student's rest mass with the listed ids masked out, loss
    and dlogits. A padding id keeps its logit in ``z`` (it is part of the rest) and is ``-inf`` in
    ``z_ids``, which is how the row maths tell it from a listed id."""
    a, wp, wq = params

    def chunk_fn(z, c0, c1):
        tid = ids_v[c0:c1]
        pad = pad_v[c0:c1]
        z_ids = z.gather(1, tid)
        if has_rest:
            z.scatter_(1, tid, z_ids.masked_fill(~pad, float("-inf")))
            z_ids = z_ids.masked_fill(pad, float("-inf"))
        if be == "triton":
            loss = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
            grid, block = _launch(z.shape[0], V, z.device)
            mode = 1 if a == 0.0 else (2 if a == 1.0 else 0)
            sparse_rows_kernel[grid](z, z_ids, tid, lp_v[c0:c1], loss, z.shape[0], z.stride(0), V, k,
                                      lp_v.shape[1], float(scale), float(a), float(wp), float(wq),
                                      float(scale * gs), MODE=mode, HAS_REST=has_rest, BLOCK=block,
                                      KB=triton.next_power_of_2(k + 1), num_warps=TRITON_WARPS)
            return loss.sum(), z
        return _sparse_chunk_torch(z, z_ids, tid, lp_v[c0:c1], params, scale, gs, has_rest), z

    return chunk_fn


def _sparse_chunk_torch(z, z_ids, tid, lp, params, scale, gs, has_rest):
    """Torch reference of row_kernels.sparse_rows_kernel (``z`` has -inf at the ids when ``has_rest``)."""
    a, wp, wq = params
    k = tid.shape[1]
    zs_ids = z_ids.to(_acc_dtype(z)) * scale
    lse_z = _torch_lse(z, scale).to(zs_ids.dtype)
    pad = torch.isneginf(zs_ids)  # padding ids (only with a rest bucket): see _sparse_chunk_fn
    if has_rest:
        lse = torch.logaddexp(lse_z, torch.logsumexp(zs_ids, dim=-1))
        lq = torch.cat([zs_ids - lse[:, None], (lse_z - lse)[:, None]], dim=1)
    else:
        lse = lse_z
        lq = zs_ids - lse[:, None]
    lp = lp.to(lq.dtype)
    lq[:, :k] = torch.where(pad, lp[:, :k], lq[:, :k])  # an empty bucket on both sides: no loss, no gradient
    rows, h = L.family_terms(lq, lp, a, wp, wq, need_h=True)
    G = h + wq * lq.exp()  # dD / d log(q_bucket)
    g_sum = G.sum(-1)
    c = scale * gs
    if has_rest:
        _torch_exp_scale_(z, lse_z, c * (G[:, k] - g_sum * lq[:, k].exp()), scale)
    at_ids = (c * (G[:, :k] - g_sum[:, None] * lq[:, :k].exp())).to(z.dtype)
    # A padding id keeps the rest's gradient written above.
    z.scatter_(1, tid, torch.where(pad, z.gather(1, tid), at_ids))
    return rows.sum()
