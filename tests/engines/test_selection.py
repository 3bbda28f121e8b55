"""The config fields that pick an engine: serve.engine (through the official openai client),
evaluate.engine with evaluate.cost_basis, and teacher.engine for a local few-shot teacher."""

from __future__ import annotations

import json
import shutil

import openai
import pytest
import torch
import yaml

from potstill.config import load_config
from potstill.engines import load_engine
from potstill.errors import PotstillError
from potstill.evaluate.stage import evaluate_stage
from potstill.models.prompting import label_token_ids
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.engines.conftest import DATA, LABELS, MSGS
from tests.helpers.inductor import no_cxx_compiler
from tests.helpers.live_server import LiveServer

TASK = {"type": "classification", "labels": LABELS, "instruction": "classify the text"}


def _rows(n: int, offset: int = 0) -> str:
    return "".join(json.dumps({"input": DATA[(i + offset) % len(DATA)][0], "output": DATA[(i + offset) % len(DATA)][1],
                               "label": DATA[(i + offset) % len(DATA)][1]}) + "\n" for i in range(n))


def _transformers_labels(model) -> list[str]:
    eng = load_engine("transformers", str(model), device="cpu")
    task = get_task(load_config(overrides={"task": TASK}).task)
    fmt = student_format(eng, task)
    s = eng.score_labels(fmt, MSGS, label_token_ids(eng.tokenizer, fmt, LABELS))
    return [LABELS[i] for i in s.logits.argmax(-1)]


def _serve_run(tmp_path, taught, serve: dict):
    """A run directory around the taught model, its teacher the replayed labels, served as ``serve`` says."""
    from potstill.serve import run_config
    from potstill.serve.service import load_service

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(taught, run / "student")
    (run / "train.jsonl").write_text(_rows(20))
    (run / "val.jsonl").write_text(_rows(10, 3))
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"messages": [*m, {"role": "assistant", "content": lab}]}) + "\n"
                              for m, (_, lab) in zip(MSGS, DATA)))
    (run / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": ".", "task": TASK, "teacher": {"type": "replay", "model": "replayed", "replay_path": str(replay)},
        "serve": {**serve, "api_key_env": ""}}))
    return load_service(run, run_config(run, None), device="cpu")


def _served_labels(service) -> list[str]:
    """Every MSGS chat through the service's app and the official openai client, the student answering."""
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing

    service.routing = Routing(float("-inf"), float("inf"))  # the student answers every request
    try:
        with LiveServer(build_app(service, None)) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
            return [client.chat.completions.create(model="potstill", messages=m).choices[0].message.content
                    for m in MSGS]
    finally:
        service.close()


@pytest.mark.parametrize("quantization, weights", [("auto", "int8"), ("none", "float32")])
def test_serve_engine_ctranslate2_answers_through_the_openai_client(tmp_path, taught, quantization, weights):
    service = _serve_run(tmp_path, taught, {"engine": "ctranslate2", "quantization": quantization})
    assert service.engine.engine.name == "ctranslate2" and f"#ct2-{weights}" in service.student_name
    # serve.recheck_margin's default: near ties go to transformers, and the calibration is keyed apart.
    assert service.engine.identity.endswith(f"#ct2-{weights}+recheck0.3-auto")
    assert _served_labels(service) == _transformers_labels(taught)


def test_watch_finds_the_traffic_an_engine_that_converts_the_student_served(tmp_path, taught):
    """Engines ctranslate2 and llamacpp name their conversion's key in their identity, and serve
    logged that as the student's name, so `potstill watch` (which looks for the weights' digest of
    RUN/student) found none of their traffic and did not judge the escalation share against their
    calibration. The served name now starts with the weights' digest, whatever engine serves."""
    from potstill.models.loading import model_identity
    from potstill.watch.stage import expected_escalation
    from potstill.watch.traffic import read_traffic, served_name

    service = _serve_run(tmp_path, taught, {"engine": "ctranslate2"})
    run = tmp_path / "run"
    digest = model_identity(str(run / "student"), run / "student").split("@")[1][:12]
    assert service.student_name.startswith(f"potstill-student@{digest}.") and "#ct2-int8" in service.student_name
    _served_labels(service)
    name = served_name(run / "student")
    assert len(read_traffic(run / "calls.sqlite", 100, student=name)) == len(MSGS)
    share, _, why = expected_escalation(run, name)
    assert share is not None, why


@pytest.mark.parametrize("quantization", ["auto", "int8"])
def test_serve_compile_compiles_before_the_first_request_and_answers_as_eager(tmp_path, taught, capsys,
                                                                             quantization):
    """serve.compile, and with it serve.quantization int8 (int8 layers, near ties re-checked):
    compiled and warmed while the service loads, then the eager fp32 labels through the openai client."""
    from potstill.models.scoring import decoder

    service = _serve_run(tmp_path, taught, {"engine": "transformers", "compile": True, "quantization": quantization})
    lm = getattr(service.engine.engine, "fast", service.engine.engine).lm
    assert isinstance(decoder(lm.model), torch._dynamo.eval_frame.OptimizedModule)
    assert lm.identity.endswith("#int8+compiled" if quantization == "int8" else "+compiled")
    assert service.student_name.endswith("+recheck0.3-auto" if quantization == "int8" else "+compiled")
    assert "serve: student compiled and warmed in" in capsys.readouterr().err  # before any request
    assert _served_labels(service) == _transformers_labels(taught)


def test_serve_compile_failing_is_one_line_and_other_engines_refuse_it(tmp_path, taught, monkeypatch):
    with pytest.raises(PotstillError) as e:
        load_engine("ctranslate2", str(taught), device="cpu", compile=True)
    assert "\n" not in str(e.value) and "compile is for engine transformers" in str(e.value)
    # No C++ compiler for inductor: the service refuses to start.
    with no_cxx_compiler(tmp_path, monkeypatch), pytest.raises(PotstillError) as e:
        _serve_run(tmp_path, taught, {"engine": "transformers", "compile": True})
    assert "\n" not in str(e.value) and str(e.value).startswith("serve.compile: torch.compile failed (")
    assert str(e.value).endswith("; set serve.compile: false")


def test_an_engine_setting_refused_names_its_config_section(taught):
    """`potstill serve RUN --serve.engine ctranslate2` on a quickstart run (whose config sets
    serve.compile: true) said only "engine ctranslate2 runs its own compiled kernels; compile is for
    engine transformers", not which section's compile: each section's refusal now names it."""
    from potstill.config import TeacherConfig
    from potstill.config_models import EvaluateConfig, ServeConfig
    from potstill.engines import section_engine

    for section, Section in (("serve", ServeConfig), ("evaluate", EvaluateConfig)):
        with pytest.raises(PotstillError) as e:
            section_engine(Section(engine="ctranslate2", compile=True), str(taught), device="cpu", compile=True)
        assert str(e.value) == (f"{section}: engine ctranslate2 runs its own compiled kernels; compile is for "
                                "engine transformers")
    teacher = TeacherConfig(type="local", model=str(taught), engine="ctranslate2", draft_tokens=5)
    with pytest.raises(PotstillError) as e:
        section_engine(teacher, str(taught), device="cpu")
    assert str(e.value) == ("teacher: engine ctranslate2 decodes one token per step; draft_tokens (5) is for "
                            "engine transformers")


@pytest.mark.parametrize("basis", ["batch1", "batched"])
def test_evaluate_engine_and_cost_basis(tmp_path, taught, basis):
    ev = _evaluate_run(tmp_path, taught, {"latency_samples": 2, "engine": "ctranslate2", "cost_basis": basis})
    student = ev["models"]["student"]
    assert student["engine"] == "ctranslate2" and student["agreement_with_teacher"] == 1.0
    key = "cost_per_1k_calls_batched_usd" if basis == "batched" else "cost_per_1k_calls_usd"
    be = ev["break_even"]
    assert be["cost_basis"] == basis
    assert be["curve"] is not None and be["batch1"]["student_cost_per_call_usd"] * 1000 == pytest.approx(
        student["cost_per_1k_calls_usd"])
    assert be["batched"]["student_cost_per_call_usd"] * 1000 == pytest.approx(student["cost_per_1k_calls_batched_usd"])
    headline = be["batched" if basis == "batched" else "batch1"]
    assert headline["months"] == be["months"] and student[key] > 0


def _evaluate_run(tmp_path, taught, evaluate: dict) -> dict:
    """eval.json of evaluate on a run of 10 test rows whose trained student is ``taught``."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "test.jsonl").write_text(_rows(10))
    shutil.copytree(taught, run / "student")
    cfg = load_config(overrides={"run_dir": str(run), "task": TASK, "student.model": str(taught),
                                 "evaluate": {"latency_samples": 4, "batch_size": 4, "include_untrained": False,
                                              **evaluate},
                                 "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    return json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("quantization", ["auto", "int8"])
def test_evaluate_compile_compiles_before_timing_and_scores_as_eager(tmp_path, taught, capsys, monkeypatch,
                                                                     quantization):
    """evaluate.compile: the student is compiled and warmed on every kind of call evaluate times
    (batch 1 at three lengths, two, a batch) before the timed passes, and scores as eager does; with
    quantization int8 too (int8 layers, near ties re-checked by the fp32 engine)."""
    from potstill.engines.transformers import TransformersEngine

    eager = _evaluate_run(tmp_path / "eager", taught, {})["models"]["student"]
    no_recompile = torch._dynamo.config.patch(error_on_recompile=True)
    warm = TransformersEngine.warm_compiled

    def warm_then_forbid(self, *a, **k):  # from here on a compile inside the timed passes raises
        seconds = warm(self, *a, **k)
        no_recompile.__enter__()
        return seconds

    monkeypatch.setattr(TransformersEngine, "warm_compiled", warm_then_forbid)
    try:
        compiled = _evaluate_run(tmp_path / "compiled", taught,
                                 {"compile": True, "quantization": quantization})["models"]["student"]
    finally:
        no_recompile.__exit__(None, None, None)
    assert "evaluate: student compiled and warmed in" in capsys.readouterr().err
    tags = "#int8+compiled+recheck0.3" if quantization == "int8" else "+compiled"
    assert tags in compiled["model"] and "+compiled" not in eager["model"]
    assert compiled["agreement_with_teacher"] == eager["agreement_with_teacher"]


def test_evaluate_compile_failing_is_one_line(tmp_path, taught, monkeypatch):
    with no_cxx_compiler(tmp_path, monkeypatch), pytest.raises(PotstillError) as e:
        _evaluate_run(tmp_path, taught, {"compile": True})
    assert "\n" not in str(e.value) and str(e.value).startswith("evaluate.compile: torch.compile failed (")
    assert str(e.value).endswith("; set evaluate.compile: false")
    with pytest.raises(PotstillError, match="compile is for engine transformers"):
        _evaluate_run(tmp_path / "ct2", taught, {"compile": True, "engine": "ctranslate2"})


def test_evaluate_and_pilot_load_the_weights_evaluate_quantization_names(taught):
    from potstill.students import evaluation_engine

    for quantization, weights in (("auto", "int8"), ("int8", "int8"), ("none", "float32")):
        cfg = load_config(overrides={"task": TASK, "evaluate": {"engine": "ctranslate2", "quantization": quantization,
                                                                "recheck_margin": 0}})
        assert evaluation_engine(cfg, str(taught)).identity.endswith(f"#ct2-{weights}")
    with pytest.raises(PotstillError, match="evaluate.quantization: Input should be 'auto', 'int8', 'none', 'q6_k', "
                                            "'q5_k_m', 'q4_k_m' or 'q4_0'"):
        load_config(overrides={"task": TASK, "evaluate": {"quantization": "int4"}})


def test_a_local_teachers_quantization_keys_its_cached_answers_apart(taught):
    def identity(quantization: str) -> dict:
        cfg = load_config(overrides={"task": TASK, "teacher": {"type": "local", "model": str(taught),
                                                               "engine": "ctranslate2", "quantization": quantization}})
        return get_teacher(cfg.teacher, get_task(cfg.task)).identity()

    assert "quantization" not in identity("auto") and identity("none")["quantization"] == "none"


def test_local_teacher_on_ctranslate2_gives_the_transformers_teachers_labels(tmp_path, taught):
    shots = tmp_path / "shots.jsonl"
    shots.write_text(_rows(10, 5))
    got = {}
    for engine in ("transformers", "ctranslate2"):
        cfg = load_config(overrides={"task": TASK, "teacher": {
            "type": "local", "model": str(taught), "engine": engine, "prompt_format": "completion",
            "answer_prefix": "topic:", "calibrate": True, "batch_size": 3,
            "few_shot": {"path": str(shots), "k": 5, "orders": 2}}})
        teacher = get_teacher(cfg.teacher, get_task(cfg.task))
        out: dict[int, object] = {}
        teacher.run([teacher.request(Record(messages=m)) for m in MSGS], lambda i, r: out.__setitem__(i, r))
        got[engine] = [out[i] for i in range(len(MSGS))]
        assert all(r.cached_input_tokens > 0 for r in got[engine])  # each order's prefix computed once, reused
    assert [r.output for r in got["ctranslate2"]] == [r.output for r in got["transformers"]]
    assert teacher.identity()["engine"] == "ctranslate2"  # its answers are cached apart from transformers'


def test_local_teacher_in_bfloat16_gives_the_fp32_labels_and_caches_its_answers_apart(tmp_path, taught):
    shots = tmp_path / "shots.jsonl"
    shots.write_text(_rows(10, 5))
    got, ident = {}, {}
    for dtype in ("auto", "bfloat16"):
        cfg = load_config(overrides={"task": TASK, "teacher": {
            "type": "local", "model": str(taught), "dtype": dtype, "prompt_format": "completion",
            "answer_prefix": "topic:", "calibrate": True, "batch_size": 3, "few_shot": {"path": str(shots), "k": 5}}})
        teacher = get_teacher(cfg.teacher, get_task(cfg.task))
        out: dict[int, object] = {}
        teacher.run([teacher.request(Record(messages=m)) for m in MSGS], lambda i, r: out.__setitem__(i, r))
        got[dtype] = [out[i].output for i in range(len(MSGS))]
        ident[dtype] = teacher.identity()
        assert teacher.lm().identity.endswith("#bfloat16") == (dtype == "bfloat16")
    assert got["bfloat16"] == got["auto"]
    assert "dtype" not in ident["auto"] and ident["bfloat16"]["dtype"] == "bfloat16"  # a new cache key


def test_local_teacher_in_int8_compiles_gives_the_fp32_labels_and_caches_its_answers_apart(tmp_path, taught):
    """teacher.quantization int8 needs teacher.compile (one line naming it otherwise); compiled, the
    few-shot teacher (two shot orders, prefixes cached) gives the fp32 teacher's labels (near ties
    re-checked in fp32) under cache keys of its own."""
    shots = tmp_path / "shots.jsonl"
    shots.write_text(_rows(10, 5))

    def teacher(**extra):
        cfg = load_config(overrides={"task": TASK, "teacher": {
            "type": "local", "model": str(taught), "prompt_format": "completion", "answer_prefix": "topic:",
            "calibrate": True, "few_shot": {"path": str(shots), "k": 5, "orders": 2}, **extra}})
        return get_teacher(cfg.teacher, get_task(cfg.task))

    def labels(t) -> list[str]:
        out: dict[int, object] = {}
        t.run([t.request(Record(messages=m)) for m in MSGS], lambda i, r: out.__setitem__(i, r))
        assert all(out[i].cached_input_tokens > 0 for i in range(len(MSGS)))
        return [out[i].output for i in range(len(MSGS))]

    with pytest.raises(PotstillError, match="teacher.compile"):
        teacher(quantization="int8").lm()
    fp32 = teacher()
    int8 = teacher(quantization="int8", compile=True)
    assert labels(int8) == labels(fp32)
    assert "#int8" in int8.lm().identity and int8.lm().compiled
    assert int8.identity()["quantization"] == "int8" and int8.identity()["compile"] is True
    assert "compile" not in fp32.identity()


class _PluginRechecker:
    """A plugin's re-checking engine: RecheckedEngine's parts (``engines.recheck.rechecking``), no
    subclass of it, its reference loaded on first use."""

    def __init__(self, fast, load_reference, margin):
        self.fast, self._load, self.margin, self._ref, self.rechecked = fast, load_reference, margin, None, 0
        self.tokenizer, self.name = fast.tokenizer, "plugin"

    @property
    def reference(self):
        if self._ref is None:
            self._ref = self._load()
        return self._ref

    def near_ties(self, logits):
        from potstill.models.scoring import label_margin

        return (label_margin(logits) < self.margin).nonzero().flatten().tolist()


@pytest.mark.parametrize("kind", ["RecheckedEngine", "plugin"])
def test_a_rechecked_local_teacher_is_rechecked_on_its_answer_not_on_each_orders_scores(tmp_path, taught,
                                                                                      tiny_model_b, kind):
    """A few-shot teacher's answer is each order's calibrated distribution, averaged: its near ties
    are there, not in any one order's raw scores. Fast engine: an untaught model; reference: the
    taught one, so a re-checked answer is recognisably the reference's. Exactly the inputs whose
    answer (fast scores, the reference's priors) is closer than the margin take the reference
    teacher's answer, the others keep the fast one's; re-checked inputs pay the re-check. A
    plugin's engine with the same parts, not a subclass, is recognised without loading its
    reference."""
    from potstill.engines.recheck import RecheckedEngine, rechecking
    from potstill.models.scoring import label_margin

    shots = tmp_path / "shots.jsonl"
    shots.write_text(_rows(10, 5))
    cfg = load_config(overrides={"task": TASK, "teacher": {
        "type": "local", "model": str(taught), "prompt_format": "completion", "answer_prefix": "topic:",
        "calibrate": True, "few_shot": {"path": str(shots), "k": 5, "orders": 2}}})
    task = get_task(cfg.task)
    msgs = MSGS + [[{"role": "user", "content": f"{a} and {b}"}] for (a, _), (b, _) in zip(DATA, DATA[3:])]
    fast, ref = load_engine("transformers", str(tiny_model_b)), load_engine("transformers", str(taught))
    ids = label_token_ids(ref.tokenizer, get_teacher(cfg.teacher, task).fmt, LABELS)

    exact = get_teacher(cfg.teacher, task)
    want_ref, _ = exact._classify(ref, ids, msgs)
    plain = get_teacher(cfg.teacher, task)
    plain._priors = exact._priors  # the fast scores under the reference's priors: the answer re-checking sees
    want_fast, _ = plain._classify(fast, ids, msgs)
    margins = label_margin(want_fast.log())
    margin = float(margins.median())
    near = [i for i in range(len(msgs)) if margins[i] < margin]
    assert 0 < len(near) < len(msgs)

    teacher = get_teacher(cfg.teacher, task)
    if kind == "plugin":
        engine = _PluginRechecker(fast, lambda: ref, margin)
        assert rechecking(engine) and engine._ref is None  # recognised, the reference not loaded
        assert not rechecking(fast) and not rechecking(ref)
    else:
        engine = RecheckedEngine(fast, lambda: ref, margin, "float32")
    got, scored = teacher._classify(engine, ids, msgs)
    for i in range(len(msgs)):
        want = want_ref[i] if i in near else want_fast[i]
        assert torch.allclose(got[i], want, atol=1e-5), i
    assert engine.rechecked == len(near)  # inputs, not orders
    assert len(scored) == 2 and all(len(s.seconds) == len(msgs) for s in scored)

    # What a re-checked input pays: its own re-check; what every input of the call waited: all of it.
    from potstill.models.scoring import Scored
    from potstill.engines.recheck import with_recheck_time

    s = Scored(logits=torch.zeros(3, 2), prompt_tokens=[1] * 3, cached_tokens=[0] * 3, seconds=[1.0, 2.0, 3.0],
               batch_seconds=[6.0] * 3)
    r = Scored(logits=torch.zeros(2, 2), prompt_tokens=[1] * 2, cached_tokens=[0] * 2, seconds=[10.0, 20.0],
               batch_seconds=[30.0] * 2)
    w = with_recheck_time(s, r, [0, 2])
    assert (w.seconds, w.batch_seconds) == ([11.0, 2.0, 23.0], [36.0] * 3)


def test_draft_tokens_reach_each_sections_engine_and_ctranslate2_refuses_drafts(taught):
    """``draft_tokens`` of the serve, evaluate and teacher sections reaches engine transformers'
    greedy generation (its default 2 passes to no engine: a third-party one never sees it); engine
    ctranslate2, which decodes one token per step, takes 0 or the default and refuses other values
    with one line; the field is bounded."""
    from potstill.engines import section_engine

    for section in ("serve", "evaluate", "teacher"):
        cfg = load_config(overrides={"task": TASK, section: {"draft_tokens": 5}})
        assert section_engine(getattr(cfg, section), str(taught), device="cpu").draft_tokens == 5
    assert section_engine(load_config(overrides={"task": TASK}).serve, str(taught), device="cpu").draft_tokens == 2
    assert load_engine("ctranslate2", str(taught), device="cpu", draft_tokens=0).identity.endswith("#ct2-int8")
    with pytest.raises(PotstillError, match=r"^engine ctranslate2 decodes one token per step; draft_tokens \(4\)"):
        load_engine("ctranslate2", str(taught), device="cpu", draft_tokens=4, recheck_margin=0.3)
    with pytest.raises(PotstillError, match="serve.draft_tokens"):
        load_config(overrides={"task": TASK, "serve": {"draft_tokens": -1}})


def test_compile_gives_static_caches_on_cuda_only_and_serve_warms_every_row_bucket(taught):
    """``compile`` on the CPU keeps the dynamic cache (static caches are CUDA graphs); a served
    generating student whose engine has static caches warms a batch of each row bucket up to the
    serving batch (each records its own graphs), a classifier only the usual kinds."""
    from potstill.models.static_decode import StaticCaches
    from potstill.serve.engine import ServedStudent

    engine = load_engine("transformers", str(taught), device="cpu", compile=True)
    assert engine.compiled and engine.static is None
    freetext = get_task(load_config(overrides={"task": {"type": "freetext", "instruction": "summarise"}}).task)
    classify = get_task(load_config(overrides={"task": TASK}).task)
    msgs = MSGS * 2
    seen = {}
    for name, task, static in (("freetext", freetext, True), ("dynamic", freetext, False),
                               ("classification", classify, True)):
        engine.static = StaticCaches.for_model(engine.lm.model) if static else None
        served = ServedStudent(engine, task)
        sizes = []
        served.answer = lambda batch, sizes=sizes: sizes.append(len(batch))
        served.warm(msgs, 16)
        seen[name] = sizes
        assert (engine.static is not None and engine.static.frozen) == (name == "freetext")
    assert seen == {"freetext": [1, 1, 1, 2, 4, 8, 16], "dynamic": [1, 1, 1, 2, 16], "classification": [1, 1, 1, 2, 16]}


def test_local_teacher_answers_a_requests_own_smaller_max_tokens(taught):
    """A served client's ``max_tokens`` reaches a local teacher inside the request: those requests
    are generated with that budget (what a teacher configured with it gives), the others with the
    teacher's own, in one run; ``stop_reason`` ``length`` where a budget was used up."""
    def teacher(max_tokens: int):
        cfg = load_config(overrides={"task": {"type": "freetext", "instruction": "summarise"}, "teacher": {
            "type": "local", "model": str(taught), "max_tokens": max_tokens, "batch_size": 4}})
        return get_teacher(cfg.teacher, get_task(cfg.task))

    def answers(t, reqs):
        out: dict[int, object] = {}
        t.run(reqs, lambda i, r: out.__setitem__(i, r))
        return [out[i] for i in range(len(reqs))]

    six, two = teacher(6), teacher(2)
    reqs = [six.request(Record(messages=m)) for m in MSGS]
    mixed = answers(six, [{**r, "max_tokens": 2} if i % 2 else r for i, r in enumerate(reqs)])
    whole, cut = answers(six, reqs), answers(two, [two.request(Record(messages=m)) for m in MSGS])
    assert [r.output for r in mixed] == [(cut if i % 2 else whole)[i].output for i in range(len(MSGS))]
    assert all(r.output_tokens <= (2 if i % 2 else 6) for i, r in enumerate(mixed))
    assert all(r.stop_reason == ("length" if r.output_tokens == (2 if i % 2 else 6) else "stop")
               for i, r in enumerate(mixed))
    assert any(r.stop_reason == "length" for r in mixed[1::2])


def test_a_local_teachers_batch_size_unset_is_1_on_a_cpu_and_16_on_a_gpu(taught, monkeypatch):
    """``teacher.batch_size`` unset scores one input per forward where the teacher loads on a CPU and
    16 where it loads on a GPU (here the device check is told CUDA; the weights stay on the CPU);
    set, it is what the config says. Same labels every way."""
    import potstill.teachers.local as local

    def labels_and_batches(batch_size: int | None) -> tuple[list[str], list[int]]:
        teacher_cfg = {"type": "local", "model": str(taught), **({"batch_size": batch_size} if batch_size else {})}
        cfg = load_config(overrides={"task": TASK, "teacher": teacher_cfg})
        teacher = get_teacher(cfg.teacher, get_task(cfg.task))
        lm, sizes = teacher.lm(), []
        score = lm.score_labels_formats
        monkeypatch.setattr(lm, "score_labels_formats", lambda *a, **k: sizes.append(k["batch_size"]) or score(*a, **k))
        out: dict[int, object] = {}
        teacher.run([teacher.request(Record(messages=m)) for m in MSGS], lambda i, r: out.__setitem__(i, r))
        return [out[i].output for i in range(len(MSGS))], set(sizes)

    on_cpu = labels_and_batches(None)
    assert on_cpu[1] == {1}
    assert labels_and_batches(3) == (on_cpu[0], {3})
    monkeypatch.setattr(local, "_pick_device", lambda device: torch.device("cuda"))
    assert labels_and_batches(None) == (on_cpu[0], {16})



OLDER_ENGINE = '''
from potstill.engines.transformers import TransformersEngine


class OlderEngine:
    """A third party's engine written to the protocol before generate took ``embed``."""
    name = "older"

    def __init__(self, inner):
        self.inner, self.tokenizer, self.identity = inner, inner.tokenizer, inner.identity + "#older"
        self.num_parameters = 0

    @classmethod
    def load(cls, spec, device="auto", num_layers=None, **options):
        return cls(TransformersEngine.load(spec, device="cpu", num_layers=num_layers))

    def score_labels(self, fmt, messages, label_ids, batch_size=16, progress=None, max_length=None):
        return self.inner.score_labels(fmt, messages, label_ids, batch_size=batch_size, progress=progress,
                                       max_length=max_length)

    def score_labels_formats(self, fmts, messages, label_ids, batch_size=16):
        return [self.score_labels(f, messages, label_ids, batch_size) for f in fmts]

    def generate(self, fmt, messages, max_new_tokens, batch_size=16, progress=None, temperature=0.0, stop=(),
                 seed=0):
        return self.inner.generate(fmt, messages, max_new_tokens, batch_size=batch_size)

    def embed(self, fmt, messages):
        return self.inner.embed(fmt, messages)
'''


def test_a_plugin_engine_without_generates_embed_is_served_as_the_readme_says(tmp_path, taught, monkeypatch):
    """``serve.engine: older``, a plugin registered under ``potstill.engines`` whose ``generate`` has
    no ``embed``: loaded as serve loads it (recheck_margin auto wraps an engine other than
    transformers in the re-check), a generating student is answered, its embeddings from ``embed``.
    The re-check passed ``embed=True`` on to the plugin: TypeError on every request."""
    from importlib.metadata import EntryPoint

    from potstill import plugins
    from potstill.engines import section_engine
    from potstill.serve.engine import ServedStudent

    (tmp_path / "older_engine_plugin.py").write_text(OLDER_ENGINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="older", value="older_engine_plugin:OlderEngine", group="potstill.engines")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == "potstill.engines" else [])
    cfg = load_config(overrides={"task": {"type": "freetext", "instruction": "summarise", "max_output_tokens": 6},
                                 "serve": {"engine": "older"}})
    engine = section_engine(cfg.serve, str(taught), device="cpu")
    served = ServedStudent(engine, get_task(cfg.task))
    answers = served.answer(MSGS[:3])
    ref = load_engine("transformers", str(taught), device="cpu")
    want = ref.generate(served.fmt, MSGS[:3], 6, batch_size=3)
    assert [a.output for a in answers] == want.texts
    assert torch.allclose(torch.stack([a.embedding for a in answers]), ref.embed(served.fmt, MSGS[:3]), atol=1e-5)
