"""Serve a run's student behind an OpenAI-compatible API, with the teacher as calibrated fallback.

``potstill serve RUN`` loads ``RUN/student``, calibrates routing on ``RUN/val.jsonl`` and listens;
a client that called the teacher changes only its base_url. See ``routing`` for the rules,
``app`` for the wire format and logging, ``engine`` for batching, ``service`` for the hot swap of
a student promoted while the server runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from potstill.config import Config, load_config
from potstill.errors import PotstillError
from potstill.progress import say


def run_config(run_dir: Path, config: Path | None, overrides: dict | None = None,
               flag_names: dict[str, str] | None = None) -> Config:
    """The run's own potstill.yaml (written by every pipeline run) unless another is given."""
    path = config or Path(run_dir) / "potstill.yaml"
    if not Path(path).exists():
        raise PotstillError(f"{path}: config not found (pass -c potstill.yaml)")
    return load_config(path, overrides, flag_names)


def serve_key(cfg: Config) -> str | None:
    """The Bearer key clients must send, from ``serve.api_key_env``; None serves without auth."""
    name = cfg.serve.api_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise PotstillError(f"environment variable {name} is not set (it holds the key clients must send; "
                            "set it, or pass --api-key-env '' to serve without auth)")
    from potstill.teachers.openai_teacher import key_problem

    # A '\r' from a CRLF .env file would be part of the expected 'Bearer <key>\r': every client,
    # sending the clean key, would get a 401. The key itself is never shown.
    problem = key_problem(key)
    if problem:
        raise PotstillError(f"environment variable {name} (the key clients must send) has {problem}; fix its value")
    return key


def serve(run_dir: Path, cfg: Config, recalibrate: bool = False) -> None:
    from potstill import listen
    from potstill.rundir import check_trained_task
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    # The task is the trained student's: a -c with other labels or another instruction would have
    # served labels the student never learned, marked "confident", as watch and redistill refuse.
    check_trained_task(run_dir, cfg.task, "serve")
    key = serve_key(cfg)
    sock = listen.bind(cfg.serve.host, cfg.serve.port)  # before the student loads: a taken port fails at once
    try:
        service = load_service(Path(run_dir), cfg, recalibrate=recalibrate)
    except BaseException:
        sock.close()
        raise
    if key is None:
        say("serve: no API key configured: anyone who can reach the port can call it")
    say(f"serve: http://{cfg.serve.host}:{listen.url_port(sock)}/v1 (student {service.student_name}, "
        f"teacher {service.teacher_name}); every request is logged to {service.ledger.path}")
    poll = cfg.redistill.reload_poll_s
    if poll > 0:
        say(f"serve: a student promoted by `potstill redistill` is swapped in within {poll:g} s "
            "(or at once with POST /admin/reload)")
    service.watch(poll)
    try:
        listen.run(build_app(service, key), sock)
    finally:
        service.close()


__all__ = ["run_config", "serve", "serve_key"]
