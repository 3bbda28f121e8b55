"""A served run built from real parts: a tiny student on disk, a real teacher server on 127.0.0.1
(the official openai adapter calls it), calibration on a real val split, uvicorn on loopback;
and what the tests of it share: the openai client, the ledger's serve rows, a forced route."""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from potstill.serve.routing import Routing
from potstill.teachers import get_teacher
from tests.helpers.chat_server import ChatServer
from tests.helpers.live_server import LiveServer

SERVE_KEY = "sk-serve-9b1e44d0c2a7"
TEACHER_KEY = "sk-teacher-31f0a8c6d95e"
LABELS = ["business", "sports", "tech", "politics"]
TEXTS = ["the team won the match", "new phone software", "a vote in the election", "the film star",
         "bank profit and market shares", "the internet and computer", "the minister said the party will vote",
         "a goal to win the game", "the market and the bank", "music and film award"]


def write_run(root: Path, student: Path, teacher_url: str, task: dict | None = None, **serve) -> Path:
    """A run directory serving ``student``: the classification task (or ``task``), splits of TEXTS,
    an openai teacher at ``teacher_url``, and ``serve`` fields over the defaults below.

    ``serve.escalate_truncated`` is off unless given: the random tiny students here write to their
    budget on almost every generation task, and the tests check how an answer is served, cut,
    streamed or guided (``test_server.py`` checks the escalation itself)."""
    run = root / "run"
    run.mkdir(parents=True)
    shutil.copytree(student, run / "student")

    def rows(n: int, offset: int) -> str:
        return "".join(json.dumps({"messages": [{"role": "user", "content": f"{TEXTS[(i + offset) % 10]} {'the ' * (i // 10)}".strip()}],
                                   "output": LABELS[(i * 7 + offset) % 4]}) + "\n" for i in range(n))

    (run / "train.jsonl").write_text(rows(30, 0))
    (run / "val.jsonl").write_text(rows(20, 3))
    cfg = {
        "run_dir": ".", "task": task or {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "teacher": {"type": "openai", "model": "tiny-teacher", "base_url": teacher_url, "api_key_env": "TEACHER_KEY",
                    # 60 s: the loopback teacher answers one request at a time, and the load test's 32 in
                    # flight queue behind it on 2 cores shared by 3 test workers (a 10 s cap made one run of
                    # seven end in a 502 there).
                    "max_tokens": 4, "max_retries": 0, "timeout_s": 60,
                    "price": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}},
        "serve": {"target_escalation": 0.3, "api_key_env": "SERVE_KEY", "max_body_bytes": 20000,
                  "escalate_truncated": False, **serve},
    }
    # As a stage saves it (a stage refuses to write over a RUN/potstill.yaml without this first line).
    (run / "potstill.yaml").write_text("# Written by potstill (a test's run)\n" + yaml.safe_dump(cfg))
    return run


@pytest.fixture(scope="module")
def teacher_server(tiny_model_b):
    with ChatServer(str(tiny_model_b), api_key=TEACHER_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, teacher_server):
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    os.environ["TEACHER_KEY"] = TEACHER_KEY
    os.environ["SERVE_KEY"] = SERVE_KEY
    run = write_run(tmp_path_factory.mktemp("serve"), tiny_model, teacher_server.base_url)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    with LiveServer(build_app(service, serve_key(cfg))) as live:
        yield service, live
    service.close()


MSG = [{"role": "user", "content": "the team won the match"}]


def client(live, key: str = SERVE_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0)


def rows(service, **kw) -> list[dict]:
    return service.ledger.rows(stage="serve", **kw)


def answered_by_teacher(raw, reason: str, stream: bool):
    """A raw chat response (``with_raw_response``) the teacher answered with a 200 for ``reason``:
    streamed, its text non-empty and the last chunk's route saying the reason (None returned);
    else the parsed completion, for the caller's own checks."""
    assert raw.status_code == 200 and raw.headers["x-potstill-answered-by"] == "teacher"
    assert raw.headers["x-potstill-reason"] == reason
    if not stream:
        return raw.parse()
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].model_extra["potstill"]["reason"] == reason
    return None


@contextmanager
def served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch, **serve):
    """A free-text run (answers up to 6 tokens) served on loopback for the with block: (service, live).

    The random tiny student writes to its 6-token budget every time (``write_run`` on
    ``serve.escalate_truncated``)."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, tiny_model, teacher_server.base_url,
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 6}, **serve)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            yield service, live
    finally:
        service.close()


@contextmanager
def teacher_behind(service, provider):
    """The served teacher pointed at ``provider`` (a FastAPI app on loopback) for the with block."""
    saved = service.teacher
    with LiveServer(provider) as fake:
        service.teacher = get_teacher(saved.cfg.model_copy(update={"base_url": fake.url + "/v1"}), service.task)
        try:
            yield
        finally:
            service.teacher.close()
            service.teacher = saved


@contextmanager
def claude_behind(service, provider, max_tokens: int, **teacher: Any):
    """The served teacher an Anthropic one at ``provider`` (the Messages API on loopback) for the with
    block; ``teacher``: more of its config's fields."""
    from potstill.config import TeacherConfig

    saved = service.teacher
    with LiveServer(provider) as fake:
        service.teacher = get_teacher(TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=fake.url,
                                                    api_key_env="TEACHER_KEY", max_tokens=max_tokens, max_retries=0,
                                                    timeout_s=10, **teacher), service.task)
        try:
            yield
        finally:
            service.teacher.close()
            service.teacher = saved


@pytest.fixture()
def force(served):
    """Swap the calibrated routing for one that sends everything to the student or the teacher."""
    service, _ = served
    saved = service.routing

    def to(who: str) -> None:
        inf = math.inf if who == "teacher" else -math.inf
        service.routing = Routing(confidence_threshold=inf, ood_threshold=math.inf)

    yield to
    service.routing = saved
