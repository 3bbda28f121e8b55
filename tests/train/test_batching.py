"""Packing leaks no attention across examples; API top-k tokens map onto student ids."""

import math

import pytest
import torch

from potstill.models.loading import load_lm
from potstill.train.batching import Example, collate, rows_of, topk_for_completion
from potstill.train.loss_module import LossModule, LossSpec, fused_head_ok


def _examples(vocab: int, lengths: list[int], seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        out.append(Example(ids=ids, n_prompt=max(1, n // 2)))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(tiny_model, attn):
    lm = load_lm(str(tiny_model))
    lm.model.set_attn_implementation(attn)
    module = LossModule(lm.model, lm.model)
    spec = LossSpec("forward_kl", 0.5, 0.1, 1.0, None, fused_head_ok(lm.model))
    ex = _examples(lm.model.config.vocab_size, [7, 12, 5, 9, 16, 3])
    pad = lm.tokenizer.pad_token_id
    packed = collate(ex, pad, lm.device, pack=True, max_length=32)
    assert packed.ids.shape[0] < len(ex)  # several examples really share a row
    with torch.no_grad():
        p = module(packed, spec)["ce"]
        u = module(collate(ex, pad, lm.device), spec)["ce"]
        # The same sum, one example at a time (no padding at all).
        one = sum(module(collate([e], pad, lm.device), spec)["ce"] for e in ex)
    assert packed.counts()["ce"] == sum(len(e.ids) - e.n_prompt for e in ex)
    torch.testing.assert_close(p, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u, one, rtol=1e-5, atol=1e-5)
    # Control: the same rows with one causal mask over the whole row give another loss.
    leaky = collate(ex, pad, lm.device, pack=True, max_length=32)
    leaky.position_ids = torch.arange(leaky.ids.shape[1], device=leaky.ids.device).expand_as(leaky.ids)
    with torch.no_grad():
        assert abs(float(module(leaky, spec)["ce"]) - float(one)) > 1e-3


def test_rows_of_first_fit():
    ex = [Example(ids=[1] * n, n_prompt=1) for n in (10, 10, 5, 20, 6)]
    rows = rows_of(ex, True, 21)
    assert [[len(e.ids) for e in r] for r in rows] == [[10, 10], [5, 6], [20]]
    assert all(sum(len(e.ids) for e in r) <= 21 for r in rows)


def test_topk_mapping_stops_where_tokenizations_diverge(tiny_model):
    tok = load_lm(str(tiny_model)).tokenizer
    comp = tok("the team won", add_special_tokens=False)["input_ids"]
    won = tok("won", add_special_tokens=False)["input_ids"]
    assert won == [tok.unk_token_id]  # "won" is not in the tiny vocabulary
    entries = [
        {"token": " the", "logprob": -0.1, "top": [{"token": " the", "logprob": -0.1}, {"token": " a", "logprob": -2.5},
                                                   {"token": " zzz qq", "logprob": -4.0}]},
        {"token": " team", "logprob": -0.3, "top": [{"token": " star", "logprob": -1.5}]},
        {"token": " match", "logprob": -0.2, "top": []},  # not the student's third token: KD stops here
    ]
    out = topk_for_completion(tok, comp, entries)
    the, a, team, star = (tok.convert_tokens_to_ids(w) for w in ("the", "a", "team", "star"))
    assert out[0] == ([the, a], [-0.1, -2.5])  # the two-token alternative is dropped (its mass -> tail)
    assert out[1] == ([star, team], [-1.5, -0.3])  # the chosen token is added when not among the top
    assert out[2] is None


def test_collate_topk_padding_ids_are_distinct(tiny_model):
    ex = [Example(ids=[2, 3, 4, 5], n_prompt=2, topk=[([9, 0], [-0.5, -1.5]), ([7], [-0.1])])]
    b = collate(ex, 0, torch.device("cpu"), with_topk=True)
    # Position 1 predicts completion token 0 (id 4), position 2 predicts token 1 (id 5).
    assert b.topk_mask.tolist() == [[-100, 4, 5]]
    assert b.topk_ids[0, 1].tolist() == [9, 0] and b.topk_ids[0, 2, 0] == 7 and b.topk_ids[0, 2, 1] != 7
    assert b.topk_lp[0, 2, 1] == float("-inf")


@pytest.mark.parametrize("pack", [False, True])
def test_collate_counts_targets_on_the_host_as_the_device_tensors_say(pack):
    """``Batch.counts`` comes from collate's host tensors (no device wait in a step) and equals
    what the device tensors hold: cross-entropy, token KD and top-k positions, label rows."""
    ex = _examples(50, [7, 12, 5, 9, 16, 3])
    ex[1].kd_only = True
    ex[2].teacher_logprobs = [-0.1, -2.4]
    ex[3].topk = [([4, 9], [-0.2, -1.7])] + [None] * (len(ex[3].ids) - ex[3].n_prompt - 1)
    b = collate(ex, 0, torch.device("cpu"), pack=pack, max_length=32, with_topk=True)
    want = {"ce": int((b.ce_targets != -100).sum()), "kd": int((b.kd_targets != -100).sum()),
            "topk": int((b.topk_mask != -100).sum()), "labels": len(b.label_pos)}
    assert b.n_targets == want == b.counts()
    assert want["ce"] > 0 and want["kd"] == len(ex[1].ids) - ex[1].n_prompt and want["topk"] == 1


def _reference_collate(ex, pad):
    """What collate gives, built the plain way: one right-padded row per example."""
    B, T = len(ex), max(len(e.ids) for e in ex)
    ids = torch.full((B, T), pad)
    mask, pos = torch.zeros((B, T), dtype=torch.long), torch.zeros((B, T), dtype=torch.long)
    ce = torch.full((B, T), -100)
    for b, e in enumerate(ex):
        n = len(e.ids)
        ids[b, :n], mask[b, :n], pos[b, :n] = torch.tensor(e.ids), 1, torch.arange(n)
        ce[b, e.n_prompt : n] = torch.tensor(e.ids[e.n_prompt :])
    return ids, mask, pos, ce[:, 1:]


def test_collate_builds_the_plain_padded_tensors():
    """collate's one host buffer holds what separate right-padded tensors held, as long tensors."""
    ex = _examples(50, [7, 12, 5, 9, 16, 3])
    b = collate(ex, 1, torch.device("cpu"))
    ids, mask, pos, ce = _reference_collate(ex, 1)
    for got, want in ((b.ids, ids), (b.attention_mask, mask), (b.position_ids, pos), (b.ce_targets, ce),
                      (b.kd_targets, torch.full_like(ce, -100))):
        assert torch.equal(got, want) and got.dtype == torch.long


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pack", [False, True])
def test_gpu_collate_copies_to_the_device_without_waiting_for_it(pack):
    """On a GPU the batch goes over in one copy from pinned memory, which does not wait for the
    stream (a pageable copy does, idling the GPU while the host launches the step): no
    synchronising call under torch's sync debug mode, and the same tensors as on the CPU."""
    ex = _examples(50, [700, 1200, 500, 900, 1024, 300])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        b = collate(ex, 0, torch.device("cuda"), pack=pack, max_length=2048)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    c = collate(ex, 0, torch.device("cpu"), pack=pack, max_length=2048)
    for f in ("ids", "position_ids", "ce_targets", "kd_targets") + (() if pack else ("attention_mask",)):
        assert getattr(b, f).is_cuda and torch.equal(getattr(b, f).cpu(), getattr(c, f)), f
    assert b.n_targets == c.n_targets


def test_examples_never_exceed_max_length(tiny_model):
    """``student.max_length`` caps prompt + completion: a long prompt loses its start; a completion
    longer than the cap keeps its start and one prompt token before it (which predicts its first)."""
    from potstill.config import TaskConfig
    from potstill.records import Record
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.batching import build_examples

    lm = load_lm(str(tiny_model), device="cpu")
    task = get_task(TaskConfig(type="freetext", instruction="Continue."))
    fmt = student_format(lm, task)
    vocab = "team match goal win phone software internet computer market shares bank profit film award".split()
    words = " ".join(vocab[(i * 7) % len(vocab)] + (" the" if i % 3 else "") for i in range(150))  # varied ids
    recs = [Record(messages=[{"role": "user", "content": p}], output=o, valid=True)
            for p, o in ((words, "short answer"), ("short prompt", words), (words, words), ("hi", "yes"))]
    full = build_examples(lm, fmt, task, recs, 10_000)
    cut = build_examples(lm, fmt, task, recs, 48)
    for f, c in zip(full, cut):
        f_completion, c_completion = f.ids[f.n_prompt:], c.ids[c.n_prompt:]
        assert len(c.ids) <= 48 and c.n_prompt >= 1
        assert c.ids[: c.n_prompt] == f.ids[f.n_prompt - c.n_prompt : f.n_prompt]  # the prompt's end
        assert c_completion == f_completion[: len(c_completion)]  # the completion's start
    assert len(full[0].ids) > 48 and cut[0].ids[cut[0].n_prompt:] == full[0].ids[full[0].n_prompt:]  # kept whole
    assert len(full[1].ids[full[1].n_prompt:]) > 48 and cut[1].n_prompt == 1 and len(cut[1].ids) == 48
    assert cut[3].ids == full[3].ids  # short pairs are untouched


def test_label_probs_over_other_labels_are_refused_not_made_uniform(tiny_model):
    """A record whose label_probs name labels that are not task.labels ("Sports" for "sports") lost
    that mass: with no overlap at all every label got log(1e-12), a uniform teacher after the loss
    renormalises; with a partial one the rest was renormalised. Both are one line naming the record;
    labels left out of label_probs are probability 0, as a sparse soft label means."""
    from potstill.config import TaskConfig
    from potstill.errors import PotstillError
    from potstill.records import Record
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.batching import build_examples

    lm = load_lm(str(tiny_model), device="cpu")
    task = get_task(TaskConfig(type="classification", labels=["sports", "tech", "politics"]))
    fmt = student_format(lm, task)

    def rec(i, probs):
        return Record(id=f"r{i}", messages=[{"role": "user", "content": "the team won"}], output="sports",
                      label_probs=probs, valid=True)

    good = [rec(0, {"sports": 0.8, "tech": 0.2, "politics": 0.0}), rec(1, {"sports": 1.0})]
    ex = build_examples(lm, fmt, task, good, 64)
    assert [round(math.exp(x), 6) for x in ex[1].teacher_logprobs] == [1.0, 0.0, 0.0]
    for probs, named in [({"Sports": 0.9, "Tech": 0.1}, "Sports, Tech"), ({"sports": 0.5, "Tech": 0.5}, "Tech"),
                         ({"sports": 0.0, "tech": 0.0}, "no probability")]:
        with pytest.raises(PotstillError) as e:
            build_examples(lm, fmt, task, good + [rec(2, probs), rec(3, probs)], 64)
        msg = str(e.value)
        assert "\n" not in msg and "2 of 4 records" in msg and "r2" in msg and named in msg, msg
        assert "sports, tech, politics" in msg, msg
