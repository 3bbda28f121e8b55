"""Teachers: one protocol, adapters registered as plugins (entry point group ``potstill.teachers``)."""

from __future__ import annotations

from potstill.config import TeacherConfig
from potstill.plugins import load_plugin
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher, request_hash


def get_teacher(cfg: TeacherConfig, task: Task) -> Teacher:
    return load_plugin("teachers", cfg.type)(cfg, task)


__all__ = ["OnResult", "Response", "RunStats", "Teacher", "get_teacher", "request_hash"]
