"""The int8 calibration a trained student carries (``student/int8_calibration.safetensors``):
what engine transformers' int8 layers need from real inputs, measured once when ``potstill train``
finishes, like llama.cpp's importance matrix.

* **Activation ranges**: each linear layer's largest activation per input channel over the
  calibration inputs, from which the int8 layers smooth their inputs (``models.int8.smoothing``).
* **The re-check margin** (``recheck_margin: auto``): the calibration inputs are scored by the
  fp32 student and by its smoothed int8 layers, and the label noise of each input is twice the
  largest change of one label probability. int8 can only flip an input whose int8 margin (top-1
  minus top-2 label probability) is below its noise, so re-checking every input under the largest
  noise seen (times ``SAFETY``) re-checks every input that noise as large as any seen could flip.
  On the trained quickstart student (12 layers; its first 512 training inputs;
  ``benchmarks/int8_calibration.json``):
  largest noise 0.137 with smoothing, margin 0.171; on the 250 test articles 11.6% re-checked
  instead of 24.8% under the fixed 0.3, both 100% fp32's label, and the inputs whose smoothed int8
  label differed from fp32's had int8 margins of 0.048 or less.

The inputs are the run's training inputs (no labels are read; only the fp32 and int8 students'
answers are compared), so the test split stays unseen. A student without the file (a hub model, the
untrained student of ``pilot``) runs unsmoothed int8 layers and ``recheck_margin: auto`` means
``DEFAULT_MARGIN``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FILE = "int8_calibration.safetensors"
VERSION = 1
DEFAULT_MARGIN = 0.3  # recheck_margin auto without one: about the 99.5th percentile of unsmoothed int8's noise
SAFETY = 1.25  # the calibrated margin: the largest noise seen, times this
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
    from safetensors import safe_open

    from potstill.errors import PotstillError

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            absmax = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(meta["potstill"])
    except Exception as e:  # noqa: BLE001 - safetensors' errors name no file
        raise PotstillError(f"{p}: not a readable int8 calibration ({type(e).__name__}: {e}); delete it to run "
                            "uncalibrated int8, or run `potstill train` again") from None
    if info.get("version") != VERSION:
        raise PotstillError(f"{p}: int8 calibration version {info.get('version')}, this potstill reads {VERSION}; "
                            "delete it or run `potstill train` again")
    return Calibration(absmax=absmax, alpha=float(info["alpha"]), inputs=int(info["inputs"]),
                       recheck_margin=info.get("recheck_margin"), info=info)


def label_noise(p_fast: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """(N,) twice the largest change of one label probability: an upper bound on how far int8 moves
    an input's top-1 minus top-2 margin, so on the margin under which its label can flip."""
    return 2 * (p_fast.float() - p_ref.float()).abs().amax(dim=-1)


def margin_from_noise(noise: torch.Tensor) -> float:
    return float(min(MAX_MARGIN, max(MIN_MARGIN, SAFETY * float(noise.max()))))


def calibrate(student: str | Path, fmt: Any, messages: list[list[dict]], label_ids: list[int] | None,
              alpha: float | None = None, batch_size: int = 16) -> Calibration:
    """Measure and write ``student``'s calibration from ``messages`` (see the module); returns it.
    ``label_ids`` None (a generation task): activation ranges only, no margin. Written whole or not
    at all (a temporary file renamed into place)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    from potstill.engines.transformers import TransformersEngine
    from potstill.models.int8 import ALPHA, activation_absmax
    from potstill.models.scoring import decoder

    alpha = ALPHA if alpha is None else alpha
    ref = TransformersEngine.load(str(student), device="cpu", dtype="float32")
    ids = label_ids if label_ids else [ref.tokenizer.eos_token_id or 0]
    # The prompt's fixed prefix first, outside the recording: its first token carries activations
    # tens of times larger than any other (an attention sink), and ranges sized for it smoothed the
    # queries' channels worse than none. Per-token scales keep that token apart from the others.
    ref.score_labels(fmt, messages[:1], ids, batch_size=1)
    with activation_absmax(decoder(ref.lm.model)) as rec:
        p_ref = torch.softmax(ref.score_labels(fmt, messages, ids, batch_size=batch_size).logits, -1)
    absmax = rec.absmax
    info: dict[str, Any] = {"version": VERSION, "alpha": alpha, "inputs": len(messages), "recheck_margin": None}
    if label_ids:
        fast = TransformersEngine.load(str(student), device="cpu", dtype="float32")
        fast.quantize_int8(Calibration(absmax=absmax, alpha=alpha, inputs=len(messages), recheck_margin=None,
                                       info={}))
        p_fast = torch.softmax(fast.score_labels(fmt, messages, ids, batch_size=batch_size).logits, -1)
        noise = label_noise(p_fast, p_ref)
        info.update(recheck_margin=margin_from_noise(noise), safety=SAFETY,
                    noise={"median": float(noise.median()), "q99": float(noise.quantile(0.99)),
                           "max": float(noise.max())},
                    same_label_as_fp32=float((p_fast.argmax(-1) == p_ref.argmax(-1)).float().mean()))
    target = path(student)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".int8_calibration.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in absmax.items()}, tmp, metadata={"potstill": json.dumps(info)})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Calibration(absmax=absmax, alpha=alpha, inputs=len(messages), recheck_margin=info["recheck_margin"],
                       info=info)
