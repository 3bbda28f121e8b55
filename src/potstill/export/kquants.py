"""GGUF's k-quants in numpy: Q4_K, Q5_K and Q6_K blocks, and the per-tensor mixes Ollama users pull.

llama.cpp's Python converter writes f32, f16, bf16 and q8_0 only; ``q4_K_M`` (Ollama's default
tag), ``q5_K_M`` and ``q6_K`` come from the C++ ``llama-quantize``, which a pip install does not
give. potstill writes them itself from the converter's f32 file, so ``potstill export gguf`` needs
no C++ build. The layouts are ggml's (gguf-py's dequantizers read them back, which the tests use):

- Q4_K: 256 weights in 8 sub-blocks of 32, ``w = d * sc[j] * q - dmin * mn[j]`` with ``q`` in
  0..15, 6-bit ``sc`` and ``mn``, f16 ``d`` and ``dmin``: 144 bytes, 4.5 bits a weight.
- Q5_K: the same with ``q`` in 0..31 (the fifth bits in 32 more bytes): 176 bytes, 5.5 bits.
- Q6_K: 256 weights in 16 sub-blocks of 16, ``w = d * sc[j] * q`` with ``q`` in -32..31 and int8
  ``sc``: 210 bytes, 6.5625 bits.

Each sub-block's scale (and offset) is fitted by trying scales around the plain min/max one and
solving the weighted least squares for the q's each gives, the weights favouring large
magnitudes (``rms + |w|`` for Q4_K and Q5_K, ``w**2`` for Q6_K): the error is at or below min/max
rounding's on every sub-block (``tests/export/test_kquants.py``). The 6-bit and int8 sub-block
scales are then rounded against the block's own f16 scale, and the q's recomputed with them.
Weighting Q6_K by ``rms + |w|`` gave a lower weight RMSE than ``w**2`` and than llama-quantize, yet
label probabilities further from the fp32 student's (mean total variation 0.036 against 0.027 and
llama-quantize's 0.028 on the quickstart student's 250 test articles, scored by transformers on the
dequantized weights): the largest weights matter more than their share of the squared error says.

With an importance matrix (``quantize(..., importance=)``: per input channel, the mean square of
the activations it multiplies, as measured on the run's own inputs by ``export.imatrix``) the
weights of the least squares are those instead: a layer's output error is about
``sum_i (dw_i)^2 E[x_i^2]``, so rounding goes where the inputs are small. The 32-weight formats a
mix falls back to (Q4_0, Q5_0, Q5_1, Q8_0) keep ggml's reference rounding (gguf-py's quantizers):
fitting them the same way lowered their weight error 3-10% and moved the quickstart student's
labels further from fp32's (mean total variation 0.19-0.25 against 0.15 for q4_K_M, scored the
same way).

The fit holds a sub-block down each column, so that its sums over a sub-block's 16 or 32 values are
adds of whole rows; they are made in the order numpy's ``sum(-1)`` adds a row, which keeps the bytes
of the fit as first written (row-wise, 0.37-0.41 s a kind for 1,024 x 2,816 weights against 0.12-0.15 s
now on one thread: ``benchmarks/kquants_speed.py`` checks both, byte for byte).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

QK = 256  # weights per k-quant block
VERSION = 2  # in engine llamacpp's cache key: files made by an older fit are not reused
# Candidate scales, nmax + step levels over a sub-block's range. On heavy-tailed weights (Student-t,
# 1,024 x 2,816) 21 steps gave Q4_K a relative RMSE of 0.09629 in 0.67 s, 11 steps 0.09636 in 0.37 s,
# 5 steps 0.09723 (times of the row-wise fit); Q6_K 0.02714 with 21 or 7 (per side), 0.02715 with 5.
AFFINE_STEPS = np.linspace(-1.0, 1.0, 11)
SYMMETRIC_STEPS = np.linspace(-1.0, 1.0, 7)
# Blocks per chunk in quantize: the fit's float64 temporaries (2 MiB an array) stay in cache rather
# than streaming from memory, and numpy's cost per call stays small beside its loops. Q4_K of
# 1,024 x 2,816 (11,264 blocks) on one thread: 0.14 s in chunks of 352 blocks, 0.12 s of 704-1,056,
# 0.13 s of 1,408, 0.19 s in one; on two (two idle cores) 0.13 s of 352, 0.08 s of 1,056-1,408.
CHUNK_BLOCKS = 1024
# numpy lets go of the GIL inside its loops, not between its calls: a few threads share the chunks.
MAX_THREADS = 4


def _importance(x: np.ndarray) -> np.ndarray:
    """Weights of the least squares per value: large magnitudes matter more to a layer's output."""
    return np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + np.abs(x)


def _sum(a: np.ndarray) -> np.ndarray:
    """The column sums of ``a`` (k, n), k 16 or 32, with the bits of ``a.T.sum(-1)``: added in the order
    numpy adds a row of k (pairwise_sum: eight running sums at stride 8, then a tree, then onto 0.0).
    With a sub-block down each column every add runs over n contiguous values, not a loop per short row."""
    r = a[0:8] + a[8:16]
    for i in range(16, len(a), 8):
        r += a[i:i + 8]
    r = r[0::2] + r[1::2]
    r = r[0::2] + r[1::2]
    out = r[0] + r[1]
    out += 0.0
    return out


def fit_affine(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``s >= 0`` and offset ``m >= 0`` per row of ``x`` (sub-blocks, shape (n, k)) so that
    ``x ~ s * q - m`` with integer ``q`` in 0..nmax; the smallest squared error weighted by ``w``
    (``_importance`` where None) found."""
    w = _importance(x) if w is None else w
    x, w = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)  # (k, n): sums over k are adds of rows
    lo = np.minimum(x.min(0), 0.0)  # -m must be representable with m >= 0, so the range starts at 0 at most
    span = np.maximum(x.max(0) - lo, 1e-30)
    best_s, best_m = span / nmax, -lo
    xl = x - lo  # every step's levels are this times a scale
    q = np.clip(np.rint(xl / best_s), 0, nmax)
    best_err = _sum(w * (best_s * q - best_m - x) ** 2)
    sw, sx = _sum(w), _sum(w * x)
    # the steps are float64, so the candidates are fitted in float64: cast once, not in every product
    xl, x, w = xl.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    q, wq, e = np.empty_like(x), np.empty_like(x), np.empty_like(x)  # written in place by every step
    for step in AFFINE_STEPS:
        np.multiply(xl, (nmax + step) / span, out=q)
        np.clip(np.rint(q, out=q), 0, nmax, out=q)
        sq = _sum(np.multiply(w, q, out=wq))
        sqq, sqx = _sum(np.multiply(wq, q, out=e)), _sum(np.multiply(wq, x, out=e))
        det = sw * sqq - sq * sq
        ok = det > 1e-30 * sw * sqq
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(ok, (sw * sqx - sq * sx) / det, 0.0)
            b = np.where(ok, (sqq * sx - sq * sqx) / det, 0.0)
            pinned = b > 0  # the offset would have to be positive: pin it at 0 and refit the scale alone
            s = np.where(pinned, sqx / np.maximum(sqq, 1e-30), s)
            b = np.where(pinned, 0.0, b)
        np.multiply(s, q, out=e)
        e += b
        e -= x
        np.square(e, out=e)
        err = _sum(np.multiply(w, e, out=e))
        take = ok & (s > 0) & (err < best_err)
        best_s, best_m, best_err = np.where(take, s, best_s), np.where(take, -b, best_m), np.where(take, err, best_err)
    return best_s, best_m


def fit_symmetric(x: np.ndarray, nlo: int, nhi: int, w: np.ndarray | None = None) -> np.ndarray:
    """Signed scale ``s`` per row of ``x`` so that ``x ~ s * q`` with integer ``q`` in nlo..nhi (nlo < 0),
    the squared error weighted by ``w`` (where None, ``x**2``: the largest weights kept best)."""
    w = x * x + 1e-30 if w is None else w
    peak = x[np.arange(len(x)), np.abs(x).argmax(-1)]  # the value of largest magnitude, with its sign
    x, w = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)  # (k, n), as in fit_affine
    best_s = peak / nlo  # the peak maps to nlo, the side with one more level
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(best_s != 0, 1.0 / best_s, 0.0)
    q = np.clip(np.rint(x * inv), nlo, nhi)
    best_err = _sum(w * (best_s * q - x) ** 2)
    x, w = x.astype(np.float64), w.astype(np.float64)  # the steps are float64, as in fit_affine
    q, wq, e = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    for top in (nlo, nhi):
        for step in SYMMETRIC_STEPS:
            s0 = peak / (top + step)
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(s0 != 0, 1.0 / s0, 0.0)
            np.clip(np.rint(np.multiply(x, inv, out=q), out=q), nlo, nhi, out=q)
            np.multiply(w, q, out=wq)
            sqq, sqx = _sum(np.multiply(wq, q, out=e)), _sum(np.multiply(wq, x, out=e))
            s = sqx / np.maximum(sqq, 1e-30)
            np.multiply(s, q, out=e)
            e -= x
            np.square(e, out=e)
            err = _sum(np.multiply(w, e, out=e))
            take = (sqq > 0) & (err < best_err)
            best_s, best_err = np.where(take, s, best_s), np.where(take, err, best_err)
    return best_s


def _to_levels(v: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative per-sub-block values (n, k) as a block scale (f16, n) times integers 0..top."""
    d = (v.max(-1) / top).astype(np.float16)
    d32 = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.where(d32[:, None] > 0, np.rint(v / d32[:, None]), 0)
    return d, np.clip(levels, 0, top).astype(np.uint8)


def _affine_blocks(x: np.ndarray, w: np.ndarray | None, nmax: int):
    """Shared part of Q4_K and Q5_K: x (n, 256) -> d, dmin (f16), sc, mn (n, 8 uint8), q (n, 256 uint8)."""
    n = len(x)
    sub = x.reshape(n * 8, 32)
    s, m = fit_affine(sub, nmax, None if w is None else w.reshape(n * 8, 32))
    d, sc = _to_levels(s.reshape(n, 8), 63)
    dmin, mn = _to_levels(m.reshape(n, 8), 63)
    scale = (d.astype(np.float32)[:, None] * sc).reshape(n * 8, 1)
    offset = (dmin.astype(np.float32)[:, None] * mn).reshape(n * 8, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint((sub + offset) / scale), 0)
    return d, dmin, sc, mn, np.clip(q, 0, nmax).astype(np.uint8).reshape(n, QK)


def _pack_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins in 12 bytes: the low four of each whole in bytes 0-7, the high
    four's low nibbles in bytes 8-11 and their two top bits in the top bits of bytes 0-7."""
    lo_sc, hi_sc, lo_mn, hi_mn = sc[:, :4], sc[:, 4:], mn[:, :4], mn[:, 4:]
    return np.concatenate([lo_sc | ((hi_sc >> 4) << 6), lo_mn | ((hi_mn >> 4) << 6),
                           (hi_sc & 0x0F) | ((hi_mn & 0x0F) << 4)], axis=1).astype(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Low four bits of (n, 256) values: sub-blocks 2j and 2j+1 share 32 bytes (low, high nibble)."""
    q = (q & 0x0F).reshape(len(q), 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(q), 128)


def q4_k(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Rows of float weights (n, 256) -> Q4_K blocks (n, 144) uint8; ``w``: importance, shaped as ``x``."""
    d, dmin, sc, mn, q = _affine_blocks(x, w, 15)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           _pack_scales(sc, mn), _nibbles(q)], axis=1)


def q5_k(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Rows of float weights (n, 256) -> Q5_K blocks (n, 176) uint8; byte i of the 32 high-bit bytes
    holds bit 4 of weight i of each of the 8 sub-blocks, sub-block c in bit c."""
    d, dmin, sc, mn, q = _affine_blocks(x, w, 31)
    high = (q >> 4).reshape(len(q), 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    qh = np.bitwise_or.reduce(high, axis=1)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           _pack_scales(sc, mn), qh, _nibbles(q)], axis=1)


def q6_k(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Rows of float weights (n, 256) -> Q6_K blocks (n, 210) uint8.

    Each half of 128 weights: 64 bytes of low nibbles (weights 0-63 low, 64-127 high) and 32 bytes
    of top two bits (weight 32t + i in bits 2t, 2t+1 of byte i)."""
    n = len(x)
    sub = x.reshape(n * 16, 16)
    s = fit_symmetric(sub, -32, 31, None if w is None else w.reshape(n * 16, 16)).reshape(n, 16)
    mag, _ = _to_levels(np.abs(s), 127)  # the block scale from the largest magnitude
    d32 = mag.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32[:, None] > 0, np.clip(np.rint(s / d32[:, None]), -128, 127), 0).astype(np.int8)
        scale = (d32[:, None] * sc).reshape(n * 16, 1)
        q = np.where(scale != 0, np.rint(sub / scale), 0)
    u = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)  # per half
    low = (u & 0x0F).reshape(n, 2, 2, 64)  # [half][weights 0-63 | 64-127][64]
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    top = (u >> 4).reshape(n, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    qh = np.bitwise_or.reduce(top, axis=2).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), mag.view(np.uint8).reshape(-1, 2)], axis=1)


# kind -> (writer of (blocks, weights) -> bytes, bytes per block)
BLOCKS: dict[str, tuple[Callable[..., np.ndarray], int]] = {"Q4_K": (q4_k, 144), "Q5_K": (q5_k, 176), "Q6_K": (q6_k, 210)}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's cpuset)
    except AttributeError:
        return os.cpu_count() or 1


def quantize(weights: np.ndarray, kind: str, importance: np.ndarray | None = None,
             rows_per_chunk: int | None = None, threads: int | None = None) -> np.ndarray:
    """A 2-D float tensor (rows, cols), cols a multiple of 256 -> its blocks as uint8
    (rows, cols / 256 * bytes), in chunks of rows (about ``CHUNK_BLOCKS`` blocks where None), a chunk
    at a time on each of ``threads`` threads (None: the CPUs this process may use, at most ``MAX_THREADS``).
    ``importance`` (cols,): how much each input channel's rounding costs (an importance matrix: the
    mean square of the activations it multiplies); each weight's error is weighted by its column's."""
    fn, size = BLOCKS[kind]
    rows, cols = weights.shape
    if cols % QK:
        raise ValueError(f"{kind} needs rows of a multiple of {QK} weights, not {cols}")
    if importance is not None and importance.shape != (cols,):
        raise ValueError(f"importance for {cols} columns has shape {importance.shape}")
    rows_per_chunk = rows_per_chunk or max(1, CHUNK_BLOCKS * QK // cols)
    imp = None if importance is None else importance.astype(np.float32)
    out = np.empty((rows, cols // QK * size), dtype=np.uint8)

    def chunk(i: int) -> None:
        part = np.asarray(weights[i:i + rows_per_chunk], dtype=np.float32)
        w = None if imp is None else np.broadcast_to(imp, part.shape).reshape(-1, QK)
        out[i:i + len(part)] = fn(part.reshape(-1, QK), w).reshape(len(part), -1)

    starts = range(0, rows, rows_per_chunk)
    threads = min(threads or min(_cpus(), MAX_THREADS), len(starts))
    if threads == 1:
        for i in starts:
            chunk(i)
        return out
    pool = ThreadPoolExecutor(threads, thread_name_prefix="potstill-kquants")
    try:
        list(pool.map(chunk, starts))  # list(): a chunk's exception is raised here
    finally:  # on an error or Ctrl-C, chunks not yet started are dropped
        pool.shutdown(wait=True, cancel_futures=True)
    return out
