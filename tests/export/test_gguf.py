"""GGUF export of a tiny Llama with a real byte-level BPE: load back through transformers, compare."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potstill.config import Config, TaskConfig
from potstill.errors import PotstillError
from potstill.export import export
from potstill.export import gguf_file
from tests.export.conftest import make_bpe_model

LABELS = ["business", "politics", "sports"]
INSTRUCTION = "Which topic is this article: business, politics or sports?"
TEXTS = [
    "The bank said profits rose 12% to $3.5bn in 2004.",
    "<|im_start|>user\nThe team scored a late goal.<|im_end|>\n<|im_start|>assistant\n",
    "  Shares   fell;\tthe minister quit!\n\nÜnïcödé 日本 ok",
]


def make_run(tmp_path: Path, model_dir: Path, **export_cfg) -> Config:
    shutil.copytree(model_dir, tmp_path / "run" / "student")
    return Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS, instruction=INSTRUCTION),
                  export=export_cfg or {})


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def rounded(model, qtype: str):
    """A copy of ``model`` whose 2-D weights went through the GGUF type's rounding."""
    import copy

    import gguf
    import numpy as np

    kind = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[qtype]
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
    assert sorted(p.name for p in written) == ["Modelfile.f16", "Modelfile.q8_0", "export.json",
                                               "student-f16.gguf", "student-q8_0.gguf"]
    for qtype, big in (("f16", "F16"), ("q8_0", "Q8_0")):
        r = gguf.GGUFReader(out / f"student-{qtype}.gguf")
        f = {k: r.fields[k].contents() for k in r.fields if not k.startswith("tokenizer.ggml.t")
             and k != "tokenizer.ggml.merges"}
        types = {t.name: t.tensor_type.name for t in r.tensors}
        assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2
        assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
        assert f["llama.embedding_length"] == 64 and f["llama.feed_forward_length"] == 128
        assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
        assert f["tokenizer.ggml.add_bos_token"] is False
        assert "run" in f["general.name"] and "classification" in f["general.description"]
        assert "output.weight" not in types  # tied: llama.cpp reuses token_embd.weight
        assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
        assert types["blk.1.attn_q.weight"] == big and types["token_embd.weight"] == big
        assert len(r.tensors) == 2 * 9 + 2


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
    model, _ = load_gguf(exported[0] / "student-q8_0.gguf")
    # Q8_0 rounds each weight to one of 255 steps of its 32-weight block's scale; the PyTorch
    # model with its weights put through gguf's own quantize/dequantize gives the same logits.
    assert max(max_diffs(rounded(ref, "q8_0"), model, ref_tok)) < 1e-4
    scale = max(float(logits(ref, ref_tok(t)["input_ids"]).abs().max()) for t in TEXTS)
    assert max(max_diffs(ref, model, ref_tok)) < 0.1 * scale  # ~5% here: init 0.2 makes errors grow


def test_untied_writes_output_weight(tmp_path):
    import gguf

    src = make_bpe_model(tmp_path / "untied", tied=False, seed=1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref, tok = AutoModelForCausalLM.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)
    gguf_file.write_gguf(ref, tok, tmp_path / "m.gguf", "f16")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    model, _ = load_gguf(tmp_path / "m.gguf")
    assert model.config.tie_word_embeddings is False
    assert max(max_diffs(rounded(ref, "f16"), model, tok)) < 1e-4


def test_without_the_qk_permutation_logits_differ(bpe_model, reference, tmp_path, monkeypatch):
    """The comparison above can fail: skipping llama.cpp's Q/K row order breaks RoPE visibly."""
    ref, tok = reference
    monkeypatch.setattr(gguf_file, "permute", lambda w, n_head, n_head_kv=None: w)
    gguf_file.write_gguf(ref, tok, tmp_path / "wrong.gguf", "f16")
    model, _ = load_gguf(tmp_path / "wrong.gguf")
    assert max(max_diffs(rounded(ref, "f16"), model, tok)) > 0.1


def test_modelfile(exported, reference):
    _, tok = reference
    out = exported[0]
    text = (out / "Modelfile.q8_0").read_text()
    lines = text.splitlines()
    assert lines[0] == "FROM ./student-q8_0.gguf" and (out / "student-q8_0.gguf").exists()
    assert (out / "Modelfile.f16").read_text().splitlines()[0] == "FROM ./student-f16.gguf"
    assert f'SYSTEM """{INSTRUCTION}"""' in text
    assert "PARAMETER temperature 0" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    longest = max(len(tok(label + "<|im_end|>", add_special_tokens=False)["input_ids"]) for label in LABELS)
    assert f"PARAMETER num_predict {longest}" in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "{{ .System }}<|im_end|>" in template and template.endswith("<|im_start|>assistant\n")
    assert template.count("{{") == template.count("}}")


def test_unsupported_architecture_is_one_clear_error(tmp_path):
    src = make_bpe_model(tmp_path / "qwen", model_type="qwen2")
    cfg = make_run(tmp_path, src)
    with pytest.raises(PotstillError, match="llama-architecture"):
        export(cfg, "gguf")
    assert not (Path(cfg.run_dir) / "export" / "gguf").exists()  # nothing half-written


def test_cli_unsupported_architecture_exits_with_one_line(tmp_path):
    src = make_bpe_model(tmp_path / "qwen", model_type="qwen2")
    make_run(tmp_path, src)
    (tmp_path / "potstill.yaml").write_text(f"run_dir: run\ntask:\n  labels: {LABELS}\n")
    r = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", "gguf"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: GGUF export supports llama-architecture students (SmolLM2, Llama); "
                                             "this student is 'qwen2'"]
