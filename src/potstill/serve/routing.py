"""Routing: the student answers unless a calibrated rule sends the request to the teacher.

Four rules, checked in this order (the first that holds is the reason given):
1. ``invalid_output``: the student's output fails the task's validation;
2. ``truncated``: a generated answer ran to the task's ``max_output_tokens`` without ending
   (under ``serve.escalate_truncated``): curate trains on whole answers only, so a student still
   writing at the budget has lost its way, a repetition loop most often, and is just as confident;
3. ``out_of_distribution``: the input's embedding is farther from every training input than
   ``ood_threshold`` (cosine distance to the nearest of the reference embeddings);
4. ``low_confidence``: the label margin (classification) or mean token log-prob (generation) is
   under ``confidence_threshold``.
Otherwise the student answers with reason ``confident``. (Before any of these, a chat longer than
the student's context goes to the teacher with reason ``too_long``: ``Service.answer``.)

Calibration reads the validation split, whose records hold the teacher's outputs: the student
answers each one, and the thresholds are chosen so the share escalated (or the end-to-end
agreement with the teacher) meets the target. End-to-end agreement counts an escalated input as
agreeing, because there the teacher itself answers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from potstill.errors import PotstillError

STUDENT_REASON = "confident"
# A cosine distance this small is float noise (batch padding, summation order), not novelty: an
# input copied from the training set must never count as out of distribution.
MIN_OOD = 1e-3


@dataclass
class Routing:
    confidence_threshold: float
    ood_threshold: float
    stats: dict[str, Any] = field(default_factory=dict)

    def decide(self, confidence: float, distance: float, invalid: str | None,
               truncated: bool = False) -> tuple[str, str]:
        """(who answers: 'student' | 'teacher', why). ``truncated``: the answer ran to the task's
        budget and the run escalates such answers (``serve.escalate_truncated``)."""
        if invalid is not None:
            return "teacher", "invalid_output"
        if truncated:
            return "teacher", "truncated"
        if distance > self.ood_threshold:
            return "teacher", "out_of_distribution"
        if confidence < self.confidence_threshold:
            return "teacher", "low_confidence"
        return "student", STUDENT_REASON

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ood_distance(embeddings: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Cosine distance of each unit embedding (N, H) to its nearest reference embedding (R, H)."""
    sims = embeddings.float() @ reference.float().T
    return (1.0 - sims.max(-1).values).clamp(min=0).tolist()


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(math.floor(k)), int(math.ceil(k))
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def outcome(threshold: float, confidence: list[float], agree: list[float], forced: list[bool]) -> dict[str, float]:
    """Escalation share and end-to-end agreement with the teacher at one confidence threshold."""
    esc = [f or c < threshold for c, f in zip(confidence, forced)]
    n = len(esc)
    return {
        "threshold": threshold,
        "escalation": sum(esc) / n,
        "agreement": sum(1.0 if e else a for e, a in zip(esc, agree)) / n,
        "student_alone_agreement": sum(agree) / n,
    }


def candidate_thresholds(confidence: list[float]) -> list[float]:
    """Every threshold that changes the decision on these inputs: -inf (none escalated by
    confidence), each distinct value (escalate those below it), +inf (all escalated)."""
    return [-math.inf, *sorted(set(confidence)), math.inf]


def sweep(confidence: list[float], agree: list[float], forced: list[bool], steps: int = 11) -> list[dict[str, float]]:
    """Outcomes at thresholds spaced by escalation share: 0%, 10%, ..., 100% of inputs below it."""
    out = []
    for k in range(steps):
        q = k / (steps - 1)
        t = -math.inf if q == 0 else (math.inf if q == 1 else _quantile(confidence, q))
        out.append(outcome(t, confidence, agree, forced))
    return out


def calibrate(confidence: list[float], agree: list[float], distance: list[float], invalid: list[bool],
              target_escalation: float = 0.2, target_agreement: float | None = None,
              ood_quantile: float = 0.98, ood_sample: list[float] | None = None) -> Routing:
    """Thresholds from validation inputs (see the module docstring).

    ``target_agreement``: the lowest confidence threshold (so the fewest escalations) whose
    end-to-end agreement reaches it; else the highest threshold escalating at most
    ``target_escalation`` of the inputs (OOD and invalid ones included).
    ``ood_sample``: more in-distribution distances (training inputs left out of the reference)
    pooled with the validation ones for the OOD quantile: the 0.98 quantile of a 50-input val
    split is nearly its maximum, and on the quickstart it put 12% of test inputs out of
    distribution instead of 2%; pooled, 4.4% (benchmarks/serve_calibration.json).
    """
    n = len(confidence)
    if n == 0 or not (len(agree) == len(distance) == len(invalid) == n):
        raise PotstillError("calibration needs at least one validation record with a teacher output")
    pool = [*distance, *(ood_sample or [])]
    ood = max(_quantile(pool, ood_quantile), MIN_OOD) if ood_quantile < 1 else math.inf
    forced = [inv or d > ood for inv, d in zip(invalid, distance)]
    outcomes = [outcome(t, confidence, agree, forced) for t in candidate_thresholds(confidence)]
    if target_agreement is not None:
        ok = [o for o in outcomes if o["agreement"] >= target_agreement - 1e-12]
        chosen = ok[0] if ok else outcomes[-1]
        target = {"target_agreement": target_agreement}
    else:
        ok = [o for o in outcomes if o["escalation"] <= target_escalation + 1e-12]
        chosen = ok[-1] if ok else outcomes[0]
        target = {"target_escalation": target_escalation}
    return Routing(
        confidence_threshold=chosen["threshold"],
        ood_threshold=ood,
        stats={
            **target, "n_val": n, "ood_quantile": ood_quantile, "n_ood_sample": len(pool),
            "val_escalation": chosen["escalation"], "val_agreement": chosen["agreement"],
            "val_student_alone_agreement": chosen["student_alone_agreement"],
            "val_forced_escalations": sum(forced),
            "sweep": sweep(confidence, agree, forced),
        },
    )
