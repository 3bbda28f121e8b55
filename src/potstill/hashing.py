"""Stable content hashes: the keys of the ledger cache and of the run manifest."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from potstill.errors import PotstillError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$POTSTILL_CACHE`` (default ``~/.cache/potstill``): converted models, engine formats, file digests."""
    return Path(os.environ.get("POTSTILL_CACHE", Path.home() / ".cache" / "potstill"))


# What a folder this account may not write answers: no permission, a read-only mount.
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def writing_cache(folder: Path) -> Iterator[None]:
    """Make ``folder``, a cache folder, and write into it: where it may not be written (a read-only home
    in a container, a shared cache of another account) one line naming it and the fix, not the bare
    'Permission denied: .../converted' that said nothing of the cache or of ``POTSTILL_CACHE``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as e:
        if e.errno not in NOT_WRITABLE:
            raise
        raise PotstillError(f"{folder}: the potstill cache cannot be written there ({e.strerror}); set "
                            "POTSTILL_CACHE to a writable folder (export POTSTILL_CACHE=/tmp/potstill-cache)") from None


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal objects hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


# sha256 by (file, inode, size, mtime): one command fingerprints a model directory for several
# stages and fields; a file rewritten in place or replaced gets another key, so it is read again.
_DIGESTS: dict[tuple, str] = {}
# Files this big also keep their digest across commands, in $POTSTILL_CACHE/digests.sqlite: every
# load fingerprints the model (``loading.model_identity``), and re-reading a 5 GB shard each time
# costs seconds (sha256 runs at about 1 GB/s on one core). The row is keyed by device, inode, size,
# mtime and ctime: any write changes the ctime, which no tool can set back, so a stale row is never
# read for a changed file. Smaller files are quicker to hash than to look up. One row per file: a
# new version (the same inode rewritten, or another file renamed over the same path, as
# save_pretrained and atomic writes do) replaces the old one's, which no lookup could match again.
DISK_MEMO_MIN_BYTES = 64 << 20
DIGESTS_DB = "digests.sqlite"
_SCHEMA = ("CREATE TABLE digests (dev INTEGER NOT NULL, ino INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,"
           " mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (dev, ino))")


def _disk_memo(path: str, st: os.stat_result, digest: str | None = None) -> str | None:
    """Look up (``digest`` None) or store a file's digest; a cache that cannot be read or written is skipped."""
    try:
        db_path = cache_dir() / DIGESTS_DB
        if digest is None and not db_path.exists():
            return None
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as db, db:
            cols = {r[1] for r in db.execute("PRAGMA table_info(digests)")}
            if "ino" not in cols:  # none yet, or the first version's (a row per file version, by a JSON key)
                db.execute("DROP TABLE IF EXISTS digests")
                db.execute(_SCHEMA)
            if digest is None:
                row = db.execute("SELECT sha256 FROM digests WHERE dev=? AND ino=? AND size=? AND mtime_ns=?"
                                 " AND ctime_ns=?", (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                                    st.st_ctime_ns)).fetchone()
                return row[0] if row else None
            db.execute("DELETE FROM digests WHERE path=? AND NOT (dev=? AND ino=?)", (path, st.st_dev, st.st_ino))
            db.execute("INSERT OR REPLACE INTO digests VALUES (?,?,?,?,?,?,?)",
                       (st.st_dev, st.st_ino, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest))
    except (OSError, sqlite3.Error) as e:  # a read-only or full cache: hash again next time
        log.debug("file digest cache skipped: %s", e)
    return None


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    big = st.st_size >= DISK_MEMO_MIN_BYTES
    if big and (known := _disk_memo(key[0], st)):
        _DIGESTS[key] = known
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _DIGESTS[key] = h.hexdigest()
    if big:
        _disk_memo(key[0], st, _DIGESTS[key])
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
