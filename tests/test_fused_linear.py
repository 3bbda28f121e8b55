"""Sibling projections fused into one product (``potstill.models.fused_linear``): the same logits and
greedy tokens as the model before, with and without biases (Llama, Qwen2), traced by dynamo in one
graph, and a projection called on another input than its first sibling's still gives its own product."""

import copy

import pytest
import torch
from torch import nn

from potstill.engines import load_engine
from potstill.models.fused_linear import FusedLinear, Part, fuse_projections
from potstill.models.prompting import PromptFormat
from tests.helpers.tiny import make_model_dir, make_tokenizer

MSGS = [[{"role": "user", "content": t}] for t in ["the team won the match", "a vote", "new phone software"]]
CHAT = PromptFormat(kind="chat", instruction="name the topic of the text")


def _qwen2_dir(path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # biases away from their zero init, so that a wrong slice shows
        for layer in model.model.layers:
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.normal_()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_projections_give_the_models_logits_and_greedy_tokens(kind, tmp_path):
    path = make_model_dir(tmp_path) if kind == "llama" else _qwen2_dir(tmp_path)
    engine = load_engine("transformers", str(path), device="cpu")
    model = engine.lm.model
    plain = copy.deepcopy(model)
    want = engine.generate(CHAT, MSGS, 16, batch_size=2)
    params = engine.num_parameters
    ids = torch.randint(3, 50, (2, 11))
    with torch.no_grad():
        ref = plain(input_ids=ids).logits
    assert fuse_projections(model) == 2 * model.config.num_hidden_layers  # q/k/v and gate/up, each layer
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, Part) and isinstance(attn.fused_q_k_v, FusedLinear)
    assert attn.fused_q_k_v.bias is not None if kind == "qwen2" else attn.fused_q_k_v.bias is None
    assert torch.equal(attn.v_proj.weight, plain.model.layers[0].self_attn.v_proj.weight)
    assert engine.num_parameters == params  # the same weights, held once
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    g = engine.generate(CHAT, MSGS, 16, batch_size=2)
    assert (g.texts, g.tokens) == (want.texts, want.tokens)
    assert fuse_projections(model) == 0  # already fused: nothing left that is a plain nn.Linear


def test_a_part_called_on_another_input_computes_its_own_slice():
    torch.manual_seed(0)
    linears = [nn.Linear(8, n, bias=True) for n in (6, 4, 4)]
    fused = FusedLinear(linears)
    q, k, v = (Part(fused, i) for i in range(3))
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(q(x), linears[0](x), atol=1e-6)
        assert torch.allclose(k(y), linears[1](y), atol=1e-6)  # not q's input: its own product
        assert torch.allclose(v(x), linears[2](x), atol=1e-6)  # q's: the slice computed with it
        assert fused._out == () and fused._x is None  # nothing held after the last sibling
        assert torch.allclose(v(x), linears[2](x), atol=1e-6)  # alone, after the group ended


def test_a_fused_body_traces_as_one_graph(tmp_path):
    """Under ``torch.compile`` (dynamo, eager backend) the fused body has no graph break, and the
    slices a part hands its siblings are not left on the module."""
    engine = load_engine("transformers", str(make_model_dir(tmp_path)), device="cpu")
    model = engine.lm.model
    ids = torch.randint(3, 50, (1, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        fuse_projections(model)
        torch._dynamo.reset()
        body = torch.compile(model.model, backend="eager", fullgraph=True)
        h = body(input_ids=ids).last_hidden_state
    torch.testing.assert_close(model.lm_head(h), ref, rtol=1e-5, atol=1e-5)
    assert all(m._x is None and m._out == () for m in model.modules() if isinstance(m, FusedLinear))
