"""File modes that apply to the test: tests run as root in containers and CI, where they do not."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def without_root() -> Iterator[None]:
    """Mode bits apply: as root, by switching the effective uid to nobody (65534) and back."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A folder every account may look into (pytest's tmp_path lies under a 0700 one)."""
    d = Path(tempfile.mkdtemp(prefix="potstill-shared-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in (d, *d.rglob("*")):  # a folder a test made read-only, emptied too
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(d)
