"""The real CLI entry point (``potstill.cli.main``) run in-process, as a user's command line would."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

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


def run_in_process(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``potstill ARGS`` in ``cwd`` under the environment ``env`` (None: this process's), run in this process: what
    ``subprocess.run([sys.executable, "-m", "potstill.cli", *args], cwd=cwd, env=env, capture_output=True,
    text=True)`` gives (exit code, stdout, stderr), without a new interpreter importing torch and
    transformers again (about 8 s a command on an idle 2-core machine, three times that in a full run).
    For a test of what the command does, not of its process (a kill, a signal, a closed descriptor)."""
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    out, err = io.StringIO(), io.StringIO()
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["potstill", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:  # sys.exit("text") writes the text to stderr and exits 1, as Python does
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=err)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["potstill", *args], code, out.getvalue(), err.getvalue())
