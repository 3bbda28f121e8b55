"""What redistill can tell of a kept student without loading it (``redistill.loadable``), and the one
line it gives for one that fails only when loaded. Real files: tiny Llama students saved by
transformers, whole and in shards, then damaged as a full disk or a hand edit leaves them."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from potstill.errors import PotstillError
from potstill.redistill.loadable import BIN_INDEX, INDEX, why_unloadable


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_model):
    """The tiny student saved in shards of at most 20 KB, as transformers saves a large model."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(out, max_shard_size="20KB")
    shutil.copy(tiny_model / "tokenizer.json", out)
    return out


@pytest.fixture(scope="module")
def as_bin(tmp_path_factory, tiny_model):
    """The tiny student as transformers 4 saved it with ``safe_serialization=False`` (transformers 5
    saves safetensors only, and still loads these): its state dict in pytorch_model.bin, and in two
    shards with their index (pytorch_model.bin.index.json)."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("bin")
    state = load_file(tiny_model / "model.safetensors")
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for d in ("whole", "sharded"):
        shutil.copytree(tiny_model, root / d, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(state, root / "whole" / "pytorch_model.bin")
    for shard, part in shards.items():
        torch.save({n: state[n] for n in part}, root / "sharded" / shard)
    (root / "sharded" / BIN_INDEX).write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: shard for shard, part in shards.items() for n in part}}))
    return root / "whole", root / "sharded"


def _copy(src, tmp_path, name="s"):
    return shutil.copytree(src, tmp_path / name)


def test_whole_students_pass(tiny_model, sharded):
    assert len(json.loads((sharded / INDEX).read_text())["weight_map"]) > 1
    assert why_unloadable(tiny_model) is None and why_unloadable(sharded) is None


def test_weights_cut_short_a_missing_shard_and_a_bad_config_are_named(tiny_model, sharded, tmp_path):
    s = _copy(tiny_model, tmp_path, "cut")
    os.truncate(s / "model.safetensors", (s / "model.safetensors").stat().st_size - 1)  # one byte short
    assert why_unloadable(s) == ("model.safetensors: SafetensorError: Error while deserializing header: "
                                 "incomplete metadata, file not fully covered")

    s = _copy(sharded, tmp_path, "shard")
    index = json.loads((s / INDEX).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (s / shard).unlink()
    assert why_unloadable(s) == f"{INDEX} names the shard {shard}, which is not there"

    s = _copy(sharded, tmp_path, "moved")
    name, first = sorted(index["weight_map"].items())[0]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != first)
    index["weight_map"][name] = other
    (s / INDEX).write_text(json.dumps(index))
    assert why_unloadable(s) == f"{INDEX} puts {name} in {other}, which does not hold it"

    s = _copy(tiny_model, tmp_path, "config")
    (s / "config.json").write_text('{"model_type": "llama",')  # a hand edit cut short
    assert why_unloadable(s).startswith("config.json cannot be read (JSONDecodeError: ")

    s = _copy(tiny_model, tmp_path, "empty")
    (s / "model.safetensors").unlink()
    assert why_unloadable(s) == "no weights in it (no *.safetensors or *.bin file)"


def test_bin_weights_cut_short_or_a_missing_bin_shard_are_named(as_bin, tmp_path):
    """Before, only safetensors files were checked: a student saved as .bin files, cut short or
    missing a shard, passed, and redistill paid the teacher and trained a challenger first."""
    whole, sharded = as_bin
    assert why_unloadable(whole) is None and why_unloadable(sharded) is None

    s = _copy(whole, tmp_path, "cut")
    os.truncate(s / "pytorch_model.bin", (s / "pytorch_model.bin").stat().st_size - 1)  # one byte short
    assert why_unloadable(s) == ("pytorch_model.bin: BadZipFile: File is not a zip file (a PyTorch checkpoint is a "
                                 "zip archive, whose directory at its end this one lacks: cut short or damaged)")

    s = _copy(sharded, tmp_path, "shard")
    shard = sorted(set(json.loads((s / BIN_INDEX).read_text())["weight_map"].values()))[-1]
    (s / shard).unlink()
    assert why_unloadable(s) == f"{BIN_INDEX} names the shard {shard}, which is not there"


def test_a_student_that_fails_only_when_loaded_is_one_line_naming_it(tiny_model, tmp_path):
    """What the header check cannot see (weights of another shape than the config's) failed the
    comparison with a traceback after the challenger's training; now one PotstillError naming it."""
    from potstill.config_setup import TaskConfig
    from potstill.redistill import _answers
    from potstill.tasks import get_task

    s = _copy(tiny_model, tmp_path)
    cfg = json.loads((s / "config.json").read_text())
    (s / "config.json").write_text(json.dumps({**cfg, "intermediate_size": cfg["intermediate_size"] // 2}))
    assert why_unloadable(s) is None
    task = get_task(TaskConfig(type="classification", labels=["a", "b"], instruction="classify"))
    with pytest.raises(PotstillError) as e:
        _answers(s, task, {"frozen test": []}, 8, "champion")
    assert str(e.value).startswith(f"cannot load the champion {s}: RuntimeError: ") and "\n" not in str(e.value)
