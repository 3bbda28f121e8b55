"""The real CLI entry point (``potstill.cli.main``) run in-process, as a user's command line would."""

from __future__ import annotations

import sys

import pytest

from potstill.cli import main


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """``potstill ARGS``: its exit code and its stderr lines."""
    monkeypatch.setattr(sys, "argv", ["potstill", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def sigint_default() -> None:
    """``Popen(preexec_fn=...)`` for a child a test interrupts with SIGINT. A command started in the
    background by a non-interactive shell (``nohup ... &``, some CI runners) runs with SIGINT ignored,
    as POSIX has it, and so do its children: Python then installs no KeyboardInterrupt handler and
    the test's Ctrl-C does nothing. The child gets the default back, as an interactive Ctrl-C finds it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
