"""Training attention without a materialised mask gives the stock sdpa results at every real position."""

import json

import pytest
import torch

from potstill.models.attention_switch import register
from potstill.models.loading import load_lm
from potstill.models.scoring import decoder
from potstill.train import attention as A
from potstill.train.batching import Example, collate
from potstill.train.loss_module import LossModule, LossSpec, fused_head_ok, hidden_states


def _examples(vocab: int, lengths: list[int], seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    return [Example(ids=torch.randint(5, vocab, (n,), generator=g).tolist(), n_prompt=max(1, n // 2)) for n in lengths]


def _stock_hidden(model, b):
    """transformers' own sdpa path, fed the batch as collated (2D padding mask or packed positions)."""
    assert model.config._attn_implementation == "sdpa"
    return decoder(model)(input_ids=b.ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                          use_cache=False).last_hidden_state


@pytest.mark.parametrize("pack", [False, True])
def test_hidden_states_and_gradients_match_stock_sdpa(tiny_model, pack):
    lm = load_lm(str(tiny_model))
    model = lm.model.train()  # dropout is 0 in the tiny config; train() is what the trainer runs
    assert A.supported(model) and model.config.num_key_value_heads < model.config.num_attention_heads
    ex = _examples(model.config.vocab_size, [7, 12, 5, 9, 16, 3])
    b = collate(ex, lm.tokenizer.pad_token_id, lm.device, pack=pack, max_length=32)
    real = b.attention_mask.bool() if b.attention_mask is not None else torch.ones_like(b.ids, dtype=torch.bool)
    if pack:
        assert b.ids.shape[0] < len(ex)
    else:  # rows of several lengths, so real padding is in play
        assert not real.all()

    def run(fn):
        model.zero_grad(set_to_none=True)
        h = fn()
        (h[real].float() ** 2).mean().backward()
        return h[real].detach(), [p.grad.clone() for p in model.parameters()]

    h_ours, g_ours = run(lambda: hidden_states(model, decoder(model), b))
    h_ref, g_ref = run(lambda: _stock_hidden(model, b))
    torch.testing.assert_close(h_ours, h_ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"  # restored after the forward


def test_no_mask_reaches_attention_when_compiled(tiny_model, monkeypatch):
    """Under torch.compile, static or with dynamic shapes, in one graph: the attention function gets
    no mask for right-padded rows and the grouped key/value heads are not copied out; packed rows
    get their block-diagonal mask."""
    from transformers import AttentionInterface

    lm = load_lm(str(tiny_model))
    model = lm.model
    seen = []

    def spy(module, query, key, value, attention_mask, **kw):
        seen.append((attention_mask is None, key.shape[1], query.shape[1]))
        return A._attention(module, query, key, value, attention_mask, **kw)

    register(A.NAME, A._attention)
    monkeypatch.setitem(AttentionInterface._global_mapping, A.NAME, spy)
    pad = lm.tokenizer.pad_token_id
    n_layers = model.config.num_hidden_layers
    vocab = model.config.vocab_size
    for dynamic in (False, True):
        torch._dynamo.reset()
        body = torch.compile(decoder(model), backend="eager", fullgraph=True, dynamic=dynamic)
        with torch.no_grad():
            for lengths in ([7, 12, 5], [9, 3, 15, 4]):  # a second shape: a recompile, not a graph break
                seen.clear()
                hidden_states(model, body, collate(_examples(vocab, lengths), pad, lm.device))
                assert seen == [(True, 2, 4)] * n_layers
                seen.clear()
                hidden_states(model, body, collate(_examples(vocab, lengths), pad, lm.device, pack=True,
                                                   max_length=32))
                assert seen == [(False, 2, 4)] * n_layers


def test_block_causal_mask():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    m = A.block_causal_mask(pos)[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]])
    assert torch.equal(m, expected)


def test_unsupported_models_keep_their_attention_and_inputs(tiny_model, tmp_path):
    lm = load_lm(str(tiny_model))
    model = lm.model
    model.set_attn_implementation("eager")
    assert not A.supported(model)
    b = collate(_examples(model.config.vocab_size, [7, 12]), lm.tokenizer.pad_token_id, lm.device)
    kw = A.decoder_inputs(model, b.attention_mask, b.position_ids, packed=False)
    assert kw["attention_mask"] is b.attention_mask and kw["position_ids"] is b.position_ids
    with A.causal_attention(model) as used:
        assert not used and model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    model.config.sliding_window, model.config.use_sliding_window = 4, True
    assert not A.supported(model)
    model.config.use_sliding_window = False  # qwen2-style: a window size that is switched off
    assert A.supported(model)
    # The switch is for the training forward only: nothing of it reaches a saved config.
    with A.causal_attention(model):
        model.save_pretrained(tmp_path / "m")
    assert A.NAME not in (tmp_path / "m" / "config.json").read_text()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"


def test_loss_module_unchanged_on_padded_batches(tiny_model):
    """The trainer's loss sums through the new path equal the stock path's (the CE term), in fp32
    (on a GPU the model would otherwise load in bf16, where the two paths round apart)."""
    lm = load_lm(str(tiny_model), dtype=torch.float32)
    module = LossModule(lm.model, lm.model)
    spec = LossSpec("forward_kl", 0.5, 0.1, 1.0, None, fused_head_ok(lm.model))
    b = collate(_examples(lm.model.config.vocab_size, [4, 9, 13]), lm.tokenizer.pad_token_id, lm.device)
    with torch.no_grad():
        ours = module(b, spec)["ce"]
        lm.model.set_attn_implementation("eager")  # unsupported: the collated mask as before
        ref = module(b, spec)["ce"]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _tiny_family(kind: str):
    import transformers as T

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    cfg = {
        "qwen2": lambda: T.Qwen2Config(**common, use_sliding_window=False, sliding_window=16),
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=8),
        "mistral": lambda: T.MistralConfig(**common, sliding_window=None),
        "gemma": lambda: T.GemmaConfig(**common, head_dim=8),
        "mistral_window": lambda: T.MistralConfig(**common, sliding_window=4),
        "gemma3": lambda: T.Gemma3TextConfig(**common, head_dim=8, sliding_window=4),
    }[kind]()
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).train()


@pytest.mark.parametrize("kind,used", [("qwen2", True), ("qwen3", True), ("mistral", True), ("gemma", True),
                                       ("mistral_window", False), ("gemma3", False)])
def test_other_families(kind, used):
    """Other decoder families: the mask-free path where it fits (same hidden states and gradients
    as stock sdpa on right-padded rows), the stock path for sliding windows (mistral's, and gemma 3's
    alternating layers)."""
    model = _tiny_family(kind)
    assert A.supported(model) is used
    g = torch.Generator().manual_seed(1)
    ex = [Example(ids=torch.randint(3, 64, (n,), generator=g).tolist(), n_prompt=2) for n in (9, 4, 13)]
    b = collate(ex, 0, torch.device("cpu"))
    real = b.attention_mask.bool()

    def run(fn):
        model.zero_grad(set_to_none=True)
        h = fn()
        (h[real] ** 2).mean().backward()
        return h[real].detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    h_ours, g_ours = run(lambda: hidden_states(model, decoder(model), b))
    h_ref, g_ref = run(lambda: decoder(model)(input_ids=b.ids, attention_mask=b.attention_mask,
                                              position_ids=b.position_ids, use_cache=False).last_hidden_state)
    torch.testing.assert_close(h_ours, h_ref, rtol=1e-5, atol=1e-5)
    assert len(g_ours) == len(g_ref) > 0
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)
