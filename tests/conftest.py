"""Test isolation: caches and home point at temp dirs, hubs are offline, nothing leaks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.tiny import make_model_dir


@pytest.fixture(scope="session", autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(home / "hf")
    # The converted bundled models are expensive to rebuild (~25 s for SmolLM2); a session shares them.
    os.environ.setdefault("POTSTILL_CACHE", str(tmp_path_factory.mktemp("potstill-cache")))
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ["POTSTILL_PROGRESS"] = "never"
    # Tiny models gain nothing from threads, and on a shared 2-core machine thread hand-offs
    # dominate: a 32x64 matmul took 3.9 ms with 2 threads and 0.04 ms with 1. Subprocesses
    # (the CLI tests) inherit this through the environment.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def bpe_lm(tmp_path_factory: pytest.TempPathFactory):
    """A random tiny Llama with a byte-level BPE tokenizer, loaded (guided decoding's tests)."""
    from potstill.models.loading import load_lm
    from tests.export.conftest import make_bpe_model

    return load_lm(str(make_bpe_model(tmp_path_factory.mktemp("bpe-json") / "model")), device="cpu")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with other weights (a 'teacher' that differs from the student)."""
    return make_model_dir(tmp_path_factory.mktemp("tiny-b") / "model", seed=1, layers=3)
