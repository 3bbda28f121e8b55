"""Tasks: the only task-specific code. A task renders prompts, parses, validates and scores outputs."""

from __future__ import annotations

from potstill.config import TaskConfig
from potstill.plugins import load_plugin
from potstill.tasks.base import Task


def get_task(cfg: TaskConfig) -> Task:
    return load_plugin("tasks", cfg.type)(cfg)


__all__ = ["Task", "get_task"]
