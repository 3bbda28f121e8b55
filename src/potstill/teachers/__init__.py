"""Teachers: one protocol, adapters registered as plugins (entry point group ``potstill.teachers``)."""

from __future__ import annotations

import os

from potstill.config import TeacherConfig
from potstill.errors import url_secrets
from potstill.plugins import build
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher, request_hash


def get_teacher(cfg: TeacherConfig, task: Task, prices: dict[str, dict[str, float]] | None = None) -> Teacher:
    """The adapter ``cfg.type`` names. ``prices``: the run's ``generate.prices``, by which a teacher
    with no ``teacher.price`` bills answers outside a generate run (``submit``: serve's escalations)
    as generate bills its own; left out, the built-in table."""
    secrets = [os.environ.get(cfg.api_key_env, ""), *url_secrets(cfg.base_url)]
    teacher = build("teachers", cfg.type, cfg, task, secrets=secrets)
    teacher.prices = prices
    return teacher


__all__ = ["OnResult", "Response", "RunStats", "Teacher", "get_teacher", "request_hash"]
