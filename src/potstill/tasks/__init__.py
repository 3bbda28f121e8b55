"""Tasks: the only task-specific code. A task renders prompts, parses, validates and scores outputs."""

from __future__ import annotations

from potstill.config import TaskConfig
from potstill.plugins import build
from potstill.tasks.base import Task


def get_task(cfg: TaskConfig) -> Task:
    return build("tasks", cfg.type, cfg)


__all__ = ["Task", "get_task"]
