"""The int8 calibration a trained student carries (``student/int8_calibration.safetensors``):
what engine transformers' int8 layers need from real inputs, measured once when ``potstill train``
finishes, like llama.cpp's importance matrix.

* **Activation ranges**: each linear layer's largest activation per input channel over the
  calibration inputs, from which the int8 layers smooth their inputs (``models.int8.smoothing``).
* **The re-check margin** (``recheck_margin: auto``): the calibration inputs are scored by the
  fp32 student and by its smoothed int8 layers. An input's label noise is how much int8 overstates
  its top label's lead over any other label (``label_noise``): int8's label differs from fp32's
  only where that noise exceeds the input's int8 margin (top-1 minus top-2 label probability). So
  if all but a share ``EPS`` of inputs have noise under ``m``, re-checking every input whose
  int8 margin is under ``m`` leaves at most ``EPS`` of them with a label fp32 would not give. The
  margin is an order statistic of the measured noise chosen so that this holds with 95% confidence
  (``margin_from_noise``; ``EPS`` = 1% needs 299 inputs; with fewer the margin is the largest
  noise times ``SAFETY``). In practice the share is far smaller: a noisy
  input flips only if it is also a near tie.
  On the trained quickstart student (12 layers, 512 training inputs, the 250 test articles): the
  earlier rule (1.25x the largest of twice the largest change of one label probability) gave 0.233
  and re-checked 17.2% (``benchmarks/int8_calibration_onednn.json``); this one, with the float
  outlier channels (``models.int8.OUTLIERS``), gives 0.052 and re-checks 2.8%, both 100% fp32's
  label (``benchmarks/int8_calibration_outliers.json``; 0.081 and 5.2% with 8 channels).

The inputs are the run's training inputs (no labels are read; only the fp32 and int8 students'
answers are compared), so the test split stays unseen. A student without the file (a hub model, the
untrained student of ``pilot``) runs unsmoothed int8 layers and ``recheck_margin: auto`` means
``DEFAULT_MARGIN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from potstill import sidecar

FILE = "int8_calibration.safetensors"
VERSION = 1
DEFAULT_MARGIN = 0.3  # recheck_margin auto without one: about the 99.5th percentile of unsmoothed int8's noise
EPS = 0.01  # the calibrated margin bounds the share of un-rechecked inputs int8 can flip by this ...
CONFIDENCE = 0.95  # ... with this confidence (``margin_from_noise``)
SAFETY = 1.25  # too few inputs for that bound: the largest noise seen, times this
MAX_MARGIN = 0.5
MIN_MARGIN = 0.02


@dataclass
class Calibration:
    absmax: dict[str, torch.Tensor]  # linear layer name under the decoder -> (K,) activation maxima
    alpha: float
    inputs: int
    recheck_margin: float | None  # None: no label scores were compared (a generation task)
    info: dict[str, Any]  # the noise's quantiles and the agreement, as measured


def path(student: str | Path) -> Path:
    return Path(student) / FILE


def load(student: str | Path) -> Calibration | None:
    """The calibration stored with the student directory ``student``; None without one. A file of
    another version or an unreadable one is an error naming it (never silently plain int8)."""
    p = path(student)
    if not Path(student).is_dir() or not p.exists():
        return None
    absmax, info = sidecar.read(p, "int8 calibration", VERSION, "pt", "delete it to run uncalibrated int8")
    return Calibration(absmax=absmax, alpha=float(info["alpha"]), inputs=int(info["inputs"]),
                       recheck_margin=info.get("recheck_margin"), info=info)


def weights_of(identity: str) -> str | None:
    """The weights' digest in a model identity (``loading.model_identity``: ``spec@digest.rest``, then any
    ``#dtype`` or ``[:layers]``); None for a hub id, whose files were not hashed."""
    m = re.search(r"@([0-9a-f]{12}|nofile)(?=[.#\[]|$)", identity)
    return m.group(1) if m else None


def misfit(cal: Calibration, identity: str, layers: set[str]) -> str | None:
    """Why ``cal`` is not this model's (another student's file, or weights retrained in place beside
    the old file), or None. Its ranges would smooth the wrong layers and its margin bound another
    model's noise, with nothing to show for it; a shape that differs fails in ``quantize_linears``."""
    measured, now = cal.info.get("weights"), weights_of(identity)
    if measured and now and measured != now:
        return f"it was measured on weights {measured}, these are {now}"
    # A layer without ranges may be one no text forward runs (a vision tower's); one the model lacks is not.
    extra = sorted(set(cal.absmax) - layers)
    if extra:
        return f"it has ranges for {len(extra)} layers the model lacks, e.g. {extra[0]}"
    return None


def label_noise(p_fast: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """(N,) how much the fast engine overstates its top label's lead over any other label, against
    the reference: ``max_b [(f[a] - f[b]) - (r[a] - r[b])]`` with ``a`` the fast top label, at
    least 0. The reference's label differs from the fast one only where this exceeds the fast
    margin ``f[a] - max_b f[b]`` (``r[a] - r[b] < 0`` means ``f[a] - f[b] < noise``)."""
    f, r = p_fast.float(), p_ref.float()
    a = f.argmax(dim=-1, keepdim=True)
    lead_f, lead_r = f.gather(-1, a) - f, r.gather(-1, a) - r
    return (lead_f - lead_r).amax(dim=-1).clamp(min=0)


def _binom_cdf(k: int, n: int, p: float) -> float:
    from math import comb

    return sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


def margin_from_noise(noise: torch.Tensor, eps: float = EPS, confidence: float = CONFIDENCE) -> float:
    """The re-check margin from the calibration inputs' ``label_noise``: the k-th largest noise, k
    the largest such that at least k of n inputs lie above the noise's (1 - ``eps``) quantile with
    probability ``confidence`` (P(Binomial(n, eps) <= k - 1) <= 1 - confidence). Inputs with an
    int8 margin above it can flip only if their noise is above it too: at most ``eps`` of them.
    Too few inputs for k = 1: the largest noise times ``SAFETY``. Within [MIN_MARGIN, MAX_MARGIN]."""
    xs = noise.float().flatten().sort(descending=True).values
    n, k = len(xs), 0
    while k < n and _binom_cdf(k, n, eps) <= 1 - confidence:
        k += 1
    m = float(xs[k - 1]) if k else SAFETY * float(xs.max()) if n else MAX_MARGIN
    return float(min(MAX_MARGIN, max(MIN_MARGIN, m)))


def calibrate(student: str | Path, fmt: Any, messages: list[list[dict]], label_ids: list[int] | None,
              alpha: float | None = None, batch_size: int = 16, num_layers: int | None = None) -> Calibration:
    """Measure and write ``student``'s calibration from ``messages`` (see the module); returns it.
    ``label_ids`` None (a generation task): activation ranges only, no margin. ``num_layers``: the
    student as it is served (``student.num_layers``: a LoRA folder holds an adapter for a cut base,
    which loads whole otherwise). Written whole or not at all (a temporary file renamed into place)."""
    from potstill.engines.transformers import TransformersEngine
    from potstill.models.int8 import ALPHA, activation_absmax
    from potstill.models.scoring import decoder

    alpha = ALPHA if alpha is None else alpha
    ref = TransformersEngine.load(str(student), device="cpu", dtype="float32", num_layers=num_layers)
    ids = label_ids if label_ids else [ref.tokenizer.eos_token_id or 0]
    # The prompt's fixed prefix first, outside the recording: its first token carries activations
    # tens of times larger than any other (an attention sink), and ranges sized for it smoothed the
    # queries' channels worse than none. Per-token scales keep that token apart from the others.
    ref.score_labels(fmt, messages[:1], ids, batch_size=1)
    with activation_absmax(decoder(ref.lm.model)) as rec:
        p_ref = torch.softmax(ref.score_labels(fmt, messages, ids, batch_size=batch_size).logits, -1)
    absmax = rec.absmax
    info: dict[str, Any] = {"version": VERSION, "alpha": alpha, "inputs": len(messages), "recheck_margin": None,
                            "weights": weights_of(ref.identity)}  # checked at load (``misfit``)
    if label_ids:
        fast = TransformersEngine.load(str(student), device="cpu", dtype="float32", num_layers=num_layers)
        fast.quantize_int8(Calibration(absmax=absmax, alpha=alpha, inputs=len(messages), recheck_margin=None,
                                       info={}))
        p_fast = torch.softmax(fast.score_labels(fmt, messages, ids, batch_size=batch_size).logits, -1)
        noise = label_noise(p_fast, p_ref)
        info.update(recheck_margin=margin_from_noise(noise), noise_kind="lead", eps=EPS, confidence=CONFIDENCE,
                    noise={"median": float(noise.median()), "q99": float(noise.quantile(0.99)),
                           "max": float(noise.max())},
                    same_label_as_fp32=float((p_fast.argmax(-1) == p_ref.argmax(-1)).float().mean()))
    sidecar.write(path(student), {k: v.contiguous() for k, v in absmax.items()}, info, "pt")
    return Calibration(absmax=absmax, alpha=alpha, inputs=len(messages), recheck_margin=info["recheck_margin"],
                       info=info)
