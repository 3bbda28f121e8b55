"""What every benchmark's correctness section ends with; light to import (no potstill, no torch),
so GPU scripts that run where the CPU benchmarks' dependencies are missing can use it too."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def exit_on_failures(failures: list[str]) -> None:
    """A benchmark's correctness ending (after its JSON is written): each failure on stderr as one
    ``CORRECTNESS FAILED:`` line, and exit 1 if there is any."""
    for f in failures:
        print(f"CORRECTNESS FAILED: {f}", file=sys.stderr)
    if failures:
        raise SystemExit(1)


def finish(out: dict[str, Any], failures: list[str], path: str | Path | None) -> None:
    """A benchmark's ending: ``failures`` recorded in ``out``, ``out`` written as JSON to ``path`` (if
    given), then ``exit_on_failures``."""
    out["failures"] = failures
    if path:
        Path(path).write_text(json.dumps(out, indent=1) + "\n")
    exit_on_failures(failures)
