"""potstill's own k-quants (Q4_K, Q5_K, Q6_K) and llama.cpp's mixes of them in exported GGUF files.

gguf-py's dequantizers, written from ggml's layouts independently of potstill's quantizers, read every
block back; a tiny Llama student with rows of 256 weights exports as q4_k_m / q5_k_m / q6_k / q4_0 and
loads through transformers' ``gguf_file=``. Where ``POTSTILL_LLAMA_QUANTIZE`` names llama.cpp's
``llama-quantize`` (not in CI: it is C++), the same mixes are compared with its files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from potstill.config import ExportConfig
from potstill.errors import PotstillError
from potstill.export import export, gguf_file, imatrix, kquants
from potstill.export.gguf_quant import MIXES, more_bits, requantize, tensor_type
from potstill.records import Record, write_jsonl
from tests.export.conftest import make_bpe_model
from tests.export.test_gguf import TEXTS, load_gguf, logits, make_run

KINDS = ("Q4_K", "Q5_K", "Q6_K")


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Weights shaped like a trained layer's: Student-t (5 dof) with 1% of the columns 8x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.distributions.StudentT(5.0).sample((rows, cols)) * 0.02
    x[:, torch.rand(cols, generator=g) < 0.01] *= 8
    return x.numpy()


def dequantize(blocks: np.ndarray, kind: str) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    return quants.dequantize(blocks, GGMLQuantizationType[kind])


def rel_rmse(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sqrt(((y.reshape(x.shape) - x) ** 2).sum() / (x ** 2).sum()))


@pytest.mark.parametrize("kind", KINDS)
def test_grid_values_round_trip_exactly(kind):
    """Weights that lie on a block's grid (power-of-two scales, integer levels) come back bit for bit:
    every scale, offset and level lands in the byte and bit gguf-py (ggml's layout) reads it from."""
    rng = np.random.default_rng(1)
    n = 64
    if kind == "Q6_K":
        sc = rng.integers(1, 128, (n, 16)) * rng.choice([-1, 1], (n, 16))
        sc[:, 0] = 127  # the largest magnitude sets the block scale: d * 127 exactly
        q = rng.integers(-32, 32, (n, 16, 16))
        q[:, :, 0] = -32  # each sub-block reaches its end level, so its fitted scale is the grid's
        x = (2.0 ** -12) * sc[:, :, None] * q
    else:
        top = 15 if kind == "Q4_K" else 31
        sc, mn = rng.integers(1, 64, (n, 8)), rng.integers(0, 64, (n, 8))
        sc[:, 0], mn[:, 0] = 63, 63
        q = rng.integers(0, top + 1, (n, 8, 32))
        q[:, :, 0], q[:, :, 1] = 0, top  # the sub-block spans its whole range
        x = (2.0 ** -10) * sc[:, :, None] * q - (2.0 ** -11) * mn[:, :, None]
        x = np.where(mn[:, :, None] == 0, np.maximum(x, 0), x)
    x = x.reshape(n, 256).astype(np.float32)
    y = dequantize(kquants.quantize(x, kind), kind).reshape(x.shape)
    assert np.array_equal(y, x), float(np.abs(y - x).max())


@pytest.mark.parametrize("kind,bound,plain", [("Q4_K", 0.100, "Q4_0"), ("Q5_K", 0.050, "Q5_0"), ("Q6_K", 0.030, "Q8_0")])
def test_error_on_heavy_tailed_weights(kind, bound, plain):
    """Relative RMSE within the bits' reach (llama-quantize's own files: 0.0928 / 0.0469 / 0.0261 on
    such weights), and below the plain 32-weight format of about as many bits (except Q8_0's 8.5)."""
    from gguf import GGMLQuantizationType, quants

    x = heavy_tailed(256, 1024)
    err = rel_rmse(dequantize(kquants.quantize(x, kind), kind), x)
    assert err < bound, err
    base = rel_rmse(quants.dequantize(quants.quantize(x, GGMLQuantizationType[plain]), GGMLQuantizationType[plain]), x)
    assert (err < base) if plain != "Q8_0" else (base < err), (err, base)


def test_the_fit_is_never_worse_than_min_max_rounding():
    x = heavy_tailed(64, 1024, seed=3).reshape(-1, 32)
    w = kquants._importance(x)
    s, m = kquants.fit_affine(x, 15)
    q = np.clip(np.rint((x + m[:, None]) / s[:, None]), 0, 15)
    fitted = (w * (s[:, None] * q - m[:, None] - x) ** 2).sum(-1)
    lo = np.minimum(x.min(-1), 0)
    step = (x.max(-1) - lo) / 15
    q0 = np.clip(np.rint((x - lo[:, None]) / step[:, None]), 0, 15)
    plain = (w * (step[:, None] * q0 + lo[:, None] - x) ** 2).sum(-1)
    assert (fitted <= plain * (1 + 1e-6)).all() and fitted.sum() < 0.9 * plain.sum()


@pytest.mark.parametrize("kind", KINDS)
def test_zero_and_constant_blocks(kind):
    x = np.zeros((3, 256), dtype=np.float32)
    x[1] = 0.25
    x[2, :128] = -1.0
    y = dequantize(kquants.quantize(x, kind), kind).reshape(x.shape)
    assert np.isfinite(y).all() and np.array_equal(y[0], x[0])
    assert np.abs(y - x).max() < 0.05


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize(np.zeros((2, 576), dtype=np.float32), "Q4_K")


def test_mix_rules():
    layers = 16
    wide, narrow = (1024, 2048), (576, 576)
    assert [i for i in range(layers) if more_bits(i, layers)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert tensor_type("blk.3.attn_q.weight", wide, "q4_k_m", layers, True) == "Q4_K"
    assert tensor_type("blk.4.attn_v.weight", wide, "q4_k_m", layers, True) == "Q6_K"
    assert tensor_type("blk.5.attn_v.weight", wide, "q4_k_m", layers, True) == "Q4_K"
    assert tensor_type("blk.7.ffn_down.weight", wide, "q5_k_m", layers, True) == "Q6_K"
    assert tensor_type("blk.7.ffn_down.weight", wide, "q6_k", layers, True) == "Q6_K"
    assert tensor_type("blk.7.ffn_down.weight", wide, "q4_0", layers, True) == "Q4_0"
    assert tensor_type("token_embd.weight", wide, "q4_k_m", layers, True) == "Q6_K"  # tied: it is the head
    assert tensor_type("token_embd.weight", wide, "q4_k_m", layers, False) == "Q4_K"
    assert tensor_type("output.weight", wide, "q4_0", layers, False) == "Q6_K"
    assert tensor_type("output.weight", narrow, "q4_k_m", layers, False) == "Q8_0"
    # rows of 576 weights cannot hold 256-weight blocks: llama-quantize's fallbacks
    assert tensor_type("blk.3.attn_q.weight", narrow, "q4_k_m", layers, True) == "Q5_0"
    assert tensor_type("blk.3.attn_q.weight", narrow, "q5_k_m", layers, True) == "Q5_1"
    assert tensor_type("blk.4.attn_v.weight", narrow, "q4_k_m", layers, True) == "Q8_0"
    assert tensor_type("blk.3.attn_q.weight", (8, 40), "q4_k_m", layers, True) == "F16"
    assert tensor_type("blk.3.attn_norm.weight", (1024,), "q4_k_m", layers, True) == "F32"
    assert ExportConfig(gguf_types=["Q4_K_M", "q4_k_m", "F16"]).gguf_types == ["q4_k_m", "f16"]


@pytest.fixture(scope="module")
def wide_student(tmp_path_factory):
    """A tiny Llama whose rows are whole k-quant blocks (256 wide), with 8 layers for the mixes' rules
    (initialised at 0.02 as trained models are scaled: at 0.2 eight layers amplify any rounding)."""
    return make_bpe_model(tmp_path_factory.mktemp("wide") / "model", hidden=256, intermediate=512, layers=8, init=0.02)


@pytest.fixture(scope="module")
def wide_export(wide_student, tmp_path_factory):
    cfg = make_run(tmp_path_factory.mktemp("wide-run"), wide_student, gguf_types=["f16", *MIXES])
    export(cfg, "gguf")
    return Path(cfg.run_dir) / "export" / "gguf"


def test_export_writes_each_mix_with_its_types_and_metadata(wide_export):
    import gguf

    out = wide_export
    summary = {s["type"]: s for s in json.loads((out / "export.json").read_text())["files"]}
    assert list(summary) == ["f16", *MIXES]
    ref = gguf.GGUFReader(out / "student-f16.gguf")
    ref_fields = {k: ref.fields[k].contents() for k in ref.fields
                  if not k.startswith("GGUF.") and k not in ("general.file_type", "general.quantization_version")}
    sizes = {}
    for mix in MIXES:
        path = out / f"student-{mix}.gguf"
        r = gguf.GGUFReader(path)
        types = {t.name: t.tensor_type.name for t in r.tensors}
        fields = {k: r.fields[k].contents() for k in r.fields if not k.startswith("GGUF.")}
        assert fields.pop("general.file_type") == gguf.LlamaFileType[MIXES[mix][1]]
        assert fields.pop("general.quantization_version") == gguf.GGML_QUANT_VERSION
        assert fields == ref_fields  # tokenizer, chat template, hyperparameters and potstill's general.* kept
        assert types["token_embd.weight"] == "Q6_K" and types["blk.0.attn_norm.weight"] == "F32"
        assert summary[mix]["tensor_types"] == {k: list(types.values()).count(k) for k in set(types.values())}
        for layer in range(8):  # more bits on layers 0, 3, 6, 7 of 8
            v = types[f"blk.{layer}.attn_v.weight"]
            want = {"q4_k_m": "Q6_K" if layer in (0, 3, 6, 7) else "Q4_K",
                    "q5_k_m": "Q6_K" if layer in (0, 3, 6, 7) else "Q5_K", "q6_k": "Q6_K", "q4_0": "Q4_0"}[mix]
            assert v == want, (mix, layer, v)
        assert (out / f"Modelfile.{mix}").read_text().startswith(f"FROM ./student-{mix}.gguf")
        sizes[mix] = path.stat().st_size
    assert sizes["q4_0"] < sizes["q4_k_m"] < sizes["q5_k_m"] < sizes["q6_k"] < (out / "student-f16.gguf").stat().st_size


def test_each_mix_loads_back_and_stays_close_to_the_student(wide_export, wide_student):
    """transformers reads each file (dequantizing with gguf-py) and gives the student's logits up to the
    rounding its bits allow: more bits, closer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = AutoModelForCausalLM.from_pretrained(wide_student, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(wide_student)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    want = [logits(ref, i) for i in ids]
    err = {}
    for mix in ("f16", *MIXES):
        model, _ = load_gguf(wide_export / f"student-{mix}.gguf")
        got = [logits(model, i) for i in ids]
        err[mix] = max(float((g - w).norm() / w.norm()) for g, w in zip(got, want))
    # Seen: f16 0.0007, q6_k 0.060, q5_k_m 0.099, q4_k_m 0.197, q4_0 0.262 (relative L2 of the logits;
    # random weights through 8 layers compound the rounding more than a trained model's do).
    assert err["f16"] < err["q6_k"] < err["q5_k_m"] < err["q4_k_m"] < err["q4_0"] < 0.4, err


def test_requantize_refuses_an_already_quantized_file(wide_export, tmp_path):
    with pytest.raises(PotstillError, match="quantizing needs f32 or f16"):
        requantize(wide_export / "student-q4_0.gguf", tmp_path / "again.gguf", "q4_k_m")
    with pytest.raises(PotstillError, match="unknown quantized mix"):
        requantize(wide_export / "student-f16.gguf", tmp_path / "x.gguf", "q3_k_s")


def test_importance_moves_the_rounding_to_where_the_inputs_are_small():
    """With per-column importance the error weighted by it drops (the plain error may rise)."""
    x = heavy_tailed(256, 1024, seed=4)
    imp = np.exp(np.random.default_rng(0).standard_normal(1024) * 1.5).astype(np.float32)

    def weighted(y: np.ndarray) -> float:
        return float(np.sqrt((((y.reshape(x.shape) - x) ** 2) * imp).sum() / ((x ** 2) * imp).sum()))

    for kind in KINDS:
        plain = dequantize(kquants.quantize(x, kind), kind)
        fitted = dequantize(kquants.quantize(x, kind, imp), kind)
        assert weighted(fitted) < 0.9 * weighted(plain), kind
    with pytest.raises(ValueError, match="importance for 1024 columns"):
        kquants.quantize(x, "Q4_K", imp[:10])


def test_imatrix_names_every_linear_and_the_head(wide_student):
    from potstill.config import TaskConfig
    from potstill.tasks import get_task
    from tests.export.test_gguf import INSTRUCTION, LABELS

    task = get_task(TaskConfig(labels=LABELS, instruction=INSTRUCTION))
    msgs = [[{"role": "user", "content": t}] for t in TEXTS * 3]
    per_module = imatrix.measure(wide_student, task, msgs)
    assert len(per_module) == 8 * 7 + 1 and per_module[imatrix.HEAD].shape == (256,)
    assert per_module["model.layers.0.mlp.down_proj"].shape == (512,)
    assert all((v > 0).all() and np.isfinite(v).all() for v in per_module.values())
    names = imatrix.gguf_names(per_module, "llama", 8, tied=True)
    assert "blk.7.ffn_down.weight" in names and "token_embd.weight" in names and "output.weight" not in names
    assert "output.weight" in imatrix.gguf_names(per_module, "llama", 8, tied=False)


def test_export_measures_an_importance_matrix_on_the_training_inputs(wide_student, tmp_path):
    import gguf

    cfg = make_run(tmp_path, wide_student, gguf_types=["q4_k_m", "q4_0"], imatrix_inputs=5)
    recs = [Record(id=f"r{i}", messages=[{"role": "user", "content": TEXTS[i % 3]}], output="sports", label="sports")
            for i in range(8)]
    write_jsonl(Path(cfg.run_dir) / "train.jsonl", recs)
    export(cfg, "gguf")
    out = Path(cfg.run_dir) / "export" / "gguf"
    measured = json.loads((out / "export.json").read_text())["imatrix"]
    assert measured["inputs"] == 5 and measured["layers"] == 8 * 7 + 1
    r = gguf.GGUFReader(out / "student-q4_k_m.gguf")
    assert r.fields["quantize.imatrix.entries_count"].contents() == 8 * 7 + 1
    # the same file without one differs in its k-quant blocks only
    plain = tmp_path / "plain.gguf"
    requantize(gguf_file_f32(wide_student, tmp_path), plain, "q4_k_m")
    a = {t.name: t for t in r.tensors}
    for t in gguf.GGUFReader(plain).tensors:
        same = np.array_equal(np.asarray(t.data), np.asarray(a[t.name].data))
        assert same == (t.tensor_type.name not in KINDS), t.name


def test_cli_takes_a_mix_by_its_ollama_name(wide_student, tmp_path):
    import sys

    from tests.export.test_gguf import LABELS

    make_run(tmp_path, wide_student)
    (tmp_path / "potstill.yaml").write_text(f"run_dir: run\ntask:\n  labels: {LABELS}\n")
    r = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", "gguf",
                        "--export.gguf_types", "[Q4_K_M]"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run" / "export" / "gguf"
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".md") == [
        ".potstill-export", "Modelfile.q4_k_m", "NOTICE", "export.json", "student-q4_k_m.gguf"]
    bad = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", "gguf",
                          "--export.gguf_types", "[q3_k_s]"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "gguf_types" in bad.stderr


def test_the_students_kept_importance_matrix_serves_export_and_engine_alike(wide_student, tmp_path):
    """`potstill train` keeps the matrix with the student: export takes it instead of measuring, and
    engine llamacpp's own conversion to a mix (evaluate, serve) writes the same k-quant blocks."""
    import gguf
    import shutil

    from potstill.config import TaskConfig
    from potstill.engines.convert import gguf_model
    from potstill.tasks import get_task
    from tests.export.test_gguf import INSTRUCTION, LABELS

    student = tmp_path / "student"
    shutil.copytree(wide_student, student)
    plain_engine = gguf_model(str(student), "q4_k_m")[0]
    task = get_task(TaskConfig(labels=LABELS, instruction=INSTRUCTION))
    per_module = imatrix.measure(student, task, [[{"role": "user", "content": t}] for t in TEXTS])
    imatrix.save(student, per_module, {"inputs": 3})
    assert set(imatrix.load(student)) == set(per_module)
    cfg = make_run(tmp_path / "r", student, gguf_types=["q4_k_m"])
    export(cfg, "gguf")  # no train.jsonl in this run: the kept matrix is the only one there is
    out = Path(cfg.run_dir) / "export" / "gguf"
    assert json.loads((out / "export.json").read_text())["imatrix"]["source"].endswith("student/imatrix.safetensors")
    engine_file = gguf_model(str(student), "q4_k_m")[0]
    assert engine_file != plain_engine  # the folder changed, so did its key
    exported = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out / "student-q4_k_m.gguf").tensors}
    by_engine = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(engine_file).tensors}
    plain = {t.name: (t.tensor_type.name, np.asarray(t.data)) for t in gguf.GGUFReader(plain_engine).tensors}
    for name, (kind, data) in plain.items():
        assert np.array_equal(exported[name], by_engine[name]), name
        assert np.array_equal(data, by_engine[name]) == (kind not in KINDS), name
    # with training inputs in the run, the kept matrix counts only where it was measured on as many
    recs = [Record(id=f"r{i}", messages=[{"role": "user", "content": TEXTS[i % 3]}], output="sports") for i in range(8)]
    write_jsonl(Path(cfg.run_dir) / "train.jsonl", recs)
    for n, source in ((3, "student/imatrix.safetensors"), (5, "train.jsonl")):
        export(cfg.model_copy(update={"export": cfg.export.model_copy(update={"imatrix_inputs": n})}), "gguf")
        assert json.loads((out / "export.json").read_text())["imatrix"]["source"].endswith(source), n
    (student / imatrix.FILE).write_bytes(b"not safetensors")
    with pytest.raises(PotstillError, match="not a readable importance matrix"):
        imatrix.load(student)


def gguf_file_f32(model: Path, tmp_path: Path) -> Path:
    gguf_file.convert(model, tmp_path / "f32.gguf", "f32")
    return tmp_path / "f32.gguf"


QUANTIZE = os.environ.get("POTSTILL_LLAMA_QUANTIZE")


@pytest.mark.skipif(not QUANTIZE, reason="POTSTILL_LLAMA_QUANTIZE (llama.cpp's llama-quantize) not set")
@pytest.mark.parametrize("mix", list(MIXES))
def test_same_types_and_sizes_as_llama_quantize(wide_student, tmp_path, mix):
    import gguf

    f32 = tmp_path / "f32.gguf"
    gguf_file.convert(wide_student, f32, "f32")
    requantize(f32, tmp_path / "mine.gguf", mix)
    subprocess.run([QUANTIZE, str(f32), str(tmp_path / "theirs.gguf"), mix.upper()], check=True, capture_output=True)
    mine, theirs = gguf.GGUFReader(tmp_path / "mine.gguf"), gguf.GGUFReader(tmp_path / "theirs.gguf")
    theirs_by_name = {t.name: t for t in theirs.tensors}  # llama-quantize writes them in its own order
    assert {t.name: t.tensor_type for t in mine.tensors} == {n: t.tensor_type for n, t in theirs_by_name.items()}
    assert (tmp_path / "mine.gguf").stat().st_size == (tmp_path / "theirs.gguf").stat().st_size
    x = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(f32).tensors}
    for a in mine.tensors:
        b = theirs_by_name[a.name]
        if a.tensor_type.name in KINDS:
            ea = rel_rmse(gguf.quants.dequantize(np.asarray(a.data), a.tensor_type), x[a.name])
            eb = rel_rmse(gguf.quants.dequantize(np.asarray(b.data), b.tensor_type), x[a.name])
            assert ea < 1.03 * eb, (a.name, ea, eb)
