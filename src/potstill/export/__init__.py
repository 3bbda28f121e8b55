"""`potstill export`: the curated dataset and the student in formats other tools read.

Formats register by name in ``FORMATS``; each is ``fn(cfg, run_dir, out_dir) -> written paths``:

- ``openai-jsonl``: train/val as OpenAI fine-tuning JSONL, checked by ``check.check_openai_jsonl``.
- ``hf``: the student as plain Hugging Face weights (a LoRA adapter merged into its base).
- ``gguf``: the student as GGUF files (f16, q8_0) for llama.cpp / Ollama, with a Modelfile each.

A new format registers itself the same way, without touching the CLI.
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


def _load_builtins() -> None:
    import potstill.export.gguf_file  # noqa: F401  (each registers itself)
    import potstill.export.merged  # noqa: F401
    import potstill.export.openai_jsonl  # noqa: F401


def export(cfg: Config, fmt: str, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``fmt`` for the run in ``cfg.run_dir`` under ``out_dir`` (default: ``RUN/export/FMT``)."""
    _load_builtins()
    if fmt not in FORMATS:
        raise PotstillError(f"unknown export format {fmt!r}; available: {', '.join(sorted(FORMATS))}")
    run = Path(cfg.run_dir)
    out = Path(out_dir) if out_dir is not None else run / "export" / fmt
    return FORMATS[fmt](cfg, run, out)


__all__ = ["FORMATS", "export", "register"]
