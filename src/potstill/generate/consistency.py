"""Self-consistency over n samples: the majority answer and how many samples agree with it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable


def vote(samples: list[str], parse: Callable[[str], Any],
         validate: Callable[[Any], str | None]) -> tuple[int | None, float]:
    """(index of the first sample that gives the most common valid answer, share of all samples that give it).

    Samples are compared by their *parsed* answer (a label, a JSON object), so "Sport." and
    "sport" vote together. Ties go to the answer seen first. A sample the task cannot parse or
    validate (``validate`` gives a reason) counts against agreement but never wins, as in curate:
    three answers outside the label set must not outvote two that agree on a label. With no
    valid sample: (0, 0.0), the first sample, which the task then reports invalid.
    """
    if not samples:
        return None, 0.0
    keys: list[str | None] = []
    for s in samples:
        try:
            parsed = parse(s)
            keys.append(json.dumps(parsed, sort_keys=True) if validate(parsed) is None else None)
        except Exception:  # noqa: BLE001 - a sample the task cannot parse (or put in JSON) is invalid
            keys.append(None)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0, 0.0
    best = max(counts, key=lambda k: (counts[k], -keys.index(k)))
    return keys.index(best), counts[best] / len(samples)


def majority(samples: list[str], parse: Callable[[str], Any],
             validate: Callable[[Any], str | None]) -> tuple[str | None, float]:
    """(the sample ``vote`` picks, share of samples that agree with it)."""
    i, agreement = vote(samples, parse, validate)
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
