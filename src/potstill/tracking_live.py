"""A training followed live in its trackers: the run opens when training starts and each
metrics.jsonl row is logged as it is written, as TRL's ``report_to`` does, rather than the whole
curve arriving once an hour of training is over.

The stage that trains (``potstill.stage.Stage.run`` for ``train``; ``redistill`` for its
challenger) makes a ``Live`` and runs its body inside ``following(live)``; the body calls
``current().start()`` right before ``train()`` and hands what it returns to ``train(on_row=...)``.
When the stage is recorded, ``tracking.log_stage(..., live=live)`` gives the same tracker runs the
rest (final metrics, artifacts, the manifest's hash): one tracker run per training.

- The training fails (an exception, Ctrl-C, a NaN loss): ``following`` ends each open run as
  failed and keeps it (it holds the curve up to the failure), and the exception goes on
  unchanged. One that failed before its first row (in its setup: a model that does not load, a
  setting refused) has no curve to keep: its runs are abandoned, as a tracker's own failure's are,
  so a wrong setting tried three times leaves no three empty failed runs. A resumed training opens
  new runs, first given the rows kept from its checkpoint.
- A tracker fails (a server down, a store not writable), on opening or on a row: one line, the
  part it logged is abandoned (``tracking.MLflowRun.abandon``), the training goes on, and
  ``log_stage`` reports the tracker as failed, so the stage's next run logs the stage whole then.

Only the main process follows (RANK 0 under torchrun / accelerate launch): ``Live.main`` is None
on the others, and ``train`` calls ``on_row`` only in the main process.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator

from potstill import tracking
from potstill.config import Config

_current: ContextVar[Live | None] = ContextVar("potstill_live_tracking", default=None)


class Live:
    """The tracker runs following one stage's training, by tracker name."""

    def __init__(self, cfg: Config, stage: str, params: dict[str, Any], run_dir: Path):
        self.names = list(cfg.tracking)
        self.stage = stage
        self.params = params
        self.run_dir = Path(run_dir)
        self.open: dict[str, Any] = {}
        self.failed: list[str] = []  # said when they failed; the stage's next run logs it for them
        self.rows = 0  # metrics rows handed over so far

    @classmethod
    def main(cls, cfg: Config, stage: str, params: dict[str, Any], run_dir: Path) -> Live | None:
        """A ``Live`` for the main process when ``cfg.tracking`` names trackers, else None."""
        if not cfg.tracking or int(os.environ.get("RANK", "0")) != 0:
            return None
        return cls(cfg, stage, params, run_dir)

    def start(self) -> Callable[[dict[str, Any]], None]:
        """Open a run in each tracker; returns what takes each metrics row (``train(on_row=...)``)."""
        run = tracking.Run(self.run_dir, self.stage, self.params)
        for name in self.names:
            try:
                self.open[name] = tracking.BACKENDS[name](run)
            except Exception as e:
                self._lost(name, e)
        return self.row

    def row(self, row: dict[str, Any]) -> None:
        """Log one metrics.jsonl row to each open tracker run, at its step."""
        rows = tracking.series([row])
        self.rows += 1
        for name, tracker in list(self.open.items()):
            try:
                tracker.log(rows)
            except Exception as e:
                del self.open[name]
                tracker.abandon()
                self._lost(name, e)

    def take(self, name: str) -> Any:
        """The open run of tracker ``name`` (None if there is none), handed over to be finished."""
        return self.open.pop(name, None)

    def fail(self) -> None:
        """The stage failed: every open run ends failed and is kept, or, where the training wrote no
        row yet, is abandoned (nothing to keep)."""
        for tracker in self.open.values():
            with contextlib.suppress(Exception):  # the stage's own exception is the one to see
                tracker.fail() if self.rows else tracker.abandon()
        self.open.clear()

    def _lost(self, name: str, e: Exception) -> None:
        self.failed.append(name)
        tracking.not_tracked(self.stage, name, e)


def current() -> Live | None:
    """The ``Live`` of the stage running in this process (None: no trackers, or not the main process)."""
    return _current.get()


@contextlib.contextmanager
def following(live: Live | None) -> Iterator[Live | None]:
    """Make ``live`` the ``current()`` one while the block runs; end its open runs as failed if the
    block raises (the exception propagates unchanged)."""
    token = _current.set(live)
    try:
        yield live
    except BaseException:
        if live is not None:
            live.fail()
        raise
    finally:
        _current.reset(token)
