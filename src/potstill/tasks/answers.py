"""Whether one answer may be trained on: the task's own check, then curate's length and format rules.

Two stages ask this of an answer: curate of each teacher answer (and sample) it keeps, and the review
server of a reviewer's edited answer before it is saved (so an edit that curate would set aside is
refused while the reviewer can still fix it). It lives with the tasks so that neither stage imports
the other's internals.
"""

from __future__ import annotations

import re

from potstill.config import CurateConfig
from potstill.tasks.base import Task


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
