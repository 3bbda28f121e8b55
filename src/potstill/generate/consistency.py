"""Self-consistency over n samples: the majority answer and how many samples agree with it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable


def majority(samples: list[str], parse: Callable[[str], Any]) -> tuple[str | None, float]:
    """(the first sample whose parsed answer is the most common, share of samples that agree).

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
    return samples[keys.index(best)], counts[best] / len(samples)
