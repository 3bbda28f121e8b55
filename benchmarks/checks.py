"""What every benchmark's correctness section ends with; light to import (no potstill, no torch),
so GPU scripts that run where the CPU benchmarks' dependencies are missing can use it too."""

from __future__ import annotations

import sys


def exit_on_failures(failures: list[str]) -> None:
    """A benchmark's correctness ending (after its JSON is written): each failure on stderr as one
    ``CORRECTNESS FAILED:`` line, and exit 1 if there is any."""
    for f in failures:
        print(f"CORRECTNESS FAILED: {f}", file=sys.stderr)
    if failures:
        raise SystemExit(1)
