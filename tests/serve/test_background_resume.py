"""A background response (``client.responses.create(..., background=True)``) whose server is killed
while answering it is asked again by the next server on the run, under its id, from the request
kept beside it in the ledger (it used to be kept as failed, the client left to create it again).
The real CLI in a subprocess killed with SIGKILL, a real provider on loopback, the official openai
client polling ``retrieve``."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from fastapi import Body, FastAPI

from potstill.ledger import Ledger
from tests.generate.loopback import free_port
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run
from tests.serve.test_serve_sigterm import start_serve

ASK = "the striker scored twice in the cup final"
# A function the classification student cannot call: the request goes to the teacher by design.
TOOLS = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]


def provider(asked: list, release: threading.Event) -> FastAPI:
    """OpenAI's chat completions, holding each answer until ``release`` is set."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> dict:
        asked.append(body)
        release.wait(120)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}}

    return app


def start(run: Path, port: int) -> tuple[subprocess.Popen, list[str]]:
    proc, lines = start_serve(run, "--port", str(port), env={"SERVE_KEY": SERVE_KEY, "TEACHER_KEY": TEACHER_KEY,
                                                             "COLUMNS": "400"})
    assert "every request is logged" in "".join(lines), "".join(lines)[-3000:]
    deadline = time.time() + 240
    while time.time() < deadline:  # that line comes just before uvicorn listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, lines


def test_a_killed_servers_background_response_is_answered_by_the_next_server(tmp_path, tiny_model):
    import openai

    asked: list = []
    release = threading.Event()
    with LiveServer(provider(asked, release)) as fake:
        run = write_run(tmp_path, tiny_model, fake.url + "/v1")
        port = free_port()
        cl = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=SERVE_KEY, max_retries=0)
        first, _ = start(run, port)
        try:
            bg = cl.responses.create(model="potstill", input=ASK, tools=TOOLS, background=True)
            assert bg.status == "queued"
            deadline = time.time() + 60
            while len(asked) < 1 and time.time() < deadline:  # the teacher is answering it now
                time.sleep(0.05)
            assert asked, "the teacher was never asked"
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        with Ledger(run / "calls.sqlite", readonly=True) as ledger:
            assert ledger.stored_response(bg.id)[0]["status"] == "queued"
        release.set()
        second, lines = start(run, port)
        try:
            got = cl.responses.retrieve(bg.id)
            deadline = time.time() + 60
            while got.status == "queued" and time.time() < deadline:
                time.sleep(0.05)
                got = cl.responses.retrieve(bg.id)
            assert got.status == "completed" and got.output_text == "sports"
            assert got.id == bg.id and got.created_at == bg.created_at and got.background
        finally:
            second.send_signal(signal.SIGTERM)
            lines.append(second.communicate(timeout=60)[1])
        assert "serve: 1 background response(s) a stopped server left unanswered are asked again\n" in "".join(lines)
    # The same request both times: the ledger's row for it is the one the second server answered.
    assert [a["messages"] for a in asked] == [asked[0]["messages"]] * 2
    with Ledger(run / "calls.sqlite", readonly=True) as ledger:
        assert ledger.background_request(bg.id) is None  # answered: its request no longer kept
        served = [r for r in ledger.served(status=None) if r.request.get("response_id") == bg.id]
    assert [(r.status, r.content) for r in served] == [("ok", "sports")]
