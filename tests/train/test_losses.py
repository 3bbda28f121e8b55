"""Property tests for potstill.train.losses and the chunked heads in potstill.train.fused_head.

CPU only, small vocabularies. The chunked heads are checked against float64 autograd through
the materialised logits; hypothesis is not a dependency, so the properties are parametrised.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from potstill.train import fused_head as FH
from potstill.train import losses as L

KINDS = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.2}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.3}),
]
KIND_IDS = [k + "".join(f"-{v}" for v in kw.values()) for k, kw in KINDS]


def _logits(n=7, v=33, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype)


def _kl(p_log, q_log):  # KL(p || q), independent of the code under test
    return (p_log.exp() * (p_log - q_log)).sum(-1)


# --- distribution-level losses -------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_zero_for_identical_distributions(kind, kw):
    x = _logits()
    loss = L.kd_divergence(x, x.clone(), kind=kind, **kw, reduction="none")
    assert torch.allclose(loss, torch.zeros_like(loss), atol=1e-12)


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_positive_for_different_distributions(kind, kw):
    loss = L.kd_divergence(_logits(seed=1), _logits(seed=2), kind=kind, **kw, reduction="none")
    assert (loss > 0).all()


def test_forward_reverse_kl_match_kl_div():
    s, t = _logits(seed=1), _logits(seed=2)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    assert torch.allclose(L.forward_kl(s, t), _kl(lt, ls).mean())
    assert torch.allclose(L.reverse_kl(s, t), _kl(ls, lt).mean())
    ref = F.kl_div(ls, lt, log_target=True, reduction="batchmean")
    assert torch.allclose(L.forward_kl(s, t), ref)


def test_jsd_limits_and_midpoint():
    s, t = _logits(seed=3), _logits(seed=4)
    fkl, rkl = L.forward_kl(s, t), L.reverse_kl(s, t)
    assert torch.allclose(L.generalized_jsd(s, t, beta=0.0), fkl, rtol=1e-12)
    assert torch.allclose(L.generalized_jsd(s, t, beta=1.0), rkl, rtol=1e-12)
    # Continuity: the end points are limits, not special cases. (The slope at the ends is
    # sum(p^2/q) - 1, large for peaky logits, hence the tiny step.)
    assert torch.allclose(L.generalized_jsd(s, t, beta=1e-10), fkl, rtol=1e-5)
    assert torch.allclose(L.generalized_jsd(s, t, beta=1 - 1e-10), rkl, rtol=1e-5)
    p, q = t.softmax(-1), s.softmax(-1)
    lm = (0.5 * (p + q)).log()
    jsd = 0.5 * _kl(p.log(), lm) + 0.5 * _kl(q.log(), lm)
    assert torch.allclose(L.generalized_jsd(s, t, beta=0.5), jsd.mean())


def test_skew_kl_matches_definition():
    s, t = _logits(seed=5), _logits(seed=6)
    p, q = t.softmax(-1), s.softmax(-1)
    al = 0.25
    ref = _kl(p.log(), (al * p + (1 - al) * q).log()).mean()
    assert torch.allclose(L.skew_kl(s, t, alpha=al), ref)
    ref_r = _kl(q.log(), ((1 - al) * p + al * q).log()).mean()
    assert torch.allclose(L.skew_kl(s, t, alpha=al, reverse=True), ref_r)
    assert torch.allclose(L.skew_kl(s, t, alpha=0.0), L.forward_kl(s, t))


def test_temperature_and_teacher_is_detached():
    s = _logits(seed=7).requires_grad_()
    t = _logits(seed=8).requires_grad_()
    loss = L.forward_kl(s, t, temperature=2.0)
    assert torch.allclose(loss, L.forward_kl(s / 2, t / 2))
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_masking_with_ignore_index():
    s, t = _logits(n=6, seed=9).requires_grad_(), _logits(n=6, seed=10)
    labels = torch.tensor([1, -100, 3, -100, 4, 5])
    keep = labels != -100
    s_bad = s.detach().clone()
    s_bad[~keep] = float("nan")  # ignored rows may hold garbage
    for kind, kw in KINDS:
        full = L.kd_divergence(s, t, labels, kind=kind, **kw)
        sub = L.kd_divergence(s[keep], t[keep], kind=kind, **kw)
        assert torch.allclose(full, sub)
        assert torch.allclose(L.kd_divergence(s_bad, t, labels, kind=kind, **kw), sub)
    L.forward_kl(s, t, labels).backward()
    assert (s.grad[~keep] == 0).all() and (s.grad[keep] != 0).any()
    none = L.forward_kl(s, t, labels, reduction="none")
    assert none.shape == (6,) and (none[~keep] == 0).all()
    everything_ignored = L.forward_kl(s, t, torch.full((6,), -100))
    assert everything_ignored.item() == 0.0


def test_distillation_loss_mix_and_batch_shapes():
    s, t = _logits(n=12, seed=11).reshape(3, 4, -1), _logits(n=12, seed=12).reshape(3, 4, -1)
    labels = torch.randint(0, s.shape[-1], (3, 4))
    labels[0, :2] = -100
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1), ignore_index=-100)
    kd = L.generalized_jsd(s, t, labels, beta=0.5)
    mix = L.distillation_loss(s, t, labels, ce_weight=0.3, kind="jsd")
    assert torch.allclose(mix, 0.7 * kd + 0.3 * ce)
    assert torch.allclose(L.cross_entropy(s, labels), ce)


# --- sparse top-k teacher ------------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_sparse_topk_equals_dense_at_k_equal_v(kind, kw):
    s, t = _logits(seed=13), _logits(seed=14)
    lp, ids = t.log_softmax(-1).topk(t.shape[-1], dim=-1)
    sparse = L.sparse_topk_kd(s, ids, lp, kind=kind, **kw)
    dense = L.kd_divergence(s, t, kind=kind, **kw)
    assert torch.allclose(sparse, dense, rtol=1e-10)


def test_sparse_topk_converges_monotonically_to_dense():
    s, t = _logits(n=5, v=50, seed=15), _logits(n=5, v=50, seed=16)
    dense = L.forward_kl(s, t, reduction="none")
    lp_all, ids_all = t.log_softmax(-1).sort(dim=-1, descending=True)
    prev = torch.zeros_like(dense)
    for k in (1, 2, 5, 10, 25, 49, 50):
        cur = L.sparse_topk_kd(s, ids_all[:, :k], lp_all[:, :k], reduction="none")
        # Coarse-graining can only lose divergence (data-processing inequality).
        assert (cur <= dense + 1e-12).all() and (cur >= prev - 1e-12).all()
        prev = cur
    assert torch.allclose(prev, dense, rtol=1e-10)


def test_sparse_topk_zero_when_student_matches_and_tail_is_explicit():
    s = _logits(seed=17)
    lp, ids = s.log_softmax(-1).topk(4, dim=-1)
    assert L.sparse_topk_kd(s, ids, lp).abs().item() < 1e-12
    # A student that copies the top-k probabilities but is sharper elsewhere is still
    # penalised through the rest bucket; renormalising the top-k would call it perfect.
    lp_teacher = lp - 0.5
    assert L.sparse_topk_kd(s, ids, lp_teacher).item() > 1e-3
    padded_ids = torch.cat([ids, _unused(ids, s.shape[-1])], 1)
    padded_lp = torch.cat([lp, torch.full_like(lp[:, :1], float("-inf"))], 1)
    assert torch.isfinite(L.sparse_topk_kd(s, padded_ids, padded_lp))


def _unused(ids, v):
    out = []
    for row in ids.tolist():
        out.append(next(i for i in range(v) if i not in row))
    return torch.tensor(out)[:, None]


# --- label-level distributions ---------------------------------------------------------------


def test_label_distribution_kd():
    s = _logits(n=4, v=40, seed=18).requires_grad_()
    label_ids = torch.tensor([3, 17, 29])
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]], dtype=torch.float64)
    loss = L.label_distribution_kd(s, label_ids, teacher.log())
    lq = s[:, label_ids].log_softmax(-1)
    p = teacher
    ref = torch.where(p > 0, p * (p.log() - lq), torch.zeros_like(p)).sum(-1).mean()
    assert torch.allclose(loss, ref)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    other = [i for i in range(40) if i not in label_ids.tolist()]
    assert (s.grad[:, other] == 0).all()  # only the label logits matter
    same = L.label_distribution_kd(s, label_ids, s[:, label_ids].detach() + 5.0, kind="jsd")
    assert same.abs().item() < 1e-12
    per_row_ids = label_ids.expand(4, -1)
    masked = L.label_distribution_kd(s, per_row_ids, teacher.log(), mask=torch.tensor([1, 1, 0, 0]).bool())
    assert torch.allclose(masked, L.label_distribution_kd(s[:2], label_ids, teacher[:2].log()))


# --- chunked heads vs materialised float64 references ---------------------------------------


def _head_inputs(n=37, v=53, hs=16, ht=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, std=1.0: (torch.randn(*shape, generator=g, dtype=torch.float64) * std)  # noqa: E731
    return {
        "h_s": r(n, hs).to(dtype),
        "w_s": r(v, hs, std=0.6).to(dtype),
        "h_t": r(n, ht).to(dtype),
        "w_t": r(v, ht, std=0.5).to(dtype),
        "labels": torch.randint(0, v, (n,), generator=g),
    }


def _leaf(x, grad=True):
    return x.detach().clone().requires_grad_(grad)


def _assert_grads_close(got, want, rtol=1e-4, atol=1e-5):
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_kd_matches_float64_reference(kind, kw, temperature):
    d = _head_inputs(seed=hash(kind) % 1000)
    d["labels"][[0, 5, 6, 20]] = -100
    hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
    loss = FH.fused_linear_kd(hs, ws, d["h_t"], d["w_t"], d["labels"], kind=kind, **kw, temperature=temperature,
                              chunk_size=8, backend="torch")
    loss.backward()
    hs64, ws64 = _leaf(d["h_s"].double()), _leaf(d["w_s"].double())
    ref = L.kd_divergence(hs64 @ ws64.T, d["h_t"].double() @ d["w_t"].double().T, d["labels"], kind=kind, **kw,
                          temperature=temperature)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-6)
    _assert_grads_close([hs.grad, ws.grad], [hs64.grad, ws64.grad])
    assert (hs.grad[[0, 5, 6, 20]] == 0).all()


def test_fused_kd_with_ce_mix_sum_reduction_and_grad_scale():
    d = _head_inputs(n=20, seed=3)
    d["labels"][:3] = -100
    hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
    loss = FH.fused_linear_kd(hs, ws, d["h_t"], d["w_t"], d["labels"], kind="jsd", beta=0.5, ce_weight=0.25,
                              reduction="sum", chunk_size=6, backend="torch")
    (3.0 * loss).backward()
    hs64, ws64 = _leaf(d["h_s"].double()), _leaf(d["w_s"].double())
    ref = L.distillation_loss(hs64 @ ws64.T, d["h_t"].double() @ d["w_t"].double().T, d["labels"], ce_weight=0.25,
                              kind="jsd", beta=0.5, reduction="sum")
    (3.0 * ref).backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-5)
    _assert_grads_close([hs.grad, ws.grad], [hs64.grad, ws64.grad])


def test_fused_kd_zero_for_identical_student_and_teacher():
    d = _head_inputs(seed=4)
    hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
    loss = FH.fused_linear_kd(hs, ws, d["h_s"], d["w_s"], kind="jsd", chunk_size=16, backend="torch")
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert hs.grad.abs().max() < 1e-6 and ws.grad.abs().max() < 1e-6


def test_fused_cross_entropy_matches_float64_reference():
    d = _head_inputs(n=29, seed=5)
    d["labels"][[1, 2, 28]] = -100
    hs, ws = _leaf(d["h_s"].reshape(29, 1, -1)), _leaf(d["w_s"])
    loss = FH.fused_linear_cross_entropy(hs, ws, d["labels"].reshape(29, 1), chunk_size=7, backend="torch")
    loss.backward()
    hs64, ws64 = _leaf(d["h_s"].double()), _leaf(d["w_s"].double())
    ref = F.cross_entropy(hs64 @ ws64.T, d["labels"], ignore_index=-100)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    _assert_grads_close([hs.grad.reshape(29, -1), ws.grad], [hs64.grad, ws64.grad])


@pytest.mark.parametrize("k", [1, 5, 53])
@pytest.mark.parametrize("kind,kw", [KINDS[0], KINDS[2], KINDS[1]], ids=["fkl", "jsd", "rkl"])
def test_fused_sparse_matches_float64_reference(k, kind, kw):
    d = _head_inputs(seed=6)
    d["labels"][[3, 4]] = -100
    teacher = (d["h_t"].double() @ d["w_t"].double().T).log_softmax(-1)
    lp, ids = teacher.topk(k, dim=-1)
    hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
    loss = FH.fused_linear_sparse_kd(hs, ws, ids, lp.float(), d["labels"], kind=kind, **kw, temperature=1.5,
                                     chunk_size=10, backend="torch")
    loss.backward()
    hs64, ws64 = _leaf(d["h_s"].double()), _leaf(d["w_s"].double())
    ref = L.sparse_topk_kd(hs64 @ ws64.T, ids, lp.float().double(), d["labels"], kind=kind, **kw, temperature=1.5)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-6)
    _assert_grads_close([hs.grad, ws.grad], [hs64.grad, ws64.grad])


def test_fused_heads_all_ignored_and_no_grad_inputs():
    d = _head_inputs(n=5, seed=7)
    hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
    ignored = torch.full((5,), -100)
    loss = FH.fused_linear_kd(hs, ws, d["h_t"], d["w_t"], ignored, backend="torch")
    loss = loss + FH.fused_linear_cross_entropy(hs, ws, ignored, backend="torch")
    loss.backward()
    assert loss.item() == 0.0 and (hs.grad == 0).all() and (ws.grad == 0).all()
    frozen = FH.fused_linear_cross_entropy(d["h_s"], _leaf(d["w_s"]), d["labels"], backend="torch")
    frozen.backward()  # hidden needs no grad: only the weight gets one


def test_fused_kd_bf16_close_to_fp32():
    d = _head_inputs(n=32, v=64, seed=8)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        hs, ws = _leaf(d["h_s"].to(dt)), _leaf(d["w_s"].to(dt))
        loss = FH.fused_linear_kd(hs, ws, d["h_t"].to(dt), d["w_t"].to(dt), kind="jsd", chunk_size=16,
                                  accum_dtype=torch.float32, backend="torch")
        loss.backward()
        assert loss.dtype == torch.float32 and ws.grad.dtype == dt
        out[dt] = (loss.detach(), hs.grad.float(), ws.grad.float())
    for a, b in zip(out[torch.float32], out[torch.bfloat16]):
        assert ((a - b).norm() / a.norm()).item() < 3e-2


def test_fused_kd_fp32_logits_option():
    d = _head_inputs(n=24, v=96, seed=9)
    hs64, ws64 = _leaf(d["h_s"].bfloat16().double()), _leaf(d["w_s"].bfloat16().double())
    t64 = d["h_t"].bfloat16().double() @ d["w_t"].bfloat16().double().T
    ref = L.generalized_jsd(hs64 @ ws64.T, t64)
    ref.backward()
    errs = {}
    for lg in (None, torch.float32, "auto"):
        hs, ws = _leaf(d["h_s"].bfloat16()), _leaf(d["w_s"].bfloat16())
        loss = FH.fused_linear_kd(hs, ws, d["h_t"].bfloat16(), d["w_t"].bfloat16(), logits_dtype=lg, chunk_size=8,
                                  accum_dtype=torch.float32, backend="torch")
        loss.backward()
        errs[lg] = abs(loss.item() - ref.item()) / ref.item()
    assert errs[torch.float32] < 1e-5 < errs[None]
    assert errs["auto"] == errs[torch.float32]  # fp32 logits are the default for bf16 inputs


def test_default_chunk_size():
    assert FH.default_chunk_size(32768, 49152, 8) == 1024  # fp32 student + teacher logits in 512 MiB
    assert FH.default_chunk_size(32768, 49152, 4) == 2048
    assert FH.default_chunk_size(32768, 49152, 2) == 4096
    assert FH.default_chunk_size(32768, 49152, 8, FH.KD_CHUNK_BYTES) == 2048  # the KD head's own budget
    assert FH.default_chunk_size(10, 49152) == 10


# --- Triton kernels, through the interpreter (runs only where triton is installed) ----------

_TRITON_SCRIPT = textwrap.dedent(
    """
    import torch
    from potstill.train import fused_head as FH
    FH.TRITON_BLOCK = 16  # several blocks and a ragged tail for V = 37
    FH.GRID_PROGRAMS = 2  # persistent programs each looping over several rows
    g = torch.Generator().manual_seed(0)
    n, v = 6, 37
    hs, ws = torch.randn(n, 8, generator=g), torch.randn(v, 8, generator=g)
    ht, wt = torch.randn(n, 12, generator=g), torch.randn(v, 12, generator=g)
    labels = torch.randint(0, v, (n,), generator=g); labels[2] = -100
    lp, ids = (ht @ wt.T).log_softmax(-1).topk(5, dim=-1)
    lp_all, ids_all = (ht @ wt.T).log_softmax(-1).topk(v, dim=-1)
    # padding entries (unused ids at -inf) and an API's rounded top-1 (0.0: no tail left)
    spare = torch.stack([torch.tensor([i for i in range(v) if i not in r][:2]) for r in ids.tolist()])
    pad_ids, pad_lp = torch.cat([ids, spare], 1), torch.cat([lp, torch.full((n, 2), float("-inf"))], 1)
    sure_lp = pad_lp.clone(); sure_lp[:, 0] = 0.0
    cases = [
        lambda h, w, be: FH.fused_linear_kd(h, w, ht, wt, labels, kind="jsd", beta=0.3, temperature=2.0, backend=be),
        lambda h, w, be: FH.fused_linear_kd(h, w, ht, wt, labels, kind="forward_kl", ce_weight=0.5, backend=be),
        lambda h, w, be: FH.fused_linear_kd(h, w, ht, wt, labels, kind="reverse_kl", backend=be),
        lambda h, w, be: FH.fused_linear_cross_entropy(h, w, labels, backend=be),
        lambda h, w, be: FH.fused_linear_sparse_kd(h, w, ids, lp, labels, kind="jsd", backend=be),
        lambda h, w, be: FH.fused_linear_sparse_kd(h, w, ids, lp, labels, temperature=0.7, backend=be),
        lambda h, w, be: FH.fused_linear_sparse_kd(h, w, ids_all, lp_all, kind="reverse_kl", backend=be),
        lambda h, w, be: FH.fused_linear_sparse_kd(h, w, pad_ids, pad_lp, labels, kind="forward_kl", backend=be),
        lambda h, w, be: FH.fused_linear_sparse_kd(h, w, pad_ids, sure_lp, labels, kind="reverse_kl", backend=be),
        lambda h, w, be: FH.fused_linear_sparse_kd(h, w, pad_ids, sure_lp, kind="jsd", beta=0.3, temperature=1.5,
                                                   backend=be),
    ]
    for i, case in enumerate(cases):
        res = []
        for be in ("triton", "torch"):
            h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
            loss = case(h, w, be)
            loss.backward()
            res.append((loss.detach(), h.grad, w.grad))
        for a, b in zip(*res):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # fp32 logits from bf16 inputs: the kernel writes bf16 dlogits over the fp32 buffer (ALIAS).
    res = []
    for be in ("triton", "torch"):
        h, w = hs.bfloat16().requires_grad_(), ws.bfloat16().requires_grad_()
        loss = FH.fused_linear_kd(h, w, ht.bfloat16(), wt.bfloat16(), labels, logits_dtype=torch.float32,
                                  chunk_size=4, backend=be)
        loss.backward()
        res.append((loss.detach(), h.grad.float(), w.grad.float()))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)
    print("TRITON-INTERPRETER-OK")
    """
)


def _triton_version() -> tuple[int, ...]:
    import triton

    return tuple(int(x) for x in triton.__version__.split(".")[:2])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_match_torch_backend_in_interpreter():
    if _triton_version() < (3, 9):
        # Triton 3.6's interpreter (a GPU machine's torch 2.11) cannot index the kernels' grid-stride loops,
        # range(program_id, n_rows, num_programs): "only 0-dimensional arrays can be converted to Python
        # scalars". The test install (pyproject's [test]) brings 3.9, which runs them.
        pytest.skip("Triton's interpreter before 3.9 cannot run the grid-stride loops; the [test] extra installs 3.9")
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert "TRITON-INTERPRETER-OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.skipif(not (torch.cuda.is_available() and FH.HAS_TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("slice_,prefetch", [(0, False), (2048, True), (2048, False), (512, True)],
                         ids=["three-sweep", "split-2048", "split-2048-no-prefetch", "split-512"])
def test_kd_row_kernels_match_torch_backend_on_gpu(slice_, prefetch, monkeypatch):
    """The Triton KD row kernels (three-sweep, and K programs per row meeting twice, with and
    without the L2 prefetch of the next row) against the torch backend: every divergence, ragged V,
    fp32 logits with bf16 dlogits written over them, and a grid of one row group looping over
    every row."""
    monkeypatch.setattr(FH, "SPLIT_SLICE", slice_)
    monkeypatch.setattr(FH, "SPLIT_PREFETCH", prefetch)
    g = torch.Generator(device="cuda").manual_seed(0)
    for v, c, grid in ((50257, 37, None), (3001, 300, 1)):
        monkeypatch.setattr(FH, "GRID_PROGRAMS", grid)
        for kind, kw in KINDS:
            params = L.divergence_params(kind, **kw)
            for dt in (torch.float32, torch.bfloat16):
                s0 = (torch.randn(c, v, device="cuda", generator=g) * 3).to(dt)
                t = (s0.float() + torch.randn(c, v, device="cuda", generator=g) * 0.5).to(dt)
                ref = torch.empty(c, v, dtype=torch.float32, device="cuda")
                ref_loss, ref_lse = FH._kd_rows(s0.clone(), t, ref, 0.7, params, 1e-3, 0.2, "torch")
                s = s0.clone()
                out = s.view(torch.bfloat16)[:, :v] if dt == torch.float32 else s
                loss, lse = FH._kd_rows(s, t, out, 0.7, params, 1e-3, 0.2, "triton")
                torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-6)
                torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-7)


def _three_heads(d, hs, ws, valid_rows, backend="torch", k=5):
    """CE, KD and sparse-KD losses of the same rows, each given ``valid_rows`` (or counting itself)."""
    teacher = (d["h_t"].double() @ d["w_t"].double().T).log_softmax(-1)
    lp, ids = teacher.topk(k, dim=-1)
    lab = d["labels"].to(hs.device)
    return (FH.fused_linear_cross_entropy(hs, ws, lab, chunk_size=8, backend=backend, valid_rows=valid_rows),
            FH.fused_linear_kd(hs, ws, d["h_t"].to(hs), d["w_t"].to(hs), lab, kind="jsd", chunk_size=8,
                               backend=backend, valid_rows=valid_rows),
            FH.fused_linear_sparse_kd(hs, ws, ids.to(hs.device), lp.to(hs), lab, kind="jsd", chunk_size=8,
                                      backend=backend, valid_rows=valid_rows))


@pytest.mark.parametrize("ignored", [[], [0, 5, 6, 36]], ids=["none-ignored", "some-ignored"])
def test_fused_heads_given_the_valid_row_count_match_counting_themselves(ignored):
    """``valid_rows`` (the trainer's host-side count) changes nothing but the device waits."""
    d = _head_inputs(seed=8)
    d["labels"][ignored] = -100
    results = []
    for valid in (None, 37 - len(ignored)):
        hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
        losses = _three_heads(d, hs, ws, valid)
        sum(losses).backward()
        results.append((torch.stack(losses), hs.grad, ws.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (results[1][1][ignored] == 0).all()


@pytest.mark.skipif(not (torch.cuda.is_available() and FH.HAS_TRITON), reason="needs a CUDA GPU and triton")
def test_fused_heads_given_the_valid_row_count_never_wait_for_the_gpu():
    """With ``valid_rows`` the three heads run forward and backward without one host-device sync
    (CUDA's sync debug mode raises on any); counting the rows themselves, they do wait."""
    d = {k: v.cuda() for k, v in _head_inputs(n=300, v=1000, seed=9).items()}
    d["labels"][[1, 7, 299]] = -100
    hs, ws = _leaf(d["h_s"].bfloat16()), _leaf(d["w_s"].bfloat16())
    _three_heads(d, hs, ws, 297, backend="triton")  # compile the kernels outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sum(_three_heads(d, hs, ws, 297, backend="triton")).backward()
        with pytest.raises(RuntimeError, match="synchroniz"):
            _three_heads(d, hs, ws, None, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- sparse top-k: API rounding and padding ----------------------------------------------------

CONFIDENT_LP = [[0.0, -12.0, -13.0], [-1e-6, -9.0, -20.0], [-0.5, -1.5, -3.0], [-0.001, -7.0, -8.0]]


@pytest.mark.parametrize("kind,kw", KINDS + [("jsd", {"beta": 1.0})], ids=KIND_IDS + ["jsd-1"])
def test_sparse_topk_of_a_confident_teacher_is_finite_and_non_negative(kind, kw):
    """An API rounds a near-certain token's logprob to 0.0, so its top-k sums to 1 or past it and
    ``1 - sum`` leaves the teacher no tail. The tail is never empty for a softmax teacher; taken as
    empty, every divergence that weighs the student's tail mass by ``log(q / p)`` (reverse KL, JSD at
    beta 1) was 3e38 or inf, and a top-k summing past 1 made reverse KL negative."""
    s = _logits(n=4, v=40, seed=21, dtype=torch.float32).requires_grad_()
    ids = torch.tensor([[1, 2, 3]] * 4)
    lp = torch.tensor(CONFIDENT_LP)
    loss = L.sparse_topk_kd(s, ids, lp, kind=kind, **kw, reduction="none")
    assert torch.isfinite(loss).all() and (loss >= 0).all() and loss.max() < 100, loss
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()
    g = torch.Generator().manual_seed(0)
    hs, ws = _leaf(torch.randn(4, 8, generator=g)), _leaf(torch.randn(40, 8, generator=g))
    fused = FH.fused_linear_sparse_kd(hs, ws, ids, lp, kind=kind, **kw, backend="torch")
    fused.backward()
    ref = L.sparse_topk_kd(hs.detach().double() @ ws.detach().double().T, ids, lp.double(), kind=kind, **kw)
    assert torch.isfinite(fused) and torch.isfinite(hs.grad).all() and torch.isfinite(ws.grad).all()
    torch.testing.assert_close(fused.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_sparse_topk_padding_entries_change_nothing(kind, kw):
    """collate pads a position with fewer top-k entries than the batch's widest with unused ids at
    ``-inf``. Those are tokens the teacher did not list, in its tail like every other such token, not
    tokens it gave zero probability: padding must change neither the loss nor the gradients. As
    buckets of their own they took the student's mass out of its tail bucket (every divergence
    changed) and, at p = 0, made reverse KL 3e38."""
    d = _head_inputs(seed=10)
    d["labels"][[2, 9]] = -100
    teacher = (d["h_t"].double() @ d["w_t"].double().T).log_softmax(-1)
    lp, ids = teacher.topk(4, dim=-1)
    spare = torch.stack([torch.tensor([i for i in range(53) if i not in row][:2]) for row in ids.tolist()])
    pad_ids, pad_lp = torch.cat([ids, spare], 1), torch.cat([lp, torch.full_like(lp[:, :2], float("-inf"))], 1)
    s = d["h_s"].double() @ d["w_s"].double().T
    plain = L.sparse_topk_kd(s, ids, lp, d["labels"], kind=kind, **kw, reduction="none")
    torch.testing.assert_close(L.sparse_topk_kd(s, pad_ids, pad_lp, d["labels"], kind=kind, **kw, reduction="none"),
                               plain)
    results = []
    for i, l in ((ids, lp), (pad_ids, pad_lp)):
        hs, ws = _leaf(d["h_s"]), _leaf(d["w_s"])
        loss = FH.fused_linear_sparse_kd(hs, ws, i, l.float(), d["labels"], kind=kind, **kw, chunk_size=10,
                                         backend="torch")
        loss.backward()
        results.append((loss, hs.grad, ws.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_sparse_topk_padding_changes_nothing_when_k_reaches_a_tiny_vocabulary(kind, kw):
    """With a vocabulary no larger than the batch's widest top-k (a tiny student, an API's top-20),
    ``k = V`` left no rest bucket, so the ids collate pads a shorter position with were buckets of
    their own at p = 0: the teacher's tail vanished (forward KL off) and reverse KL was 3e38. A
    padded position must give the loss and gradients of the same top-k unpadded, pure and fused,
    and a fully listed position still the dense loss."""
    V = 6
    d = _head_inputs(n=5, v=V, seed=31)
    teacher = (d["h_t"].double() @ d["w_t"].double().T).log_softmax(-1)
    lp, ids = teacher.topk(3, dim=-1)
    rest = torch.stack([torch.tensor([i for i in range(V) if i not in row]) for row in ids.tolist()])
    pad_ids, pad_lp = torch.cat([ids, rest], 1), torch.cat([lp, torch.full_like(lp, float("-inf"))], 1)
    full_lp, full_ids = teacher.topk(V, dim=-1)
    pad_ids[0], pad_lp[0] = full_ids[0], full_lp[0]  # the batch's widest position lists all V
    s = d["h_s"].double() @ d["w_s"].double().T
    plain = L.sparse_topk_kd(s[1:], ids[1:], lp[1:], kind=kind, **kw, reduction="none")
    padded = L.sparse_topk_kd(s, pad_ids, pad_lp, kind=kind, **kw, reduction="none")
    torch.testing.assert_close(padded[1:], plain)
    torch.testing.assert_close(padded[0], L.kd_divergence(s[:1], teacher[:1], kind=kind, **kw, reduction="none")[0])
    results = []
    for i, l in ((ids, lp), (pad_ids, pad_lp)):
        hs, ws = _leaf(d["h_s"][1:]), _leaf(d["w_s"])
        loss = FH.fused_linear_sparse_kd(hs, ws, i[1:], l[1:].float(), kind=kind, **kw, chunk_size=2, backend="torch")
        loss.backward()
        results.append((loss, hs.grad, ws.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
