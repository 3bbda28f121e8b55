"""Token-level KD on tiny models: full logits of a local teacher, API-style top-k, and on-policy."""

import importlib.util
import json
import math

import pytest
import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.errors import PotstillError
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.batching import build_examples, collate
from potstill.train.trainer import train

TEXTS = ["the team won the match", "new phone software", "the minister and the party", "a goal in the game",
         "the internet and computer", "a vote in the election", "the bank profit and market shares",
         "a film star and music award"]
OUTPUTS = ["sports match team", "tech phone software", "politics party vote", "sports goal win",
           "tech internet computer", "politics election vote", "business bank profit", "entertainment film award"]


@pytest.fixture(scope="module")
def sharp_teacher(tiny_model_b, tmp_path_factory):
    """sharp_teacher with its final norm scaled 6x: logits 6x larger, so a peaked teacher a random
    student is far from (two random tiny models are both near uniform, KL ~0.01)."""
    lm = load_lm(str(tiny_model_b))
    with torch.no_grad():
        lm.model.model.norm.weight.mul_(6.0)
    out = tmp_path_factory.mktemp("sharp") / "model"
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def _task():
    return get_task(TaskConfig(type="freetext", instruction="summary"))


def _records():
    return [Record(messages=[{"role": "user", "content": t}], output=o, valid=True) for t, o in zip(TEXTS, OUTPUTS)]


def _teacher_records(teacher_dir):
    """Records whose output is the teacher's own greedy text, as the generate stage would write them."""
    t = load_lm(str(teacher_dir))
    task = _task()
    out = []
    for r, e in zip(_records(), build_examples(t, student_format(t, task), task, _records(), 64)):
        prompt = torch.tensor([e.ids[: e.n_prompt]])
        gen = t.model.generate(input_ids=prompt, do_sample=False, max_new_tokens=6, pad_token_id=0,
                               eos_token_id=t.tokenizer.eos_token_id)[0, prompt.shape[1] :]
        words = [w for w in t.tokenizer.convert_ids_to_tokens(gen.tolist()) if w.isalpha()]
        out.append(r.model_copy(update={"output": " ".join(words) or "yes"}))
    return out


def token_kl(student_dir, teacher_dir, task, records) -> float:
    """Mean forward KL(teacher || student) over completion positions, from materialised logits (tiny V)."""
    s, t = load_lm(str(student_dir)), load_lm(str(teacher_dir))
    fmt = student_format(s, task)
    b = collate(build_examples(s, fmt, task, records, 64), s.tokenizer.pad_token_id, s.device, kd_tokens=True)
    with torch.no_grad():
        ls = s.model(input_ids=b.ids, attention_mask=b.attention_mask).logits[:, :-1].log_softmax(-1)
        lt = t.model(input_ids=b.ids, attention_mask=b.attention_mask).logits[:, :-1].log_softmax(-1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    sel = b.kd_targets != -100
    return float(kl[sel].mean())


def _train(tiny_model, tmp_path, records, **kw):
    lm = load_lm(str(tiny_model))
    task = _task()
    cfg = TrainConfig(objective="kd", lr=0.02, batch_size=4, seed=0, **kw)
    summary = train(lm, student_format(lm, task), task, records, records[:2], cfg, 64, tmp_path / "student",
                    tmp_path / "metrics.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_logits_kd_lowers_token_kl_to_local_teacher(tiny_model, sharp_teacher, tmp_path):
    records = _teacher_records(sharp_teacher)
    before = token_kl(tiny_model, sharp_teacher, _task(), records)
    summary, rows = _train(tiny_model, tmp_path, records, teacher_model=str(sharp_teacher), kd_weight=10.0, epochs=25)
    after = token_kl(tmp_path / "student", sharp_teacher, _task(), records)
    assert summary["kd_signal"] == "logits" and "kd_logits" in rows[0]
    assert after < 0.5 * before, (before, after)


def _teacher_topk(teacher_dir, records, k):
    """Records' logprobs as an OpenAI-compatible API would return them, from a real teacher's top-k."""
    t = load_lm(str(teacher_dir))
    task = _task()
    ex = build_examples(t, student_format(t, task), task, records, 64)
    out = []
    for r, e in zip(records, ex):
        with torch.no_grad():
            lp = t.model(input_ids=torch.tensor([e.ids], device=t.device)).logits[0, :-1].log_softmax(-1).cpu()
        entries = []
        for j in range(e.n_prompt, len(e.ids)):
            row = lp[j - 1]
            top = row.topk(k)
            tokens = t.tokenizer.convert_ids_to_tokens(top.indices.tolist())
            entries.append({"token": t.tokenizer.convert_ids_to_tokens(e.ids[j]), "logprob": float(row[e.ids[j]]),
                            "top": [{"token": s, "logprob": float(v)} for s, v in zip(tokens, top.values)]})
        out.append(r.model_copy(update={"logprobs": entries}))
    return out


def test_topk_kd_from_api_logprobs_lowers_token_kl(tiny_model, sharp_teacher, tmp_path):
    records = _teacher_topk(sharp_teacher, _teacher_records(sharp_teacher), k=16)
    before = token_kl(tiny_model, sharp_teacher, _task(), records)
    summary, rows = _train(tiny_model, tmp_path, records, kd_weight=10.0, epochs=25)
    after = token_kl(tmp_path / "student", sharp_teacher, _task(), records)
    assert summary["kd_signal"] == "topk" and rows[0]["kd_topk"] > 0
    assert after < 0.6 * before, (before, after)


def test_onpolicy_batches_lower_kd_on_student_samples(tiny_model, sharp_teacher, tmp_path):
    records = _teacher_records(sharp_teacher)
    # lambda = 1: every batch is the student's own samples, scored by the teacher (pure GKD).
    summary, rows = _train(tiny_model, tmp_path / "gkd", records, teacher_model=str(sharp_teacher),
                           onpolicy_fraction=1.0, onpolicy_max_new_tokens=6, epochs=16)
    assert all(r["onpolicy"] and "ce" not in r for r in rows)  # samples have no reference text
    first, last = sum(r["kd"] for r in rows[:4]) / 4, sum(r["kd"] for r in rows[-4:]) / 4
    assert last < 0.7 * first, (first, last)
    # lambda = 0.5 mixes both kinds of batch.
    _, rows = _train(tiny_model, tmp_path / "mix", records, teacher_model=str(sharp_teacher), onpolicy_fraction=0.5,
                     onpolicy_max_new_tokens=4, kd_kind="jsd", epochs=4)
    on = [r for r in rows if r["onpolicy"]]
    off = [r for r in rows if not r["onpolicy"]]
    assert on and off and all("ce" in r and r["kd_logits"] > 0 for r in off)


def test_bad_kd_settings_are_clear_errors(tiny_model, tmp_path):
    lm = load_lm(str(tiny_model))
    task = _task()
    for cfg, msg in [(TrainConfig(onpolicy_fraction=0.5), "needs train.teacher_model"),
                     (TrainConfig(objective="kd", kd_signal="logits"), "needs train.teacher_model"),
                     (TrainConfig(objective="kd", kd_signal="topk"), "no training record carries logprobs"),
                     # auto on free text with no local teacher and no logprobs: it named kd_signal labels,
                     # a setting nobody made
                     (TrainConfig(objective="kd"), "kd_signal auto found no teacher signal for this task"),
                     (TrainConfig(method="qlora"), "qlora needs a CUDA GPU" if lm.device.type != "cuda" else
                      "qlora needs bitsandbytes")]:
        if cfg.method == "qlora" and lm.device.type == "cuda" and importlib.util.find_spec("bitsandbytes"):
            continue  # a GPU with bitsandbytes trains QLoRA: nothing to refuse
        with pytest.raises(PotstillError, match=msg):
            train(lm, student_format(lm, task), task, _records(), [], cfg, 64, tmp_path / "s", tmp_path / "m.jsonl")
    assert not (tmp_path / "s").exists()


def test_kd_temperature_with_api_topk_is_refused(tiny_model, sharp_teacher, tmp_path):
    """API top-k cannot be re-tempered, so only the student's logits were divided by T: the loss is
    least where softmax(z / T) equals the teacher, and the served student (T = 1) was the teacher
    raised to the power T (a 0.6 token learned as 0.83 at T = 2); the label and logits signals temper
    both sides and keep it."""
    records = _teacher_topk(sharp_teacher, _records(), k=4)
    lm = load_lm(str(tiny_model))
    task = _task()
    cfg = TrainConfig(objective="kd", kd_temperature=2.0, batch_size=4)
    with pytest.raises(PotstillError, match="kd_temperature 2 with the topk signal"):
        train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "s", tmp_path / "m.jsonl")
    assert not (tmp_path / "s").exists()
    cfg = TrainConfig(objective="kd", kd_temperature=2.0, batch_size=4, teacher_model=str(sharp_teacher))
    assert train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "s",
                 tmp_path / "m.jsonl")["kd_signal"] == "logits"


def test_auto_signal_is_labels_for_classification_even_when_records_carry_api_logprobs(tiny_model, tmp_path):
    """An API teacher's top-k tokens would be re-encoded with another tokenizer; the label distribution
    needs no mapping. auto used to pick topk here."""
    from potstill.train.teacher import resolve_signal

    labels = ["sports", "tech", "politics", "business", "entertainment"]
    task = get_task(TaskConfig(type="classification", labels=labels, instruction="topic"))
    records = []
    for r in _records():
        label = r.output.split()[0]
        top = [{"token": lab, "logprob": -0.1 if lab == label else -3.0} for lab in labels]
        records.append(r.model_copy(update={"output": label, "label_probs": {lab: 0.9 if lab == label else 0.025 for lab in labels},
                                            "logprobs": [{"token": label, "logprob": -0.1, "top": top}]}))
    kd = TrainConfig(objective="kd")
    assert resolve_signal(kd, task, records) == "labels"
    assert resolve_signal(kd.model_copy(update={"teacher_model": "same-vocab"}), task, records) == "logits"
    assert resolve_signal(kd, _task(), records) == "topk"  # free text: top-k is the only teacher signal
    lm = load_lm(str(tiny_model))
    summary = train(lm, student_format(lm, task), task, records, [], TrainConfig(objective="kd", batch_size=4), 64,
                    tmp_path / "s", tmp_path / "m.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert summary["kd_signal"] == "labels" and all("kd_topk" not in r for r in rows) and rows[0]["kd_labels"] > 0


def test_train_compile_compiles_the_local_teacher_and_keeps_the_loss_curve(tiny_model, sharp_teacher, tmp_path,
                                                                           monkeypatch):
    """``train.compile`` runs the KD teacher's forward under torch.compile as well as the student's
    body (the teacher's forward is most of a KD step's work), with the eager run's loss curve.
    One batch of all eight records and no val split: one shape, so each model compiles once."""
    records, task = _teacher_records(sharp_teacher), _task()

    def run(name, **kw):
        lm = load_lm(str(tiny_model), device="cpu")  # fp32 on any machine: the tolerance below is fp32's
        cfg = TrainConfig(objective="kd", lr=0.02, batch_size=8, seed=0, teacher_model=str(sharp_teacher),
                          kd_weight=10.0, epochs=3, **kw)
        train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / name / "student",
              tmp_path / name / "metrics.jsonl")
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    eager = run("eager")
    compiled_norms = []
    real_compile = torch.compile

    def spy(module, *a, **k):  # the real torch.compile; only notes which decoder it was given
        compiled_norms.append(float(module.norm.weight.mean()))  # the sharp teacher's final norm is 6x
        return real_compile(module, *a, **k)

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    comp = run("compiled", compile=True)
    assert sorted(round(x) for x in compiled_norms) == [1, 6], compiled_norms  # the student's and the teacher's
    assert len(comp) == len(eager) == 3
    for a, b in zip(comp, eager):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["kd"] == pytest.approx(b["kd"], rel=1e-4)


def test_train_compile_failing_is_one_line(tiny_model, sharp_teacher, tmp_path, monkeypatch):
    """No C++ compiler for inductor: ``train.compile`` stops at the first step with one line that
    names the setting to turn off, not inductor's pages."""
    from tests.helpers.inductor import no_cxx_compiler

    lm = load_lm(str(tiny_model), device="cpu")
    task = _task()
    cfg = TrainConfig(objective="kd", batch_size=4, seed=0, teacher_model=str(sharp_teacher), compile=True)
    with no_cxx_compiler(tmp_path, monkeypatch), pytest.raises(PotstillError) as e:
        train(lm, student_format(lm, task), task, _records(), [], cfg, 64, tmp_path / "student", tmp_path / "m.jsonl")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("train.compile: torch.compile failed (") and "C++ compiler" in msg
    assert msg.endswith("; set train.compile: false") and not (tmp_path / "student").exists()


def test_reverse_kl_on_api_topk_of_a_confident_teacher_trains(tiny_model, sharp_teacher, tmp_path):
    """An API rounds a near-certain token's logprob to 0.0, so a position's top-k sums to 1 or past
    it, and positions list different numbers of tokens (collate pads them). Reverse KL (kd_kind
    reverse_kl, or jsd at beta 1) then read the teacher's tail, and the padding, as zero mass: the
    first step's loss was 3e38 or inf and training stopped ('lower train.lr')."""
    records = _teacher_topk(sharp_teacher, _teacher_records(sharp_teacher), k=4)
    for r in records:
        for j, e in enumerate(r.logprobs):
            e["top"] = e["top"][: 1 + j % 4]
            if j % 2 == 0:  # the top token rounded to certainty
                if e["token"] == e["top"][0]["token"]:
                    e["logprob"] = 0.0
                e["top"][0]["logprob"] = 0.0
    assert any(sum(math.exp(t["logprob"]) for t in e["top"]) >= 1 for r in records for e in r.logprobs)
    summary, rows = _train(tiny_model, tmp_path, records, kd_kind="reverse_kl", kd_weight=1.0, epochs=10)
    assert summary["kd_signal"] == "topk" and all(math.isfinite(r["loss"]) and r["kd_topk"] < 30 for r in rows)
    assert rows[-1]["kd_topk"] < rows[0]["kd_topk"]


def test_onpolicy_samples_come_from_the_students_own_distribution(tiny_model):
    """GKD trains on samples of the student's distribution. sample_batch overrode only temperature,
    top_k and top_p, so the rest of the student's generation_config (here bad_words_ids banning all
    but one token, as repetition_penalty or no_repeat_ngram_size would bend it) still shaped them."""
    from potstill.train.batching import Example
    from potstill.train.onpolicy import sample_batch

    lm = load_lm(str(tiny_model), device="cpu")
    tok, model = lm.tokenizer, lm.model
    only = tok.convert_tokens_to_ids("goal")
    model.generation_config.bad_words_ids = [[t] for t in range(len(tok)) if t != only]
    model.generation_config.repetition_penalty = 5.0
    before = model.generation_config.to_dict()
    prompt = tok("classify the text : the team won", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    got = sample_batch(model, [Example(ids=prompt, n_prompt=len(prompt))] * 4, tok.pad_token_id, tok.eos_token_id,
                       8, 1.0, torch.device("cpu"))
    drawn = [t for e in got for t in e.ids[e.n_prompt:]]
    # The near-uniform tiny student draws from its whole vocabulary: 32 draws all "goal" is ~1e-60.
    assert len(set(drawn)) > 5, drawn
    assert model.generation_config.to_dict() == before  # the model's own settings are left as they were


def test_onpolicy_samples_end_at_student_max_length(tiny_model):
    """A sample ran onpolicy_max_new_tokens past its prompt whatever student.max_length said, so an
    on-policy batch could be max_length + 128 tokens long where every other batch is cut to max_length
    (the memory a user bounded with it). Each ends where its prompt and it reach max_length, with at
    least one token."""
    from potstill.train.batching import Example
    from potstill.train.onpolicy import sample_batch

    lm = load_lm(str(tiny_model), device="cpu")
    tok = lm.tokenizer
    short = tok("the team won", add_special_tokens=False)["input_ids"]
    long = tok("the minister said the party will vote in the election", add_special_tokens=False)["input_ids"]
    batch = [Example(ids=short, n_prompt=len(short)), Example(ids=long, n_prompt=len(long))]
    torch.manual_seed(0)
    free = sample_batch(lm.model, batch, tok.pad_token_id, None, 12, 1.0, torch.device("cpu"))
    assert [len(e.ids) for e in free] == [len(short) + 12, len(long) + 12]  # no end token: the whole budget
    cut = sample_batch(lm.model, batch, tok.pad_token_id, None, 12, 1.0, torch.device("cpu"), max_length=8)
    assert [len(e.ids) for e in cut] == [8, len(long) + 1] and len(long) >= 8
    assert [e.n_prompt for e in cut] == [len(short), len(long)]


@pytest.mark.parametrize("combo", ["logits", "topk", "onpolicy", "lora", "pack", "compile"])
def test_accumulation_and_checkpointing_keep_the_curve_of_every_objective(tiny_model, sharp_teacher, tmp_path, combo):
    """train.grad_accum_steps 2 with train.gradient_checkpointing on, against neither, for each kind of
    training a user combines them with: the same loss and KD terms at every step."""
    base = {"logits": dict(teacher_model=str(sharp_teacher), kd_weight=10.0),
            "topk": dict(kd_signal="topk"),
            "onpolicy": dict(teacher_model=str(sharp_teacher), onpolicy_fraction=0.5, onpolicy_max_new_tokens=4),
            "lora": dict(teacher_model=str(sharp_teacher), method="lora", lora_r=4),
            "pack": dict(teacher_model=str(sharp_teacher), pack=True),
            "compile": dict(teacher_model=str(sharp_teacher))}[combo]
    records = _teacher_topk(sharp_teacher, _records(), k=4) if combo == "topk" else _records()

    def run(name, **kw):
        lm = load_lm(str(tiny_model), device="cpu")  # fp32 on any machine: the tolerances below are fp32's
        cfg = TrainConfig(objective="kd", lr=0.02, batch_size=4, epochs=1.5, seed=0, int8_calibration=0, **base, **kw)
        train(lm, student_format(lm, _task()), _task(), records, [], cfg, 64, tmp_path / name / "student",
              tmp_path / name / "metrics.jsonl")
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    plain = run("plain")
    if combo == "compile":
        torch._dynamo.reset()
    both = run("both", grad_accum_steps=2, gradient_checkpointing=True, compile=combo == "compile")
    assert len(both) == len(plain) == 3
    rtol = 1e-4 if combo == "compile" else 1e-5  # inductor's fused kernels sum in another order
    for a, b in zip(both, plain):
        assert a["onpolicy"] == b["onpolicy"] and a["tokens"] == b["tokens"]
        assert a.keys() == b.keys()
        for key in ("loss", "ce", "kd"):
            if key in b:  # an on-policy batch has no CE term
                assert a[key] == pytest.approx(b[key], rel=rtol, abs=1e-7), (a["step"], key, a[key], b[key])
    assert any(r["onpolicy"] for r in plain) == (combo == "onpolicy")
