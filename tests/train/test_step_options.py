"""The optimiser step's options on a tiny model: gradient accumulation (the same update as one
batch), gradient clipping, the learning-rate schedule and periodic validation loss."""

import json
import math

import pytest
import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.errors import PotstillError
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import predict, student_format
from potstill.tasks import get_task
from potstill.train.batching import build_examples, collate
from potstill.train.trainer import train

LABELS = ["sports", "tech", "politics"]
# Lengths differ a lot, so micro-batches hold different token counts: a mean of per-micro-batch
# means would weight the short examples' tokens more than one batch does.
TEXTS = ["the team won the match in the last minute of the game after a long season", "new phone",
         "the minister and the party said the vote would come next week", "a goal",
         "the internet and computer software", "a vote", "the bank profit", "a film star and the award night"]


def _run(model_dir, out, texts=TEXTS, dropout=0.0, n_val=3, device="cpu", **overrides):
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True,
                      label_probs={lab: (0.8 if j == i % 3 else 0.1) for j, lab in enumerate(LABELS)})
               for i, t in enumerate(texts)]
    lm = load_lm(str(model_dir), device=device, dtype="float32")  # fp32 anywhere: the tolerances below are fp32's
    for layer in lm.model.model.layers:
        layer.self_attn.attention_dropout = dropout
    cfg = TrainConfig(**{"objective": "kd", "kd_weight": 2.0, "lr": 0.01, "batch_size": 4, "epochs": 2, "seed": 2,
                         "int8_calibration": 0, **overrides})
    summary = train(lm, student_format(lm, task), task, records, records[:n_val], cfg, 64, out / "student",
                    out / "metrics.jsonl")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.mark.parametrize("pack", [False, True])
def test_accumulated_micro_batches_make_the_update_of_one_batch(tiny_model, tmp_path, pack):
    one, rows1 = _run(tiny_model, tmp_path / "one", pack=pack)
    for accum in (2, 4):
        acc, rows = _run(tiny_model, tmp_path / f"acc{accum}", pack=pack, grad_accum_steps=accum)
        assert len(rows) == len(rows1) == 4 and acc["tokens"] == one["tokens"]
        for a, b in zip(rows, rows1):
            for key in ("loss", "ce", "kd", "grad_norm", "tokens"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (accum, a["step"], key)
        wa = load_lm(str(tmp_path / f"acc{accum}" / "student")).model.state_dict()
        wb = load_lm(str(tmp_path / "one" / "student")).model.state_dict()
        # Adam divides by sqrt(v): where a gradient is ~0, a 1e-7 difference in it (the sums run in
        # another order) moved one weight of 2,048 by 1.8e-4; 1e-3 is a tenth of one lr=0.01 step.
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-3)
    assert acc["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)


def test_more_micro_batches_than_examples_is_one_line(tiny_model, tmp_path):
    with pytest.raises(PotstillError, match=r"train.batch_size 4 is smaller than the 1 process x "
                                            r"train.grad_accum_steps 8: every micro-batch needs an example"):
        _run(tiny_model, tmp_path, grad_accum_steps=8)


def test_gradients_are_clipped_to_max_grad_norm(tiny_model, tmp_path, monkeypatch):
    """The optimiser sees gradients of norm at most max_grad_norm; metrics.jsonl keeps the norm before."""
    seen = []
    real = torch.optim.AdamW.step

    def step(self, *a, **kw):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))))
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    _, free = _run(tiny_model, tmp_path / "free")
    assert seen == pytest.approx([r["grad_norm"] for r in free], rel=1e-5)
    limit = 0.5 * min(r["grad_norm"] for r in free)
    seen.clear()
    _, clipped = _run(tiny_model, tmp_path / "clipped", max_grad_norm=limit)
    assert clipped[0]["grad_norm"] == pytest.approx(free[0]["grad_norm"], rel=1e-6)  # same first step
    assert all(r["grad_norm"] > limit for r in clipped)
    assert seen == pytest.approx([limit] * len(clipped), rel=1e-4)
    assert clipped[1]["loss"] != pytest.approx(free[1]["loss"], rel=1e-6)  # the clip changed the update


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_the_learning_rate_follows_the_schedule(tiny_model, tmp_path, kind):
    _, rows = _run(tiny_model, tmp_path, epochs=5, warmup_steps=2, lr_scheduler=kind)
    total, warm = len(rows), 2
    assert total == 10

    def want(step):  # the rate the optimiser step `step` (0-based) ran at
        if step < warm:
            return (step + 1) / warm
        done = (step - warm) / (total - warm)
        return {"linear": 1 - done, "cosine": 0.5 * (1 + math.cos(math.pi * done)), "constant": 1.0}[kind]

    # metrics.jsonl's lr is the scheduler's after its step: the rate the next step runs at.
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * want(i + 1) for i in range(total)], abs=1e-12)


def test_warmup_ratio_is_a_share_of_the_steps(tiny_model, tmp_path):
    _, by_ratio = _run(tiny_model, tmp_path / "ratio", epochs=5, warmup_ratio=0.25)  # 10 steps: 3 of warm-up
    _, by_steps = _run(tiny_model, tmp_path / "steps", epochs=5, warmup_steps=3)
    assert [r["lr"] for r in by_ratio] == [r["lr"] for r in by_steps] and by_ratio[1]["lr"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="train.warmup_steps 3 and train.warmup_ratio 0.25 both set the warm-up"):
        TrainConfig(warmup_steps=3, warmup_ratio=0.25)


def test_val_loss_every_n_steps_leaves_the_curve_alone(tiny_model, tmp_path):
    base, rows = _run(tiny_model, tmp_path / "plain", epochs=3)
    summary, every = _run(tiny_model, tmp_path / "every", epochs=3, eval_every=2)
    assert [r["loss"] for r in every] == [r["loss"] for r in rows]  # bit for bit: no weight or draw changed
    assert [r["step"] for r in every if "val_loss" in r] == [2, 4, 6]
    assert every[-1]["val_loss"] == summary["val_loss"] == base["val_loss"]
    assert every[1]["val_loss"] != every[3]["val_loss"]


@pytest.mark.parametrize("pack", [False, True])
def test_val_label_agreement_is_what_the_saved_student_answers(tiny_model, tmp_path, pack):
    """Classification: each val row also holds the share of val examples whose most likely label is
    the one they are trained to give, as evaluate scores the saved student (padded or packed rows)."""
    summary, rows = _run(tiny_model, tmp_path, n_val=8, epochs=30, eval_every=10, lr=0.02, pack=pack)
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    val = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3]) for i, t in enumerate(TEXTS)]
    got = predict(load_lm(str(tmp_path / "student"), device="cpu"), task, val)
    assert len(set(got.outputs)) > 1, got.outputs  # answers that depend on the input: a misread position shows
    share = sum(o == r.output for o, r in zip(got.outputs, val)) / len(val)
    assert rows[-1]["val_label_agreement"] == summary["val_label_agreement"] == share
    assert [r["step"] for r in rows if "val_label_agreement" in r] == [10, 20, 30, 40, 50, 60]


def test_gradient_checkpointing_recomputes_each_layer_and_keeps_the_curve(tiny_model, tmp_path, monkeypatch):
    """Each layer runs twice a step (forward, then again in the backward) and, with dropout on, the
    recomputation draws the forward's masks: the curve is the one without checkpointing, bit for bit."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    calls = []
    real = LlamaMLP.forward

    def forward(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(LlamaMLP, "forward", forward)  # inside the checkpointed layer: runs again in the recompute
    plain, rows = _run(tiny_model, tmp_path / "plain", dropout=0.3, eval_every=4)
    n_plain = len(calls)
    calls.clear()
    ckpt, rows_ckpt = _run(tiny_model, tmp_path / "ckpt", dropout=0.3, eval_every=4, gradient_checkpointing=True)
    steps, layers = len(rows), 2
    assert len(calls) == n_plain + steps * layers  # one recompute per layer and step (none in val passes)
    assert [(r["loss"], r["grad_norm"]) for r in rows_ckpt] == [(r["loss"], r["grad_norm"]) for r in rows]
    assert ckpt["val_loss"] == plain["val_loss"]
    saved = load_lm(str(tmp_path / "ckpt" / "student")).model
    assert not any(getattr(m, "gradient_checkpointing", False) for m in saved.modules())


def test_gradient_checkpointing_records_nothing_below_the_trained_layers(tiny_model_b, tmp_path, monkeypatch):
    """With trainable_layers the frozen bottom runs without autograd; transformers' checkpointing
    also hooks the input embeddings to require a gradient, which would record it all again."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    grad_on = []
    real = LlamaMLP.forward

    def forward(self, x, *a, **kw):
        grad_on.append(x.requires_grad)
        return real(self, x, *a, **kw)

    monkeypatch.setattr(LlamaMLP, "forward", forward)
    _run(tiny_model_b, tmp_path, epochs=0.5, trainable_layers=1, gradient_checkpointing=True)
    # 3 layers: the bottom two frozen see inputs without a gradient; the top one twice (forward, recompute).
    assert grad_on[:4] == [False, False, True, True], grad_on


def test_lora_adapters_go_where_lora_targets_says(tiny_model, tmp_path):
    summary, _ = _run(tiny_model, tmp_path / "qv", epochs=0.5, method="lora", lora_r=2, lora_targets=["q_proj", "v_proj"])
    every, _ = _run(tiny_model, tmp_path / "all", epochs=0.5, method="lora", lora_r=2)
    # 2 layers, H=32, 2 KV heads of 8: q 32->32 and v 32->16, r=2: (32+32)*2 + (32+16)*2 = 224 per layer.
    assert summary["trainable_parameters"] == 2 * 224
    assert every["trainable_parameters"] > summary["trainable_parameters"]
    adapter = json.loads((tmp_path / "qv" / "student" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_a_lora_target_the_student_lacks_is_one_line(tiny_model, tmp_path):
    with pytest.raises(PotstillError, match=r"train.lora_targets: query_key_value names no linear layer of this "
                                            r"student \(its linear layers: down_proj, gate_proj, k_proj, o_proj"):
        _run(tiny_model, tmp_path, method="lora", lora_targets=["q_proj", "query_key_value"])


def test_an_adapter_on_the_output_head_is_refused(tiny_model, tmp_path):
    """The loss reads the output head as a plain weight: an adapter there never trained (alone, the
    first step raised "element 0 of tensors does not require grad"; beside q_proj, it stayed zero
    and was saved as trained), and the list of valid targets named lm_head."""
    with pytest.raises(PotstillError, match=r"train.lora_targets: lm_head is the output head") as e:
        _run(tiny_model, tmp_path / "a", method="lora", lora_targets=["q_proj", "lm_head"])
    assert "\n" not in str(e.value)
    with pytest.raises(PotstillError, match=r"its linear layers: ") as e:
        _run(tiny_model, tmp_path / "b", method="lora", lora_targets=["q_proj", "qkv"])
    assert "lm_head" not in str(e.value)


def test_max_steps_sets_the_number_of_steps(tiny_model, tmp_path):
    summary, rows = _run(tiny_model, tmp_path, epochs=1, max_steps=5)  # 8 examples, batches of 4: past one pass
    assert summary["steps"] == 5 and [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["lr"] == 0.0


def _overfit(model_dir, out, device="cpu", **overrides):
    """Val answers contradict the training answers for the same texts: the longer the student fits
    the training set, the worse its val loss, after a first drop (both start from chance).
    ``device``: where the student trains (float32 there too)."""
    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    train_recs = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
                  for i, t in enumerate(TEXTS)]
    val_recs = [Record(messages=[{"role": "user", "content": t}], output=LABELS[(i + 1) % 3], valid=True)
                for i, t in enumerate(TEXTS)]
    lm = load_lm(str(model_dir), device=device, dtype="float32")
    cfg = TrainConfig(**{"lr": 0.05, "batch_size": 4, "epochs": 6, "seed": 0, "int8_calibration": 0,
                         "eval_every": 1, "keep_best": True, **overrides})
    summary = train(lm, student_format(lm, task), task, train_recs, val_recs, cfg, 64, out / "student",
                    out / "metrics.jsonl")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows, task, val_recs


def test_keep_best_saves_the_step_with_the_lowest_val_loss(tiny_model, tmp_path):
    summary, rows, task, val_recs = _overfit(tiny_model, tmp_path)
    vals = [r["val_loss"] for r in rows]
    best = min(range(len(vals)), key=vals.__getitem__)
    assert 0 < best < len(rows) - 1, vals  # the case this test is about: neither the first nor the last step
    assert summary["best_step"] == best + 1 and summary["val_loss"] == vals[best]
    assert summary["val_label_agreement"] == rows[best]["val_label_agreement"]  # the kept step's, not the last's
    assert _saved_val_loss(tmp_path / "student", task, val_recs) == pytest.approx(vals[best], rel=1e-5)


def _killed_then_resumed(monkeypatch, kill_at, run):
    """``run()`` killed at AdamW's ``kill_at``-th step, then run again, as a resumed run would be:
    what the second run returns."""
    real, calls = torch.optim.AdamW.step, []

    def step(self, *a, **kw):
        calls.append(1)
        if len(calls) == kill_at:
            raise RuntimeError("killed")
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(RuntimeError, match="killed"):
        run()
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    return run()


def _saved_val_loss(student, task, val_recs):
    """The trainer's val loss, recomputed on a saved student: per batch of 4 (batch_size), CE summed
    over its tokens / its token count, then the batches' means weighted by their number of examples."""
    saved = load_lm(str(student), device="cpu")
    b = collate(build_examples(saved, student_format(saved, task), task, val_recs, 64), saved.tokenizer.pad_token_id,
                saved.device)
    with torch.no_grad():
        logits = saved.model(input_ids=b.ids, attention_mask=b.attention_mask).logits[:, :-1]
    counts = (b.ce_targets != -100).sum(1)
    token_ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b.ce_targets, reduction="none",
                                                 ignore_index=-100).sum(1)
    return sum(float(token_ce[i:i + 4].sum() / counts[i:i + 4].sum()) * len(token_ce[i:i + 4])
               for i in range(0, len(token_ce), 4)) / len(token_ce)


def test_keep_best_survives_a_crash_and_resume(tiny_model, tmp_path, monkeypatch):
    """The best step's weights ride in the checkpoint: a run killed after it (and after the next
    checkpoint) still saves that step's student, the one an uninterrupted run saves."""
    whole, rows, _, _ = _overfit(tiny_model, tmp_path / "whole", checkpoint_every=5)
    # Killed after the checkpoint at step 10.
    resumed, rows_b, _, _ = _killed_then_resumed(monkeypatch, 11,
                                                 lambda: _overfit(tiny_model, tmp_path / "b", checkpoint_every=5))
    assert rows_b == [{**r, "elapsed_s": rb["elapsed_s"]} for r, rb in zip(rows, rows_b)]
    assert resumed["resumed_from_step"] == 10 and resumed["best_step"] == whole["best_step"] < 10, whole
    a = load_lm(str(tmp_path / "whole" / "student")).model.state_dict()
    b = load_lm(str(tmp_path / "b" / "student")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_without_eval_every_is_refused(tiny_model, tmp_path):
    with pytest.raises(PotstillError, match="train.keep_best picks among the val losses that train.eval_every measures"):
        _run(tiny_model, tmp_path, keep_best=True)
    assert not (tmp_path / "metrics.jsonl").exists()


def _counts(vals, threshold=0.0):
    """Early stopping's count after each measurement of ``vals`` (eval_every 1): measurements in a
    row not lower than the lowest before by more than ``threshold``."""
    best, stale, out = None, 0, []
    for v in vals:
        if best is None or v < best - threshold:
            best, stale = v, 0
        else:
            stale += 1
        out.append(stale)
    return out


def _stop_step(vals, patience, threshold=0.0):
    """Where early stopping should end a run whose every step measured ``vals`` (never at the last)."""
    return next((i + 1 for i, c in enumerate(_counts(vals[:-1], threshold)) if c >= patience), len(vals))


def test_early_stopping_ends_the_run_patience_measurements_after_the_last_better_one(tiny_model, tmp_path):
    _, rows, _, _ = _overfit(tiny_model, tmp_path / "whole", keep_best=False)
    vals = [r["val_loss"] for r in rows]
    stop = _stop_step(vals, 1)
    assert 2 < stop < len(rows) - 1, vals  # the case: better measurements first, a stop well before the end
    summary, rows_b, _, _ = _overfit(tiny_model, tmp_path / "b", keep_best=False, early_stopping_patience=1)
    assert [{**r, "elapsed_s": 0} for r in rows_b] == [{**r, "elapsed_s": 0} for r in rows[:stop]]
    assert summary["steps"] == stop and summary["stopped_early"] is True and summary["val_loss"] == vals[stop - 1]
    assert "best_step" not in summary and not list((tmp_path / "b" / "student.ckpt").glob("step-*"))


def test_early_stopping_with_keep_best_saves_the_best_step_before_the_stop(tiny_model, tmp_path):
    _, rows, task, val_recs = _overfit(tiny_model, tmp_path / "whole", keep_best=False)
    vals = [r["val_loss"] for r in rows]
    stop = _stop_step(vals, 1)
    best = min(range(stop), key=vals.__getitem__)
    assert best < stop - 1, vals  # the kept step is not the one the run stopped at
    summary, rows_b, _, _ = _overfit(tiny_model, tmp_path / "b", early_stopping_patience=1)
    assert len(rows_b) == stop and summary["stopped_early"] is True
    assert summary["best_step"] == best + 1 and summary["val_loss"] == vals[best]
    assert _saved_val_loss(tmp_path / "b" / "student", task, val_recs) == pytest.approx(vals[best], rel=1e-5)


def test_a_threshold_counts_small_gains_as_none(tiny_model, tmp_path):
    summary, rows, _, _ = _overfit(tiny_model, tmp_path, early_stopping_patience=3, early_stopping_threshold=100.0)
    assert summary["steps"] == 4 and len(rows) == 4  # the first measurement, then three not 100 lower
    # keep_best keeps the lowest, which may be the step the run stopped at: each is lower than the last here
    assert [r["val_loss"] for r in rows] == sorted((r["val_loss"] for r in rows), reverse=True)
    assert summary["best_step"] == 4


def test_early_stopping_counts_across_a_crash_and_resume(tiny_model, tmp_path, monkeypatch):
    """The count of measurements without a lower val loss is rebuilt from the checkpoint's curve:
    a run killed with some counted stops where one never killed does, with the same student."""
    _, rows, _, _ = _overfit(tiny_model, tmp_path / "whole", keep_best=False)
    vals = [r["val_loss"] for r in rows]
    patience = 2
    stop = _stop_step(vals, patience)
    # The last step before the stop whose count is not zero, checkpointed: a resume that counted
    # afresh from there would stop later, or not at all.
    ckpt = max(i + 1 for i, c in enumerate(_counts(vals[: stop - 1])) if c)
    assert stop < len(rows) and 0 < _counts(vals)[ckpt - 1] < patience, vals
    whole, rows_w, _, _ = _overfit(tiny_model, tmp_path / "whole_es", keep_best=False,
                                   early_stopping_patience=patience, checkpoint_every=ckpt)
    assert whole["steps"] == stop
    # Killed at the step after the checkpoint.
    resumed, rows_b, _, _ = _killed_then_resumed(monkeypatch, ckpt + 1, lambda: _overfit(
        tiny_model, tmp_path / "b", keep_best=False, early_stopping_patience=patience, checkpoint_every=ckpt))
    assert resumed["resumed_from_step"] == ckpt and resumed["steps"] == stop and resumed["stopped_early"]
    assert [{**r, "elapsed_s": 0} for r in rows_b] == [{**r, "elapsed_s": 0} for r in rows_w]
    a = load_lm(str(tmp_path / "whole_es" / "student")).model.state_dict()
    b = load_lm(str(tmp_path / "b" / "student")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_without_eval_every_or_val_is_refused(tiny_model, tmp_path):
    with pytest.raises(PotstillError, match="train.early_stopping_patience counts the val losses that "
                                            "train.eval_every measures"):
        _run(tiny_model, tmp_path, early_stopping_patience=2)
    with pytest.raises(PotstillError, match="train.early_stopping_patience stops on the loss on val.jsonl"):
        _run(tiny_model, tmp_path, early_stopping_patience=2, eval_every=1, n_val=0)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("pack", [False, True])
def test_neftune_noise_is_bounded_by_each_example_s_own_length(tiny_model, pack):
    from potstill.train.neftune import neftune_noise

    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    lm = load_lm(str(tiny_model), device="cpu")
    recs = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
            for i, t in enumerate(TEXTS[:4])]
    examples = build_examples(lm, student_format(lm, task), task, recs, 256)
    b = collate(examples, lm.tokenizer.pad_token_id, lm.device, pack=pack, max_length=256)
    d = 2048  # wide, so each example's largest draw comes near its bound
    torch.manual_seed(0)
    noise = neftune_noise(torch.zeros(*b.ids.shape, d), b, 5.0)
    # Where each example sits: its row and columns (rows_of's order: first fit).
    spans, row, col = [], 0, 0
    for e in examples:
        if not pack or col + len(e.ids) > 256:
            row, col = (row + 1 if spans else 0), 0
        spans.append((row, col, len(e.ids)))
        col += len(e.ids)
    assert len({n for _, _, n in spans}) > 1 and (not pack or len({r for r, _, _ in spans}) == 1)
    for r, c, n in spans:
        bound = 5.0 / math.sqrt(n * d)
        top = float(noise[r, c:c + n].abs().max())
        assert 0.99 * bound < top <= bound, (n, top, bound)


def test_neftune_trains_on_noisy_embeddings_and_measures_val_without(tiny_model, tmp_path):
    _, plain, _, _ = _overfit(tiny_model, tmp_path / "plain", keep_best=False, max_steps=3)
    summary, rows, task, val_recs = _overfit(tiny_model, tmp_path / "noisy", keep_best=False, max_steps=3,
                                             neftune_noise_alpha=5.0)
    assert rows[0]["loss"] != plain[0]["loss"]  # the first step already trains on noisy embeddings
    assert rows[0]["val_loss"] != plain[0]["val_loss"]  # and so moved the weights otherwise
    # The val pass runs without noise: it is the saved student's own loss, to fp32 rounding.
    assert _saved_val_loss(tmp_path / "noisy" / "student", task, val_recs) == pytest.approx(summary["val_loss"],
                                                                                           rel=1e-5)


def test_neftune_noise_resumes_on_the_same_draws(tiny_model, tmp_path, monkeypatch):
    whole, rows, _, _ = _overfit(tiny_model, tmp_path / "whole", keep_best=False, neftune_noise_alpha=5.0,
                                 checkpoint_every=3)
    resumed, rows_b, _, _ = _killed_then_resumed(monkeypatch, 5, lambda: _overfit(
        tiny_model, tmp_path / "b", keep_best=False, neftune_noise_alpha=5.0, checkpoint_every=3))
    assert resumed["resumed_from_step"] == 3
    assert [{**r, "elapsed_s": 0} for r in rows_b] == [{**r, "elapsed_s": 0} for r in rows]


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_neftune_on_a_gpu_trains_on_noise_and_resumes_on_the_same_draws(tiny_model, tmp_path, monkeypatch, compiled):
    """On CUDA (float32), eager and under ``train.compile``: the noise keeps each example's own bound,
    the first step trains on it (another loss than without), and a run killed after its checkpoint
    resumes on the same draws (the same curve, to the GPU's float32 summation order)."""
    from potstill.train.neftune import neftune_noise

    task = get_task(TaskConfig(type="classification", labels=LABELS, instruction="classify the text"))
    lm = load_lm(str(tiny_model), device="cuda", dtype="float32")
    recs = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
            for i, t in enumerate(TEXTS[:4])]
    examples = build_examples(lm, student_format(lm, task), task, recs, 256)
    b = collate(examples, lm.tokenizer.pad_token_id, lm.device, max_length=256)
    noise = neftune_noise(torch.zeros(*b.ids.shape, 2048, device="cuda"), b, 5.0)
    for r, e in enumerate(examples):
        bound = 5.0 / math.sqrt(len(e.ids) * 2048)
        assert 0.99 * bound < float(noise[r].abs().max()) <= bound

    kw = dict(device="cuda", keep_best=False, checkpoint_every=3, compile=compiled)
    _, plain, _, _ = _overfit(tiny_model, tmp_path / "plain", max_steps=3, **{**kw, "checkpoint_every": 0})
    whole, rows, _, _ = _overfit(tiny_model, tmp_path / "whole", neftune_noise_alpha=5.0, **kw)
    assert rows[0]["loss"] != pytest.approx(plain[0]["loss"], rel=1e-4)
    resumed, rows_b, _, _ = _killed_then_resumed(
        monkeypatch, 5, lambda: _overfit(tiny_model, tmp_path / "b", neftune_noise_alpha=5.0, **kw))
    assert resumed["resumed_from_step"] == 3 and len(rows_b) == len(rows)
    for x, y in zip(rows_b, rows):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4) and x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
@pytest.mark.parametrize("extra", [{}, {"pack": True, "gradient_checkpointing": True}], ids=["plain", "pack+checkpointing"])
def test_lora_under_compile_on_a_gpu_keeps_the_curve(tiny_model, tmp_path, extra):
    """LoRA under ``train.compile`` on CUDA (float32, KD on label probabilities): the same loss, CE and
    KD terms as eager LoRA at every step, alone and with packing and gradient checkpointing, and the
    same val loss of the saved student. The first step (no update yet) agrees to 1e-4 (inductor's
    kernels sum in another order); after it, AdamW's normalised step turns those differences on
    near-zero gradients into whole steps (2e-4 at step 2 on an H100), so later steps agree to 2e-3,
    a twentieth of what one step of training moves this loss (3.7% at step 2 against lr 1e-9)."""
    kw = dict(device="cuda", epochs=1.5, method="lora", lora_r=4, **extra)
    eager, plain = _run(tiny_model, tmp_path / "eager", **kw)
    torch._dynamo.reset()
    compiled, rows = _run(tiny_model, tmp_path / "compiled", compile=True, **kw)
    assert len(rows) == len(plain) >= 3
    for a, b in zip(rows, plain):
        for key in ("loss", "ce", "kd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4 if a["step"] == 1 else 2e-3, abs=1e-7), (a["step"], key)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=2e-3)


@pytest.mark.skipif("not __import__('torch').cuda.is_available() or not __import__('importlib').util.find_spec('bitsandbytes')",
                    reason="needs a CUDA GPU and bitsandbytes")
def test_qlora_under_compile_on_a_gpu_keeps_the_curve(tiny_model, tmp_path):
    """QLoRA (NF4 base, bf16 compute, LoRA adapters) under ``train.compile`` on CUDA: the same loss,
    CE and KD terms as eager QLoRA at every step, and a saved adapter with eager's val loss. On an
    H100 (bitsandbytes 0.50.2) the first step agreed exactly and later ones to 8e-5, where each step
    moved the loss by 1-3%: 1e-4 / 1e-3 keep a margin and still catch a compiled step that does not train."""
    kw = dict(device="cuda", epochs=1.5, method="qlora", lora_r=4)
    eager, plain = _run(tiny_model, tmp_path / "eager", **kw)
    torch._dynamo.reset()
    compiled, rows = _run(tiny_model, tmp_path / "compiled", compile=True, **kw)
    assert len(rows) == len(plain) >= 3
    assert plain[-1]["loss"] < 0.99 * plain[0]["loss"]  # it trains
    for a, b in zip(rows, plain):
        for key in ("loss", "ce", "kd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4 if a["step"] == 1 else 1e-3, abs=1e-6), (a["step"], key)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)
    assert (tmp_path / "compiled" / "student" / "adapter_config.json").exists()
