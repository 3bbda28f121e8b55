"""One progress style for every long step: a rich bar on a terminal, plain lines off one.

``POTSTILL_PROGRESS`` picks: ``auto`` (the default: a bar when stderr is a terminal, else a line
every ``POTSTILL_PROGRESS_INTERVAL`` seconds, 30 by default, so a run whose output goes to a log
still says where it is), ``always`` (the bar, even off a terminal) or ``never`` (nothing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from potstill.terminal import printable

_unread = threading.Event()


class _Console(Console):
    """A console whose reader may go away (`potstill run | head -1`). Rich ended the process there
    with exit 1 and no word, in the middle of a stage whose work was done (evaluate's eval.json written,
    the stage not marked done, so the next run evaluated again). Its output is dropped from then on
    (/dev/null in its descriptor's place, so later writes and the flush at exit do not fail), and the
    stage stops once it is recorded (``stop_if_unread``)."""

    def render_str(self, text: str, **kwargs) -> Any:
        # Every string rich prints (a message, its markup, a table's cell) passes here: control
        # characters from a record or a served request are shown, never acted on (``terminal``).
        return super().render_str(printable(text), **kwargs)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _unread.set()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self.file.fileno())
        except (AttributeError, OSError, ValueError):  # not a file with a descriptor
            pass
        finally:
            os.close(null)


def stop_if_unread() -> None:
    """Stop quietly where the reader of potstill's output went away, as a program killed by SIGPIPE
    does (exit 141): ``head`` has what it wanted. Called once a stage is recorded."""
    if _unread.is_set():
        raise SystemExit(128 + signal.SIGPIPE)


def echo(text: str) -> None:
    """One line of a command's result on stdout (`cost`, `requests`, the paths a command wrote), its
    control characters shown, not acted on (``terminal.printable``; JSON stays JSON): a reader
    that went away (`| head -1`) ends the command quietly with exit 141, as a stage's (``stop_if_unread``).
    Through click's echo it ended with exit 1 and no word, which a script reads as a failure."""
    try:
        print(printable(text), file=sys.stdout, flush=True)
    except BrokenPipeError:
        out.on_broken_pipe()  # /dev/null in the pipe's place: what is left unwritten goes there at exit
        raise SystemExit(128 + signal.SIGPIPE) from None


def closed_streams_to_devnull() -> None:
    """`potstill ... >&-` (a daemon, some cron setups): Python starts with sys.stdout None, and the
    first file opened after took descriptor 1, where a library's or a child process's output would
    have gone into it. /dev/null takes a closed descriptor's place, and the stream writes there."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        else:  # taken meanwhile by a file of its own: left to it
            fd = os.open(os.devnull, os.O_WRONLY)
        setattr(sys, name, open(fd, "w", encoding="utf-8", closefd=fd > 2))


def _tty(stream: object) -> bool:
    """Whether ``stream`` is a terminal; a closed one (``>&-``: None) is not."""
    return stream is not None and stream.isatty()


# Progress and notes go to stderr; result tables to stdout. Off a terminal rich assumes 80
# columns, which truncates the comparison table, so give it room.
console = _Console(stderr=True)
out = _Console(width=None if _tty(sys.stdout) else 140)


def size_text(n_bytes: float) -> str:
    """A file size for a person: '86 kB', '1.2 MB', '270 MB', '3.4 GB' (a tiny test model is not '0 MB')."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            v = n_bytes / scale
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{int(n_bytes)} B"


def _mode() -> str:
    mode = os.environ.get("POTSTILL_PROGRESS", "auto")
    if mode == "auto":
        return "bar" if _tty(sys.stderr) else "lines"
    return {"always": "bar", "never": "off"}.get(mode, "lines")


def enabled() -> bool:
    """True when long steps show a bar (a terminal, or POTSTILL_PROGRESS=always)."""
    return _mode() == "bar"


def quiet_library_bars() -> None:
    """Off a terminal (a run's output sent to a log), huggingface_hub's download bars and transformers'
    loading bars, which take their default from it, are off: tqdm redraws a bar by carriage returns,
    so a log got one line of hundreds of bars glued together beside potstill's own progress lines.
    On a terminal (or ``POTSTILL_PROGRESS=always``) they stay; an ``HF_HUB_DISABLE_PROGRESS_BARS``
    the user set is kept. Called before either library is imported (they read it at import)."""
    if _mode() != "bar":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def interval_s() -> float:
    try:
        return max(0.01, float(os.environ.get("POTSTILL_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Lines:
    """Counts like the bar, and a timer thread that prints one line per interval while it runs
    (a step stuck on one slow item still prints, with its elapsed time growing)."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.done, self.info = description, total, 0, ""
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.printed = 0

    def advance(self, n: int = 1, **fields: object) -> None:
        self.done += n
        if fields:
            self.info = "  ".join(f"{k}={v}" for k, v in fields.items())

    def line(self, final: bool = False) -> str:
        el = time.monotonic() - self.t0
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = ""
        if not final and self.done and self.total and self.done < self.total:
            eta = f", eta {_clock(el / self.done * (self.total - self.done))}"
        state = "done in" if final else "elapsed"
        return f"{self.description}: {self.done}/{self.total}{pct}, {state} {_clock(el)}{eta}" + (
            f"  {self.info}" if self.info else "")

    def run(self) -> None:
        while not self.stop.wait(interval_s()):
            console.print(escape(self.line()), highlight=False, soft_wrap=True)
            self.printed += 1


@contextlib.contextmanager
def bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; shows done/total, elapsed, ETA and extra text fields."""
    mode = _mode()
    if not description or mode == "off":
        yield lambda n=1, **kw: None
        return
    if mode == "lines":
        lines = _Lines(description, total)
        timer = threading.Thread(target=lines.run, name="potstill-progress", daemon=True)
        timer.start()
        try:
            yield lines.advance
        finally:
            lines.stop.set()
            timer.join()
            if lines.printed:  # a step long enough to report on says when it ended, too
                console.print(escape(lines.line(final=True)), highlight=False, soft_wrap=True)
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
    try:
        console.print(msg, highlight=False, soft_wrap=True)
    except MarkupError:
        # A path, model name or error text interpolated unescaped that reads as broken markup ("[/x]"):
        # the message as written, never an exception in the caller (a server's fallback, its watcher).
        console.print(escape(msg), highlight=False, soft_wrap=True)
