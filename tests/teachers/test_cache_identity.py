"""A teacher's identity, which with the request makes the ledger key: it names the server the client
really calls, never the credentials on the way there, and stays what it was for a plain URL (every
request hashed before an upgrade is still found)."""

from __future__ import annotations

import pytest

from potstill.config import TaskConfig, TeacherConfig, load_config
from potstill.generate.stage import generate_stage
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher, request_hash
from tests.generate.loopback import Loopback
from tests.generate.test_generate import project

TASK = TaskConfig(type="classification", labels=["sports", "tech"], instruction="classify the text")
RECORD = Record(id="1", messages=[{"role": "user", "content": "the team won"}])


def key(kind: str, base_url: str | None = None) -> str:
    teacher = get_teacher(TeacherConfig(type=kind, model="m", base_url=base_url, api_key_env=""), get_task(TASK))
    return request_hash(teacher.identity(), teacher.request(RECORD))


# Ledger keys written by potstill before the SDK's variable was read: a plain URL (or none) still finds them.
@pytest.mark.parametrize("kind,base_url,written", [
    ("openai", "http://127.0.0.1:8000/v1", "9859f0ab0b81ceedda5e77169e92fea63e5a5d9668eee587bf9d01ef96ad3550"),
    ("openai", None, "d6cad8e56b494f34c966fa498030cda917ba24c3c2c12cea646dd3132afaf156"),
    ("anthropic", "http://127.0.0.1:8000", "788a37cb9ef57694e366a7dde7343bbb3f4199a3d7020e07005d1bd10953b0a9"),
    ("anthropic", None, "3f15d1b5ab85f1fc415da54b506536f1bcb2f74228aab280e83be9abb5feeca7"),
])
def test_a_plain_base_url_hashes_as_it_always_did(kind, base_url, written, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    assert key(kind, base_url) == written


@pytest.mark.parametrize("kind,variable,url", [("openai", "OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
                                               ("anthropic", "ANTHROPIC_BASE_URL", "http://127.0.0.1:8000")])
def test_the_identity_names_the_server_called_without_its_credentials(kind, variable, url, monkeypatch):
    """The SDK's own variable is the server the client calls where teacher.base_url is unset: the
    same server as that URL in teacher.base_url, another server than the provider's API. A proxy's
    password or query key is no part of it, so a rotated one asks nothing again."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    plain, default = key(kind, url), key(kind)
    for rotated in ("u:pw1@", "u:pw2@", "u:it's@me@"):
        assert key(kind, url.replace("://", f"://{rotated}") + "?api-key=k1") == plain
    monkeypatch.setenv(variable, url)
    assert key(kind) == plain != default
    monkeypatch.setenv(variable, url.replace("://", "://u:pw3@"))
    assert key(kind) == plain


def test_another_server_in_openai_base_url_is_asked_again(tmp_path, monkeypatch):
    """Pointing OPENAI_BASE_URL at another server served the first one's answers from the cache (its
    identity said api.openai.com whatever the variable held); a rotated proxy password in it paid
    every request again."""
    with Loopback() as first, Loopback() as second:
        cfg = load_config(project(tmp_path, first.base_url, 3, {"base_url": None, "api_key_env": "", "max_retries": 0}))
        for server, password in ((first, "pw1"), (first, "pw2"), (second, "pw2")):
            monkeypatch.setenv("OPENAI_BASE_URL", server.base_url.replace("://", f"://proxy:{password}@"))
            generate_stage(cfg)
            # How the teacher is reached is no part of the stage's fingerprint: run it again, on the same ledger.
            for done in ("manifest.json", "teacher.jsonl"):
                (tmp_path / "run" / done).unlink()
        assert sum(first.stats()["answered"].values()) == 3  # asked once, the rotated password found the answers
        assert sum(second.stats()["answered"].values()) == 3  # another server: asked
