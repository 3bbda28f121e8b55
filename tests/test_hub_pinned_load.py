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


def test_a_hub_students_ctranslate2_conversion_reads_the_pinned_commit(hub, tiny_model, tiny_model_b, tmp_path,
                                                                       monkeypatch):
    """The conversion is keyed by the commit (``hub_revision``), but the converter and the tokenizer
    read the hub id at whatever refs/main named when they ran: an entry keyed by commit a held b's
    weights. It reads the keyed commit (the weights' bytes are those of a's 2 layers, not b's 3)."""
    pytest.importorskip("ctranslate2")
    from potstill.engines.convert import ctranslate2_model

    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    local, _ = ctranslate2_model(str(tiny_model), "int8")  # commit a's files, converted from their folder
    three, _ = ctranslate2_model(str(tiny_model_b), "int8")
    hub(A, tiny_model)
    assert loading.hub_revision("org/tiny") == f"org/tiny@{A}"  # the run keys its student by commit a
    hub(B, tiny_model_b)  # another command moved refs/main on
    out, _ = ctranslate2_model("org/tiny", "int8")
    size = lambda d: (d / "model.bin").stat().st_size  # noqa: E731
    assert size(three) > 1.2 * size(local) and abs(size(out) - size(local)) < 0.05 * size(local), \
        (size(out), size(local), size(three))


def test_a_hub_models_stages_are_fingerprinted_by_its_pinned_commit(hub, tiny_model, tiny_model_b, tmp_path,
                                                                    monkeypatch):
    """The stages' fingerprints (the manifest's skip-if-done) named a hub student by its id: once
    org/tiny moved to a new revision, `potstill run` skipped train ("up to date") and evaluated the
    student trained on the old one, although every answer, conversion and checkpoint was keyed by
    the commit. A local teacher from the hub (and train.teacher_model) likewise; an API teacher's
    model name is no hub id and is not looked up."""
    from potstill.config import load_config
    from potstill.pipeline import STAGES
    from potstill.rundir import RunDir
    from potstill.stage import by_content

    def config(teacher: dict):
        return load_config(overrides={"run_dir": str(tmp_path / "run"), "task": {"labels": ["a", "b"]},
                                      "student": {"model": "org/tiny"}, "teacher": teacher,
                                      "train": {"teacher_model": "org/tiny"}})

    api = config({"type": "openai", "model": "org/tiny", "base_url": "http://127.0.0.1:9/v1", "api_key_env": ""})
    local = config({"type": "local", "model": "org/tiny"})
    run = RunDir(api.run_dir)
    hub(A, tiny_model)
    before = {name: STAGES[name].fingerprint(api, run) for name in ("train", "evaluate")}
    assert by_content("student.model", "org/tiny", api) == {"hub": f"org/tiny@{A}"}
    assert by_content("train.teacher_model", "org/tiny", api) == {"hub": f"org/tiny@{A}"}
    assert by_content("teacher.model", "org/tiny", local) == {"hub": f"org/tiny@{A}"}
    assert by_content("teacher.model", "org/tiny", api) == "org/tiny"  # a model name an API serves
    hub(B, tiny_model_b)
    # This process pinned commit a (what its loads read): its fingerprints stay a's.
    assert {name: STAGES[name].fingerprint(api, run) for name in before} == before
    monkeypatch.setattr(loading, "_HUB_ASKED", {})  # the next command: refs/main names b
    after = {name: STAGES[name].fingerprint(api, run) for name in before}
    assert all(after[name] != before[name] for name in before), "a new revision must rerun train and evaluate"
    assert by_content("student.model", "org/tiny", api) == {"hub": f"org/tiny@{B}"}


def test_redistills_challenger_is_keyed_by_the_students_pinned_commit(hub, tiny_model, tiny_model_b, tmp_path,
                                                                       monkeypatch):
    """redistill names its challenger by a hash of its data and settings, the student's by name: after
    org/tiny's new revision, a rerun found the challenger trained on the old base "already trained on
    this data" and reused it."""
    from potstill.config import load_config
    from potstill.records import Record
    from potstill.redistill import challenger_id

    cfg = load_config(overrides={"run_dir": str(tmp_path / "run"), "task": {"labels": ["a", "b"]},
                                 "student": {"model": "org/tiny"}})
    data = [Record(messages=[{"role": "user", "content": "x"}], output="a")]
    hub(A, tiny_model)
    before = challenger_id(cfg, data)
    hub(B, tiny_model_b)
    assert challenger_id(cfg, data) == before  # this process loads commit a: the same challenger
    monkeypatch.setattr(loading, "_HUB_ASKED", {})
    assert challenger_id(cfg, data) != before


def test_a_lora_student_of_a_hub_base_reloads_the_commit_it_was_trained_on(hub, tiny_model, tiny_model_b, tmp_path):
    """A LoRA adapter named its hub base by id alone (adapter_config.json), so PEFT loaded whatever
    revision the cache's refs/main held later: after another command fetched commit b, the student
    reloaded as a's adapter on b's base. The adapter now records the commit (``revision``)."""
    import json

    from potstill.config import TaskConfig, TrainConfig
    from potstill.records import Record
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.trainer import train

    hub(A, tiny_model)  # 2 layers
    labels = ["sports", "tech", "politics"]
    task = get_task(TaskConfig(type="classification", labels=labels, instruction="classify the text"))
    texts = ["the team won the match", "the phone has a new chip", "the vote passed", "a goal in the final",
             "the laptop runs fast", "the minister spoke"]
    records = [Record(messages=[{"role": "user", "content": t}], output=labels[i % 3], valid=True)
               for i, t in enumerate(texts)]
    lm = load_lm("org/tiny", device="cpu")
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lr=0.05, epochs=2, batch_size=3, seed=0)
    train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "student", tmp_path / "m.jsonl")
    conf = json.loads((tmp_path / "student" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == "org/tiny" and conf["revision"] == A
    hub(B, tiny_model_b)  # 3 layers: refs/main moves on
    assert load_lm(str(tmp_path / "student"), device="cpu").model.config.num_hidden_layers == 2
