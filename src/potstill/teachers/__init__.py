"""Teachers: one protocol, adapters registered as plugins (entry point group ``potstill.teachers``)."""

from __future__ import annotations

import os

from potstill.config import TeacherConfig
from potstill.errors import url_secrets
from potstill.plugins import build
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher, request_hash

#: Where the openai and anthropic SDKs read a base URL from when given none.
SDK_BASE_URL_ENVS = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


def get_teacher(cfg: TeacherConfig, task: Task, prices: dict[str, dict[str, float]] | None = None) -> Teacher:
    """The adapter ``cfg.type`` names. ``prices``: the run's ``generate.prices``, by which a teacher
    with no ``teacher.price`` bills answers outside a generate run (``submit``: serve's escalations)
    as generate bills its own; left out, the built-in table."""
    # Blanked in a plugin's failure to build: its key, and a password in the URL it was given, or in
    # the one its SDK reads where teacher.base_url is unset.
    urls = [cfg.base_url] if cfg.base_url else [os.environ.get(v) for v in SDK_BASE_URL_ENVS]
    secrets = [os.environ.get(cfg.api_key_env, ""), *(s for url in urls for s in url_secrets(url))]
    teacher = build("teachers", cfg.type, cfg, task, secrets=secrets)
    teacher.prices = prices
    return teacher


__all__ = ["OnResult", "Response", "RunStats", "Teacher", "get_teacher", "request_hash"]
