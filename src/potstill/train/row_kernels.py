"""Triton row kernels of the chunked heads in ``fused_head``: one program per row (or a persistent
grid looping over rows) streams a row of V logits in slices with an online log-sum-exp, and writes
the row's loss and its gradient with respect to the logits over the logits buffer.

Imported only where Triton is (``fused_head.HAS_TRITON``); ``fused_head`` owns the launch
settings and the torch reference each kernel is tested against.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _kd_terms(ls, lt, a, wp, wq, MODE: tl.constexpr):
    # losses.family_terms in registers; MODE 1 (a == 0) and 2 (a == 1) need no mixture.
    q = tl.exp(ls)
    p = tl.exp(lt)
    if MODE == 1:
        loss = wp * p * (lt - ls)
        h = -(wp * p + wq * q)
    elif MODE == 2:
        loss = wq * q * (ls - lt)
        h = loss
    else:
        # Clamping m only matters where p and q are both below ~1e-38, whose terms vanish.
        m = tl.maximum(a * p + (1.0 - a) * q, 1.1754944e-38)
        lm = tl.log(m)
        kq = wq * q * (ls - lm)
        loss = wp * p * (lt - lm) + kq
        h = kq - (1.0 - a) * (q / m) * (wp * p + wq * q)
    return loss, h, q

@triton.jit
def _online_lse(ptr, V, scale, BLOCK: tl.constexpr):
    # One sweep with a running max (Milakov & Gimelshein 2018, "Online normalizer calculation").
    offs = tl.arange(0, BLOCK)
    m = -1e30
    d = 0.0
    for start in range(0, V, BLOCK):
        cols = start + offs
        x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * scale
        m_new = tl.maximum(m, tl.max(x, 0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    return m + tl.log(d)

@triton.jit
def kd_rows_kernel(S, T, OUT, LOSS, LSE, n_rows, s_stride, t_stride, o_stride, V, scale, a, wp, wq, h_sum,
                    kd_coef, ce_coef, MODE: tl.constexpr, ALIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        r = tl.cast(row, tl.int64)
        s_ptr = S + r * s_stride
        t_ptr = T + r * t_stride
        o_ptr = OUT + r * o_stride
        # Sweep 1: both log-normalisers at once.
        ms = -1e30
        ds = 0.0
        mt = -1e30
        dt = 0.0
        for start in range(0, V, BLOCK):
            cols = start + offs
            msk = cols < V
            x = tl.load(s_ptr + cols, mask=msk, other=float("-inf")).to(tl.float32) * scale
            y = tl.load(t_ptr + cols, mask=msk, other=float("-inf")).to(tl.float32) * scale
            ms_new = tl.maximum(ms, tl.max(x, 0))
            mt_new = tl.maximum(mt, tl.max(y, 0))
            ds = ds * tl.exp(ms - ms_new) + tl.sum(tl.exp(x - ms_new), 0)
            dt = dt * tl.exp(mt - mt_new) + tl.sum(tl.exp(y - mt_new), 0)
            ms = ms_new
            mt = mt_new
        lse_s = ms + tl.log(ds)
        lse_t = mt + tl.log(dt)
        # Sweep 2: loss and H = sum(h); forward KL (a == 0, H = -(wp + wq)) skips it, loss in sweep 3.
        H = h_sum
        if MODE != 1:
            l_acc = tl.zeros([BLOCK], tl.float32)
            h_acc = tl.zeros([BLOCK], tl.float32)
            for start in range(0, V, BLOCK):
                cols = start + offs
                msk = cols < V
                ls = tl.load(s_ptr + cols, mask=msk, other=0.0).to(tl.float32) * scale - lse_s
                lt = tl.load(t_ptr + cols, mask=msk, other=0.0).to(tl.float32) * scale - lse_t
                loss, h, q = _kd_terms(ls, lt, a, wp, wq, MODE)
                l_acc += tl.where(msk, loss, 0.0)
                h_acc += tl.where(msk, h, 0.0)
            H = tl.sum(h_acc, 0)
            tl.store(LOSS + r, tl.sum(l_acc, 0))
        # Sweep 3: dlogits = kd_coef * (h - q H) + ce_coef * q.
        l_acc1 = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + offs
            msk = cols < V
            ls = tl.load(s_ptr + cols, mask=msk, other=0.0).to(tl.float32) * scale - lse_s
            lt = tl.load(t_ptr + cols, mask=msk, other=0.0).to(tl.float32) * scale - lse_t
            if ALIAS:
                # OUT is a half-width view of S's own row: slice j lands on bytes that slices
                # <= j held, so every warp must have loaded them before anyone stores.
                tl.debug_barrier()
            loss, h, q = _kd_terms(ls, lt, a, wp, wq, MODE)
            if MODE == 1:
                l_acc1 += tl.where(msk, loss, 0.0)
            g = kd_coef * (h - q * H) + ce_coef * q
            tl.store(o_ptr + cols, g.to(OUT.dtype.element_ty), mask=msk)
        if MODE == 1:
            tl.store(LOSS + r, tl.sum(l_acc1, 0))
        tl.store(LSE + r, lse_s)

@triton.jit
def ce_rows_kernel(Z, LAB, LOSS, n_rows, stride, V, gs, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        r = tl.cast(row, tl.int64)
        z_ptr = Z + r * stride
        lse = _online_lse(z_ptr, V, 1.0, BLOCK)
        lab = tl.load(LAB + r)
        tl.store(LOSS + r, lse - tl.load(z_ptr + lab).to(tl.float32))
        tl.debug_barrier()  # z[label] is read by every thread before the row is overwritten
        for start in range(0, V, BLOCK):
            cols = start + offs
            msk = cols < V
            x = tl.load(z_ptr + cols, mask=msk, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols == lab, 1.0, 0.0)) * gs
            tl.store(z_ptr + cols, g.to(Z.dtype.element_ty), mask=msk)

@triton.jit
def sparse_rows_kernel(Z, ZIDS, IDS, LP, LOSS, n_rows, stride, V, k, nb, scale, a, wp, wq, c,
                        MODE: tl.constexpr, HAS_REST: tl.constexpr, BLOCK: tl.constexpr, KB: tl.constexpr):
    # Z holds the logits with the k ids already set to -inf (when HAS_REST); ZIDS the original
    # logits at those ids; LP the teacher's nb = k (+1 rest) bucket log-probabilities.
    offs = tl.arange(0, BLOCK)
    kk = tl.arange(0, KB)
    kmask = kk < k
    bmask = kk < nb
    for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        r = tl.cast(row, tl.int64)
        z_ptr = Z + r * stride
        zi = tl.load(ZIDS + r * k + kk, mask=kmask, other=float("-inf")).to(tl.float32) * scale
        lse_z = _online_lse(z_ptr, V, scale, BLOCK)
        if HAS_REST:
            mi = tl.maximum(tl.max(zi, 0), lse_z)
            lse = mi + tl.log(tl.sum(tl.exp(zi - mi), 0) + tl.exp(lse_z - mi))
            lq = tl.where(kmask, zi - lse, lse_z - lse)
        else:
            lse = lse_z
            lq = zi - lse
        lq = tl.where(bmask, lq, 0.0)
        lt = tl.load(LP + r * nb + kk, mask=bmask, other=0.0)
        loss, h, q = _kd_terms(lq, lt, a, wp, wq, MODE)
        G = tl.where(bmask, h + wq * q, 0.0)  # dD / d log(q_bucket)
        g_sum = tl.sum(G, 0)
        tl.store(LOSS + r, tl.sum(tl.where(bmask, loss, 0.0), 0))
        if HAS_REST:
            # Outside the ids: dz_j = c softmax_rest_j (G_rest - sum(G) q_rest).
            coef = c * (tl.sum(tl.where(kk == k, G, 0.0), 0) - g_sum * tl.exp(lse_z - lse))
            for start in range(0, V, BLOCK):
                cols = start + offs
                msk = cols < V
                x = tl.load(z_ptr + cols, mask=msk, other=0.0).to(tl.float32) * scale
                tl.store(z_ptr + cols, (tl.exp(x - lse_z) * coef).to(Z.dtype.element_ty), mask=msk)
            tl.debug_barrier()  # the id entries below overwrite what the sweep just wrote
        ids = tl.load(IDS + r * k + kk, mask=kmask, other=0)
        tl.store(z_ptr + ids, (c * (G - g_sum * q)).to(Z.dtype.element_ty), mask=kmask)
