"""One progress bar style for every long step (rich), quiet when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Progress and notes go to stderr; result tables to stdout. Off a terminal rich assumes 80
# columns, which truncates the comparison table, so give it room.
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 140)


def enabled() -> bool:
    return os.environ.get("POTSTILL_PROGRESS", "auto") == "always" or (
        os.environ.get("POTSTILL_PROGRESS", "auto") == "auto" and sys.stderr.isatty()
    )


@contextlib.contextmanager
def bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; shows done/total, elapsed, ETA and extra text fields."""
    if not description or not enabled():
        yield lambda n=1, **kw: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False,
    ) as p:
        task = p.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: object) -> None:
            info = "  ".join(f"{k}={v}" for k, v in fields.items())
            p.update(task, advance=n, info=info)

        yield advance


def say(msg: str) -> None:
    # soft_wrap: one message stays one line in a log (off a terminal rich would wrap at 80 columns).
    console.print(msg, highlight=False, soft_wrap=True)
