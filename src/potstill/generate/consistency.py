"""Self-consistency over n samples: the majority answer and how many samples agree with it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable


def vote(samples: list[str], parse: Callable[[str], Any]) -> tuple[int | None, float]:
    """(index of the first sample whose parsed answer is the most common, share of samples that agree).

    Samples are compared by their *parsed* answer (a label, a JSON object), so "Sport." and
    "sport" vote together. Ties go to the answer seen first. Unparseable samples vote for None.
    """
    if not samples:
        return None, 0.0
    keys = []
    for s in samples:
        try:
            keys.append(json.dumps(parse(s), sort_keys=True, default=str))
        except Exception:  # noqa: BLE001 - a sample the task cannot parse is one vote for "invalid"
            keys.append("null")
    counts = Counter(keys)
    best = max(counts, key=lambda k: (counts[k], -keys.index(k)))
    return keys.index(best), counts[best] / len(samples)


def majority(samples: list[str], parse: Callable[[str], Any]) -> tuple[str | None, float]:
    """(the first sample whose parsed answer is the most common, share of samples that agree); see ``vote``."""
    i, agreement = vote(samples, parse)
    return (None if i is None else samples[i]), agreement


def sample_logprobs(answer: dict[str, Any], i: int) -> list[dict[str, Any]] | None:
    """The top-k log-probs of sample ``i`` of a stored n-sample answer, or None where they are not
    known: token-level KD must train on the log-probs of the very text it is taught. A ledger row
    written before ``sample_logprobs`` existed holds choice 0's only, good for a sample of the same text."""
    per_sample = answer.get("sample_logprobs")
    if per_sample is not None:
        return per_sample[i] if i < len(per_sample) else None
    samples = answer.get("samples") or []
    return answer.get("logprobs") if samples and samples[0] == samples[i] else None
