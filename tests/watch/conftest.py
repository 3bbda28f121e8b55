"""A served run for `potstill watch`, built from real parts: a tiny student on disk, a real teacher
server on 127.0.0.1, `potstill serve`'s own app under uvicorn on loopback, the official openai
client sending traffic, and the run's real calls.sqlite.

Inputs are short sentences over the tiny tokenizer's words: a topic (its words) plus filler. The
training inputs mix four topics evenly; "shifted" traffic is one topic only (another topic mix) or
words the training inputs never use (another vocabulary)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import openai
import pytest
import yaml

from tests.helpers.chat_server import ChatServer
from tests.helpers.live_server import LiveServer

SERVE_KEY = "sk-watch-serve-5d2c81e0"
TEACHER_KEY = "sk-watch-teacher-a4f9e3b7"
LABELS = ["business", "sports", "tech", "politics"]
TOPIC_WORDS = {
    "business": "market shares bank profit".split(), "sports": "match team goal win game".split(),
    "tech": "phone software internet computer".split(), "politics": "election minister party vote".split(),
}
FILLER = "the a of to in and on for with by is was said new year".split()
# In the tokenizer's vocabulary but in no training input: the "other language" of these tests.
OTHER_WORDS = "name city person answer topic article classify text label json summary yes no".split()
# Watch settings for a window of 60: the defaults judge windows of 200, which these tests cannot
# afford to send; alpha and the effect thresholds stay at their defaults.
WATCH = {"window": 60, "min_requests": 30, "reference_size": 120, "permutations": 300}


def sentence(rng: random.Random, topics: list[str], other: bool = False) -> str:
    words = OTHER_WORDS if other else TOPIC_WORDS[rng.choice(topics)]
    picked = [rng.choice(words) for _ in range(3)] + [rng.choice(FILLER) for _ in range(3)]
    rng.shuffle(picked)
    return " ".join(picked)


def traffic(kind: str, n: int, seed: int) -> list[str]:
    """n inputs: 'unshifted' (the training mix), 'topic' (sports only) or 'language' (unseen words)."""
    rng = random.Random(f"{kind}-{seed}")
    if kind == "unshifted":
        return [sentence(rng, LABELS) for _ in range(n)]
    if kind == "topic":
        return [sentence(rng, ["sports"]) for _ in range(n)]
    return [sentence(rng, LABELS, other=True) for _ in range(n)]


def write_run(root: Path, student: Path, teacher_url: str) -> Path:
    """A curated run whose training outputs are the student's own answers: a student distilled
    perfectly, so unshifted traffic is served the training label mix."""
    from potstill.config import load_config
    from potstill.models.loading import load_lm
    from potstill.serve.engine import TransformersEngine
    from potstill.tasks import get_task

    run = root / "run"
    run.mkdir(parents=True)
    shutil.copytree(student, run / "student")
    cfg = {
        "run_dir": ".", "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "teacher": {"type": "openai", "model": "tiny-teacher", "base_url": teacher_url, "api_key_env": "WATCH_TEACHER_KEY",
                    "max_tokens": 4, "max_retries": 0, "timeout_s": 10},
        # Nothing escalates by calibration: the tiny teacher's answers are noise, where a real teacher
        # answers in the training labels' mix. A test forces escalation when it wants a surge.
        "serve": {"target_escalation": 0.0, "ood_quantile": 1.0, "api_key_env": "WATCH_SERVE_KEY"},
        "watch": WATCH,
    }
    (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    rng = random.Random("train")
    texts = [sentence(rng, LABELS) for _ in range(240)]
    engine = TransformersEngine(load_lm(str(student), device="cpu"), get_task(load_config(run / "potstill.yaml").task))
    answers = [a.output for i in range(0, len(texts), 32) for a in engine.answer(
        [[{"role": "user", "content": t}] for t in texts[i : i + 32]])]
    rows = [json.dumps({"messages": [{"role": "user", "content": t}], "output": a}) + "\n" for t, a in zip(texts, answers)]
    (run / "train.jsonl").write_text("".join(rows[:200]))
    (run / "val.jsonl").write_text("".join(rows[200:]))
    return run


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, tiny_model, tiny_model_b):
    """(run dir, send(texts), service): `send` posts each text through the real server with the openai client."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    os.environ["WATCH_TEACHER_KEY"] = TEACHER_KEY
    os.environ["WATCH_SERVE_KEY"] = SERVE_KEY
    with ChatServer(str(tiny_model_b), api_key=TEACHER_KEY) as teacher:
        run = write_run(tmp_path_factory.mktemp("watch"), tiny_model, teacher.base_url)
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        try:
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{live.port}/v1", api_key=SERVE_KEY, max_retries=0)

                def send(texts: list[str]) -> None:
                    for t in texts:
                        client.chat.completions.create(model="potstill", messages=[{"role": "user", "content": t}])

                yield run, send, service
        finally:
            service.close()
