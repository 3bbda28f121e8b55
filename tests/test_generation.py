"""Generation with the prompt's fixed start cached (``potstill.models.generation.generate``) and, for a
single greedy prompt, drafts from the context checked in one forward (``greedy_lookup``): the
tokens transformers' own ``generate`` gives for the whole prompt, on a plain model, on one whose
sliding window (8 tokens) is shorter than the cached prefix (prompts then run one at a time), and
on one whose window (96) holds every prompt and its answer (batches padded after the prefix)."""

import pytest
import torch

from potstill.engines import load_engine
from potstill.models.prompting import PromptFormat, encode_prompt
from potstill.models.generation import draft_from_context, generate
from tests.helpers.tiny import make_lively_model_dir, make_model_dir, make_tokenizer

# A prefix's KV cache goes in by the name the model's forward takes (``scoring.cache_kw``): the
# old one (past_key_values) warned on every call under transformers 5.2x.
pytestmark = pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")

TEXTS = ["the team won the match", "new phone software for the computer and the internet", "a vote",
         "the bank said profit was up this year and shares were up"]
MSGS = [[{"role": "user", "content": t}] for t in TEXTS]
CHAT = PromptFormat(kind="chat", instruction="name the topic of the text")
SHOTS = PromptFormat(kind="completion", instruction="name the topic of the text",
                     shots=[("the film won an award", "entertainment"), ("the minister said the election", "politics"),
                            ("the star of the music game", "entertainment")])


def _windowed_dir(path, window):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=window,
                           max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=None)
    Gemma3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "gemma3_window8", "gemma3_window96"])
def engine(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    path = make_model_dir(path) if request.param == "llama" else _windowed_dir(path, int(request.param[13:]))
    return load_engine("transformers", str(path), device="cpu")


def _count_forwards(model):
    """The number of tokens fed to each forward of ``model`` (a hook: replacing ``forward`` would
    change what ``generate`` passes it)."""
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    return calls, hook


def test_draft_is_what_followed_the_latest_match_of_the_longest_tail():
    assert draft_from_context([5, 6, 7, 8, 1, 5, 6, 7, 9, 5, 6, 7], 2) == [9, 5]  # the 3-gram's latest earlier match
    assert draft_from_context([5, 6, 7, 8, 1, 2, 7], 3) == [8, 1, 2]  # only the last token matches
    assert draft_from_context([1, 2, 3], 4) == []
    assert draft_from_context([4, 4], 4) == [4]


@pytest.mark.parametrize("fmt", [CHAT, SHOTS], ids=["chat_system_turn", "few_shot_prefix"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_generation_with_the_cached_prefix_gives_transformers_greedy_tokens(engine, fmt, batch_size):
    """At batch 1 through ``greedy_lookup`` (drafts of 2), in batches through ``model.generate``
    with the prefix cache copied per row (one at a time on the windowed model): each prompt's text
    and token count are those of a plain greedy ``generate`` over the whole prompt."""
    prefix = engine.prefix(fmt)
    assert prefix is not None and prefix.length > 8  # longer than the small window: its cache is cut there
    ref = _reference(engine, fmt, MSGS, 24)
    calls, hook = _count_forwards(engine.lm.model)
    try:
        g = engine.generate(fmt, MSGS, 24, batch_size=batch_size)
    finally:
        hook.remove()
    assert [(t, n) for t, n in zip(g.texts, g.output_tokens)] == ref
    whole = [len(encode_prompt(engine.tokenizer, fmt, fmt.prefix() + fmt.query(engine.tokenizer, m), first=True))
             for m in MSGS]
    assert g.prompt_tokens == whole
    # The cached prefix is never fed again: the longest forward is the longest prompt's own part.
    assert max(calls) == max(whole) - prefix.length


def test_drafts_save_forwards_and_keep_the_tokens(engine):
    """A tiny random model repeats itself, so drafts from the context are often right: fewer forwards
    than with drafts off, and the same tokens; none where prompt and answer could outgrow a
    sliding window (8 tokens), whose layers could not take a rejected draft back."""
    tok = engine.tokenizer
    model = engine.lm.model
    calls, hook = _count_forwards(model)
    try:
        engine.draft_tokens = 0
        plain = engine.generate(CHAT, MSGS, 32, batch_size=1)
        plain_calls = len(calls)
        calls.clear()
        engine.draft_tokens = 4
        drafted = engine.generate(CHAT, MSGS, 32, batch_size=1)
    finally:
        hook.remove()
        engine.draft_tokens = 2
    assert drafted.texts == plain.texts and drafted.output_tokens == plain.output_tokens
    assert drafted.mean_logprob == pytest.approx(plain.mean_logprob, abs=1e-4)
    if getattr(model.config, "sliding_window", None) == 8:
        assert max(calls) == max(len(encode_prompt(tok, CHAT, CHAT.query(tok, m), first=True)) for m in MSGS) - \
            engine.prefix(CHAT).length and len(calls) == plain_calls
    else:
        assert len(calls) < plain_calls and max(calls) >= 2


@pytest.mark.parametrize("batch_size", [1, 3])
def test_stop_strings_and_the_token_budget_hold(engine, batch_size):
    ref = _reference(engine, CHAT, MSGS, 12)
    g = engine.generate(CHAT, MSGS, 12, batch_size=batch_size)
    assert all(n <= 12 for n in g.output_tokens)
    assert [t for t, _ in ref] == g.texts
    word = next((t.split()[1] for t in g.texts if len(t.split()) > 2), None)
    assert word is not None  # the tiny models all ramble
    cut = engine.generate(CHAT, MSGS, 12, batch_size=batch_size, stop=[word])
    assert any(word in full for full in g.texts)
    for full, short in zip(g.texts, cut.texts):
        assert short == (full[: full.index(word) + len(word)] if word in full else full)


def test_a_prompt_that_does_not_start_with_the_prefix_runs_whole(engine):
    """A completion prompt whose first tokens merge across the prefix's end runs without the cache:
    simulated by a prefix cache built for other ids."""
    lm = engine.lm
    prefix = engine.prefix(CHAT)
    wrong = type(prefix)(ids=[t + 1 for t in prefix.ids], past=prefix.past, length=prefix.length)
    a = generate(lm, CHAT, MSGS, 10, batch_size=2, prefix=wrong)
    b = generate(lm, CHAT, MSGS, 10, batch_size=2, prefix=None)
    assert a.texts == b.texts


def test_wrong_drafts_are_taken_back(engine, monkeypatch):
    """Drafts of random tokens, nearly all rejected: the cache drops each rejected draft's keys,
    so the tokens are still transformers' greedy ones."""
    from potstill.models import generation

    g = torch.Generator().manual_seed(0)
    vocab = engine.lm.model.config.vocab_size
    monkeypatch.setattr(generation, "draft_from_context",
                        lambda seq, k, max_ngram=3: torch.randint(0, vocab, (k,), generator=g).tolist())
    calls, hook = _count_forwards(engine.lm.model)
    try:
        out = engine.generate(SHOTS, MSGS, 16, batch_size=1)
    finally:
        hook.remove()
    assert list(zip(out.texts, out.output_tokens)) == _reference(engine, SHOTS, MSGS, 16)
    if getattr(engine.lm.model.config, "sliding_window", None) != 8:
        assert calls.count(engine.draft_tokens + 1) >= len(MSGS)  # rounds checking a whole draft


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["llama", "gemma3_window96"])
def test_generation_with_the_cached_prefix_on_a_gpu(kind, tmp_path):
    """The same on CUDA (float32, so that one token at a time and a checked draft round alike):
    batch 1 with drafts, and batches padded after the prefix."""
    path = make_model_dir(tmp_path) if kind == "llama" else _windowed_dir(tmp_path, 96)
    engine = load_engine("transformers", str(path), device="cuda", dtype="float32")
    assert engine.lm.device.type == "cuda"
    for fmt in (CHAT, SHOTS):
        ref = _reference(engine, fmt, MSGS, 24)
        for batch_size in (1, 3):
            g = engine.generate(fmt, MSGS, 24, batch_size=batch_size)
            assert list(zip(g.texts, g.output_tokens)) == ref


def test_static_caches_reuse_a_longer_one_and_once_frozen_make_only_those_that_compile_nothing(tmp_path):
    """A batch takes the shortest cache of its rows that holds it. Frozen (a warmed server), a new
    cache is made only where the step runs it without compiling: an uncompiled step, or a compiled
    one that builds its own mask (sdpa, eager: any length); under another attention kernel none is
    (it would compile while a client waits) and generation runs on the dynamic cache, with the same
    greedy tokens."""
    from potstill.models.static_decode import StaticCaches

    engine = load_engine("transformers", str(make_model_dir(tmp_path)), device="cpu")
    static = StaticCaches.for_model(engine.lm.model)
    a = static.get(1, 256)
    assert static.get(1, 256) is a and static.get(2, 256) is not a
    b = static.get(1, 1024)
    assert static.get(1, 512) is b and static.get(1, 256) is a  # the shortest that holds it
    static.frozen = True
    assert static.get(1, 512) is b and static.get(1, 2048) is not None
    assert sorted(static._caches) == [(1, 256), (1, 1024), (1, 2048), (2, 256)]
    compiled = StaticCaches.for_model(engine.lm.model, compile=True)
    assert compiled.mask_kind == "bool" and compiled.any_length
    compiled.frozen = True
    assert compiled.get(2, 4096) is not None
    want = engine.generate(CHAT, MSGS, 12, batch_size=3)
    empty = StaticCaches.for_model(engine.lm.model, compile=True)
    empty.mask_kind = None  # as under flash attention: transformers builds the mask, a length is an int
    empty.frozen = True
    assert not empty.any_length and empty.get(1, 256) is None
    engine.static = empty
    for batch_size in (1, 3):
        got = engine.generate(CHAT, MSGS, 12, batch_size=batch_size)
        assert (got.texts, got.tokens) == (want.texts, want.tokens)
    assert not empty._caches


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["llama", "gemma3_window96"])
def test_compiled_generation_on_a_gpu_decodes_on_static_caches(kind, tmp_path):
    """A compiled engine on CUDA (float32) gets static caches and fused projections: generation runs through
    transformers' CUDA-graphed step with the plain engine's greedy tokens, at batch 1, in a
    batch of 3 (filled to 4) and in batches of 2; the windowed model gets none and keeps the dynamic cache."""
    path = make_model_dir(tmp_path) if kind == "llama" else _windowed_dir(tmp_path, 96)
    plain = load_engine("transformers", str(path), device="cuda", dtype="float32")
    engine = load_engine("transformers", str(path), device="cuda", dtype="float32", compile=True)
    assert plain.static is None
    assert (engine.static is not None) == (kind == "llama")  # compile on CUDA switches them on
    assert engine.identity.endswith("+fused+compiled")  # and fuses q/k/v and gate/up (models.fused_linear)
    for fmt in (CHAT, SHOTS):
        ref = _reference(plain, fmt, MSGS, 24)
        for batch_size in (1, 3, 2):  # 4 rows, then 2 on the same graph (rows are dynamic)
            g = engine.generate(fmt, MSGS, 24, batch_size=batch_size)
            assert list(zip(g.texts, g.output_tokens)) == ref
    if engine.static is not None:
        assert sorted(engine.static._caches) == [(1, 256), (2, 256), (4, 256)]
    # The prefill's embeddings (what a server routes on) are embed's, and asking compiles nothing more.
    from torch._dynamo.utils import counters

    want = plain.embed(CHAT, MSGS)
    before = counters["stats"]["unique_graphs"]
    for batch_size in (1, 3):
        g = engine.generate(CHAT, MSGS, 24, batch_size=batch_size, embed=True)
        assert torch.allclose(g.embeddings, want, atol=1e-4), (g.embeddings - want).abs().max()
    assert counters["stats"]["unique_graphs"] == before
    # serve's logprobs (token_logprobs) on the compiled, fused engine: the plain engine's numbers for
    # the tokens it generated, each greedy token the likeliest, and no graph compiled while a client waits.
    from potstill.models.generation import token_logprobs

    tok = plain.tokenizer
    g = engine.generate(CHAT, MSGS, 24, batch_size=1)
    for m, toks in zip(MSGS, g.tokens):
        prompt = encode_prompt(tok, CHAT, CHAT.prefix() + CHAT.query(tok, m), first=True)
        got, ref = token_logprobs(engine.lm, prompt, toks, 3), token_logprobs(plain.lm, prompt, toks, 3)
        assert len(got) == len(toks) > 0
        for (lp, best), (lp_ref, best_ref), t in zip(got, ref, toks):
            assert lp == pytest.approx(lp_ref, abs=1e-4) and best[0][0] == t
            assert [b for b, _ in best] == [b for b, _ in best_ref]
    assert counters["stats"]["unique_graphs"] == before


def _reference(engine, fmt, msgs, max_new):
    """transformers' greedy ``generate`` over each whole prompt, one at a time, no cache given."""
    tok = engine.tokenizer
    out = []
    for m in msgs:
        ids = encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True)
        with torch.inference_mode():
            dev = engine.lm.device
            seq = engine.lm.model.generate(input_ids=torch.tensor([ids], device=dev), max_new_tokens=max_new,
                                           attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=dev),
                                           do_sample=False, pad_token_id=tok.pad_token_id)
        new = seq[0, len(ids):].tolist()
        n = next((j for j, t in enumerate(new) if t in (tok.eos_token_id, tok.pad_token_id)), len(new))
        out.append((tok.decode(new[:n], skip_special_tokens=True), n))
    return out


@pytest.mark.parametrize("fmt", [CHAT, SHOTS], ids=["chat_system_turn", "few_shot_prefix"])
def test_static_cache_generation_gives_the_same_tokens_and_reuses_its_caches(engine, fmt):
    """The static-cache path (``static_decode``: a reused static KV cache, rows bucketed to powers of
    two, the prefix's keys copied into each row) run eagerly on the CPU: transformers' greedy tokens for each
    prompt at batch 1 and in a batch of 3 (filled to 4); a second call reuses the same cache
    objects; a model with sliding-window layers keeps the dynamic cache."""
    from potstill.models.static_decode import StaticCaches

    static = StaticCaches.for_model(engine.lm.model)
    if "gemma3" in str(engine.lm.model.config.model_type):
        assert static is None
        return
    prefix = engine.prefix(fmt)
    ref = _reference(engine, fmt, MSGS, 24)
    dynamic = generate(engine.lm, fmt, MSGS, 24, batch_size=3, prefix=prefix)
    calls, hook = _count_forwards(engine.lm.model)
    try:
        for batch_size in (1, 3):
            g = generate(engine.lm, fmt, MSGS, 24, batch_size=batch_size, prefix=prefix, static=static)
            assert list(zip(g.texts, g.output_tokens)) == ref
            assert g.mean_logprob == pytest.approx(dynamic.mean_logprob, abs=1e-5)
    finally:
        hook.remove()
    whole = [len(encode_prompt(engine.tokenizer, fmt, fmt.prefix() + fmt.query(engine.tokenizer, m), first=True))
             for m in MSGS]
    assert max(calls) == max(whole) - prefix.length  # the prefix is copied, never fed
    caches = dict(static._caches)
    assert sorted(caches) == [(1, 256), (4, 256)]
    g = generate(engine.lm, fmt, MSGS, 24, batch_size=3, prefix=prefix, static=static)
    assert list(zip(g.texts, g.output_tokens)) == ref
    assert static._caches == caches and all(static._caches[k] is caches[k] for k in caches)


@pytest.mark.parametrize("graph_steps", [1, 8], ids=["step_by_step", "8_steps_a_call"])
def test_static_greedy_loop_keeps_stop_strings_and_the_budget_and_leaves_processors_to_generate(monkeypatch,
                                                                                                  tmp_path, graph_steps):
    """Greedy batches on static caches decode in ``static_decode.greedy``, not ``model.generate``:
    the dynamic path's texts, token ids, counts and log-probabilities with and without a stop string,
    at batch 1 and in a batch of 3, for budgets below and above ``CHECK_EVERY`` (and not multiples
    of it), a step at a time or 8 a call (``Steps``, as CUDA graphs run them: the steps past the
    budget dropped); a generation config whose greedy choice is not the argmax (a repetition
    penalty) keeps ``model.generate`` (and its tokens) on either cache."""
    from potstill.models.static_decode import CHECK_EVERY, StaticCaches

    engine = load_engine("transformers", str(make_lively_model_dir(tmp_path)), device="cpu")
    model = engine.lm.model
    static = StaticCaches.for_model(model, graph_steps=graph_steps)
    assert static is not None and not static.compiled  # compiled on CUDA only
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    full = engine.generate(CHAT, MSGS, 20, batch_size=3)
    assert len(set(full.output_tokens)) > 2  # rows end at different steps
    word = next(t.split()[1] for t in full.texts if len(t.split()) > 2)
    for budget in (CHECK_EVERY - 3, 20):
        for stop in ([], [word]):
            engine.static = None
            want = engine.generate(CHAT, MSGS, budget, batch_size=3, stop=stop)
            engine.static = static
            for batch_size in (1, 3):
                calls.clear()
                got = engine.generate(CHAT, MSGS, budget, batch_size=batch_size, stop=stop)
                assert not calls  # the loop, not model.generate
                assert (got.texts, got.tokens, got.output_tokens) == (want.texts, want.tokens, want.output_tokens)
                assert got.mean_logprob == pytest.approx(want.mean_logprob, abs=1e-5)
    assert any(word in t for t in want.texts) and any(n < 20 for n in want.output_tokens)
    assert len(static._steps) == (0 if graph_steps == 1 else len(static._caches))
    model.generation_config.repetition_penalty = 1.3
    try:
        want = _reference(engine, CHAT, MSGS, 20)  # model.generate over each whole prompt
        assert [t for t, _ in want] != full.texts  # the penalty changes the greedy tokens
        for engine.static in (None, static):  # the dynamic path's drafts give way to model.generate too
            calls.clear()
            got = engine.generate(CHAT, MSGS, 20, batch_size=1)
            assert len(calls) == len(MSGS) and list(zip(got.texts, got.output_tokens)) == want
    finally:
        model.generation_config.repetition_penalty = 1.0


@pytest.mark.parametrize("graph_steps", [1, 8], ids=["step_by_step", "8_steps_a_call"])
def test_the_compiled_greedy_step_compiles_once_per_row_bucket_whatever_the_prompt_lengths(tmp_path, graph_steps):
    """The decoding step compiled (as on CUDA; inductor without CUDA graphs here) meets prompts of
    five lengths at batch 1 (one past 256 positions with its answer), then batches of 3 (4 rows)
    and 2: two graphs (one row, and any rows), not one per prompt length (a slice's strides once
    made every length compile again: minutes on a GPU server), per cache length (transformers' mask
    takes it as an int) or per bucket of rows; and the eager step's tokens. The body is compiled
    too, as ``TransformersEngine.compile`` leaves it: 8 steps a call are recorded on the plain body,
    as ``greedy`` runs them (on the compiled one they compiled it for each bucket of rows)."""
    from torch._dynamo.utils import counters

    from potstill.models.static_decode import StaticCaches

    engine = load_engine("transformers", str(make_lively_model_dir(tmp_path)), device="cpu")
    msgs = MSGS + [[{"role": "user", "content": " ".join(["the match"] * 150)}]]
    want = engine.generate(CHAT, msgs, 20, batch_size=1)
    assert len({len(m[0]["content"]) for m in msgs}) == len(msgs)
    engine.compile()  # the body (static caches come with it on CUDA only)
    engine.static = StaticCaches.for_model(engine.lm.model, compile=True, graph_steps=graph_steps)
    torch._dynamo.reset()  # nothing compiled by an earlier test reused
    before = counters["stats"]["unique_graphs"]
    for batch_size in (1, 3, 2):
        got = engine.generate(CHAT, msgs, 20, batch_size=batch_size)
        assert (got.texts, got.tokens) == (want.texts, want.tokens)
    assert sorted(engine.static._caches) == [(1, 256), (1, 512), (2, 512), (4, 256)]
    assert counters["stats"]["unique_graphs"] - before == 2


def test_static_greedy_under_eager_attention_gives_the_same_tokens(tmp_path):
    """Under eager attention the step's own mask is additive (a boolean one would be added to the
    scores as 0 and 1): the dynamic cache's greedy tokens at batch 1 and in a batch of 3."""
    from potstill.models.static_decode import StaticCaches

    engine = load_engine("transformers", str(make_lively_model_dir(tmp_path)), device="cpu")
    engine.lm.model.set_attn_implementation("eager")
    want = engine.generate(CHAT, MSGS, 20, batch_size=1)
    engine.static = StaticCaches.for_model(engine.lm.model)
    assert engine.static.mask_kind == "float"
    for batch_size in (1, 3):
        got = engine.generate(CHAT, MSGS, 20, batch_size=batch_size)
        assert (got.texts, got.tokens) == (want.texts, want.tokens)


def test_a_template_without_a_special_turn_end_or_none_at_all_ends_turns_with_eos():
    from potstill.models.prompting import end_of_turn, stop_token_ids

    tok = make_tokenizer()  # ChatML: the turn end is <|im_end|>, also its EOS
    assert end_of_turn(tok) == "<|im_end|>"
    plain = make_tokenizer()
    plain.chat_template = None
    assert end_of_turn(plain) == plain.eos_token
    odd = make_tokenizer()
    odd.chat_template = "{{ raise_exception('no assistant turns here') }}"
    assert end_of_turn(odd) == odd.eos_token
    assert stop_token_ids(tok) == sorted({tok.eos_token_id, tok.pad_token_id})


@pytest.mark.slow
def test_generation_stops_at_the_templates_turn_end_when_eos_is_another_token():
    """Gemma's tokenizer says EOS is ``<eos>`` while its chat template closes a turn with
    ``<end_of_turn>``; Phi-3's and Llama 3 base's do the same. SmolLM2 (ChatML, real weights) with
    its EOS and pad set to ``<|endoftext|>`` plays that tokenizer: generation must still stop where
    the assistant's turn ends, at both batch paths (one prompt, drafts from the context; a batch, transformers' generate), and training completions end with the turn end."""
    from potstill.models.prompting import _TURN_END

    e = load_engine("transformers", "bundled:smollm2-135m-instruct", device="cpu", dtype="float32")
    fmt = PromptFormat(kind="chat", instruction="Answer with one word.")
    msgs = [[{"role": "user", "content": "What is the capital of France?"}],
            [{"role": "user", "content": "What is the opposite of up?"}],
            [{"role": "user", "content": "Name the largest planet."}]]
    want = e.generate(fmt, msgs, 32, batch_size=1)
    assert all(n < 32 for n in want.output_tokens), want.output_tokens  # they end by themselves
    tok = e.tokenizer
    tok.eos_token = tok.pad_token = "<|endoftext|>"
    e.lm.model.generation_config.eos_token_id = tok.eos_token_id
    e.lm.model.generation_config.pad_token_id = tok.pad_token_id
    _TURN_END.pop(tok, None)
    assert fmt.completion(tok, "Paris") == "Paris<|im_end|>"
    for bs in (1, 3):
        got = e.generate(fmt, msgs, 32, batch_size=bs)
        assert got.texts == want.texts and got.output_tokens == want.output_tokens, (bs, got.texts, got.output_tokens)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generation_pools_each_prompts_embedding_from_its_prefill(engine, batch_size):
    """``generate(embed=True)``: each prompt's embedding from the forward generation runs anyway
    (the prefill of its own tokens after the cached system turn, with the turn's kept sum), equal to
    ``embed``'s forward over the whole prompt, through ``greedy_lookup`` at batch 1 and
    ``model.generate`` in batches (greedy and sampled), with no forward more than without it and
    the same outputs. A few-shot prefix keeps no hidden states: no embeddings there."""
    want = engine.embed(CHAT, MSGS)
    plain = engine.generate(CHAT, MSGS, 12, batch_size=batch_size)
    assert plain.embeddings is None
    for temperature in (0.0, 0.8):
        ref = engine.generate(CHAT, MSGS, 12, batch_size=batch_size, temperature=temperature)
        calls, hook = _count_forwards(engine.lm.model)
        try:
            g = engine.generate(CHAT, MSGS, 12, batch_size=batch_size, temperature=temperature, embed=True)
        finally:
            hook.remove()
        ref_calls, hook = _count_forwards(engine.lm.model)
        try:
            engine.generate(CHAT, MSGS, 12, batch_size=batch_size, temperature=temperature)
        finally:
            hook.remove()
        assert calls == ref_calls and (g.texts, g.tokens) == (ref.texts, ref.tokens)
        assert g.embeddings.shape == want.shape
        assert torch.allclose(g.embeddings, want, atol=1e-5), (g.embeddings - want).abs().max()
    assert engine.generate(SHOTS, MSGS, 4, batch_size=batch_size, embed=True).embeddings is None
    assert not engine.lm.model.model._forward_hooks  # the hook is gone


def test_static_and_compiled_generation_pool_the_same_embeddings_without_compiling_again(tmp_path):
    """The prefill's embeddings on static caches (greedy loop; the decoding step compiled, as on
    CUDA) and through a compiled body: ``embed``'s, and asking for them compiles no graph more."""
    from torch._dynamo.utils import counters

    from potstill.models.static_decode import StaticCaches

    path = str(make_lively_model_dir(tmp_path))
    engine = load_engine("transformers", path, device="cpu")
    want = engine.embed(CHAT, MSGS)
    engine.static = StaticCaches.for_model(engine.lm.model, compile=True)
    compiled = load_engine("transformers", path, device="cpu", compile=True)
    for e in (engine, compiled):
        for batch_size in (1, 3):
            e.generate(CHAT, MSGS, 10, batch_size=batch_size)  # compiles what serving compiles
            before = counters["stats"]["unique_graphs"]
            g = e.generate(CHAT, MSGS, 10, batch_size=batch_size, embed=True)
            assert counters["stats"]["unique_graphs"] == before
            assert torch.allclose(g.embeddings, want, atol=1e-5), (g.embeddings - want).abs().max()


def test_a_served_generating_student_takes_its_embeddings_from_generation_and_serves_older_engines(tmp_path):
    """``ServedStudent.answer`` for free text: the routing embeddings come from the generating call
    (no ``embed`` forward), equal to ``embed``'s; an engine whose ``generate`` predates ``embed``
    (a plugin) is still answered, its embeddings from ``embed``."""
    from potstill.config import load_config
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task

    engine = load_engine("transformers", str(make_model_dir(tmp_path)), device="cpu")
    task = get_task(load_config(overrides={"task": {"type": "freetext", "instruction": "summarise"}}).task)
    served = ServedStudent(engine, task)
    want = engine.embed(served.fmt, MSGS)
    embeds = []
    real_embed = engine.embed
    engine.embed = lambda *a, **k: embeds.append(1) or real_embed(*a, **k)
    for batch in ([MSGS[0]], MSGS):
        answers = served.answer(batch)
        assert torch.allclose(torch.stack([a.embedding for a in answers]), want[: len(batch)], atol=1e-5)
    assert not embeds

    class Older:  # the engine protocol before generate's ``embed``
        name, identity, tokenizer = "older", engine.identity, engine.tokenizer

        def generate(self, fmt, messages, max_new_tokens, batch_size=16, progress=None, temperature=0.0,
                     stop=(), seed=0):
            return engine.generate(fmt, messages, max_new_tokens, batch_size=batch_size)

        def embed(self, fmt, messages):
            return engine.embed(fmt, messages)

    old = ServedStudent(Older(), task).answer(MSGS)
    assert len(embeds) == 1
    assert [a.output for a in old] == [a.output for a in answers]
    assert torch.allclose(torch.stack([a.embedding for a in old]), want, atol=1e-5)
