"""Point huggingface_hub at a hub served on 127.0.0.1 for one test, online, with a cache of its own."""

from __future__ import annotations

from pathlib import Path


def use_hub(monkeypatch, url: str, cache: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    # hf_hub_download builds its URL from this template, not from ENDPOINT.
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
