"""Whether one answer may be trained on: the task's own check, then curate's length and format rules.

Two stages ask this of an answer: curate of each teacher answer (and sample) it keeps, and the review
server of a reviewer's edited answer before it is saved (so an edit that curate would set aside is
refused while the reviewer can still fix it). It lives with the tasks so that neither stage imports
the other's internals.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

from potstill.config import CurateConfig
from potstill.tasks.base import Task
from potstill.tasks.extraction import json_text


def output_problem(out: str, task: Task, c: CurateConfig) -> str | None:
    """Why one answer may not be trained on (the task's check, then curate's rules), or None."""
    reason = task.validate(task.parse(out))
    if reason is not None:
        return reason  # the answer itself stays on the record, in rejected.jsonl
    if len(out.strip()) < c.min_output_chars:
        return f"too short: {len(out.strip())} < {c.min_output_chars} characters"
    if c.max_output_chars is not None and len(out) > c.max_output_chars:
        return f"too long: {len(out)} > {c.max_output_chars} characters"
    if c.output_regex is not None and re.fullmatch(c.output_regex, out.strip(), flags=re.S) is None:
        return f"format: output does not match {c.output_regex!r}"
    return None


def vote(samples: list[str], parse: Callable[[str], Any], validate: Callable[[Any], str | None],
         check: Callable[[int, str], str | None] | None = None) -> tuple[int | None, float]:
    """(index of the first sample that gives the most common valid answer, share of all samples that give it).

    Samples are compared by their *parsed* answer (a label, a JSON object), so "Sport." and
    "sport" vote together. Ties go to the answer seen first. A sample the task cannot parse or
    validate (``validate`` gives a reason) counts against agreement but never wins, as in curate:
    three answers outside the label set must not outvote two that agree on a label. ``check(i, text)``:
    a further reason sample ``i`` may not win (curate's rules, ``output_problem``, and its cut at the
    token limit, which only the sample's index tells). With no valid
    sample: (0, 0.0), the first sample, which the task then reports invalid.

    Generate votes when it stores an n-sample answer, serve when it reuses one, curate again under
    its own rules: one rule for all three, here with the tasks so no stage imports another's.
    """
    if not samples:
        return None, 0.0
    keys: list[str | None] = []
    for i, s in enumerate(samples):
        try:
            parsed = parse(s)
            # Canonical JSON (tasks.extraction.json_text): {"n": 2} and {"n": 2.0} are one answer, true is not 1.
            ok = validate(parsed) is None and (check is None or check(i, s) is None)
            keys.append(json_text(parsed) if ok else None)
        except Exception:  # noqa: BLE001 - a sample the task cannot parse (or put in JSON) is invalid
            keys.append(None)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0, 0.0
    best = max(counts, key=lambda k: (counts[k], -keys.index(k)))
    return keys.index(best), counts[best] / len(samples)
