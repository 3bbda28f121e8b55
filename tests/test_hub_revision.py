"""``loading.hub_revision`` keys a hub model's cached answers and conversions by the commit the
load that follows will run, served here by a small hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi import FastAPI, Request, Response

from potstill.models import loading
from tests.helpers.hub import use_hub
from tests.helpers.live_server import LiveServer


def _hub(state: dict) -> FastAPI:
    """The two answers hf_hub_download needs: a HEAD naming the commit and ETag, then the file."""
    app = FastAPI()

    @app.api_route("/{org}/{name}/resolve/{revision}/{filename}", methods=["GET", "HEAD"])
    def resolve(org: str, name: str, revision: str, filename: str, request: Request) -> Response:
        state["requests"] += 1
        body = json.dumps({"model_type": "llama", "commit": state["commit"]}).encode()
        headers = {"X-Repo-Commit": state["commit"], "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                   "Content-Length": str(len(body))}
        return Response(b"" if request.method == "HEAD" else body, headers=headers, media_type="application/json")

    return app


@pytest.fixture
def hub(monkeypatch, tmp_path):
    state = {"commit": "a" * 40, "requests": 0}
    with LiveServer(_hub(state)) as live:
        use_hub(monkeypatch, live.url, tmp_path / "hf")
        monkeypatch.setattr(loading, "_HUB_ASKED", {}, raising=False)
        yield state


def test_a_revision_pushed_since_the_cache_is_named_before_the_load_downloads_it(hub, monkeypatch):
    """The key named the commit cached before the load, which then downloaded the newer one: its
    answers and conversion were stored under the old commit's key (and re-made by the next run)."""
    from huggingface_hub import constants, hf_hub_download

    hf_hub_download("org/tiny", "config.json")  # an earlier run's load cached commit a
    hub["commit"] = "b" * 40  # then a new revision was pushed
    assert loading.hub_revision("org/tiny") == "org/tiny@" + "b" * 40
    asked = hub["requests"]
    assert loading.hub_revision("org/tiny") == "org/tiny@" + "b" * 40 and hub["requests"] == asked  # once a process

    hub["commit"] = "c" * 40
    loading._HUB_ASKED.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline, the load reads the cache, and so does the key
    assert loading.hub_revision("org/tiny") == "org/tiny@" + "b" * 40 and hub["requests"] == asked
