"""Formats lora and gguf-lora: a LoRA student trained by potstill's trainer (on a tiny Llama with a real
byte-level BPE) exported as its adapter, unmerged. The PEFT folder on its written base gives the merged
student's logits; llama.cpp's adapter file holds the trained delta (base + alpha / r * B A is the merged
weight); with ``POTSTILL_LLAMA_SERVER``, llama-server with ``--lora`` answers as the merged file does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from potstill.config import Config, TaskConfig, TrainConfig
from potstill.errors import PotstillError
from potstill.export import export
from potstill.export.merged import load_student
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.trainer import train
from potstill.export import MARK
from tests.export.conftest import make_bpe_model
from tests.helpers.llama import needs_llama_server
from tests.helpers.ollama import ollama_chat_prompt, ollama_commands

pytest.importorskip("peft")

LABELS = ["business", "politics", "sports"]
INSTRUCTION = "Which topic is this article: business, politics or sports?"
TEXTS = ["The bank said profits rose 12% to $3.5bn in 2004.", "The minister told the party to vote in May.",
         "The team scored a late goal to win the match.", "Shares in the firm fell after the chief quit.",
         "The election vote would be held in May.", "The match was won at home on Saturday."]


def _lora_run(root: Path, bpe_model: Path, num_layers: int | None = None) -> Config:
    """A run whose student/ is a LoRA adapter (rank 4, alpha 8) that potstill's trainer saved, on a base
    in a local folder (so the export writes the base beside it), cut to ``num_layers`` as training cuts it."""
    base = root / "base-model"
    shutil.copytree(bpe_model, base)
    run = root / "run"
    task_cfg = TaskConfig(type="classification", labels=LABELS, instruction=INSTRUCTION)
    task = get_task(task_cfg)
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(base), device="cpu", num_layers=num_layers)
    # lr 0.05 over 10 steps moves the B matrices (zero at init) well away from zero.
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lr=0.05, epochs=10, batch_size=6, seed=0)
    train(lm, student_format(lm, task), task, records, records[:2], cfg, 64, run / "student", run / "metrics.jsonl")
    (run / "student" / "imatrix.safetensors").write_bytes(b"a sidecar of the merged student")
    return Config(run_dir=str(run), task=task_cfg, student={"model": str(base), "num_layers": num_layers},
                  export={"gguf_types": ["f16"]})


@pytest.fixture(scope="module")
def lora_run(bpe_model, tmp_path_factory) -> Config:
    return _lora_run(tmp_path_factory.mktemp("lora-export"), bpe_model)


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory) -> Config:
    # 3 of 4 layers: 21 adapted modules, which PEFT saves as name suffixes (q_proj ...) that also match the
    # layer cut away (from 20 on; fewer are saved by full name)
    root = tmp_path_factory.mktemp("lora-cut")
    return _lora_run(root, make_bpe_model(root / "four", layers=4), num_layers=3)


def _ids(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[0]


def test_the_adapter_on_its_written_base_gives_the_merged_students_logits(lora_run):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    out = Path(lora_run.run_dir) / "export" / "lora"
    names = sorted(p.name for p in export(lora_run, "lora"))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "base", "README.md",
            "export.json"} <= set(names)
    assert "imatrix.safetensors" not in names  # the merged student's sidecar describes other weights
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str((out / "base").resolve()) and conf["revision"] is None
    assert (conf["r"], conf["lora_alpha"]) == (4, 8)

    merged = load_student(lora_run, Path(lora_run.run_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out).eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # the base found by the config's path
    bare = AutoModelForCausalLM.from_pretrained(out / "base").eval()
    for text in TEXTS[:3]:
        ids = _ids(merged.tokenizer, text)
        want = _logits(merged.model, ids)
        assert (_logits(model, ids) - want).abs().max() < 1e-4
        assert (_logits(auto, ids) - want).abs().max() < 1e-4
        assert (_logits(bare, ids) - want).abs().max() > 0.05  # the adapter moved it: the check can fail

    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "- \"lora\"" in card
    assert f"vllm serve {out}/base --enable-lora --lora-modules student={out}" in card
    assert f"PeftModel.from_pretrained(base, {str(out)!r})" in card
    assert json.loads((out / "export.json").read_text())["base"] == "base/"


def test_the_cards_example_runs_the_adapter_prompted_as_in_training(lora_run, capsys):
    import re

    from potstill.models.prompting import PromptFormat
    from potstill.train.batching import prompt_ids

    out = Path(lora_run.run_dir) / "export" / "lora"
    if not (out / "README.md").exists():
        export(lora_run, "lora")
    text = "the team won the match in the last minute"
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    scope: dict = {}
    exec(code.replace('text = "..."', f"text = {text!r}"), scope)  # as a reader would run it
    merged = load_student(lora_run, Path(lora_run.run_dir))
    want = prompt_ids(merged.tokenizer, PromptFormat(kind="chat", instruction=INSTRUCTION),
                      [{"role": "user", "content": text}])
    assert scope["ids"][0].tolist() == want
    assert (_logits(scope["model"].eval(), scope["ids"]) - _logits(merged.model, scope["ids"])).abs().max() < 1e-4
    assert capsys.readouterr().out.strip()  # it answered something


def test_an_adapter_on_a_cut_base_loads_without_peft_listing_the_layers_cut_away(cut_run, recwarn):
    """The adapter goes onto the base cut as in training: PEFT's load of it onto the whole base warned of
    every adapter weight the cut layers lack; the merged weights and the identity are what they were."""
    from peft import AutoPeftModelForCausalLM

    from potstill.models.loading import keep_layers, model_identity

    student = Path(cut_run.run_dir) / "student"
    assert all("." not in m for m in json.loads((student / "adapter_config.json").read_text())["target_modules"])
    lm = load_lm(str(student), device="cpu", num_layers=3)
    assert not [w for w in recwarn if "missing adapter keys" in str(w.message)]
    assert lm.identity == model_identity(str(student), student) + "[:3]"
    whole = AutoPeftModelForCausalLM.from_pretrained(student).merge_and_unload()  # the earlier way
    keep_layers(whole, 3)
    assert any("missing adapter keys" in str(w.message) for w in recwarn)  # which did warn
    want, got = whole.state_dict(), lm.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_base_cut_by_num_layers_is_written_cut(cut_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "cut"
    export(cut_run, "lora", out)
    assert json.loads((out / "base" / "config.json").read_text())["num_hidden_layers"] == 3
    merged = load_student(cut_run, Path(cut_run.run_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out).eval()
    ids = _ids(merged.tokenizer, TEXTS[0])
    assert (_logits(model, ids) - _logits(merged.model, ids)).abs().max() < 1e-4


def test_a_hub_base_is_named_by_id_and_commit_not_copied(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    path = run / "student" / "adapter_config.json"
    conf = json.loads(path.read_text())
    conf["base_model_name_or_path"], conf["revision"] = "HuggingFaceTB/SmolLM2-135M", "0123abcd" * 5
    path.write_text(json.dumps(conf))
    cfg = lora_run.model_copy(update={"run_dir": str(run)})
    out = run / "export" / "lora"
    names = {p.name for p in export(cfg, "lora")}
    assert "base" not in names
    got = json.loads((out / "adapter_config.json").read_text())
    assert (got["base_model_name_or_path"], got["revision"]) == ("HuggingFaceTB/SmolLM2-135M", "0123abcd" * 5)
    card = (out / "README.md").read_text()
    assert (f"vllm serve HuggingFaceTB/SmolLM2-135M --revision {'0123abcd' * 5} --enable-lora "
            f"--lora-modules student={out}") in card


def test_a_full_fine_tune_has_no_adapter_one_line(bpe_model, tmp_path):
    shutil.copytree(bpe_model, tmp_path / "run" / "student")
    (tmp_path / "potstill.yaml").write_text(f"run_dir: run\ntask:\n  labels: {LABELS}\n")
    for fmt in ("lora", "gguf-lora"):
        r = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", fmt],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"error: {Path('run') / 'student'} is a full fine-tune (train.method full): it has no adapter to export; "
            "export it whole with --format hf or --format gguf"]
        assert not (tmp_path / "run" / "export").exists()


def test_gguf_lora_refuses_what_llama_cpp_would_scale_otherwise(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    path = run / "student" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_rslora": True}))
    with pytest.raises(PotstillError, match=r"rank-stabilised \(use_rslora\) adapter; llama.cpp applies plain LoRA"):
        export(lora_run.model_copy(update={"run_dir": str(run)}), "gguf-lora")
    assert not (run / "export").exists()


@pytest.fixture(scope="module")
def gguf_lora(lora_run):
    pytest.importorskip("gguf")
    out = Path(lora_run.run_dir) / "export" / "gguf-lora"
    export(lora_run, "gguf-lora")
    return out


def _tensors(path: Path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(
        [int(x) for x in reversed(t.shape)]) for t in gguf.GGUFReader(path).tensors}


def _check_delta(run: Config, out: Path, tmp_path: Path) -> None:
    """In ``out``'s adapter file, base + alpha / r * B A is the merged student's f32 conversion, tensor for tensor."""
    import gguf

    from potstill.export.gguf_file import convert

    reader = gguf.GGUFReader(out / "adapter-f16.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    assert alpha == 8
    # The merged student as llama.cpp's converter writes it (f32): its weight is base + alpha / r * B A.
    export(run, "hf", tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "merged.gguf", "f32")
    merged, base, adapter = _tensors(tmp_path / "merged.gguf"), _tensors(out / "base-f16.gguf"), _tensors(
        out / "adapter-f16.gguf")
    pairs = sorted(n[: -len(".lora_a")] for n in adapter if n.endswith(".lora_a"))
    assert len(pairs) == 2 * 7  # every linear layer of the 2 layers: q, k, v, o, gate, up, down
    for name in pairs:
        a, b = adapter[name + ".lora_a"], adapter[name + ".lora_b"]
        assert a.shape[0] == 4 and b.shape[1] == 4  # rank 4
        want, w = merged[name], base[name]
        delta = b @ a * (alpha / a.shape[0])
        scale = np.abs(want).max()
        assert np.abs(w + delta - want).max() < 2e-3 * scale, name  # f16 rounding of base, A and B
        assert np.abs(w - want).max() > 5e-3 * scale, name  # without the delta it would fail
    assert set(merged) == set(base)  # the base file is the merged one's architecture, tensor for tensor


def test_the_gguf_adapter_holds_the_trained_delta(lora_run, gguf_lora, tmp_path):
    _check_delta(lora_run, gguf_lora, tmp_path)


@pytest.mark.parametrize("arch,gguf_arch", [("qwen2", "qwen2"), ("gemma3_text", "gemma3")])
def test_other_architectures_adapters_hold_their_delta(tmp_path, arch, gguf_arch):
    """llama.cpp's LoRA converter on the other students potstill exports: Qwen2 (biased q/k/v) and Gemma 3."""
    import gguf

    run = _lora_run(tmp_path, make_bpe_model(tmp_path / arch, model_type=arch))
    export(run, "gguf-lora")
    out = Path(run.run_dir) / "export" / "gguf-lora"
    assert gguf.GGUFReader(out / "base-f16.gguf").fields["general.architecture"].contents() == gguf_arch
    assert gguf.GGUFReader(out / "adapter-f16.gguf").fields["general.architecture"].contents() == gguf_arch
    _check_delta(run, out, tmp_path)


def test_each_modelfile_names_its_base_and_the_adapter(gguf_lora):
    modelfile = (gguf_lora / "Modelfile.f16").read_text()
    cmds = ollama_commands(modelfile)
    assert cmds[:2] == [("model", "./base-f16.gguf"), ("adapter", "./adapter-f16.gguf")]
    assert ("temperature", "0") in cmds and "system" not in dict(cmds)  # the TEMPLATE writes the instruction
    prompt = ollama_chat_prompt(dict(cmds)["template"], "", [{"role": "system", "content": "be a pirate"},
                                                             {"role": "user", "content": "hi"}])
    assert INSTRUCTION in prompt and "pirate" not in prompt
    card = (gguf_lora / "README.md").read_text()
    assert f"llama-server -m {gguf_lora}/base-f16.gguf --lora {gguf_lora}/adapter-f16.gguf" in card
    assert "- \"gguf\"" in card and "- \"lora\"" in card
    summary = json.loads((gguf_lora / "export.json").read_text())
    assert summary["adapter"]["lora_pairs"] == 14 and [f["file"] for f in summary["base_files"]] == ["base-f16.gguf"]


def test_the_export_names_a_local_base_by_its_name_only(lora_run, gguf_lora):
    """The adapter GGUF carried the base's absolute path (general.base_model.0.repo_url
    https://huggingface.co//tmp/.../base-model, general.tags base_model:adapter:/tmp/...), and
    export.json and the card the run's and the base's: files meant to be pushed named the exporter's
    folders. The base files were already written with its name alone."""
    import gguf

    root = str(Path(lora_run.run_dir).resolve().parent)
    for f in ("adapter-f16.gguf", "base-f16.gguf"):
        fields = gguf.GGUFReader(gguf_lora / f).fields
        texts = [str(fields[k].contents()) for k in fields if k.startswith("general.")]
        assert texts and not [t for t in texts if root in t], (f, [t for t in texts if root in t])
    base = gguf.GGUFReader(gguf_lora / "base-f16.gguf").fields
    assert base["general.base_model.0.name"].contents() == "base-model"
    summary = json.loads((gguf_lora / "export.json").read_text())
    assert (summary["source"], summary["trained_on"]) == ("student", "base-model")
    card = (gguf_lora / "README.md").read_text()
    assert "distilled with potstill from `base-model`" in card and f"{root}/base-model" not in card


@needs_llama_server
def test_llama_server_with_the_adapter_answers_as_the_merged_file(lora_run, gguf_lora, tmp_path):
    _served_as_merged(lora_run, gguf_lora, tmp_path)


@needs_llama_server
@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_other_architectures_adapters_are_served_as_their_merged_files(tmp_path, arch):
    """The Qwen2 and Gemma 3 adapters through llama-server's --lora, not only their tensors (above)."""
    run = _lora_run(tmp_path, make_bpe_model(tmp_path / arch, model_type=arch))
    export(run, "gguf-lora")
    _served_as_merged(run, Path(run.run_dir) / "export" / "gguf-lora", tmp_path)


def _served_as_merged(lora_run: Config, gguf_lora: Path, tmp_path: Path) -> None:
    """llama-server on the base with ``--lora`` gives the merged f16 file's first greedy token and
    top-5 log-probabilities (within 0.02), and the base alone answers otherwise."""
    from potstill.engines.llamacpp import LlamaServer, server_binary

    lora_run_f16 = lora_run.model_copy(update={"export": lora_run.export.model_copy(update={"gguf_types": ["f16"]})})
    merged_dir = tmp_path / "merged"
    export(lora_run_f16, "gguf", merged_dir)
    tok = load_student(lora_run, Path(lora_run.run_dir)).tokenizer

    def top(server: LlamaServer, text: str) -> tuple[list[int], list[dict[int, float]]]:
        r = server.post("/completion", {"prompt": tok(text, add_special_tokens=False)["input_ids"], "n_predict": 6,
                                        "temperature": 0, "n_probs": 5, "post_sampling_probs": False,
                                        "cache_prompt": False, "return_tokens": True,
                                        # text llama-server can return: an untaught byte-level model writes stray bytes
                                        "grammar": "root ::= [a-zA-Z ]+"})
        steps = [{int(p["id"]): float(p["logprob"]) for p in step["top_logprobs"]} for step in r["completion_probabilities"]]
        return r["tokens"], steps

    binary = server_binary()
    servers = {"merged": LlamaServer(binary, merged_dir / "student-f16.gguf", 1, 128, 2, False),
               "adapter": LlamaServer(binary, gguf_lora / "base-f16.gguf", 1, 128, 2, False,
                                      ["--lora", str(gguf_lora / "adapter-f16.gguf")]),
               "bare": LlamaServer(binary, gguf_lora / "base-f16.gguf", 1, 128, 2, False)}
    try:
        moved = 0.0
        for text in TEXTS:
            (want_ids, want_steps), (got_ids, got_steps), (_, bare_steps) = (
                top(servers[k], text) for k in ("merged", "adapter", "bare"))
            want, got, bare = want_steps[0], got_steps[0], bare_steps[0]
            assert list(got) == list(want) and max(abs(got[i] - want[i]) for i in want) < 0.02
            # The first greedy token, not the whole answer: f16 rounds the merged weights and the adapter's
            # product apart, and under the grammar the later steps of this random tiny model pick among
            # tokens outside the top 5 shown, where such rounding flips near ties ([85, 281, ...] against
            # [85, 39, ...] on 2026-12-07, with the first step's top 5 within 0.02).
            assert got_ids[0] == want_ids[0], (text, got_ids, want_ids)
            moved = max(moved, max(abs(bare.get(i, -99.0) - want[i]) for i in want))
        assert moved > 0.1  # the adapter changed what the base alone answers
    finally:
        for s in servers.values():
            s.close()



def test_an_unreadable_note_of_the_bases_cut_is_one_line(cut_run, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(Path(cut_run.run_dir) / "student", student)
    assert load_lm(str(student), device="cpu").model.config.num_hidden_layers == 3  # cut by the note alone
    for bad in ("{", '{"num_hidden_layers": 0}', "[]"):
        (student / "potstill_layers.json").write_text(bad)
        with pytest.raises(PotstillError) as e:
            load_lm(str(student), device="cpu")
        assert "potstill_layers.json: unreadable" in str(e.value) and "\n" not in str(e.value)


def test_an_adapter_of_a_hub_base_is_pushed_and_one_of_a_local_base_is_refused(lora_run, hub, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(PotstillError, match="the adapter's base exists only in this run"):
        export(lora_run.model_copy(update={"run_dir": str(run)}), "lora", push_to="org/news-lora")
    assert not (run / "export").exists() and hub["auth"] == []
    path = run / "student" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M",
                                "revision": "0123abcd" * 5}))
    export(lora_run.model_copy(update={"run_dir": str(run)}), "lora", push_to="org/news-lora")
    [commit] = hub["commits"]
    out = run / "export" / "lora"
    assert commit["repo"] == "org/news-lora"
    assert commit["files"] == {p.name: p.read_bytes() for p in out.iterdir() if p.name != MARK}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(commit["files"])
    card = commit["files"]["README.md"].decode()
    assert "library_name: peft" in card and "--lora-modules student=org/news-lora" in card
    assert "PeftModel.from_pretrained(base, 'org/news-lora')" in card


def test_a_gguf_lora_export_is_pushed_with_its_base(gguf_lora, lora_run, hub):
    export(lora_run, "gguf-lora", push_to="org/news-gguf-lora")
    [commit] = hub["commits"]
    assert {"adapter-f16.gguf", "base-f16.gguf", "Modelfile.f16", "README.md"} <= set(commit["files"])
    card = commit["files"]["README.md"].decode()
    assert "huggingface-cli download org/news-gguf-lora --local-dir student" in card
    assert "llama-server -m student/base-f16.gguf --lora student/adapter-f16.gguf" in card
