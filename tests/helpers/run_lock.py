"""Another process holding a run directory, as a potstill stage does while it runs (``rundir.exclusive``)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HOLD = """
import sys
from potstill.rundir import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextmanager
def held_elsewhere(run: Path) -> Iterator[None]:
    """``run`` held by a second Python process for the with block (its lock taken before the block starts)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held", "the holding process did not take the run directory"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
