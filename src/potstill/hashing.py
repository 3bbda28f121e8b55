"""Stable content hashes: the keys of the ledger cache and of the run manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal objects hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


# sha256 by (file, inode, size, mtime): one command fingerprints a model directory for several
# stages and fields; a file rewritten in place or replaced gets another key, so it is read again.
_DIGESTS: dict[tuple, str] = {}


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def hash_path(path: str | Path) -> str:
    """Hash a file, or every file under a directory (relative names included)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(hash_file(p).encode())
    return h.hexdigest()
