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
