"""Curate: validate teacher outputs, drop duplicates, split, and write a dataset card.

- Invalid records (teacher errors, answers outside the label set, schema violations) go to
  ``rejected.jsonl`` with their reason; they are never trained on.
- Exact duplicates (after lower-casing and whitespace folding) keep their first occurrence, so
  no input can sit on both sides of the train/test border.
- Splits are assigned by a seeded hash of the normalised input, so a record keeps its split when
  new records arrive. A fraction (< 1) is a hash threshold; a count (>= 1) takes the records with
  the lowest hashes, for an exact size.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from potstill.config import Config
from potstill.records import Record


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _rank(text: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the input text and the seed."""
    digest = hashlib.sha256(f"{seed}:{normalise(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Curated:
    train: list[Record]
    val: list[Record]
    test: list[Record]
    rejected: list[Record]
    card: dict[str, Any]


def split(records: list[Record], val: float, test: float, seed: int) -> tuple[list[Record], list[Record], list[Record]]:
    ranked = sorted(records, key=lambda r: _rank(r.text, seed))
    if test >= 1 or val >= 1:
        n_test = int(test) if test >= 1 else round(test * len(ranked))
        n_val = int(val) if val >= 1 else round(val * len(ranked))
        return ranked[n_test + n_val :], ranked[n_test : n_test + n_val], ranked[:n_test]
    tr, va, te = [], [], []
    for r in ranked:
        u = _rank(r.text, seed)
        (te if u < test else va if u < test + val else tr).append(r)
    return tr, va, te


def curate(cfg: Config, records: list[Record]) -> Curated:
    c = cfg.curate
    counts: dict[str, int] = {"input": len(records)}
    rejected = [r for r in records if not r.valid]
    valid = [r for r in records if r.valid]
    counts["invalid"] = len(rejected)
    if c.dedup:
        seen: set[str] = set()
        kept = []
        for r in valid:
            key = normalise(r.text)
            if key in seen:
                dup = r.model_copy(deep=True)
                dup.valid, dup.invalid_reason = False, "exact duplicate input"
                rejected.append(dup)
                continue
            seen.add(key)
            kept.append(r)
        counts["duplicates"] = len(valid) - len(kept)
        valid = kept
    train, val, test = split(valid, c.val, c.test, c.seed)
    if c.max_train is not None:
        train = train[: c.max_train]
    counts.update(train=len(train), val=len(val), test=len(test))
    reasons = Counter((r.invalid_reason or "").split(":")[0] for r in rejected)
    teacher_labels = Counter(r.output for r in valid) if cfg.task.labels else None
    card = {
        "counts": counts,
        "rejected_reasons": dict(reasons),
        "teacher_label_distribution": dict(teacher_labels) if teacher_labels else None,
        "teacher": {"type": cfg.teacher.type, "model": cfg.teacher.model, "terms_of_use": cfg.teacher.terms or "not given"},
        "inputs": {"path": cfg.data.inputs, "source": cfg.data.source, "license": cfg.data.license},
        "split": {"val": c.val, "test": c.test, "seed": c.seed, "method": "seeded hash of the normalised input"},
        "review_decisions": None,
    }
    return Curated(train=train, val=val, test=test, rejected=rejected, card=card)


def card_markdown(card: dict[str, Any]) -> str:
    c = card["counts"]
    lines = [
        "# Dataset card", "",
        "## Counts at each step", "",
        "| step | records |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in c.items()], "",
    ]
    if card["rejected_reasons"]:
        lines += ["## Rejected", "", *[f"- {k or 'unknown'}: {v}" for k, v in card["rejected_reasons"].items()], ""]
    if card["teacher_label_distribution"]:
        lines += ["## Teacher label distribution (valid records)", "",
                  *[f"- {k}: {v}" for k, v in sorted(card["teacher_label_distribution"].items())], ""]
    t, i = card["teacher"], card["inputs"]
    lines += [
        "## Provenance", "",
        f"- Teacher: {t['type']} `{t['model']}`",
        f"- Teacher terms of use: {t['terms_of_use']}",
        f"- Inputs: {i['source']}",
        f"- Input licence: {i['license']}",
        f"- Split: {card['split']['method']} (val={card['split']['val']}, test={card['split']['test']}, seed={card['split']['seed']})",
        f"- Review decisions: {card['review_decisions'] or 'none'}", "",
    ]
    return "\n".join(lines)
