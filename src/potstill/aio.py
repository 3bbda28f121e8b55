"""``asyncio.run`` whose main task a SIGTERM cancels, the way asyncio itself takes Ctrl-C.

``asyncio.run`` takes Ctrl-C by cancelling its main task and raising KeyboardInterrupt once the task
has unwound, but only where SIGINT has Python's default handler: in a background job of a
non-interactive shell (``nohup potstill generate ... &``, many CI runners and supervisors) SIGINT is
ignored, asyncio installs nothing, and SIGTERM raised inside whichever task step was running. That
task kept the exception, and asyncio printed "Task exception was never retrieved" and some 40 lines
of traceback after the closing line. The main task here is potstill's own, so the SIGTERM handler
(``cli._on_sigterm``) cancels it whatever SIGINT's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# The running loop and main task of each ``run`` (a stack: a nested run in another thread is not
# potstill's, but one entry per call keeps the pairing plain).
_running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []
_cancelled: list[asyncio.Task] = []


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``; KeyboardInterrupt where ``cancel`` stopped it."""
    async def main() -> T:
        _running.append((asyncio.get_running_loop(), asyncio.current_task()))
        try:
            return await coro
        finally:
            _running.pop()

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if _cancelled:
            _cancelled.clear()
            raise KeyboardInterrupt from None
        raise


def cancel() -> bool:
    """From a signal handler in the main thread: cancel the running ``run``'s main task (its requests
    unwind as under Ctrl-C) and say True; False where none runs."""
    if not _running:
        return False
    loop, task = _running[-1]
    if task.done():
        return False
    _cancelled.append(task)
    task.cancel()
    loop.call_soon_threadsafe(lambda: None)  # wakes a loop asleep in select() (what asyncio's own handler does)
    return True
