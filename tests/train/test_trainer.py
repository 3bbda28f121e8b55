"""The trainer on a tiny model: label-level KD lowers the KL to the teacher's soft labels."""

import json
from pathlib import Path

import pytest
import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import predict, student_format
from potstill.tasks import get_task
from potstill.train.batching import build_examples, collate
from potstill.train.trainer import train

LABELS = ["sports", "tech", "politics"]
TEXTS = ["the team won the match", "new phone software", "the minister and the party", "a goal in the game",
         "the internet and computer", "a vote in the election"]
# A peaked, input-dependent teacher distribution the untrained student does not know.
PROBS = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]


def kl_to_teacher(lm, task, records):
    p = predict(lm, task, records, batch_size=8)
    kl = 0.0
    for rec, s in zip(records, p.label_probs):
        t = torch.tensor([rec.label_probs[k] for k in LABELS])
        q = torch.tensor([s[k] for k in LABELS])
        kl += float((t * (t / q).log()).sum())
    return kl / len(records)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_label_kd_lowers_kl_to_teacher(tiny_model, tmp_path, dtype):
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [
        Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3],
               label_probs=dict(zip(LABELS, PROBS[i % 3])), valid=True)
        for i, t in enumerate(TEXTS)
    ]
    lm = load_lm(str(tiny_model), device="cpu")  # the CPU's precision rules below, on any machine
    before = kl_to_teacher(lm, task, records)
    cfg = TrainConfig(objective="kd", kd_weight=5.0, lr=0.02, epochs=30, batch_size=6, seed=0, dtype=dtype)
    summary = train(lm, student_format(lm, task), task, records, records[:2], cfg, 64, tmp_path / "student",
                    tmp_path / "metrics.jsonl")
    after = kl_to_teacher(load_lm(str(tmp_path / "student")), task, records)
    assert after < 0.3 * before, (before, after)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kd"] < rows[0]["kd"] and summary["steps"] == 30
    # On a CPU, bf16 autocast only when asked: one process trains both ways (accelerate's state is global).
    assert summary["mixed_precision"] == ("bf16" if dtype == "bfloat16" else "no")
    if dtype == "bfloat16":  # the first step's loss (same weights, same batch) within bf16 rounding of fp32's
        one = TrainConfig(objective="kd", kd_weight=5.0, lr=0.02, epochs=1, batch_size=6, seed=0)
        train(load_lm(str(tiny_model), device="cpu"), student_format(lm, task), task, records, records[:2], one, 64,
              tmp_path / "fp32", tmp_path / "fp32.jsonl")
        first = json.loads((tmp_path / "fp32.jsonl").read_text().splitlines()[0])
        assert rows[0]["kd"] == pytest.approx(first["kd"], rel=0.02) and rows[0]["kd"] != first["kd"]


def test_a_second_training_in_one_process_may_change_precision(tiny_model, tmp_path):
    """accelerate's process-wide state, left at bf16 by an earlier Accelerator in this process (the
    caller's, or a bf16 training on a GPU), refused the next run's precision with 'AcceleratorState has
    already been initialized and cannot be changed, restart your runtime'."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # whatever earlier tests left
    Accelerator(cpu=True, mixed_precision="bf16")
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model), device="cpu")
    summary = train(lm, student_format(lm, task), task, records, [], TrainConfig(epochs=1, batch_size=6), 64,
                    tmp_path / "student", tmp_path / "metrics.jsonl")
    assert summary["mixed_precision"] == "no" and summary["steps"] == 1


@pytest.mark.parametrize("top, trained", [(1, [1]), (2, [0, 1]), (3, [0, 1]), (5, [0, 1])])
def test_trainable_layers_counts_from_the_top_and_never_past_the_bottom(tiny_model, top, trained):
    """More trainable layers than the model has trains them all (a 12-layer cut with the default
    20 once trained only its top 8: a negative slice start)."""
    from potstill.models.scoring import decoder
    from potstill.train.params import freeze_for

    lm = load_lm(str(tiny_model))
    layers = decoder(lm.model).layers
    assert len(layers) == 2
    freeze_for(lm.model, TrainConfig(trainable_layers=top))
    state = [{p.requires_grad for p in layer.parameters()} for layer in layers]
    assert state == [{i in trained} for i in range(len(layers))]


def test_a_diverging_loss_stops_training_and_saves_nothing(tiny_model, tmp_path):
    """lr 1e9 turns the weights to NaN within a step or two: training stops there with one line
    naming the step and the setting, and no student is written (it trained all its steps before,
    saved a NaN student and exited 0)."""
    from potstill.errors import PotstillError

    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model))
    cfg = TrainConfig(lr=1e9, epochs=10, batch_size=2, seed=0)
    with pytest.raises(PotstillError, match=r"the loss is nan at step \d+ of 30.*Lower train.lr \(now 1e\+09\)"):
        train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "student", tmp_path / "m.jsonl")
    assert not (tmp_path / "student").exists()
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(rows) < 30 and all(r["loss"] == r["loss"] for r in rows)  # the finite steps before it


def test_no_trainable_layer_is_one_line(tiny_model, tmp_path):
    from potstill.errors import PotstillError

    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[0], valid=True) for t in TEXTS]
    lm = load_lm(str(tiny_model))
    with pytest.raises(PotstillError, match="trainable_layers 0 leaves the student nothing to train"):
        train(lm, student_format(lm, task), task, records, [], TrainConfig(trainable_layers=0), 64,
              tmp_path / "student", tmp_path / "m.jsonl")


def test_examples_cut_to_max_length_are_named(tiny_model, tmp_path, capsys):
    """A prompt longer than student.max_length loses its start (a chat's instruction first) while
    evaluate and serve see it whole: train says how many and how long, instead of nothing."""
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model))
    train(lm, student_format(lm, task), task, records, [], TrainConfig(epochs=1, batch_size=6), 64,
          tmp_path / "a", tmp_path / "a.jsonl")
    said = capsys.readouterr()
    assert "longer than student.max_length" not in said.out + said.err
    train(load_lm(str(tiny_model)), student_format(lm, task), task, records, [], TrainConfig(epochs=1, batch_size=6),
          12, tmp_path / "b", tmp_path / "b.jsonl")
    said = capsys.readouterr()
    text = (said.out + said.err).replace("\n", " ")
    assert "train: 6 of 6 training examples are longer than student.max_length 12 tokens" in text, text
    assert "raise student.max_length to" in text


def test_examples_whose_answer_is_cut_are_left_out_and_counted(tiny_model, tmp_path, capsys):
    """An answer longer than student.max_length kept one prompt token and lost its end-of-turn: the
    student learnt to write with no input and never stop, and the warning said only that the example
    lost its start. Such examples are left out, counted apart; with none left, train refuses."""
    from potstill.errors import PotstillError

    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    long = " ".join(["the market shares"] * 20)  # some 60 tokens
    records = [Record(messages=[{"role": "user", "content": t}], output=long if i < 2 else "short", valid=True)
               for i, t in enumerate(TEXTS)]
    val = [Record(messages=[{"role": "user", "content": "the bank profit"}], output=o, valid=True)
           for o in (long, "bank")]
    lm = load_lm(str(tiny_model))
    fmt = student_format(lm, task)
    cut = build_examples(lm, fmt, task, records, 32)
    assert [e.n_prompt == 1 for e in cut] == [True, True] + [False] * 4 and all(e.answer_cut for e in cut[:2])
    summary = train(lm, fmt, task, records, val, TrainConfig(objective="sft", epochs=1, batch_size=4), 32,
                    tmp_path / "a", tmp_path / "a.jsonl")
    text = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert summary["examples"] == 4
    assert ("train: 2 of 6 training examples and 1 of 2 validation examples have an answer longer than "
            "student.max_length 32 tokens") in text and "they are left out" in text, text
    assert "lost their start" not in text  # the prompts of those kept fit
    with pytest.raises(PotstillError, match="2 of 2 training examples have an answer longer .* none is left"):
        train(load_lm(str(tiny_model)), fmt, task, records[:2], [], TrainConfig(objective="sft", batch_size=2), 32,
              tmp_path / "b", tmp_path / "b.jsonl")


def test_val_loss_is_measured_without_dropout(tiny_model, tmp_path):
    """val_loss (train.json, the closing line) is the trained student's loss on val.jsonl: it was
    measured with the module still in training mode, so with train.lora_dropout it was the loss of a
    randomly thinned student, not the one saved."""
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model), device="cpu")  # fp32 on any machine: the tolerance below is fp32's
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.5, lr=0.2, epochs=10, batch_size=6,
                      seed=0, int8_calibration=0)
    summary = train(lm, student_format(lm, task), task, records, records, cfg, 64, tmp_path / "student",
                    tmp_path / "metrics.jsonl")
    saved = load_lm(str(tmp_path / "student"), device="cpu")
    b = collate(build_examples(saved, student_format(saved, task), task, records, 64), saved.tokenizer.pad_token_id,
                saved.device)
    with torch.no_grad():
        logits = saved.model(input_ids=b.ids, attention_mask=b.attention_mask).logits[:, :-1]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.ce_targets.reshape(-1))
    assert summary["val_loss"] == pytest.approx(float(want), rel=1e-5)


def test_lora_student_loads_from_any_directory(tmp_path, monkeypatch):
    """A LoRA student names its base in adapter_config.json. A base given as a relative path
    (student.model: ./base, read from a config in the current directory) was written as 'base', so
    serve, evaluate or export started from any other directory looked for it there, and then on the
    Hugging Face hub as the model id 'base'."""
    from tests.helpers.tiny import make_model_dir

    monkeypatch.chdir(tmp_path)
    make_model_dir(Path("base"))
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm("base", device="cpu")  # fp32 on any machine: the tolerance below is fp32's
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lr=0.05, epochs=4, batch_size=6, seed=0)
    train(lm, student_format(lm, task), task, records, [], cfg, 64, Path("run/student"), Path("run/metrics.jsonl"))
    ids = torch.tensor([lm.tokenizer("the team won the match")["input_ids"]])
    with torch.no_grad():
        want = lm.model(input_ids=ids).logits
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    student = load_lm(str(tmp_path / "run" / "student"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(student.model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)


def test_label_kd_with_no_soft_label_is_one_line_not_silent_sft(tiny_model, tmp_path):
    """objective kd picks the labels signal for classification, but an API teacher asked without
    teacher.logprobs (its default, 0) records no label_probs: training ran pure SFT and train.json
    said objective kd, kd_signal labels. It is refused in one line, as topk with no logprobs is."""
    from potstill.errors import PotstillError

    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model))
    cfg = TrainConfig(objective="kd", epochs=1, batch_size=2, seed=0)
    with pytest.raises(PotstillError, match="no training record carries label_probs.*teacher.logprobs"):
        train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "student", tmp_path / "m.jsonl")
    assert not (tmp_path / "student").exists()
    # One record with a soft label is enough (the others, real data with a gold label, train on CE).
    records[0].label_probs = dict(zip(LABELS, PROBS[0]))
    summary = train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "student",
                    tmp_path / "m.jsonl")
    assert summary["kd_signal"] == "labels"


@pytest.mark.parametrize("n,batch_size", [(5, 4), (7, 3), (10, 4), (3, 3)])
def test_no_example_is_twice_in_one_batch_across_passes(n, batch_size):
    """Each pass is a shuffle of every example; the batch spanning two passes took the new pass's
    first ones whatever they were, so an example left from the old pass often came again in it (172
    of 200 seeds within 3 steps at 5 examples, batches of 4). Every pass still holds each example once."""
    import random

    from potstill.train.trainer import top_up

    for seed in range(200):
        rng, order = random.Random(seed), []
        drawn: list[int] = []
        for _ in range(4 * n):
            if len(order) < batch_size:
                order = top_up(order, n, batch_size, rng)
            batch, order = order[:batch_size], order[batch_size:]
            assert len(set(batch)) == batch_size, (seed, batch)
            drawn += batch
        passes = len(drawn) // n
        assert passes >= 3 and all(sorted(drawn[k * n:(k + 1) * n]) == list(range(n)) for k in range(passes))


@pytest.mark.parametrize("n,batch_size", [(3, 8), (1, 4), (2, 5), (3, 4)])
def test_a_set_smaller_than_one_batch_fills_it_with_every_example_as_evenly_as_it_can(n, batch_size):
    """Fewer examples than batch_size: the batch held each example once, so fewer than batch_size
    (3 of 8), where README promised repeats. Now further passes fill it, each example floor or ceil
    of batch_size / n times, and every pass still holds each example once."""
    import random
    from collections import Counter

    from potstill.train.trainer import top_up

    for seed in range(200):
        rng, order = random.Random(seed), []
        drawn: list[int] = []
        for _ in range(6):
            if len(order) < batch_size:
                order = top_up(order, n, batch_size, rng)
            batch, order = order[:batch_size], order[batch_size:]
            times = Counter(batch)
            assert len(batch) == batch_size and sorted(times) == list(range(n)), (seed, batch)
            assert set(times.values()) <= {batch_size // n, -(-batch_size // n)}, (seed, batch)
            drawn += batch
        assert all(sorted(drawn[k * n:(k + 1) * n]) == list(range(n)) for k in range(len(drawn) // n))


def test_a_set_smaller_than_one_batch_trains_full_batches_with_grad_accum(tiny_model, tmp_path):
    """3 examples, batch_size 8, grad_accum_steps 4: the batch held the 3 examples only, so the
    micro-batches past the third were empty and the first step crashed in collate (ValueError: max()
    arg is an empty sequence) after the model had loaded. Each step now trains 8 examples."""
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    records = [Record(messages=[{"role": "user", "content": t}], output=o, valid=True)
               for t, o in zip(TEXTS[:3], ["sports match", "tech", "politics party vote"])]
    lm = load_lm(str(tiny_model), device="cpu")
    fmt = student_format(lm, task)
    lengths = [len(e.ids) for e in build_examples(lm, fmt, task, records, 64)]
    cfg = TrainConfig(objective="sft", lr=0.01, batch_size=8, grad_accum_steps=4, epochs=2, seed=0)
    summary = train(lm, fmt, task, records, [], cfg, 64, tmp_path / "student", tmp_path / "metrics.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(rows) == 2  # epochs 2 of a set within one batch: a step each
    # 8 examples a step: two of the three 3 times, one twice (tokens is the running total).
    per_step = [rows[0]["tokens"], rows[1]["tokens"] - rows[0]["tokens"]]
    assert all(t in {3 * sum(lengths) - n for n in lengths} for t in per_step), (per_step, lengths)


def test_a_student_without_a_chat_template_learns_where_its_answer_ends(tmp_path):
    """A plain-text prompt's target ended with a newline, which no generation stops at: the trained
    student wrote on to its token budget ('sports match team team team ...', 16 of 16 tokens). It ends
    with EOS now, where every generation stops."""
    from potstill.engines import load_engine
    from tests.helpers.tiny import make_model_dir

    lm = load_lm(str(make_model_dir(tmp_path / "base")))
    lm.tokenizer.chat_template = None  # a base model's tokenizer
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    texts = ["the team won the match", "new phone software", "the minister and the party", "a goal in the game"]
    answers = ["sports match team", "tech phone software", "politics party vote", "sports goal win"]
    recs = [Record(messages=[{"role": "user", "content": t}], output=o, valid=True) for t, o in zip(texts, answers)]
    fmt = student_format(lm, task)
    assert fmt.kind == "completion" and fmt.completion(lm.tokenizer, "yes") == " yes<|im_end|>"
    train(lm, fmt, task, recs, recs[:2], TrainConfig(objective="sft", lr=0.01, batch_size=4, seed=0, max_steps=150),
          64, tmp_path / "student", tmp_path / "metrics.jsonl")
    engine = load_engine("transformers", str(tmp_path / "student"), device="cpu")
    engine.tokenizer.chat_template = None
    got = engine.generate(student_format(engine, task), [r.messages for r in recs], 16)
    assert got.texts == answers and max(got.output_tokens) < 16, got.texts


def test_weight_decay_leaves_norm_scales_and_biases_alone(tiny_model, tmp_path):
    """train.weight_decay decayed every parameter, RMSNorm scales included (pulled towards 0, not their
    1.0 start); transformers' Trainer and TRL decay matrices only. An AdamW step on zero gradients,
    where decay alone moves a parameter, moves every matrix and no norm scale."""
    from potstill.train.trainer import _decay_groups

    lm = load_lm(str(tiny_model))
    params = [p for p in lm.model.parameters() if p.requires_grad]
    assert _decay_groups(params, 0.0) == params
    decayed, kept = _decay_groups(params, 0.1)
    assert "weight_decay" not in decayed and kept["weight_decay"] == 0.0
    names = {id(p): n for n, p in lm.model.named_parameters()}
    assert {names[id(p)].rsplit(".", 2)[-2] for p in kept["params"]} == {"input_layernorm", "post_attention_layernorm",
                                                                            "norm"}
    assert all(p.ndim == 2 for p in decayed["params"]) and len(decayed["params"]) + len(kept["params"]) == len(params)
    # The optimizer's own step: a zero gradient everywhere, so decay alone moves a parameter.
    opt = torch.optim.AdamW(_decay_groups(params, 0.5), lr=0.5, weight_decay=0.5)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b) == (p.ndim < 2), names[id(p)]
