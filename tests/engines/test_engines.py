"""Engines on a tiny model built from a config and taught a fixed input set (``conftest.taught``),
converted in the test: every engine must give the labels transformers gives."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from potstill.engines import load_engine
from potstill.errors import PotstillError
from potstill.models.loading import cache_dir, load_lm, save_lm
from potstill.models.prompting import encode_prompt, label_token_ids
from tests.engines.conftest import CHAT, DATA, LABELS, MSGS, SHOTS


def _ct2_entries() -> list[Path]:
    root = cache_dir() / "engines" / "ctranslate2"
    return sorted(root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("engine", ["transformers", "ctranslate2"])
@pytest.mark.parametrize("fmt", [CHAT, SHOTS], ids=["chat", "few-shot"])
def test_each_engine_gives_the_labels_transformers_gives(taught, engine, fmt):
    ref = load_engine("transformers", str(taught), device="cpu")
    eng = load_engine(engine, str(taught), device="cpu")
    ids = label_token_ids(ref.tokenizer, fmt, LABELS)
    want = ref.score_labels(fmt, MSGS, ids, batch_size=1)
    got = eng.score_labels(fmt, MSGS, ids, batch_size=4)
    assert [LABELS[i] for i in want.logits.argmax(-1)] == [lab for _, lab in DATA]  # the teaching took
    assert got.logits.argmax(-1).tolist() == want.logits.argmax(-1).tolist()
    assert got.prompt_tokens == want.prompt_tokens
    assert got.embeddings.shape[0] == len(MSGS)
    torch.testing.assert_close(got.embeddings.norm(dim=-1), torch.ones(len(MSGS)))
    if engine == "ctranslate2":
        # The fixed part (system turn or few-shot prefix) was reused, not recomputed per input.
        assert min(got.cached_tokens) > 0
        assert (got.logits - want.logits).abs().max() < 0.1 * want.logits.abs().max()


def test_ctranslate2_greedy_generation_matches_transformers(taught):
    ref = load_engine("transformers", str(taught), device="cpu")
    eng = load_engine("ctranslate2", str(taught), device="cpu")
    want = ref.generate(CHAT, MSGS, 4, batch_size=1)
    got = eng.generate(CHAT, MSGS, 4, batch_size=3)
    # The first generated word is the taught label: int8 must not change it.
    assert [t.split()[0] for t in got.texts] == [t.split()[0] for t in want.texts] == [lab for _, lab in DATA]
    assert got.output_tokens == want.output_tokens and got.prompt_tokens == want.prompt_tokens
    assert all(c <= 0 for c in got.mean_logprob)


def test_ctranslate2_hands_on_its_text_as_it_decodes(taught):
    """``on_text`` (a local teacher's streamed escalation): CTranslate2's per-token callback, adding
    up to the text it returns, in pieces; one message only."""
    eng = load_engine("ctranslate2", str(taught), device="cpu", quantization="none")
    longest = 0
    for msg in MSGS:
        pieces: list[str] = []
        got = eng.generate(CHAT, [msg], 12, on_text=pieces.append)
        assert "".join(pieces) == got.texts[0] == eng.generate(CHAT, [msg], 12).texts[0] and all(pieces)
        longest = max(longest, len(pieces))
    assert longest > 1
    with pytest.raises(ValueError, match="one answer"):
        eng.generate(CHAT, MSGS[:2], 4, on_text=print)


def test_ctranslate2_unquantized_generates_what_transformers_fp32_generates(taught):
    """quantization none: float32 weights, converted and cached apart from the int8 ones; greedy
    generations token for token as transformers fp32's, where int8 may change some."""
    ref = load_engine("transformers", str(taught), device="cpu", quantization="none")
    eng = load_engine("ctranslate2", str(taught), device="cpu", quantization="none")
    assert eng.identity.endswith("#ct2-float32") and eng.compute_type == "float32"
    assert load_engine("ctranslate2", str(taught), device="cpu").identity.endswith("#ct2-int8")
    assert {p.name.rsplit("-", 1)[1] for p in _ct2_entries()} >= {"int8", "float32"}
    want = ref.generate(CHAT, MSGS, 12, batch_size=1)
    got = eng.generate(CHAT, MSGS, 12, batch_size=3)
    assert got.texts == want.texts and got.output_tokens == want.output_tokens
    assert got.tokens == want.tokens and list(map(len, got.tokens)) == got.output_tokens  # serve cuts them
    scored, scored_ref = (e.score_labels(CHAT, MSGS, label_token_ids(ref.tokenizer, CHAT, LABELS)) for e in (eng, ref))
    torch.testing.assert_close(scored.logits, scored_ref.logits, atol=1e-3, rtol=1e-3)  # no int8 rounding


def test_ctranslate2_token_logprobs_are_the_models_own(taught):
    """Serve's logprobs on a ctranslate2 student were a 400 ('gives no token log-probabilities'):
    its token_logprobs now read them from one forward_batch. Float32 weights give transformers fp32's
    and the same likeliest tokens; int8 ones give the engine's own generation's (its greedy tokens
    the likeliest, their mean the confidence generate reports; int8 rounding moves the taught tiny
    model's probabilities by up to 0.04 from fp32's, so fp32's are no reference there)."""
    from potstill.models.generation import token_logprobs

    lm = load_lm(str(taught), device="cpu")
    tok = lm.tokenizer
    prompt = encode_prompt(tok, CHAT, CHAT.prefix() + CHAT.query(tok, MSGS[3]), first=True)
    answer = tok(" sports and the team", add_special_tokens=False)["input_ids"]
    want = token_logprobs(lm, prompt, answer, 4)
    exact = load_engine("ctranslate2", str(taught), device="cpu", quantization="none")
    got = exact.token_logprobs(prompt, answer, 4)
    assert len(got) == len(answer)
    for (lp, best), (wlp, wbest) in zip(got, want):
        assert lp == pytest.approx(wlp, abs=1e-4)
        assert [v for _, v in best] == pytest.approx([v for _, v in wbest], abs=1e-4)
        assert [i for i, _ in best] == [i for i, _ in wbest]
    assert [lp for lp, _ in exact.token_logprobs(prompt, answer, 0)] == [lp for lp, _ in got]
    assert exact.token_logprobs(prompt, [], 3) == []
    int8 = load_engine("ctranslate2", str(taught), device="cpu")
    for m in MSGS[:4]:
        prompt = encode_prompt(tok, CHAT, CHAT.prefix() + CHAT.query(tok, m), first=True)
        g = int8.generate(CHAT, [m], 8)
        lps = int8.token_logprobs(prompt, g.tokens[0], 2)
        assert [best[0][0] for _, best in lps] == g.tokens[0]
        assert sum(lp for lp, _ in lps) / len(lps) == pytest.approx(g.mean_logprob[0], abs=1e-4)


def test_conversion_is_cached_by_content_and_redone_when_the_model_changes(taught, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(taught, model)
    load_engine("ctranslate2", str(model), device="cpu")
    entries = _ct2_entries()
    stamp = {p: p.stat().st_mtime_ns for p in entries}
    load_engine("ctranslate2", str(model), device="cpu")
    assert _ct2_entries() == entries and {p: p.stat().st_mtime_ns for p in entries} == stamp
    lm = load_lm(str(model), device="cpu")
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(1.5)  # tied: the embeddings change too
    save_lm(lm.model, lm.tokenizer, model)
    load_engine("ctranslate2", str(model), device="cpu")
    assert len(_ct2_entries()) == len(entries) + 1


def test_a_conversion_another_process_finished_meanwhile_is_kept_not_replaced(taught, tmp_path, monkeypatch):
    """Two processes convert a new student at once (serve and evaluate started together): the one
    that finishes second keeps the first one's entry instead of deleting and replacing it while the
    first may be loading it (same files, same inodes), and leaves no temp directory."""
    import os
    import subprocess

    from potstill.engines import convert

    model = tmp_path / "model"
    shutil.copytree(taught, model)
    (model / "README.md").write_text(str(tmp_path))  # content of its own: not converted by another test
    other = [sys.executable, "-c", f"from potstill.engines.convert import ctranslate2_model; "
                                   f"print(ctranslate2_model({str(model)!r})[0])"]
    seen: dict = {}
    plain = convert._plain_hf_dir

    def while_converting(*a, **kw):  # the other process converts the same model, start to finish, meanwhile
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run(other, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        done = Path(out.stdout.strip().splitlines()[-1])
        seen.update({p.name: p.stat().st_ino for p in done.iterdir()})
        return plain(*a, **kw)

    monkeypatch.setattr(convert, "_plain_hf_dir", while_converting)
    target, _ = convert.ctranslate2_model(str(model))
    assert seen and {p.name: p.stat().st_ino for p in target.iterdir()} == seen
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
    eng = load_engine("ctranslate2", str(model), device="cpu")
    assert eng.score_labels(CHAT, MSGS[:1], [0, 1]).logits.shape == (1, 2)


def test_a_conversion_killed_midway_leaves_no_entry_and_its_leftovers_go_with_the_next(taught, tmp_path, monkeypatch):
    """A process killed (SIGKILL: no cleanup runs) while converting leaves no usable-looking entry;
    its temp directory, and its scratch copy of the model in the temp folder, are removed by the next
    conversion, which succeeds."""
    import os
    import signal
    import subprocess

    from potstill.engines import convert

    model = tmp_path / "model"
    shutil.copytree(taught, model)
    (model / "README.md").write_text(str(tmp_path))  # content of its own: not converted by another test
    code = ("import sys, time; from potstill.engines import convert; "
            "convert._plain_hf_dir = lambda *a: (print('converting', flush=True), time.sleep(600)); "
            f"convert.ctranslate2_model({str(model)!r})")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "converting"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    root = cache_dir() / "engines" / "ctranslate2"
    left = [p for p in root.iterdir() if p.name.startswith(".")]
    assert left and not [p for p in root.iterdir() if (p / convert.INFO).exists() and str(model) in
                         (p / convert.INFO).read_text()]
    scratch = list(temp.iterdir())
    assert [p.name.startswith("potstill-ctranslate2-") for p in scratch] == [True]
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    target, _ = convert.ctranslate2_model(str(model))
    assert (target / convert.INFO).exists() and not [p for p in left if p.exists()]
    assert not [p for p in scratch if p.exists()]


@pytest.mark.parametrize("damage", ["weights", "architecture"])
def test_a_corrupt_model_gives_one_clear_error_and_no_cache_entry(taught, tmp_path, damage):
    model = tmp_path / "broken"
    shutil.copytree(taught, model)
    if damage == "weights":
        (model / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    else:
        cfg = (model / "config.json").read_text().replace('"llama"', '"no-such-architecture"')
        (model / "config.json").write_text(cfg)
    before = _ct2_entries()
    with pytest.raises(PotstillError) as e:
        load_engine("ctranslate2", str(model), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and str(model) in msg
    root = cache_dir() / "engines" / "ctranslate2"
    assert _ct2_entries() == before  # no half-written entry, no leftover temp directory
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_missing_optional_engine_names_the_package(taught, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # what Python does when the package is absent
    with pytest.raises(PotstillError) as e:
        load_engine("ctranslate2", str(taught), device="cpu")
    assert "\n" not in str(e.value) and "pip install 'ctranslate2==4.8.5'" in str(e.value)


def test_an_unknown_engine_lists_the_available_ones(taught):
    with pytest.raises(PotstillError, match="unknown engine 'vllm2'.*ctranslate2.*transformers"):
        load_engine("vllm2", str(taught))


def test_ctranslate2_reads_the_answer_position_of_every_prompt_in_a_mixed_length_call(taught):
    """CTranslate2 decodes a longer prompt's tail one step at a time; its label logits are those
    of the last step, not the first (where an earlier version read them, wrongly)."""
    eng = load_engine("ctranslate2", str(taught), device="cpu")
    ids = label_token_ids(eng.tokenizer, CHAT, LABELS)
    lengths = {len(own) for _, own in eng._split(CHAT, MSGS, True)}
    assert len(lengths) > 2  # the inputs do differ in length
    one = eng.score_labels(CHAT, MSGS, ids, batch_size=1)
    eng.max_spread = 1000  # all of them in one call
    mixed = eng.score_labels(CHAT, MSGS, ids, batch_size=len(MSGS))
    torch.testing.assert_close(mixed.logits, one.logits, rtol=0.05, atol=0.05)


def test_prompts_longer_than_a_sliding_window_are_refused(taught, tmp_path):
    """CTranslate2 4.8.5 answers gemma-3 wrongly past its 512-token sliding window (benchmarks/engine.py),
    so the engine refuses such prompts with one line instead of answering."""
    from potstill.engines.ctranslate2 import sliding_window

    (tmp_path / "config.json").write_text('{"text_config": {"sliding_window": 512, '
                                          '"layer_types": ["sliding_attention", "full_attention"]}}')
    assert sliding_window(tmp_path) == 512
    assert sliding_window(taught) is None  # Llama: full attention everywhere
    eng = load_engine("ctranslate2", str(taught), device="cpu")
    ids = label_token_ids(eng.tokenizer, SHOTS, LABELS)
    eng.score_labels(SHOTS, MSGS, ids)  # fine without a window
    eng.window = 12
    with pytest.raises(PotstillError) as e:
        eng.score_labels(SHOTS, MSGS, ids)
    assert "\n" not in str(e.value) and "sliding attention window" in str(e.value)
    eng.token_logprobs(list(range(3, 9)), list(range(3, 9)))  # 12 tokens: within it
    with pytest.raises(PotstillError, match="sliding attention window") as e:  # served logprobs too
        eng.token_logprobs(list(range(3, 9)), list(range(3, 10)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", [CHAT, SHOTS], ids=["chat", "few-shot"])
def test_transformers_bfloat16_gives_the_fp32_labels_with_fp32_label_rows(taught, fmt):
    """dtype bfloat16 on a CPU (fast with AMX): same labels as fp32 on the taught set, a cache
    identity of its own, and label logits from fp32 head rows: bf16 logits round to steps of
    ~0.06 at these magnitudes, where two close labels tie and the first one wins."""
    ref = load_engine("transformers", str(taught), device="cpu")
    eng = load_engine("transformers", str(taught), device="cpu", dtype="bfloat16")
    assert next(eng.lm.model.parameters()).dtype == torch.bfloat16
    assert eng.identity == ref.identity + "#bfloat16"
    ids = label_token_ids(ref.tokenizer, fmt, LABELS)
    want = ref.score_labels(fmt, MSGS, ids, batch_size=1)
    got = eng.score_labels(fmt, MSGS, ids, batch_size=4)
    assert got.logits.dtype == torch.float32
    assert got.logits.argmax(-1).tolist() == want.logits.argmax(-1).tolist()
    assert not torch.equal(got.logits, got.logits.bfloat16().float())  # not rounded to bf16 on the way
    assert (got.logits - want.logits).abs().max() < 0.05 * want.logits.abs().max()


def test_a_dtype_or_quantization_the_engine_does_not_take_is_one_clear_error(taught):
    with pytest.raises(PotstillError) as e:
        load_engine("ctranslate2", str(taught), device="cpu", dtype="bfloat16")
    assert "\n" not in str(e.value) and "dtype 'bfloat16' is for engine transformers" in str(e.value)
    with pytest.raises(PotstillError, match="dtype must be one of auto, float32, bfloat16"):
        load_engine("transformers", str(taught), device="cpu", dtype="float8")
    with pytest.raises(PotstillError) as e:
        load_engine("transformers", str(taught), device="cpu", quantization="int8")
    assert "\n" not in str(e.value) and "runs only under torch.compile" in str(e.value)
    with pytest.raises(PotstillError, match="quantization must be one of auto, int8, none, q6_k, q5_k_m, q4_k_m, "
                                            "q4_0, not 'int16'"):
        load_engine("ctranslate2", str(taught), device="cpu", quantization="int16")
    for name, says in (("transformers", "runs unquantized weights"), ("ctranslate2", "takes quantization auto")):
        with pytest.raises(PotstillError) as e:  # a GGUF mix for an engine that cannot run it, one line
            load_engine(name, str(taught), device="cpu", quantization="q4_k_m")
        assert says in str(e.value) and str(e.value).endswith("(GGUF mixes are for engine llamacpp)"), str(e.value)


def test_shot_orders_run_in_one_forward_with_the_scores_of_one_forward_each(taught):
    """A teacher's shot orders (prefixes of one length) are stacked along the batch: the same label
    logits as scoring each order on its own, seconds that still add up per input, and a fallback
    to one order at a time where the prefixes' lengths differ."""
    from potstill.models.prompting import PromptFormat

    eng = load_engine("transformers", str(taught), device="cpu")
    orders = [SHOTS, PromptFormat(kind=SHOTS.kind, instruction=SHOTS.instruction, answer_prefix=SHOTS.answer_prefix,
                                  shots=list(reversed(SHOTS.shots)))]
    ids = label_token_ids(eng.tokenizer, SHOTS, LABELS)
    assert len({eng.prefix(f).length for f in orders}) == 1
    decoder = eng.lm.model.model
    base = eng.score_labels(SHOTS, MSGS, ids)
    own = [n - c for n, c in zip(base.prompt_tokens, base.cached_tokens)]  # each input's tokens after the prefix
    for pack in (True, False):
        eng.pack = pack
        calls = []
        hook = decoder.register_forward_pre_hook(lambda m, a, k: calls.append(tuple(k["input_ids"].shape)),
                                                 with_kwargs=True)
        try:
            together = eng.score_labels_formats(orders, MSGS, ids, batch_size=4)
        finally:
            hook.remove()
        # 10 inputs in batches of 4 (shortest first), each once per order: packed, one row of their
        # tokens twice over; padded (or packing off, or inputs of one length: nothing to save), a
        # row per (order, input).
        batches = [sorted(own)[i : i + 4] for i in (0, 4, 8)]
        want = [(1, 2 * sum(b)) if pack and len(set(b)) > 1 else (2 * len(b), max(b)) for b in batches]
        assert calls == want and (not pack or want[0][0] == 1)
        for f, got in zip(orders, together):
            alone = eng.score_labels(f, MSGS, ids, batch_size=1)
            torch.testing.assert_close(got.logits, alone.logits, rtol=1e-4, atol=1e-4)
            assert got.prompt_tokens == alone.prompt_tokens and got.cached_tokens == alone.cached_tokens
    # Summed over the orders: each input's share of its forward (cost), and the whole forward (its wait).
    waits = [sum(s.batch_seconds[i] for s in together) for i in range(len(MSGS))]
    costs = [sum(s.seconds[i] for s in together) for i in range(len(MSGS))]
    assert sorted(round(w / c, 6) for w, c in zip(waits, costs)) == [2.0] * 2 + [4.0] * 8
    longer = PromptFormat(kind=SHOTS.kind, instruction=SHOTS.instruction, answer_prefix=SHOTS.answer_prefix,
                          shots=[*SHOTS.shots, ("one more match", "sports")])
    mixed = eng.score_labels_formats([SHOTS, longer], MSGS, ids, batch_size=4)  # lengths differ: one at a time
    torch.testing.assert_close(mixed[1].logits, eng.score_labels(longer, MSGS, ids, batch_size=4).logits)


def test_transformers_runs_a_chats_system_turn_once_and_scores_as_without_the_cache(taught):
    """A chat's fixed start (the system turn) is computed once and split off every prompt: the same
    label logits, token counts and whole-prompt embeddings as recomputing it per call, fewer tokens
    through the model, and whole prompts again where ``max_length`` would cut into the system turn."""
    eng = load_engine("transformers", str(taught), device="cpu")
    plain = load_engine("transformers", str(taught), device="cpu")
    plain.reuse_prefix = False
    ids = label_token_ids(eng.tokenizer, CHAT, LABELS)
    fed = []
    hook = eng.lm.model.model.register_forward_pre_hook(lambda m, a, k: fed.append(k["input_ids"].numel()),
                                                        with_kwargs=True)
    try:
        got = eng.score_labels(CHAT, MSGS, ids, batch_size=4)
    finally:
        hook.remove()
    want = plain.score_labels(CHAT, MSGS, ids, batch_size=4)
    fixed = eng.prefix(CHAT).length
    assert fixed > 0 and set(got.cached_tokens) == {fixed} and set(want.cached_tokens) == {0}
    # The turn once, then the own parts, packed: no padding through the layers.
    assert fed[0] == fixed and sum(fed[1:]) == sum(n - fixed for n in want.prompt_tokens)
    assert got.prompt_tokens == want.prompt_tokens
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.embeddings, want.embeddings, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eng.embed(CHAT, MSGS), got.embeddings, rtol=1e-4, atol=1e-4)  # what OOD compares
    short = min(want.prompt_tokens) - 2  # cuts every prompt's start: no cache, the old truncation
    cut = eng.score_labels(CHAT, MSGS, ids, batch_size=4, max_length=short)
    assert set(cut.cached_tokens) == {0}
    torch.testing.assert_close(cut.logits, plain.score_labels(CHAT, MSGS, ids, batch_size=4, max_length=short).logits)


def test_ctranslate2_near_ties_are_rescored_by_transformers(taught):
    """recheck_margin: inputs whose int8 top-two label probabilities are closer than the margin take
    transformers' label logits; the others keep int8's."""
    from potstill.engines.recheck import RecheckedEngine, label_margin

    ref = load_engine("transformers", str(taught), device="cpu")
    fast = load_engine("ctranslate2", str(taught), device="cpu")
    ids = label_token_ids(ref.tokenizer, CHAT, LABELS)
    want, alone = ref.score_labels(CHAT, MSGS, ids, batch_size=4), fast.score_labels(CHAT, MSGS, ids, batch_size=4)
    margins = label_margin(alone.logits)
    cut = float(margins.median())
    eng = load_engine("ctranslate2", str(taught), device="cpu", recheck_margin=cut)
    assert isinstance(eng, RecheckedEngine) and eng.identity != fast.identity and eng.name == "ctranslate2"
    got = eng.score_labels(CHAT, MSGS, ids, batch_size=4)
    near = margins < cut
    assert 0 < int(near.sum()) < len(MSGS) and eng.rechecked == int(near.sum())
    torch.testing.assert_close(got.logits[near], want.logits[near])
    torch.testing.assert_close(got.logits[~near], alone.logits[~near])
    torch.testing.assert_close(got.embeddings, alone.embeddings)  # routing's embeddings stay one engine's
    lazy = load_engine("ctranslate2", str(taught), device="cpu", recheck_margin=0.3)
    lazy.generate(CHAT, MSGS[:2], 2, batch_size=2)
    assert lazy._reference is None  # generation is not re-checked: the transformers model never loads
    everything = load_engine("ctranslate2", str(taught), device="cpu", recheck_margin=1.0)
    torch.testing.assert_close(everything.score_labels(CHAT, MSGS, ids, batch_size=4).logits, want.logits)
    assert load_engine("transformers", str(taught), device="cpu", recheck_margin=0.5).name == "transformers"


def test_transformers_int8_gives_the_fp32_labels_and_rechecks_near_ties(taught):
    """quantization int8 with compile: int8 layers in the decoder (the LM head and the embedding as
    loaded), compiled (not frozen), the taught labels, label logits near fp32's, its own cache identity;
    with a recheck margin, near ties take the fp32 engine's logits and the caller warms the
    compiled engine."""
    from torch._inductor.utils import run_and_get_code

    from potstill.engines.recheck import RecheckedEngine, label_margin
    from potstill.models.int8 import Int8Linear

    ref = load_engine("transformers", str(taught), device="cpu")
    ids = label_token_ids(ref.tokenizer, CHAT, LABELS)
    want = ref.score_labels(CHAT, MSGS, ids, batch_size=4)
    eng = load_engine("transformers", str(taught), device="cpu", quantization="int8", compile=True,
                      recheck_margin=0.3)
    assert isinstance(eng, RecheckedEngine) and eng.compiled and eng.name == "transformers"
    fast = eng.fast
    assert fast.identity == ref.identity + "#int8+compiled" and eng.identity.startswith(fast.identity)
    body = fast.lm.model.model._orig_mod
    assert not any(isinstance(m, torch.nn.Linear) for m in body.modules())
    assert len([m for m in body.modules() if isinstance(m, Int8Linear)]) == 7 * len(body.layers)
    assert isinstance(fast.lm.model.get_output_embeddings(), torch.nn.Linear)
    warmed, code = run_and_get_code(
        lambda: eng.warm_compiled("evaluate", lambda: fast.score_labels(CHAT, MSGS[:4], ids, batch_size=4)))
    assert warmed > 0
    assert "_int_mm" in "\n".join(code) and "_frozen_param" not in "\n".join(code)  # weights are inputs
    alone = fast.score_labels(CHAT, MSGS, ids, batch_size=4)
    assert alone.logits.argmax(-1).tolist() == want.logits.argmax(-1).tolist()
    assert not torch.equal(alone.logits, want.logits)  # int8 rounding did happen
    assert (alone.logits - want.logits).abs().max() < 0.1 * want.logits.abs().max()
    margins = label_margin(alone.logits)
    eng.margin = float(margins.median())  # the taught labels are far from ties: re-check half of them
    near = margins < eng.margin
    got = eng.score_labels(CHAT, MSGS, ids, batch_size=4)
    assert 0 < int(near.sum()) < len(MSGS) and eng.rechecked == int(near.sum())
    torch.testing.assert_close(got.logits[near], want.logits[near])
    torch.testing.assert_close(got.logits[~near], alone.logits[~near])
    gen = fast.generate(CHAT, MSGS[:3], 2, batch_size=1)
    assert [t.split()[0] for t in gen.texts] == [lab for _, lab in DATA[:3]]


def test_two_int8_engines_in_one_process_each_run_their_own_weights(taught, tiny_model):
    """A second int8 model of the same class in the process (evaluate's untrained then trained
    student, serve's hot swap) runs its own weights through the compiled code, at batch 1 and in a
    batch."""
    fp32, int8 = {}, {}
    for spec in (taught, tiny_model):
        ref = load_engine("transformers", str(spec), device="cpu")
        ids = label_token_ids(ref.tokenizer, CHAT, LABELS)
        fp32[spec] = ref.score_labels(CHAT, MSGS, ids, batch_size=4).logits
        eng = load_engine("transformers", str(spec), device="cpu", quantization="int8", compile=True)
        int8[spec] = torch.cat([eng.score_labels(CHAT, MSGS[:1], ids, batch_size=1).logits,
                                eng.score_labels(CHAT, MSGS[1:], ids, batch_size=4).logits])
    apart = (fp32[taught] - fp32[tiny_model]).norm()
    assert apart > 1.0
    for spec in (taught, tiny_model):
        assert (int8[spec] - fp32[spec]).norm() < 0.2 * apart


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_transformers_int8_on_cuda_is_refused_in_one_line(taught):
    """The int8 product on CUDA (``torch._int_mm``) needs more than 16 rows: a compiled int8
    engine on an H200 failed on an 8-token prompt, and every decoding step feeds one row. So
    quantization int8 is a CPU path, and a GPU gets one line saying what to use instead."""
    with pytest.raises(PotstillError) as e:
        load_engine("transformers", str(taught), device="cuda", quantization="int8", compile=True)
    assert "\n" not in str(e.value) and "runs on a CPU only, not cuda" in str(e.value)


def test_compiled_greedy_generation_keeps_one_graph_per_kind_of_step(taught):
    """Greedy generation at batch 1 under ``compile``: the prefix, the first multi-token feed and
    the single-token steps each compile once, whatever the prompt and cache lengths and however
    the drafts were cropped, and the text is the eager engine's. (Left to dynamo, the first call's
    sizes and the prefix's transposed key strides compiled as constants: 6 graphs here, each a
    minute or more of inductor for a real student on a small CPU.)"""
    from torch._dynamo.utils import counters

    ref = load_engine("transformers", str(taught), device="cpu")
    eng = load_engine("transformers", str(taught), device="cpu", compile=True)
    msgs = MSGS + [[{"role": "user", "content": " ".join(t for t, _ in DATA[:k])}] for k in (2, 3)]
    want = ref.generate(CHAT, msgs, 12, batch_size=1)
    torch._dynamo.reset()
    counters.clear()
    got = eng.generate(CHAT, msgs, 12, batch_size=1)
    assert got.texts == want.texts
    assert max(got.output_tokens) > 2  # decoding went on past the first steps
    assert counters["stats"]["unique_graphs"] == 3


def test_a_hub_models_conversion_key_follows_its_cached_revision(monkeypatch, tmp_path):
    """A student given as a hub id was keyed by the id's text: after the hub cache moved to a new
    revision (a re-upload of the weights), the old revision's conversion was served. The key is the
    id plus the commit of the snapshot in the HF cache (no network), and the id alone when none is."""
    import huggingface_hub.constants as hf
    from potstill.engines.convert import model_key

    from potstill.models import loading

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "_HUB_ASKED", {})
    repo = tmp_path / "hub" / "models--org--tiny"

    def cache_revision(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        loading._HUB_ASKED.clear()  # a new command: a process keeps the commit it first keyed by

    def key() -> str:
        return model_key("org/tiny", "org/tiny", None, "int8", "4.8.5")

    uncached = key()
    cache_revision("a" * 40)
    first = key()
    assert first != uncached and key() == first
    cache_revision("b" * 40)
    assert key() not in (first, uncached)
