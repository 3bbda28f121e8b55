"""Tasks: the only task-specific code. A task renders prompts, parses, validates and scores outputs."""

from __future__ import annotations

from typing import Any

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.plugins import build
from potstill.tasks.base import Task


def get_task(cfg: TaskConfig) -> Task:
    return build("tasks", cfg.type, cfg)


def extraction_schema(cfg: Any, setting: str, use: str, off: str, also: str = "") -> dict:
    """An extraction task's JSON Schema for a setting that needs one (``setting``: its name and
    value as the error shows them; ``use``: what it does with the schema; ``off``: the value that
    turns it off; ``also``: other tasks it takes), else one line naming the task's type."""
    kind = getattr(cfg, "type", None)
    schema = getattr(cfg, "json_schema", None)
    if kind not in ("extraction", "tools") or schema is None:
        raise PotstillError(f"{setting}: only an extraction task{also} has a JSON Schema to {use} (task.type is "
                            f"{kind}); set it to {off}")
    return schema


__all__ = ["Task", "extraction_schema", "get_task"]
