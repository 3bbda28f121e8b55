"""Temp files and folders of killed processes, named so that the next writer can remove them.

``records.atomic_write`` / ``atomic_dir`` write beside their target under a temp name and rename it
into place; a process killed outright (SIGKILL, the OOM killer) runs no cleanup, and its temp stayed
for good: a partial checkpoint in ``student.ckpt/`` (weights and optimizer state) per crash, a
hidden GGUF the size of the model in ``RUN/export/``, an f32 copy in /tmp. Their names carry their
maker (``owner``): its pid, and a digest of its host and pid namespace. ``remove`` deletes those
whose maker is gone; a name from another host on a shared disk, or another container, has another
digest and is never taken for dead, and neither is one whose pid is alive (or reused since).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

from potstill.ledger_runs import process_alive


def _where() -> str:
    try:  # a pid names a process only within its pid namespace (a container has its own)
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return hashlib.sha256(f"{socket.gethostname()}/{ns}".encode()).hexdigest()[:8]


_WHERE = _where()
# .NAME-PID.WHERE-XXXXXXXX (a folder), .NAME.PID.WHERE.XXXXXXXX.tmp (a file), NAME-PID.WHERE-XXXXXXXX
# (in /tmp): tempfile's 8 random characters after the owner.
_TEMP = re.compile(r"^\.?(?P<name>.+)[-.](?P<pid>\d+)\.(?P<where>[0-9a-f]{8})[-.][a-z0-9_]{8}(?:\.tmp)?$")


def owner() -> str:
    """This process as a temp name carries it: ``PID.WHERE``."""
    return f"{os.getpid()}.{_WHERE}"


def remove(parent: Path, name: Callable[[str], bool]) -> None:
    """Remove from ``parent`` the temps named with ``owner`` for a target whose name ``name`` accepts,
    where their maker ran on this host and namespace and is gone. Never raises: a temp that cannot be
    removed (another user's) stays."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for e in entries:
        m = _TEMP.match(e.name)
        if (not m or m["where"] != _WHERE or int(m["pid"]) == os.getpid() or not name(m["name"])
                or process_alive(int(m["pid"]))):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
        except OSError:
            pass


def temp_dir(prefix: str) -> "tempfile.TemporaryDirectory[str]":
    """``tempfile.TemporaryDirectory`` named ``PREFIX-PID.WHERE-XXXXXXXX``, after removing those of
    ``prefix`` that killed processes left in the temp folder (export's f32 GGUF, a merged model)."""
    remove(Path(tempfile.gettempdir()), lambda name: name == prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}-{owner()}-")
