"""A model's identity (``loading.model_identity``) names its answer caches and engine conversions:
every file that changes what it answers must change it, and large files are not re-read per load."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

from potstill import hashing
from potstill.engines.calibration import weights_of
from potstill.models.loading import model_identity
from tests.helpers.tiny import make_tokenizer


def _sharded(path: Path) -> Path:
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(path, max_shard_size="20KB")
    tok.save_pretrained(path)
    return path


def _ident(path: Path) -> str:
    hashing._DIGESTS.clear()  # as a new command would see it
    return model_identity(str(path), path)


def _bump(p: Path, edit) -> None:
    edit(p)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))


def test_a_later_shard_the_tokenizer_chat_template_or_config_change_the_identity(tmp_path):
    """Only the first weights file was hashed: a replaced later shard, an edited chat template (in
    tokenizer_config.json or chat_template.jinja), tokenizer or config kept the key, so the engine
    conversion cache and a local teacher's answers were served stale."""
    model = _sharded(tmp_path / "m")
    shards = sorted(model.glob("model-*.safetensors"))
    assert len(shards) > 2
    seen = {_ident(model)}
    first = weights_of(next(iter(seen)))
    assert first is not None

    def changed(path: Path, edit) -> None:
        _bump(path, edit)
        now = _ident(model)
        assert now not in seen, f"{path.name} changed but the identity did not"
        assert weights_of(now) == first  # the weights' digest calibrations were recorded with
        seen.add(now)

    last = shards[-1]
    changed(last, lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\x00\x00\x00\x40"))

    def template(p: Path) -> None:
        cfg = json.loads(p.read_text())
        cfg["chat_template"] = cfg["chat_template"].replace("<|im_end|>\n", "<|im_end|>\n\n")
        p.write_text(json.dumps(cfg))

    tc = model / "tokenizer_config.json"
    if "chat_template" in json.loads(tc.read_text()):
        changed(tc, template)
    changed(model / "chat_template.jinja", lambda p: p.write_text("{{ messages[0]['content'] }}"))
    changed(model / "chat_template.jinja", lambda p: p.write_text("{{ messages[-1]['content'] }}"))
    changed(model / "tokenizer.json", lambda p: p.write_text(p.read_text().replace('"<unk>"', '"<unknown>"', 1)))
    changed(model / "config.json", lambda p: p.write_text(p.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05')))
    # What a trainer leaves beside the weights does not change the answers, nor the identity.
    before = _ident(model)
    (model / "metrics.jsonl").write_text("{}\n")
    (model / "README.md").write_text("notes")
    assert _ident(model) == before


def test_a_large_files_digest_is_kept_across_commands_until_it_changes(tmp_path, monkeypatch):
    """Hashing every shard at every load would read a multi-GB checkpoint each time: a large file's
    digest is kept in $POTSTILL_CACHE/digests.sqlite by inode, size, mtime and ctime."""
    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "DISK_MEMO_MIN_BYTES", 100)
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 1000)
    real = hashing.hash_file(f)
    db = tmp_path / "cache" / hashing.DIGESTS_DB
    with sqlite3.connect(db) as c:  # marks the stored row: a lookup that answers it did not read the file
        assert c.execute("SELECT count(*) FROM digests").fetchone()[0] == 1
        c.execute("UPDATE digests SET sha256 = 'remembered'")
    hashing._DIGESTS.clear()
    assert hashing.hash_file(f) == "remembered"
    stamp = f.stat().st_mtime_ns
    f.write_bytes(b"b" * 1000)  # rewritten in place, its mtime put back (cp -p, rsync -t): the ctime still moves
    os.utime(f, ns=(stamp, stamp))
    hashing._DIGESTS.clear()
    assert hashing.hash_file(f) not in ("remembered", real)
    small = tmp_path / "small.json"
    small.write_text("{}")
    monkeypatch.setattr(hashing, "DISK_MEMO_MIN_BYTES", 10**6)
    hashing.hash_file(small)
    with sqlite3.connect(db) as c:  # small files are not worth a row (nor is the rewritten file's old version)
        assert c.execute("SELECT count(*) FROM digests").fetchone()[0] == 1


def test_a_lora_adapters_identity_follows_its_local_base_model(tmp_path):
    """An adapter names its base by path only: a base retrained or replaced there kept the adapter's
    identity, so evaluate's ledger cache answered with the old base's outputs."""
    from peft import LoraConfig, get_peft_model

    from tests.helpers.tiny import make_model_dir

    base = make_model_dir(tmp_path / "base")
    model = LlamaForCausalLM.from_pretrained(base)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    make_tokenizer().save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    before = _ident(adapter)
    make_model_dir(base, seed=1)  # retrained in place
    assert _ident(adapter) != before
    from potstill.engines.convert import model_key

    key = model_key(str(adapter), adapter, None, "int8", "v")
    make_model_dir(base, seed=2)  # the engine conversion merges the adapter into this base
    assert model_key(str(adapter), adapter, None, "int8", "v") != key


def test_a_hub_students_identity_follows_its_revision(tmp_path, monkeypatch, tiny_model, tiny_model_b):
    """A hub-id student's identity was the id alone, so evaluate's ledger cache (keyed by it) answered
    a new upstream revision with the old one's outputs; it now names the commit, as a local hub
    teacher's does (``hub_revision``). The hub is a snapshot cache faked on disk, offline."""
    import shutil

    from huggingface_hub import constants

    from potstill.models import loading

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(loading, "_HUB_ASKED", {})  # a process keeps the commit it first keyed by: none leaks out
    repo = cache / "models--org--tiny"

    def publish(commit: str, model: Path) -> None:
        shutil.copytree(model, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        loading._HUB_ASKED.clear()  # a new command

    publish("a" * 40, tiny_model)
    first = model_identity("org/tiny", loading.resolve("org/tiny")[1])
    assert first == "org/tiny@" + "a" * 40
    publish("b" * 40, tiny_model_b)
    assert model_identity("org/tiny", "org/tiny") == "org/tiny@" + "b" * 40


def test_the_digest_cache_keeps_one_row_per_file_not_one_per_version(tmp_path, monkeypatch):
    """digests.sqlite gained a row for every version of every large file (each checkpoint saved over
    the last, each retrained student) and nothing pruned them: a file's new version now replaces
    its old row, whether it was rewritten in place (same inode) or replaced at the same path."""
    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "DISK_MEMO_MIN_BYTES", 100)
    db = tmp_path / "cache" / hashing.DIGESTS_DB

    def rows() -> list[str]:
        with contextlib.closing(sqlite3.connect(db)) as c:
            return [r[0] for r in c.execute("SELECT sha256 FROM digests")]

    db.parent.mkdir()
    with contextlib.closing(sqlite3.connect(db)) as c, c:  # the first version's table, a row per file version
        c.execute("CREATE TABLE digests (file TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")
        c.executemany("INSERT INTO digests VALUES (?, 'old')", [(f"[1, {i}, 2, 3, 4]",) for i in range(50)])
    f, g = tmp_path / "w.safetensors", tmp_path / "other.safetensors"
    for i in range(3):  # rewritten in place: one inode, three versions
        f.write_bytes(bytes([i]) * 1000)
        hashing._DIGESTS.clear()
        hashing.hash_file(f)
    assert rows() == [hashing.hash_file(f)]
    for i in range(3):  # saved beside and renamed over it (save_pretrained, atomic writes): a new inode each time
        tmp = tmp_path / "w.tmp"
        tmp.write_bytes(bytes([10 + i]) * 1000)
        os.replace(tmp, f)
        hashing._DIGESTS.clear()
        hashing.hash_file(f)
    g.write_bytes(b"g" * 1000)
    hashing.hash_file(g)
    assert sorted(rows()) == sorted([hashing.hash_file(f), hashing.hash_file(g)])
    # and each row still answers for its file, without reading it
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.execute("UPDATE digests SET sha256 = 'remembered'")
    hashing._DIGESTS.clear()
    assert hashing.hash_file(f) == hashing.hash_file(g) == "remembered"
