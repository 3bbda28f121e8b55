"""Keys never reach the files a run writes or what it prints. Real parts: the official openai
client over HTTP to servers on 127.0.0.1 backed by a tiny model; each test sets a recognisable
canary and greps everything the run wrote and printed for it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import Header
from fastapi.responses import JSONResponse

from potstill.teachers import get_teacher
from tests.helpers.chat_server import ChatServer

ROOT = Path(__file__).resolve().parents[1]
CANARY = "sk-SECRET-canary-7f3a9c1e5b"
TEXTS = ["the team won the match", "new phone software", "a vote in the election", "the film star",
         "bank profit and market shares", "the internet and computer"]


@pytest.fixture(scope="module")
def open_server(tiny_model_b):
    """A teacher with no key of its own: what a proxy that checks Basic auth passes on."""
    with ChatServer(str(tiny_model_b)) as s:
        yield s


def potstill(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "COLUMNS": "400", **env}
    return subprocess.run([sys.executable, "-m", "potstill.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)


def leaks(canary: str, run: Path, *printed: str) -> list[str]:
    """Where ``canary`` shows: the printed texts (as 'output') and every file under ``run``."""
    where = ["output" for text in printed if canary in text]
    where += [str(p.relative_to(run)) for p in sorted(run.rglob("*"))
              if p.is_file() and canary.encode() in p.read_bytes()]
    return where


def write_project(root: Path, teacher: dict, **sections: dict) -> None:
    (root / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in TEXTS))
    cfg = {"run_dir": "run", "task": {"type": "freetext", "instruction": "summarise"},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": "openai", "model": "tiny-teacher", "concurrency": 2, "max_tokens": 4,
                       "max_retries": 0, **teacher}, **sections}
    (root / "potstill.yaml").write_text(yaml.safe_dump(cfg))


def test_credentials_in_a_base_url_are_not_saved_with_the_run(open_server, tmp_path):
    """A base_url with user:password@ (a proxy's Basic auth) works, and RUN/potstill.yaml, which
    serve, watch and redistill load, holds the URL without its user info."""
    # A "'" and a raw '@' in the password, which httpx sends as they stand (it splits at the last '@').
    url = open_server.base_url.replace("http://", f"http://proxy-user:{CANARY}'x@y@")
    judge = {"type": "openai", "model": "judge", "api_key_env": "",
             "base_url": url.replace("127.0.0.1", "judge.example")}
    write_project(tmp_path, {"base_url": url, "api_key_env": ""}, evaluate={"judge": {"teacher": judge}},
                  generate={"ray_endpoints": [url]})
    out = potstill("generate", "-c", "potstill.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sum(open_server.requests.values()) > 0
    assert leaks(CANARY, tmp_path / "run", out.stdout, out.stderr) == []
    saved = yaml.safe_load((tmp_path / "run" / "potstill.yaml").read_text())
    assert saved["teacher"]["base_url"] == open_server.base_url
    assert saved["evaluate"]["judge"]["teacher"]["base_url"] == open_server.base_url.replace("127.0.0.1", "judge.example")
    assert saved["generate"]["ray_endpoints"] == [open_server.base_url]
    assert "teacher.base_url" in out.stderr + out.stdout  # one line says so


class EchoAuthServer(ChatServer):
    """A teacher (or the proxy before it) whose 401 repeats the Authorization header it was sent,
    as some providers' do, so any credential it carries would show."""

    def chat(self, body: dict, authorization: str | None = Header(None)) -> Any:
        return JSONResponse({"error": {"message": f"Incorrect API key provided: {authorization}",
                                       "type": "invalid_request_error"}}, status_code=401)


@pytest.mark.parametrize("where", ["teacher.base_url", "OPENAI_BASE_URL"])
def test_a_refused_base_url_password_is_not_shown(tiny_model_b, tmp_path, where):
    """httpx sends a base_url's user:password@ as Basic auth; a 401 that echoes the header shows
    the pair base64-encoded, which is the password in plain sight: the error line, the ledger row
    and the output show it redacted, as they show an API key. The SDK reads its own variable where
    teacher.base_url is unset: a password there is as secret."""
    basic = base64.b64encode(f"proxy-user:{CANARY}".encode()).decode()
    with EchoAuthServer(str(tiny_model_b)) as srv:
        url = srv.base_url.replace("http://", f"http://proxy-user:{CANARY}@")
        in_config = where == "teacher.base_url"
        write_project(tmp_path, {"base_url": url if in_config else None, "api_key_env": ""})
        out = potstill("generate", "-c", "potstill.yaml", cwd=tmp_path, **({} if in_config else {where: url}))
    assert out.returncode == 2 and "401" in out.stderr and "Basic ***" in out.stderr, out.stderr
    assert leaks(CANARY, tmp_path / "run", out.stdout, out.stderr) == []
    assert leaks(basic, tmp_path / "run", out.stdout, out.stderr) == []


@pytest.mark.parametrize("kind,variable", [("openai", "OPENAI_BASE_URL"), ("anthropic", "ANTHROPIC_BASE_URL")])
def test_the_sdks_own_base_url_variable_is_the_teachers_url(kind, variable, monkeypatch):
    """Where teacher.base_url is unset the SDK reads its own variable: that URL is the one the client
    gets, and its password (and the Basic token httpx makes of it) is among the secrets, as one in
    teacher.base_url is; teacher.base_url, when set, wins over it, as in the SDK."""
    from potstill.config import TaskConfig, TeacherConfig
    from potstill.tasks import get_task

    task = get_task(TaskConfig(type="freetext", instruction="summarise"))
    url = f"http://proxy-user:{CANARY}@127.0.0.1:9/v1"
    monkeypatch.setenv(variable, url)
    teacher = get_teacher(TeacherConfig(type=kind, model="m", api_key_env=""), task)
    client = teacher.make_client(teacher.http_module().AsyncClient())
    assert str(client.base_url).startswith(url)
    basic = base64.b64encode(f"proxy-user:{CANARY}".encode()).decode()
    assert {CANARY, basic} <= set(teacher.secrets())
    given = get_teacher(TeacherConfig(type=kind, model="m", api_key_env="", base_url="http://127.0.0.1:8/v1"), task)
    assert str(given.make_client(given.http_module().AsyncClient()).base_url).startswith("http://127.0.0.1:8/v1")
    assert CANARY not in given.secrets()


def test_placeholders_and_short_secrets_do_not_mangle_error_words():
    """A keyless server's placeholder ('unused') is no secret, and a short password is blanked only
    where it stands alone: ordinary words in an error stay readable, a real key never shows."""
    import httpx

    from potstill.config import TeacherConfig
    from potstill.errors import redact
    from potstill.tasks import get_task
    from potstill.config import TaskConfig

    task = get_task(TaskConfig(type="freetext", instruction="summarise"))
    keyless = get_teacher(TeacherConfig(type="openai", model="m", base_url="http://u:ab@127.0.0.1:9/v1",
                                        api_key_env=""), task)
    keyless.make_client(httpx.AsyncClient())
    msg = "Error: parameter 'logit_bias' is unused by this table; auth u:ab refused"
    assert redact(msg, keyless.secrets()) == "Error: parameter 'logit_bias' is unused by this table; auth u:*** refused"
    assert redact(f"Bearer {CANARY}, key={CANARY}x", [CANARY]) == "Bearer ***, key=***x"


@pytest.mark.parametrize("password", [f"{CANARY}'x", f"{CANARY}@x", f"x@{CANARY}", f"{CANARY} x", f"{CANARY}%40x"])
def test_a_url_loses_all_of_its_password(password):
    """User info runs to the authority's last '@', where httpx splits it, and may hold a "'" (which
    RFC 3986 allows unencoded) or an '@': the whole password goes, and the Basic token httpx sends
    for it is among the secrets. In free text a URL ends at whitespace, so a space is only seen in a
    whole value."""
    import httpx

    from potstill.errors import url_secrets, url_without_credentials, without_credentials

    url = f"http://proxy:{password}@127.0.0.1:9/v1?api-key={CANARY}#top"
    sent = httpx.URL(url)
    assert sent.password.startswith(CANARY) or sent.password.endswith(CANARY)
    assert url_without_credentials(url) == "http://127.0.0.1:9/v1#top"
    if " " not in password:
        assert without_credentials(f"API request to {url} failed: 'x@y'") == \
            "API request to http://127.0.0.1:9/v1#top failed: 'x@y'"
    basic = base64.b64encode(f"proxy:{sent.password}".encode()).decode()
    assert {basic, sent.password} <= set(url_secrets(url))
    # Unparseable (an unclosed IPv6 bracket): its password is still known, to blank in the parser's words.
    assert sent.password in url_secrets(url.replace("127.0.0.1:9", "[::1"))
    plain = "http://127.0.0.1:9/v1"
    assert url_without_credentials(plain) == without_credentials(plain) == plain and url_secrets(plain) == []


def test_a_secret_cut_at_an_ellipsis_is_blanked_in_pieces():
    """pydantic shows a long input_value as its head and tail around '...': the SDK's
    ValidationError for a malformed body that echoed the key held the key's head or tail alone, which
    a whole-string replace never finds. A piece of 4 characters or more touching the cut goes too."""
    import pydantic

    from potstill.errors import redact

    class Completion(pydantic.BaseModel):
        id: int

    key = f"sk-proj-{CANARY}-4567890abcdef"
    cut = []
    with pytest.raises(pydantic.ValidationError) as json_cut:  # the body cut off: the key's tail shows
        Completion.model_validate_json(f'{{"id": "x", "choices": "Incorrect API key provided: Bearer {key} xkey=None')
    cut.append(json_cut.value)
    with pytest.raises(pydantic.ValidationError) as value_cut:  # a value cut in the middle: its head and tail
        Completion.model_validate({"id": f"Bearer {key} and more"})
    cut.append(value_cut.value)
    for e in cut:
        shown = redact(f"{type(e).__name__}: {e}", [key])
        assert "..." in shown and "***" in shown, shown
        assert not any(key[i:i + 4] in shown for i in range(len(key) - 3)), shown
    # Words beside an ellipsis that are no piece of the key stay.
    assert redact("Bearer sk-proj-7f3a9...e5b and more... then", [key]) == "Bearer sk-proj-7f3a9...e5b and more... then"


def test_a_malformed_base_url_is_one_line_without_its_password(tmp_path):
    """An unclosed IPv6 bracket in teacher.base_url was an httpx InvalidURL traceback."""
    write_project(tmp_path, {"base_url": f"http://u:{CANARY}'x@[::1/v1", "api_key_env": ""})
    run = potstill("generate", "-c", "potstill.yaml", cwd=tmp_path)
    err = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(err) == 1 and "teacher.base_url" in err[0] and "http://[::1/v1" in err[0], err
    assert CANARY not in run.stderr + run.stdout
