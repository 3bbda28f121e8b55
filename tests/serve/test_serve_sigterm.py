"""`potstill serve` stopped with SIGTERM (kill, docker stop, systemd): it shuts down as on Ctrl-C,
closing the service (a llamacpp engine's llama-server child is stopped with it), says so in one
line and exits 143. Before, uvicorn re-raised the signal after its shutdown into Python's default
handler, which ended the process at once: no cleanup ran and the llama-server child was orphaned.
The real CLI in a subprocess, on a tiny run."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

from tests.helpers.live_server import LiveServer
from tests.helpers.sse import openai_chunk
from tests.serve.conftest import write_run

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def start_serve(run: Path, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """``potstill serve RUN FLAGS`` in a subprocess (``env`` over the test keys), read up to its
    "every request is logged" line, or its end: the process and the stderr lines read."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "SERVE_KEY": "k", "TEACHER_KEY": "t",
           "POTSTILL_PROGRESS": "never", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "potstill", "serve", str(run), *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "every request is logged" in line or not line:
            break
    return proc, lines


def serve_then_terminate(run: Path, *flags: str, env: dict | None = None,
                         sig: int = signal.SIGTERM) -> tuple[subprocess.CompletedProcess, list[int]]:
    proc, lines = start_serve(run, "--port", "0", *flags, env=env)
    kids = children(proc.pid)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(lines) + err), kids


def test_sigterm_shuts_serve_down_cleanly_with_exit_143(tmp_path, tiny_model):
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1")
    p, _ = serve_then_terminate(run)
    assert "every request is logged" in p.stderr, p.stderr[-2000:]
    assert p.returncode == 143, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == "terminated: potstill serve stopped"


@pytest.mark.skipif(not os.environ.get("POTSTILL_LLAMA_SERVER"), reason="POTSTILL_LLAMA_SERVER not set")
def test_sigterm_stops_the_llamacpp_engines_server_too(tmp_path):
    from tests.export.conftest import make_bpe_model

    # Free text: a random byte-level model's label scores may start with a stray byte llama-server refuses.
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), "http://127.0.0.1:9/v1",
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 4})
    p, kids = serve_then_terminate(run, "--serve.engine", "llamacpp")
    assert p.returncode == 143, p.stderr[-2000:]
    assert kids, "no llama-server child was started"
    assert not running(kids), f"llama-server left running: {running(kids)}"


@pytest.mark.skipif(not os.environ.get("POTSTILL_LLAMA_SERVER"), reason="POTSTILL_LLAMA_SERVER not set")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_sigkill_takes_the_llamacpp_engines_server_with_it(tmp_path):
    """No Python runs on SIGKILL; the kernel ends the child (``potstill.child``)."""
    from tests.export.conftest import make_bpe_model

    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), "http://127.0.0.1:9/v1",
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 4})
    p, kids = serve_then_terminate(run, "--serve.engine", "llamacpp", sig=signal.SIGKILL)
    left = running(kids)
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert p.returncode == -9, p.stderr[-2000:]
    assert kids, "no llama-server child was started"
    assert not left, f"llama-server left running: {left}"


def running(pids: list[int], wait_s: float = 10) -> list[int]:
    """Those of ``pids`` still running (not gone, not a zombie) after up to ``wait_s``."""
    def up(k: int) -> bool:
        try:
            return "Z" not in Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False

    deadline = time.time() + wait_s
    while any(up(k) for k in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [k for k in pids if up(k)]


def _slow_teacher(release: threading.Event, stop: threading.Event) -> FastAPI:
    """An OpenAI-compatible teacher whose streams write their first text at once; then the chat
    saying "finishes" ends once ``release`` is set, any other keeps writing empty pieces (its read
    never times out) until ``stop``."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> StreamingResponse:
        model = body["model"]

        def chunks():
            yield openai_chunk(model, {"role": "assistant", "content": "the answer"})
            if "finishes" in body["messages"][-1]["content"]:
                release.wait(timeout=30)
                yield openai_chunk(model, {"content": " came whole"}, finish="stop")
                yield openai_chunk(model, usage={"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24})
                yield "data: [DONE]\n\n"
            else:
                while not stop.wait(0.2):
                    yield openai_chunk(model, {"content": ""})

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_sigterm_logs_the_streams_whose_clients_left(tmp_path, tiny_model):
    """Two clients leave streamed escalations after their first text, then the server gets SIGTERM.
    It waits (up to teacher.timeout_s) for the teacher: the answer that comes is logged whole and
    billed; the one still being written when the wait ends is cut and logged as failed. Before,
    asyncio cancelled both at exit and neither request had a row."""
    release, stop = threading.Event(), threading.Event()
    with LiveServer(_slow_teacher(release, stop)) as teacher:
        run = write_run(tmp_path, tiny_model, teacher.url + "/v1", escalate_truncated=True,
                        task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 6})
        proc, lines = start_serve(run, "--port", "0", "--teacher.timeout_s", "4", "--redistill.reload_poll_s", "0")
        try:
            port = re.search(r"http://127\.0\.0\.1:(\d+)/v1", "".join(lines)).group(1)
            up_by = time.time() + 60  # the socket is bound before the line; uvicorn listens a moment later
            while time.time() < up_by and not _answers(f"http://127.0.0.1:{port}/health"):
                time.sleep(0.1)
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
            for text in ("this one finishes", "this one is still written"):
                stream = c.chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}],
                                                   stream=True)
                assert next(ch for ch in stream if ch.choices and ch.choices[0].delta.content)
                stream.close()  # the client leaves after the first text
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1)
            release.set()  # the teacher's first answer comes after the stop began
            _, err = proc.communicate(timeout=60)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143, err[-2000:]
    ledger = sqlite3.connect(run / "calls.sqlite")
    got = {json.loads(req)["messages"][-1]["content"]: (status, error, cost, json.loads(resp or "null"))
           for req, status, error, cost, resp in ledger.execute(
               "SELECT request, status, error, cost_usd, response FROM calls WHERE stage='serve'")}
    ledger.close()
    assert sorted(got) == ["this one finishes", "this one is still written"], (got, err[-2000:])
    status, error, cost, answer = got["this one finishes"]
    assert (status, answer["content"]) == ("ok", "the answer came whole") and cost > 0, got
    status, error, cost, _ = got["this one is still written"]
    assert status == "error" and error.startswith("503: the server stopped before the teacher's answer came"), got
    assert "waiting up to 4 s for 2 teacher answer(s)" in err, err[-2000:]
