"""Triton row kernels of the chunked heads in ``fused_head``: one program per row (or a persistent
grid looping over rows) streams a row of V logits in slices with an online log-sum-exp, and writes
the row's loss and its gradient with respect to the logits over the logits buffer. The KD rows also
have a split form, ``kd_rows_split_kernel``: K programs share a row, each holding a slice of it in
registers, and meet twice per row (log-sum-exp, then the sum of h) through global atomics.

Imported only where Triton is (``fused_head.HAS_TRITON``); ``fused_head`` owns the launch
settings and the torch reference each kernel is tested against.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _log(x, FAST: tl.constexpr):
    if FAST:  # the MUFU instruction (abs. error ~2^-22), not libdevice's polynomial
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1) * 0.6931471805599453
    return tl.log(x)

@triton.jit
def _kd_terms(ls, lt, a, wp, wq, MODE: tl.constexpr, FAST: tl.constexpr):
    q = tl.exp(ls)
    loss, h = _kd_terms_qp(ls, lt, q, tl.exp(lt), a, wp, wq, MODE, FAST)
    return loss, h, q

@triton.jit
def _kd_terms_qp(ls, lt, q, p, a, wp, wq, MODE: tl.constexpr, FAST: tl.constexpr):
    # losses.family_terms in registers, given q = exp(ls) and p = exp(lt); MODE 1 (a == 0) and
    # 2 (a == 1) need no mixture.
    if MODE == 1:
        loss = wp * p * (lt - ls)
        h = -(wp * p + wq * q)
    elif MODE == 2:
        loss = wq * q * (ls - lt)
        h = loss
    else:
        # log m = max(ls, lt) + log(r), r = a e^(lt - max) + (1 - a) e^(ls - max) in [min(a, 1 - a), 1]:
        # lt - log m and ls - log m come out without cancellation (they are tiny when the teacher
        # is close to the student), and an approximate log is accurate to ~1e-7 absolute there.
        d = lt - ls
        e = tl.exp(-tl.abs(d))
        up = d >= 0
        lr = _log(tl.where(up, a + (1.0 - a) * e, a * e + (1.0 - a)), FAST)
        t_m = tl.where(up, 0.0, d) - lr  # lt - log m
        s_m = tl.where(up, -d, 0.0) - lr  # ls - log m
        kq = wq * q * s_m
        loss = wp * p * t_m + kq
        h = kq - (1.0 - a) * tl.exp(s_m) * (wp * p + wq * q)  # (1 - a) q / m <= 1
    return loss, h

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
                   kd_coef, ce_coef, MODE: tl.constexpr, ALIAS: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
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
                loss, h, q = _kd_terms(ls, lt, a, wp, wq, MODE, FAST)
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
            loss, h, q = _kd_terms(ls, lt, a, wp, wq, MODE, FAST)
            if MODE == 1:
                l_acc1 += tl.where(msk, loss, 0.0)
            g = kd_coef * (h - q * H) + ce_coef * q
            tl.store(o_ptr + cols, g.to(OUT.dtype.element_ty), mask=msk)
        if MODE == 1:
            tl.store(LOSS + r, tl.sum(l_acc1, 0))
        tl.store(LSE + r, lse_s)

@triton.jit
def _group_barrier(CNT, target):
    # Spin until `target` programs have arrived at this row's counter (like a cooperative grid
    # sync, for the K programs sharing a row). Safe only when every program is resident at once:
    # the launcher keeps the grid within one wave.
    tl.debug_barrier()
    tl.atomic_add(CNT, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(CNT, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(CNT, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()

@triton.jit
def _combine_lse(PR, j, kk, kmask):
    # log-sum-exp of the K programs' (max, sum of exp(x - max)) pairs at PR[k * 8 + j, j + 1].
    m = tl.load(PR + kk * 8 + j, mask=kmask, other=float("-inf"), cache_modifier=".cg")
    d = tl.load(PR + kk * 8 + j + 1, mask=kmask, other=0.0, cache_modifier=".cg")
    g = tl.max(m, 0)
    return g + tl.log(tl.sum(d * tl.exp(m - g), 0))

@triton.jit
def _prefetch_l2(ptrs):
    # One L2 prefetch per element of ``ptrs`` (give one address per 128-byte line); no result.
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)

@triton.jit
def _max2(a0, b0, a1, b1):
    return tl.maximum(a0, a1), tl.maximum(b0, b1)

@triton.jit
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1

@triton.jit
def kd_rows_split_kernel(S, T, OUT, LOSS, LSE, PART, CNT, n_rows, s_stride, t_stride, o_stride, V, scale, a, wp, wq,
                         h_sum, kd_coef, ce_coef, MODE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                         SLICE: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr = False):
    # K programs share a row, each holding one SLICE of both rows' logits in registers, so the
    # logits are read from memory once instead of three times; they swap per-slice log-sum-exp
    # parts and sums of h through PART (n_rows x K x 8) and meet at CNT[row] (zeroed).
    pid = tl.program_id(0)
    part = pid % K
    cols = part * SLICE + tl.arange(0, SLICE)
    msk = cols < V
    kk = tl.arange(0, KP)
    kmask = kk < K
    step = tl.num_programs(0) // K
    lines = tl.minimum(part * SLICE + tl.arange(0, SLICE // 32) * 32, V - 1)  # one column per 128-byte line
    for row in range(pid // K, n_rows, step):
        r = tl.cast(row, tl.int64)
        x = tl.load(S + r * s_stride + cols, mask=msk, other=float("-inf")).to(tl.float32) * scale
        y = tl.load(T + r * t_stride + cols, mask=msk, other=float("-inf")).to(tl.float32) * scale
        if PREFETCH:
            # This program's slice of its next row into L2 now, so DRAM keeps streaming while the
            # row's programs meet; the next row's loads then come from L2.
            if row + step < n_rows:
                _prefetch_l2(S + (r + step) * s_stride + lines)
                _prefetch_l2(T + (r + step) * t_stride + lines)
        mx, my = tl.reduce((x, y), 0, _max2)
        ex = tl.exp(x - mx)
        ey = tl.exp(y - my)
        dx, dy = tl.reduce((ex, ey), 0, _add2)
        pr = PART + r * (8 * K)
        tl.store(pr + part * 8, mx)
        tl.store(pr + part * 8 + 1, dx)
        tl.store(pr + part * 8 + 2, my)
        tl.store(pr + part * 8 + 3, dy)
        _group_barrier(CNT + r, K)
        lse_s = _combine_lse(pr, 0, kk, kmask)
        lse_t = _combine_lse(pr, 2, kk, kmask)
        # exp again rather than keeping ex, ey alive across the meeting: fewer registers, more
        # programs resident, more rows in flight.
        q = tl.exp(x - lse_s)
        loss, h = _kd_terms_qp(x - lse_s, y - lse_t, q, tl.exp(y - lse_t), a, wp, wq, MODE, FAST)
        loss_sum, h_part = tl.reduce((tl.where(msk, loss, 0.0), tl.where(msk, h, 0.0)), 0, _add2)
        tl.store(LOSS + r * K + part, loss_sum)
        H = h_sum
        if MODE != 1:  # forward KL: H = -(wp + wq) needs no second meeting
            tl.store(pr + part * 8 + 4, h_part)
            _group_barrier(CNT + r, 2 * K)
            H = tl.sum(tl.load(pr + kk * 8 + 4, mask=kmask, other=0.0, cache_modifier=".cg"), 0)
        # OUT may be a half-width view of S's rows: every program of this row has loaded its
        # slice before the first meeting, so these stores overwrite nothing still to be read.
        g = kd_coef * (h - q * H) + ce_coef * q
        tl.store(OUT + r * o_stride + cols, g.to(OUT.dtype.element_ty), mask=msk)
        if part == 0:
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
    # Z holds the logits with the k listed ids already set to -inf (when HAS_REST); ZIDS the original
    # logits at those ids (-inf at a padding id, whose logit stays in Z); LP the teacher's nb = k (+1 rest) bucket log-probabilities.
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
        lt = tl.load(LP + r * nb + kk, mask=bmask, other=0.0)
        # A padding id (-inf in ZIDS, its logit left in Z's rest) is an empty bucket on both sides.
        pad = kmask & (zi == float("-inf"))
        lq = tl.where(pad, lt, tl.where(bmask, lq, 0.0))
        loss, h, q = _kd_terms(lq, lt, a, wp, wq, MODE, False)
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
        tl.store(z_ptr + ids, (c * (G - g_sum * q)).to(Z.dtype.element_ty), mask=kmask & (pad == 0))
