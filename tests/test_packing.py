"""Packed scoring batches (``potstill.models.packing``): the same hidden states as each query run
alone after its prefix, on every decoder family that allows it, and the padded path elsewhere."""

import pytest
import torch

from potstill.engines import load_engine
from potstill.models import packing
from potstill.models.prompting import PromptFormat, label_token_ids
from potstill.models.scoring import decoder

LENGTHS = (9, 4, 13, 1)


def _family(kind: str):
    import transformers as T

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    cfg = {
        "llama": lambda: T.LlamaConfig(**common),
        "qwen2": lambda: T.Qwen2Config(**common, use_sliding_window=False, sliding_window=16),
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=8),
        "mistral": lambda: T.MistralConfig(**common, sliding_window=None),
        "gemma": lambda: T.GemmaConfig(**common, head_dim=8),
        "gemma3": lambda: T.Gemma3TextConfig(**common, head_dim=8, sliding_window=64),
        "gemma3_short_window": lambda: T.Gemma3TextConfig(**common, head_dim=8, sliding_window=8),
        "mistral_window": lambda: T.MistralConfig(**common, sliding_window=8),
        "qwen2_window": lambda: T.Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=1),
        "eager": lambda: T.LlamaConfig(**{**common, "attn_implementation": "eager"}),
    }[kind]()
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("kind,used", [("llama", True), ("qwen2", True), ("qwen3", True), ("mistral", True),
                                       ("gemma", True), ("gemma3", True), ("gemma3_short_window", True),
                                       ("mistral_window", True), ("qwen2_window", True), ("eager", False)])
@pytest.mark.parametrize("prefix_length", [0, 6, 20])
def test_packed_hidden_states_are_each_query_run_alone(kind, used, prefix_length):
    """Queries of 9, 4, 13 and 1 tokens packed after a cached prefix (or none) give each query the
    hidden states of a plain forward of prefix + query, sliding windows of 8 tokens included (the
    20-token prefix is cut to its last 7 keys in those layers' cache, the 13-token query outgrows
    the window); a model packing does not fit (eager attention) is refused."""
    model = _family(kind)
    span = prefix_length + max(LENGTHS)
    assert packing.supported(model, span) is used
    if not used:
        return
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 64, (prefix_length,), generator=g).tolist()
    queries = [torch.randint(3, 64, (n,), generator=g).tolist() for n in LENGTHS]
    body = decoder(model)
    with torch.inference_mode():
        keys = None
        if prefix:
            out = body(input_ids=torch.tensor([prefix]), use_cache=True)
            keys = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        hidden, lay = packing.forward(body, model, queries, keys, prefix_length, "cpu")
        assert (prefix_length + lay.gather.shape[1]) % 8 == 0  # keys aligned: one compiled graph on a GPU
        assert model.config._attn_implementation == "sdpa"  # switched for the packed forward only
        assert hidden.shape[0] == sum(LENGTHS)
        for b, q in enumerate(queries):
            alone = body(input_ids=torch.tensor([prefix + q]), use_cache=False).last_hidden_state[0, prefix_length:]
            torch.testing.assert_close(hidden[lay.segment == b], alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(hidden[lay.ends[b]], alone[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gemma3_short_window"])
def test_packed_queries_under_stacked_prefixes_are_each_run_alone(kind):
    """Three prefixes of one length stacked as rows (a teacher's shot orders) and the queries
    repeated under each, prefix-major: query row b reads prefix row b // 4, as a plain forward of
    that prefix + query does."""
    model = _family(kind)
    g = torch.Generator().manual_seed(2)
    prefixes = [torch.randint(3, 64, (20,), generator=g).tolist() for _ in range(3)]
    queries = [torch.randint(3, 64, (n,), generator=g).tolist() for n in LENGTHS]
    body = decoder(model)
    with torch.inference_mode():
        caches = [body(input_ids=torch.tensor([p]), use_cache=True).past_key_values for p in prefixes]
        keys = [(torch.cat([c.layers[i].keys for c in caches]), torch.cat([c.layers[i].values for c in caches]))
                for i in range(len(caches[0].layers))]
        assert packing.supported(model, 20 + max(LENGTHS))
        hidden, lay = packing.forward(body, model, [q for _ in prefixes for q in queries], keys, 20, "cpu")
        for r, p in enumerate(prefixes):
            for j, q in enumerate(queries):
                alone = body(input_ids=torch.tensor([p + q]), use_cache=False).last_hidden_state[0, 20:]
                torch.testing.assert_close(hidden[lay.segment == r * len(queries) + j], alone, rtol=1e-5, atol=1e-5)


CHAT = PromptFormat(kind="chat", instruction="classify the text as sports tech or politics")
MSGS = [[{"role": "user", "content": t}] for t in
        ["the team won", "new phone software for the computer and the internet", "a vote",
         "the minister said the party will win the election this year", "goal"]]
LABELS = ["sports", "tech", "politics"]


def test_engine_packs_batches_and_scores_as_padded(tiny_model):
    """Through the engine: packed batches give the padded path's label logits and embeddings, with
    the chat's system turn cached and without it."""
    eng = load_engine("transformers", str(tiny_model), device="cpu")
    ids = label_token_ids(eng.tokenizer, CHAT, LABELS)
    for reuse in (True, False):
        eng.reuse_prefix = reuse
        eng.pack = True
        packed = eng.score_labels(CHAT, MSGS, ids, batch_size=4)
        eng.pack = False
        padded = eng.score_labels(CHAT, MSGS, ids, batch_size=4)
        torch.testing.assert_close(packed.logits, padded.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed.embeddings, padded.embeddings, rtol=1e-5, atol=1e-5)
        assert packed.prompt_tokens == padded.prompt_tokens


def test_compiled_engine_packs_and_still_runs_padded_calls(tiny_model):
    """Under ``torch.compile`` the packed and the padded forward are two graphs, each right: switching
    the attention for the packed one does not leak into the other."""
    eager = load_engine("transformers", str(tiny_model), device="cpu")
    compiled = load_engine("transformers", str(tiny_model), device="cpu", compile=True)
    ids = label_token_ids(eager.tokenizer, CHAT, LABELS)
    want = eager.score_labels(CHAT, MSGS, ids, batch_size=4)
    for pack in (True, False, True):
        compiled.pack = pack
        got = compiled.score_labels(CHAT, MSGS, ids, batch_size=4)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.embeddings, want.embeddings, rtol=1e-4, atol=1e-4)
