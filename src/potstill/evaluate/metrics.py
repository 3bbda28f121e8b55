"""Task metrics for evaluate: pure functions over parsed outputs, each checked by hand in tests.

Classification: accuracy, macro-F1, confusion matrix, expected calibration error (ECE).
JSON extraction: validity rate, field-level precision/recall/F1 (micro), exact match.
Free text: chrF (Popovic 2015, as sacrebleu computes it) and ROUGE-L (Lin 2004), sentence level.
Between two per-example measures: Spearman's rank correlation (the judge's verdicts and chrF).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from potstill.tasks.base import nfc
from potstill.tasks.extraction import json_text

INVALID = "(invalid)"


def accuracy(preds: Sequence[Any], refs: Sequence[Any]) -> float | None:
    """Share of positions where ``pred == ref``; positions without a reference (None) are skipped."""
    pairs = [(p, r) for p, r in zip(preds, refs) if r is not None]
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else None


def macro_f1(preds: Sequence[Any], refs: Sequence[Any]) -> float | None:
    """Unweighted mean of per-label F1 = 2TP / (2TP + FP + FN).

    Averaged over the labels that occur as a reference or a (valid) prediction, so a label absent
    from both does not count as a zero. An invalid prediction (None) is a miss for its reference.
    """
    pairs = [(p, r) for p, r in zip(preds, refs) if r is not None]
    if not pairs:
        return None
    labels = {r for _, r in pairs} | {p for p, _ in pairs if p is not None}
    f1s = []
    for lab in labels:
        tp = sum(p == lab and r == lab for p, r in pairs)
        fp = sum(p == lab and r != lab for p, r in pairs)
        fn = sum(p != lab and r == lab for p, r in pairs)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def confusion_matrix(preds: Sequence[Any], refs: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """Counts with rows = reference label and columns = predicted label (plus ``(invalid)`` if any)."""
    cols = list(labels) + ([INVALID] if any(p is None or p not in labels for p in preds) else [])
    index = {c: i for i, c in enumerate(cols)}
    rows = list(labels)
    m = [[0] * len(cols) for _ in rows]
    for p, r in zip(preds, refs):
        if r is None or r not in labels:
            continue
        m[rows.index(r)][index[p if p in labels else INVALID]] += 1
    return {"rows": rows, "cols": cols, "counts": m}


def calibration(confidence: Sequence[float], correct: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over equal-width bins, and the bins for a reliability diagram.

    ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|, bin b holding confidences in (b/n_bins, (b+1)/n_bins]
    (a confidence of exactly 0 goes to the first bin). ``confidence`` is the probability the model
    gave its own answer; ``correct`` is 1.0 where that answer matched the reference.
    """
    n = len(confidence)
    bins = [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": 0, "conf_sum": 0.0, "acc_sum": 0.0} for b in range(n_bins)]
    for c, ok in zip(confidence, correct):
        # ceil(c * n_bins) - 1: right-closed bins. Rounded first, so that an edge stays in the bin it
        # closes (0.7 * 10 is 7.000000000000001 in floating point, whose ceil is 8).
        b = min(n_bins - 1, max(0, math.ceil(round(c * n_bins, 9)) - 1))
        bins[b]["n"] += 1
        bins[b]["conf_sum"] += c
        bins[b]["acc_sum"] += ok
    ece = 0.0
    out = []
    for b in bins:
        if b["n"]:
            conf, acc = b["conf_sum"] / b["n"], b["acc_sum"] / b["n"]
            ece += b["n"] / n * abs(acc - conf)
            out.append({"lo": b["lo"], "hi": b["hi"], "n": b["n"], "confidence": conf, "accuracy": acc})
    return {"ece": ece if n else None, "n": n, "bins": out}


def ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span: [10, 20, 20, 30] -> [1, 2.5, 2.5, 4]."""
    v = np.asarray(x, dtype=float)
    order = np.argsort(v, kind="stable")
    s = v[order]
    first = np.r_[True, s[1:] != s[:-1]]  # where each run of equal values starts, in sorted order
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]  # one past each run's last position
    out = np.empty(len(v))
    out[order] = ((starts + ends + 1) / 2)[np.cumsum(first) - 1]  # mean of the 1-based ranks starts+1 .. ends
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Spearman 1904): Pearson's correlation of the tie-averaged ranks,
    as scipy.stats.spearmanr computes it; None where either side has one value only (no order to compare)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    rx, ry = ranks(x), ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / den) if den else None


# --------------------------------------------------------------------------- JSON extraction


def _items(obj: Any) -> set[tuple[str, str]]:
    """Top-level (field, canonical JSON value) pairs of a dict; a list's elements (a parallel tools
    task's calls) as ("[]", value) pairs; anything else has none."""
    if isinstance(obj, list):
        try:
            return {("[]", json_text(v)) for v in obj}
        except TypeError:
            return set()
    if not isinstance(obj, dict):
        return set()
    return {(nfc(str(k)), json_text(v)) for k, v in obj.items()}


def field_prf(preds: Sequence[Any], refs: Sequence[Any]) -> dict[str, float | None]:
    """Micro precision/recall/F1 over top-level fields: a field counts when its value equals the reference's.

    An invalid prediction has no fields, so it lowers recall but not precision.
    """
    tp = n_pred = n_ref = 0
    for p, r in zip(preds, refs):
        if r is None:
            continue
        pi, ri = _items(p), _items(r)
        tp += len(pi & ri)
        n_pred += len(pi)
        n_ref += len(ri)
    prec = tp / n_pred if n_pred else None
    rec = tp / n_ref if n_ref else None
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if prec is not None and rec is not None else None)
    return {"precision": prec, "recall": rec, "f1": f1}


def exact_match(preds: Sequence[Any], refs: Sequence[Any]) -> float | None:
    """Share of predictions equal to the reference as whole JSON values (field order ignored)."""
    pairs = [(p, r) for p, r in zip(preds, refs) if r is not None]
    if not pairs:
        return None
    return sum(_canon(p) is not None and _canon(p) == _canon(r) for p, r in pairs) / len(pairs)


def _canon(x: Any) -> str | None:
    """Canonical JSON text of a parsed value; None for a parse failure (which equals nothing)."""
    try:
        return json_text(x)
    except TypeError:
        return None


def validity_rate(parsed: Sequence[Any], validate: Callable[[Any], str | None]) -> float | None:
    """Share of outputs the task's validator accepts (JSON that parses and satisfies the schema)."""
    return sum(validate(p) is None for p in parsed) / len(parsed) if parsed else None


# --------------------------------------------------------------------------- free text


def _char_ngrams(text: str, n: int) -> Counter:
    s = "".join(text.split())  # chrF ignores whitespace
    return Counter(s[i : i + n] for i in range(len(s) - n + 1))


def chrf(hyp: str, ref: str, max_n: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 1]: precision and recall averaged over character n-gram orders 1..max_n
    (orders where both strings have n-grams), then F-beta of the averages (beta=2 weighs recall)."""
    hyp, ref = nfc(hyp), nfc(ref)  # an accent as its own mark is the accented letter's one character
    precs, recs = [], []
    for n in range(1, max_n + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        nh, nr = sum(h.values()), sum(r.values())
        if nh and nr:
            match = sum((h & r).values())
            precs.append(match / nh)
            recs.append(match / nr)
    if not precs:
        return float(hyp.strip() == ref.strip())
    p, r = sum(precs) / len(precs), sum(recs) / len(recs)
    return (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0


# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, CJK punctuation, kana,
# Han (its extensions and compatibility forms too) and half-width katakana. Hangul is left out: Korean
# puts spaces between its words.
_UNSPACED = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF), (0x3000, 0x31FF),
             (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF61, 0xFF9F), (0x20000, 0x3FFFF))


def _unspaced(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _UNSPACED)


def words(text: str) -> list[str]:
    """``text``'s words: runs between white space, where each character of a script written without
    spaces (Chinese, Japanese, Thai) is a word of its own, with the marks that follow it (a Thai
    vowel sign, a dakuten), as ROUGE's Chinese tokenizers and sacrebleu's ``zh`` split them: a
    Japanese sentence is some twenty words, not one, and "東京で会議" shares 東京 with "東京の天気"."""
    out: list[str] = []
    for run in text.split():
        cur = ""
        for ch in run:
            if unicodedata.category(ch).startswith("M") and out and not cur and _unspaced(out[-1][-1]):
                out[-1] += ch  # a mark on the character before it
            elif _unspaced(ch):
                out.extend([cur, ch] if cur else [ch])
                cur = ""
            else:
                cur += ch
        if cur:
            out.append(cur)
    return out


def _lcs(a: list[str], b: list[str]) -> int:
    """The length of the longest common subsequence, bit-parallel (Hyyrö 2004): one big-integer step
    per token of ``a`` instead of a row of len(b) cells, so per-character ROUGE-L on two 2,000-character
    summaries takes 2,000 steps, not 4 million."""
    masks: dict[str, int] = {}
    for j, y in enumerate(b):
        masks[y] = masks.get(y, 0) | 1 << j
    full = (1 << len(b)) - 1
    v = full  # bit j clear: b[j] ends a common subsequence one longer than the one before it
    for x in a:
        u = v & masks.get(x, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 on lower-cased ``words`` (each character of Chinese, Japanese or Thai one of them):
    LCS/len(hyp) and LCS/len(ref), harmonic mean."""
    h, r = words(nfc(hyp).lower()), words(nfc(ref).lower())
    if not h or not r:
        return float(h == r)
    lcs = _lcs(h, r)
    if not lcs:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def text_scores(preds: Sequence[Any], refs: Sequence[Any]) -> dict[str, float | None]:
    pairs = [(str(p or ""), str(r)) for p, r in zip(preds, refs) if r is not None]
    if not pairs:
        return {"chrf": None, "rouge_l": None}
    return {"chrf": sum(chrf(p, r) for p, r in pairs) / len(pairs),
            "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / len(pairs)}


def task_metrics(task_type: str, preds: Sequence[Any], refs: Sequence[Any], labels: Sequence[str] = (),
                 confidence: Sequence[float] | None = None,
                 validate: Callable[[Any], str | None] | None = None) -> dict[str, Any]:
    """The metrics of one task type for predictions against one reference (the teacher or gold)."""
    n = sum(r is not None for r in refs)
    if task_type == "classification":
        out: dict[str, Any] = {"n": n, "accuracy": accuracy(preds, refs), "macro_f1": macro_f1(preds, refs),
                               "confusion": confusion_matrix(preds, refs, labels)}
        if confidence is not None:
            kept = [(c, float(p == r)) for c, p, r in zip(confidence, preds, refs) if r is not None]
            out["calibration"] = calibration([c for c, _ in kept], [k for _, k in kept])
        return out
    if task_type in ("extraction", "tools"):  # a call is JSON too: validity, its fields, exact match
        return {"n": n, "validity_rate": validity_rate(list(preds), validate) if validate else None,
                **{f"field_{k}": v for k, v in field_prf(preds, refs).items()}, "exact_match": exact_match(preds, refs)}
    return {"n": n, **text_scores(preds, refs)}
