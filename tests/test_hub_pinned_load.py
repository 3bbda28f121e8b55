"""``load_lm`` loads the hub revision its identity names: a hub id's answers, conversions and
trained students are keyed by ``id@<commit>`` (``hub_revision``), so the weights loaded must be that
commit's, and a spec may name one (``org/name@<revision>``). The hub is a snapshot cache faked on
disk (``models--org--tiny/snapshots/<commit>/``, ``refs/main``), offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from potstill.errors import PotstillError
from potstill.models import loading
from potstill.models.loading import load_lm, model_identity, resolve

A, B = "a" * 40, "b" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_model, tiny_model_b):
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(loading, "_HUB_ASKED", {})
    repo = cache / "models--org--tiny"

    def publish(commit: str, model: Path) -> None:
        shutil.copytree(model, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    return publish


def test_the_weights_loaded_are_the_commit_the_run_keyed_its_answers_by(hub, tiny_model, tiny_model_b):
    """A local hub teacher keys its answers by its identity (commit a) before its lazy load; when the
    cache's refs/main moved on meanwhile (another command downloaded commit b), load_lm loaded b
    and named it b: b's answers went into the ledger under a's key."""
    hub(A, tiny_model)  # tiny_model: 2 layers, tiny_model_b: 3
    keyed = model_identity("org/tiny", resolve("org/tiny")[1])
    assert keyed == f"org/tiny@{A}"
    hub(B, tiny_model_b)
    lm = load_lm("org/tiny", device="cpu")
    assert lm.identity == keyed and lm.model.config.num_hidden_layers == 2


def test_a_spec_naming_a_revision_loads_that_revision(hub, tiny_model, tiny_model_b):
    """``org/name@<commit>`` (what an identity records) was passed to from_pretrained as a repo id
    and refused as one; it loads that commit, a branch name its commit, and one not in the cache
    offline is one line."""
    hub(A, tiny_model)
    hub(B, tiny_model_b)
    lm = load_lm(f"org/tiny@{A}", device="cpu")
    assert lm.identity == f"org/tiny@{A}" and lm.model.config.num_hidden_layers == 2
    assert model_identity(f"org/tiny@{A}", resolve(f"org/tiny@{A}")[1]) == f"org/tiny@{A}"
    from potstill.preflight import _tokenizer, _vocab_rows

    assert _tokenizer(f"org/tiny@{A}").name_or_path == "org/tiny" and _vocab_rows(f"org/tiny@{A}")
    main = load_lm("org/tiny@main", device="cpu")
    assert main.identity == f"org/tiny@{B}" and main.model.config.num_hidden_layers == 3
    with pytest.raises(PotstillError, match=r"^cannot load model 'org/tiny@c{40}': ") as e:
        load_lm("org/tiny@" + "c" * 40, device="cpu")
    assert "\n" not in str(e.value)
