"""`potstill export`: the curated dataset (or, later, the student) in formats other tools read.

Formats register by name in ``FORMATS``; each is ``fn(cfg, run_dir, out_dir) -> written paths``.
Only ``openai-jsonl`` exists so far; merged weights or GGUF can join without touching the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from potstill.config import Config
from potstill.errors import PotstillError

Exporter = Callable[[Config, Path, Path], list[Path]]
FORMATS: dict[str, Exporter] = {}


def register(name: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        FORMATS[name] = fn
        return fn

    return deco


def export(cfg: Config, fmt: str, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``fmt`` for the run in ``cfg.run_dir`` under ``out_dir`` (default: ``RUN/export/FMT``)."""
    import potstill.export.openai_jsonl  # noqa: F401  (registers itself)

    if fmt not in FORMATS:
        raise PotstillError(f"unknown export format {fmt!r}; available: {', '.join(sorted(FORMATS))}")
    run = Path(cfg.run_dir)
    out = Path(out_dir) if out_dir is not None else run / "export" / fmt
    return FORMATS[fmt](cfg, run, out)


__all__ = ["FORMATS", "export", "register"]
