"""Knowledge-distillation losses as pure functions over logits.

Every function here takes logits (or log-probabilities) that already exist in memory. For
heads that never hold a full ``(N, V)`` logits tensor, see :mod:`potstill.train.fused_head`,
which computes the same quantities chunk by chunk from hidden states and ``lm_head`` weights.

Conventions shared by all functions:

* ``p`` is the teacher distribution, ``q`` the student's (both over the vocabulary, or over
  buckets / labels for the sparse and label-level losses).
* Shapes: logits ``(..., V)``; ``labels`` ``(...)``. Positions whose label equals
  ``ignore_index`` (default ``-100``, as in ``torch.nn.functional.cross_entropy``) contribute
  nothing, neither to the loss nor to its normaliser.
* ``reduction``: ``"mean"`` averages over non-ignored positions (0 when there are none, rather
  than NaN), ``"sum"`` adds them up, ``"none"`` returns the per-position loss ``(...)`` with
  zeros at ignored positions.
* ``temperature`` ``T`` divides student and teacher logits before the softmax (Hinton et al.
  2015, "Distilling the Knowledge in a Neural Network"). No ``T**2`` factor is applied: multiply
  the result yourself if you want Hinton's gradient-scale correction.
* Maths runs in float32 for half-precision inputs (float64 stays float64). The teacher is a
  target: its logits are detached.

The divergence family
---------------------
All divergences are instances of ``D = w_p KL(p || m) + w_q KL(q || m)`` with the mixture
``m = a p + (1 - a) q``. :func:`divergence_params` maps names to ``(a, w_p, w_q)``:

===================  =================  ======================================================
``kind``             ``(a, w_p, w_q)``  meaning
===================  =================  ======================================================
``forward_kl``       ``(0, 1, 0)``      ``KL(p || q)``, mean-seeking (Hinton et al. 2015)
``reverse_kl``       ``(1, 0, 1)``      ``KL(q || p)``, mode-seeking (MiniLLM, Gu et al. 2024)
``jsd`` (beta b)     ``(b, 1-b, b)``    generalised JSD, see below
``skew_kl`` (al)     ``(al, 1, 0)``     ``KL(p || al p + (1-al) q)`` (DistiLLM, Ko et al. 2024)
``skew_reverse_kl``  ``(1-al, 0, 1)``   ``KL(q || (1-al) p + al q)`` (DistiLLM)
===================  =================  ======================================================

Generalised JSD convention. With ``m = b p + (1 - b) q`` we use
``JSD_b = (1 - b) KL(p || m) + b KL(q || m)``. This is continuous in ``b`` with
``JSD_0 = KL(p || q)`` (forward KL, the direction TRL's GKD trainer calls ``beta=0``) and
``JSD_1 = KL(q || p)`` (reverse KL), and at ``b = 0.5`` it is the ordinary Jensen-Shannon
divergence, the same value TRL's ``generalized_jsd_loss`` and Liger's ``LigerFusedLinearJSD``
return for ``beta=0.5``. For other ``b`` it differs from the GKD paper's
``b KL(p||m) + (1-b) KL(q||m)`` (Agarwal et al. 2024, "On-Policy Distillation of Language
Models"), whose value tends to 0 at both ends, which is why TRL special-cases ``beta`` in
``{0, 1}``; swapping the weights makes those end points the limits instead of exceptions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
Reduction = Literal["mean", "sum", "none"]

__all__ = [
    "IGNORE_INDEX",
    "divergence_params",
    "family_terms",
    "divergence_from_logprobs",
    "kd_divergence",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_kl",
    "cross_entropy",
    "distillation_loss",
    "teacher_bucket_logprobs",
    "sparse_topk_kd",
    "label_distribution_kd",
]


def divergence_params(kind: Divergence, *, beta: float = 0.5, alpha: float = 0.1) -> tuple[float, float, float]:
    """``(a, w_p, w_q)`` of ``D = w_p KL(p||m) + w_q KL(q||m)``, ``m = a p + (1-a) q``."""
    if kind == "forward_kl":
        return 0.0, 1.0, 0.0
    if kind == "reverse_kl":
        return 1.0, 0.0, 1.0
    if kind == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        return float(beta), 1.0 - beta, float(beta)
    if kind in ("skew_kl", "skew_reverse_kl"):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        return (float(alpha), 1.0, 0.0) if kind == "skew_kl" else (1.0 - alpha, 0.0, 1.0)
    raise ValueError(f"unknown divergence {kind!r}")


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _mixture_logprobs(ls: torch.Tensor, lt: torch.Tensor, a: float) -> torch.Tensor:
    # Exact end points keep the two KL limits free of log(0) terms.
    if a == 0.0:
        return ls
    if a == 1.0:
        return lt
    return torch.logaddexp(lt + math.log(a), ls + math.log1p(-a))


def family_terms(ls: torch.Tensor, lt: torch.Tensor, a: float, wp: float, wq: float, need_h: bool = False):
    """Per-position divergence and (optionally) ``h = q * dD/dq``; shapes ``(..., K)`` in, ``(...)``/``(..., K)`` out.

    ``dD/d(student logits) = h - q * sum(h)`` is the gradient the fused heads use; ``h + w_q q``
    is ``dD/d(log q)`` for the bucketed sparse loss. ``h`` is written so that no factor can
    overflow: ``(1-a) q / m <= 1``.
    """
    lm = _mixture_logprobs(ls, lt, a)
    q = ls.exp()
    p = lt.exp()
    loss = ls.new_zeros(ls.shape[:-1])
    if wp:
        loss = loss + wp * (p * (lt - lm)).sum(-1)
    if wq:
        loss = loss + wq * (q * (ls - lm)).sum(-1)
    if not need_h:
        return loss, None
    h = wq * q * (ls - lm) if wq else torch.zeros_like(q)
    if a < 1.0:
        h = h - (1.0 - a) * (ls - lm).exp() * (wp * p + wq * q)
    return loss, h


def divergence_from_logprobs(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, a: float, wp: float, wq: float
) -> torch.Tensor:
    """Divergence between two normalised log-distributions ``(..., K)`` -> ``(...)``.

    Teacher ``-inf`` entries (zero mass) are clamped to the dtype's most negative finite value so
    that ``0 * log 0`` terms stay 0 instead of NaN.
    """
    lt = teacher_logprobs.detach()
    lt = lt.clamp(min=torch.finfo(lt.dtype).min)
    return family_terms(student_logprobs, lt, a, wp, wq)[0]


def _flatten(logits: torch.Tensor, labels: torch.Tensor | None, ignore_index: int):
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    mask = None if labels is None else (labels.reshape(-1) != ignore_index)
    if labels is not None and labels.numel() != flat.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    return lead, flat, mask


def _reduce(per_pos: torch.Tensor, mask: torch.Tensor | None, lead, reduction: Reduction) -> torch.Tensor:
    if mask is not None:
        # where(), not multiply: an ignored row may hold inf/NaN (e.g. padding logits).
        per_pos = torch.where(mask, per_pos, per_pos.new_zeros(()))
    if reduction == "none":
        return per_pos.reshape(lead)
    if reduction == "sum":
        return per_pos.sum()
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    n = per_pos.new_tensor(per_pos.shape[0]) if mask is None else mask.sum()
    return per_pos.sum() / n.clamp(min=1)


def kd_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Token-level divergence between full student and teacher distributions.

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)``, same vocabulary (same tokenizer) as the student.
        labels: optional ``(...)``; only used as a mask (``ignore_index`` positions are skipped).
        kind, beta, alpha: see the module docstring table.
    Returns:
        scalar, or ``(...)`` for ``reduction="none"``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"shape mismatch {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    a, wp, wq = divergence_params(kind, beta=beta, alpha=alpha)
    lead, s, mask = _flatten(student_logits, labels, ignore_index)
    t = teacher_logits.detach().reshape(s.shape)
    ls = torch.log_softmax(_acc(s) / temperature, dim=-1)
    lt = torch.log_softmax(_acc(t).to(ls.dtype) / temperature, dim=-1)
    return _reduce(family_terms(ls, lt, a, wp, wq)[0], mask, lead, reduction)


def forward_kl(student_logits, teacher_logits, labels=None, **kw) -> torch.Tensor:
    """``KL(p_teacher || q_student)``; see :func:`kd_divergence` for arguments."""
    return kd_divergence(student_logits, teacher_logits, labels, kind="forward_kl", **kw)


def reverse_kl(student_logits, teacher_logits, labels=None, **kw) -> torch.Tensor:
    """``KL(q_student || p_teacher)`` (MiniLLM, Gu et al. 2024); see :func:`kd_divergence`."""
    return kd_divergence(student_logits, teacher_logits, labels, kind="reverse_kl", **kw)


def generalized_jsd(student_logits, teacher_logits, labels=None, *, beta: float = 0.5, **kw) -> torch.Tensor:
    """``(1-beta) KL(p||m) + beta KL(q||m)``, ``m = beta p + (1-beta) q``; ``beta=0`` forward, ``1`` reverse KL."""
    return kd_divergence(student_logits, teacher_logits, labels, kind="jsd", beta=beta, **kw)


def skew_kl(student_logits, teacher_logits, labels=None, *, alpha: float = 0.1, reverse: bool = False, **kw):
    """DistiLLM skew KL ``KL(p || alpha p + (1-alpha) q)``, or with ``reverse=True`` the skew
    reverse KL ``KL(q || (1-alpha) p + alpha q)`` (Ko et al. 2024). ``alpha=0`` is plain KL."""
    kind = "skew_reverse_kl" if reverse else "skew_kl"
    return kd_divergence(student_logits, teacher_logits, labels, kind=kind, alpha=alpha, **kw)


def cross_entropy(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy ``(..., V)``, ``(...)`` in fp32, same reduction rules as the KD losses."""
    lead, s, mask = _flatten(student_logits, labels, ignore_index)
    per = F.cross_entropy(_acc(s), labels.reshape(-1), ignore_index=ignore_index, reduction="none")
    return _reduce(per, mask, lead, reduction)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ce_weight: float = 0.5,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``(1 - ce_weight) * KD + ce_weight * CE``, where CE is on ``labels`` (typically the teacher's
    own generated text, as in sequence-level KD, Kim & Rush 2016) at temperature 1 and KD is the
    chosen divergence at ``temperature``. Both terms share the ``ignore_index`` mask."""
    if not 0.0 <= ce_weight <= 1.0:
        raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
    kd = kd_divergence(student_logits, teacher_logits, labels, kind=kind, beta=beta, alpha=alpha,
                       temperature=temperature, ignore_index=ignore_index, reduction=reduction)
    if ce_weight == 0.0:
        return kd
    ce = cross_entropy(student_logits, labels, ignore_index=ignore_index, reduction=reduction)
    return (1.0 - ce_weight) * kd + ce_weight * ce


# --- sparse top-k teacher (API logprobs) -------------------------------------------------------

# The least tail mass a teacher's top-k leaves: far below any tail that float32 rounding near 1
# (6e-8) or an API's printed digits can show, so no measurable tail changes, while reverse KL's
# log(q / p) on the tail stays finite (at most 28 nats per unit of the student's tail mass).
TAIL_FLOOR = 1e-12


def teacher_bucket_logprobs(topk_logprobs: torch.Tensor, vocab_size: int,
                            left_out: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher log-probabilities over the ``k`` returned tokens plus one "rest" bucket.

    ``topk_logprobs`` ``(..., k)`` are log-probabilities of the full teacher distribution (as an
    API returns them, not renormalised over the k); ``-inf`` entries are padding. The rest bucket
    holds the tail mass ``1 - sum(exp(topk))``, floored at ``TAIL_FLOOR``: an API rounds a
    near-certain token's logprob to 0.0, so the top-k can sum to 1 or past it, while a softmax
    teacher's tail is never empty (an empty one makes reverse KL infinite). Where the floor lifts
    the total past 1, the ``k + 1`` buckets are renormalised. ``left_out`` ``(..., 1)``: the
    log-probability of the one token ``fit_topk_to_vocab`` moved out of a full listing, the rest's
    mass where it is finite (``1 - sum`` would lose it to rounding). Returns ``(..., k + 1)``, or
    ``(..., k)`` unchanged when ``k == vocab_size`` (no tail exists).
    """
    lp = _acc(topk_logprobs.detach())
    if lp.shape[-1] >= vocab_size:
        return lp
    listed = lp.exp().sum(-1, keepdim=True)
    rest = 1.0 - listed
    if left_out is not None:
        known = _acc(left_out.detach()).to(lp.dtype)
        rest = torch.where(torch.isneginf(known), rest, known.exp())
    rest = rest.clamp(min=TAIL_FLOOR)
    return torch.cat([lp, rest.log()], dim=-1) - (listed + rest).log().clamp(min=0.0)


def fit_topk_to_vocab(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                      vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A top-k as wide as the vocabulary (a tiny one), as ``k = V - 1`` entries and a rest bucket.

    At ``k >= V`` there is no rest bucket, so a padding id (``-inf``) would be a bucket of its own
    at p = 0: the teacher's tail would vanish and reverse KL would be 3e38. Each position keeps its
    ``V - 1`` most probable entries (a padded one loses only padding; a fully listed one its least
    probable token, whose mass the rest bucket then holds: the same ``V`` buckets), so the rest
    bucket and the padding rules of ``k < V`` apply. Decided by the shapes alone, so a fused head
    on a GPU never waits to look at the values. Returns ``(ids, logprobs, left_out)``:
    ``left_out`` ``(..., 1)`` is the log-probability moved to the rest (``-inf``: padding, the
    tail unknown), ``None`` when ``k < V`` (nothing moved).
    """
    k = topk_ids.shape[-1]
    if k < vocab_size:
        return topk_ids, topk_logprobs, None
    order = topk_logprobs.detach().argsort(dim=-1, descending=True, stable=True)
    lp = topk_logprobs.gather(-1, order)
    return topk_ids.gather(-1, order[..., : vocab_size - 1]), lp[..., : vocab_size - 1], \
        lp[..., vocab_size - 1:].logsumexp(-1, keepdim=True)


def sparse_topk_kd(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Divergence against a sparse teacher that only revealed its top-k tokens.

    Both distributions are coarse-grained onto the same ``k + 1`` buckets: the ``k`` teacher
    tokens, and a "rest" bucket holding everything else. For the teacher the rest mass is
    ``1 - sum(top-k probs)``; for the student it is its softmax mass outside the k ids, computed
    as a log-sum-exp over the remaining logits (not ``1 - sum``, which cancels catastrophically
    when the student is confident). The divergence of the bucketed distributions is a lower bound
    of the full one (data-processing inequality), grows monotonically as k grows along the
    teacher's ranking, and equals the dense loss at ``k = V``. The top-k tokens are trusted as
    given, so this is the biased-but-cheap estimator discussed by Anshumann et al. 2025 ("Sparse
    Logit Sampling"); the explicit tail bucket at least stops the student from being pushed to
    put all its mass on the k tokens, which is what renormalising the top-k would do.

    Args:
        student_logits: ``(..., V)``.
        topk_ids: ``(..., k)`` int64, distinct per position, ids in the student's vocabulary.
        topk_logprobs: ``(..., k)`` teacher log-probabilities of those ids. Padding entries are
            ``-inf``, with any otherwise-unused id: tokens the teacher did not list, so they stay in
            the rest bucket on both sides (as buckets of their own at p = 0 they took the student's
            mass out of its tail, and made reverse KL infinite); at ``k >= V``: ``fit_topk_to_vocab``.
        temperature: applied to the student only: the teacher's tail is unknown, so its sparse
            distribution cannot be re-tempered.
    """
    a, wp, wq = divergence_params(kind, beta=beta, alpha=alpha)
    lead, s, mask = _flatten(student_logits, labels, ignore_index)
    V = s.shape[-1]
    topk_ids, topk_logprobs, left_out = fit_topk_to_vocab(topk_ids, topk_logprobs, V)
    ids = topk_ids.reshape(s.shape[0], -1)
    z = _acc(s) / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    z_ids = z.gather(-1, ids)
    lq = z_ids - lse
    lp = teacher_bucket_logprobs(topk_logprobs.reshape(ids.shape), V,
                                 None if left_out is None else left_out.reshape(-1, 1)).to(lq.dtype)
    if ids.shape[-1] < V:
        pad = torch.isneginf(lp[..., : ids.shape[-1]])
        # The rest: every logit but the listed ids' (a padding id keeps its own).
        lse_rest = torch.logsumexp(z.scatter(-1, ids, z_ids.masked_fill(~pad, float("-inf"))), dim=-1, keepdim=True)
        lq = torch.cat([lq, lse_rest - lse], dim=-1)
        lp = lp.clamp(min=torch.finfo(lp.dtype).min)
        # A padding bucket is empty on both sides: equal log-masses add nothing to any divergence.
        lq = torch.where(F.pad(pad, (0, 1), value=False), lp, lq)
    return _reduce(divergence_from_logprobs(lq, lp, a, wp, wq), mask, lead, reduction)


# --- label-level distributions (classification; tokenizer-agnostic) ---------------------------


def label_distribution_kd(
    student_logits: torch.Tensor,
    label_token_ids: torch.Tensor,
    teacher_label_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Divergence between the teacher's distribution over ``K`` class labels and the student's
    logits gathered at the ``K`` label token ids, renormalised over those ``K``.

    Only the label ids are needed in the student's vocabulary, so teacher and student may use
    different tokenizers (the teacher's distribution can come from an API, a local model or
    human soft labels).

    Args:
        student_logits: ``(N, V)`` at the position that predicts the label (first label token).
        label_token_ids: ``(K,)`` shared by all rows, or ``(N, K)``; student-vocabulary ids.
        teacher_label_logprobs: ``(N, K)`` log-scores, renormalised over ``K`` here, so raw API
            logprobs of the label tokens or ``log`` of probabilities both work; ``-inf`` allowed.
        mask: optional ``(N,)`` bool, ``False`` rows are ignored.
        temperature: divides student logits and teacher log-scores (the teacher's K-way
            distribution is complete, so it can be re-tempered).
    """
    a, wp, wq = divergence_params(kind, beta=beta, alpha=alpha)
    s = _acc(student_logits)
    ids = label_token_ids if label_token_ids.dim() == 2 else label_token_ids.expand(s.shape[0], -1)
    ls = torch.log_softmax(s.gather(-1, ids) / temperature, dim=-1)
    lt = torch.log_softmax(_acc(teacher_label_logprobs.detach()).to(ls.dtype) / temperature, dim=-1)
    per = divergence_from_logprobs(ls, lt, a, wp, wq)
    return _reduce(per, None if mask is None else mask.reshape(-1), per.shape, reduction)
