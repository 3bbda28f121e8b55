"""Sampled generation with stop strings, as `potstill synthesize` asks of a local base model.

A tiny Llama built from a config: the same seed samples the same text, another seed another, and
a stop string ends the text where it first appears while the tokens before it stay the same.
"""

from __future__ import annotations

from potstill.models.loading import load_lm
from potstill.models.prompting import PromptFormat
from potstill.models.generation import cut_at_stop, generate
from tests.helpers.tiny import WORDS

FMT = PromptFormat(kind="completion", answer_prefix="Answer:")
MSGS = [[{"role": "user", "content": "the market said"}], [{"role": "user", "content": "a new film star"}]]


def test_sampling_is_seeded_and_greedy_ignores_the_seed(tiny_model_b):
    lm = load_lm(str(tiny_model_b))
    a = generate(lm, FMT, MSGS, 24, temperature=1.5, seed=7).texts
    assert generate(lm, FMT, MSGS, 24, temperature=1.5, seed=7).texts == a
    assert generate(lm, FMT, MSGS, 24, temperature=1.5, seed=8).texts != a
    greedy = generate(lm, FMT, MSGS, 24).texts
    assert generate(lm, FMT, MSGS, 24, seed=8).texts == greedy != a


def test_stop_string_ends_the_text_where_it_first_appears(tiny_model_b):
    lm = load_lm(str(tiny_model_b))
    # The random model often samples EOS early: take the first seed that writes a few words, then a
    # word written after the first one and inside no other vocabulary word, so the cut is unambiguous.
    for seed in range(100):
        free = generate(lm, FMT, MSGS[:1], 40, temperature=1.5, seed=seed)
        words = free.texts[0].split()
        stops = [w for w in words[2:] if sum(w in x for x in WORDS) == 1]
        if stops:
            break
    stop = stops[0]
    cut = generate(lm, FMT, MSGS[:1], 40, temperature=1.5, seed=seed, stop=[stop])
    expected = " ".join(words[: words.index(stop) + 1])
    assert cut.texts[0] == expected and cut.output_tokens[0] == words.index(stop) + 1 < free.output_tokens[0]


def test_cut_at_stop_keeps_the_earliest_stop():
    assert cut_at_stop("Budget row.</input>\n<input>Next", ["</input>", "<input>"]) == "Budget row.</input>"
    assert cut_at_stop("no stop here", ["</input>"]) == "no stop here"


def test_an_open_input_ends_at_the_tag_that_closes_it_or_opens_the_next():
    from potstill.synthesize import extract

    assert extract("Budget row.</input>\n<input>Next one", opened=True) == "Budget row."
    # gemma-3-270m, seen on BBC News: a new <input> opened without closing its own.
    assert extract("Cup final tonight.\n<input>\nThe full FA Cup news", opened=True) == "Cup final tonight."
    assert extract(" \n</input>", opened=True) is None
