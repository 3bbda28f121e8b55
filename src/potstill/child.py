"""Child processes that do not outlive potstill, however it ends.

A ``potstill serve`` on engine llamacpp runs a ``llama-server`` child. Exit handlers stop it on a
normal exit, Ctrl-C and SIGTERM, but a SIGKILL (``kill -9``, the kernel's OOM killer, a container
runtime's last resort) runs no Python at all, and the child went on holding its memory and port.
On Linux the kernel sends a child a signal when its parent goes (``PR_SET_PDEATHSIG``); but "its
parent" is the *thread* that forked it, so a child started from a short-lived thread (a request
handler's pool thread, a hot swap) would be killed when that thread ends. ``popen`` therefore forks
every child from one daemon thread that lives as long as the process. Elsewhere (macOS) it is a
plain ``subprocess.Popen``.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

_PR_SET_PDEATHSIG = 1
_lock = threading.Lock()
_jobs: "queue.SimpleQueue[tuple[Future, tuple, dict]] | None" = None


def _prctl() -> Any:
    """libc's ``prctl``, looked up before any fork (the child then only calls it)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl() if sys.platform.startswith("linux") else None


def _bind_to(parent: int):
    def bind() -> None:  # runs in the child, between fork and exec
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent went before the binding took hold
            os.kill(os.getpid(), signal.SIGTERM)
    return bind


def _serve(jobs: "queue.SimpleQueue") -> None:
    while True:
        fut, args, kw = jobs.get()
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(subprocess.Popen(*args, preexec_fn=_bind_to(os.getpid()), **kw))
            except BaseException as e:  # noqa: BLE001 - handed to the caller as it is
                fut.set_exception(e)


def popen(*args: Any, **kw: Any) -> subprocess.Popen:
    """``subprocess.Popen(*args, **kw)``, the child sent SIGTERM by the kernel if potstill dies
    (Linux; a plain ``Popen`` elsewhere)."""
    global _jobs
    if _PRCTL is None:
        return subprocess.Popen(*args, **kw)
    with _lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_jobs,), name="potstill-children", daemon=True).start()
        jobs = _jobs
    fut: Future = Future()
    jobs.put((fut, args, kw))
    return fut.result()


def run(args: list[str]) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)`` through ``popen``: a potstill killed
    outright takes the child with it (export's llama.cpp converter went on writing a GGUF the size of
    the model, orphaned). An exception here (Ctrl-C, SIGTERM's) kills it, as ``subprocess.run`` does."""
    # Its output read as UTF-8, whatever the locale (LC_ALL=C would read it as ASCII): messages, kept whole.
    with popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace") as p:
        try:
            out, err = p.communicate()
        except BaseException:
            p.kill()
            raise
    return subprocess.CompletedProcess(args, p.returncode, out, err)
