"""Logit KD between two models of one family whose LM heads are padded to different sizes past the
tokenizer (Qwen2.5-7B's 152,064 rows against 0.5B's 151,936, one tokenizer of 151,665 tokens): the
rows both heads have hold every token, so KD compares those; the padding rows name no token. Tiny
Llama models built from a config, one tokenizer, heads padded by hand."""

from __future__ import annotations

import json

import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.batching import build_examples
from potstill.train.onpolicy import sample_batch
from potstill.train.trainer import train

TEXTS = ["the team won the match", "new phone software", "the minister and the party", "a goal in the game"]
OUTPUTS = ["sports match team", "tech phone software", "politics party vote", "sports goal win"]


def padded(src, out, extra: int, scale: float = 1.0):
    """``src`` with ``extra`` padding rows appended to its (tied) embedding and LM head."""
    lm = load_lm(str(src), device="cpu")
    m = lm.model
    n, h = m.get_input_embeddings().weight.shape
    torch.manual_seed(1)
    m.resize_token_embeddings(n + extra, mean_resizing=False)
    with torch.no_grad():
        m.get_input_embeddings().weight[n:] = torch.randn(extra, h) * scale
    m.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def _run(student_dir, teacher_dir, out, **kw):
    lm = load_lm(str(student_dir), device="cpu")
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    records = [Record(messages=[{"role": "user", "content": t}], output=o, valid=True) for t, o in zip(TEXTS, OUTPUTS)]
    cfg = TrainConfig(objective="kd", kd_signal="logits", teacher_model=str(teacher_dir), lr=0.01, batch_size=2,
                      seed=0, epochs=2, int8_calibration=0, **kw)
    train(lm, student_format(lm, task), task, records, [], cfg, 64, out / "student", out / "metrics.jsonl")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_teacher_with_more_padding_rows_gives_the_same_kd_as_without_them(tiny_model, tiny_model_b, tmp_path):
    """The padded teacher was refused ('its LM head does not match the student's vocabulary'); its
    first rows are the unpadded teacher's, so the KD curve is that teacher's, to float rounding."""
    teacher_pad = padded(tiny_model_b, tmp_path / "teacher-pad", extra=8)
    plain = _run(tiny_model, tiny_model_b, tmp_path / "plain")
    pad = _run(tiny_model, teacher_pad, tmp_path / "pad")
    assert len(plain) == len(pad) > 1
    for a, b in zip(plain, pad):
        assert abs(a["kd"] - b["kd"]) < 1e-5 and abs(a["loss"] - b["loss"]) < 1e-5, (a, b)


def test_a_student_with_more_padding_rows_never_samples_them_on_policy(tiny_model, tiny_model_b, tmp_path):
    """On-policy samples come from the student's whole head; a padding row the teacher does not have
    would index past its embedding. Rows past the teacher's are never drawn, however likely."""
    student_pad = padded(tiny_model, tmp_path / "student-pad", extra=8, scale=50.0)
    lm = load_lm(str(student_pad), device="cpu")
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    records = [Record(messages=[{"role": "user", "content": t}], output=o, valid=True) for t, o in zip(TEXTS, OUTPUTS)]
    examples = build_examples(lm, student_format(lm, task), task, records, 64)
    rows = len(lm.tokenizer)
    torch.manual_seed(0)
    free = sample_batch(lm.model, examples, lm.tokenizer.pad_token_id, None, 6, 1.0, torch.device("cpu"))
    assert any(t >= rows for e in free for t in e.ids[e.n_prompt:])  # the huge padding rows do win unmasked
    torch.manual_seed(0)
    kept = sample_batch(lm.model, examples, lm.tokenizer.pad_token_id, None, 6, 1.0, torch.device("cpu"), rows=rows)
    assert all(t < rows for e in kept for t in e.ids[e.n_prompt:])
    out = _run(student_pad, tiny_model_b, tmp_path / "gkd", onpolicy_fraction=1.0, onpolicy_max_new_tokens=4)
    assert out and all(r["onpolicy"] for r in out)
