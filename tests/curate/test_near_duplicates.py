"""Near-duplicate detection is exact (every pair at the threshold, as a brute-force search finds them)
and stays cheap on templated inputs: a fixed prompt around a short variable part, where most pairs
sit at Jaccard 0.5-0.65, just under the bar."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from potstill.curate.dedup import Duplicates, dedup_key, find_duplicates, jaccard, shingles

TEMPLATE = ("You are a support assistant for Acme Corp. Read the customer ticket below and answer with its "
            "category only.\nTicket: {}\nCategory:")


def brute_force(texts: list[str], threshold: float) -> Duplicates:
    """The definition: each text against every earlier kept one, on Python sets of 5-character strings."""
    dups, first, kept = Duplicates(), {}, []
    sets = [shingles(t) for t in texts]
    for i, t in enumerate(texts):
        key = dedup_key(t)
        if key in first:
            j = first[key]
            if j in dups.of:
                dups.of[i], dups.kind[i], dups.similarity[i] = dups.of[j], dups.kind[j], dups.similarity[j]
            else:
                dups.of[i], dups.kind[i], dups.similarity[i] = j, "exact", 1.0
            continue
        first[key] = i
        best = max(((jaccard(sets[i], sets[j]), -j) for j in kept), default=(0.0, 0))
        if best[0] >= threshold:
            dups.of[i], dups.kind[i], dups.similarity[i] = -best[1], "near", best[0]
        else:
            kept.append(i)
    return dups


def words(rng: random.Random, vocab: list[str], chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(vocab))
    return " ".join(out)


def mixed_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Templated tickets, free text, edited copies (1-6 characters changed), case and Unicode variants, short texts."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(400)]
    texts: list[str] = []
    while len(texts) < n:
        r = rng.random()
        if texts and r < 0.35:
            t = list(rng.choice(texts))
            for _ in range(rng.randint(1, 6)):
                t.insert(rng.randrange(len(t) + 1), rng.choice("abxyz é日本 "))
            texts.append("".join(t))
        elif texts and r < 0.4:
            texts.append(rng.choice(texts).upper())
        elif r < 0.7:
            texts.append(TEMPLATE.format(words(rng, vocab, rng.randint(10, 80))))
        else:
            texts.append(words(rng, vocab, rng.randint(5, 300)))
    return texts + ["", "ab", "AB", "日本語", "日本語のテキスト", "ＡＢ", "abcd", "abcde"]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8, 0.9, 1.0])
def test_the_same_duplicates_as_a_brute_force_search_over_all_pairs(threshold):
    texts = mixed_texts()
    got, want = find_duplicates(texts, threshold=threshold), brute_force(texts, threshold)
    assert want.of and got.of == want.of and got.kind == want.kind and got.similarity == want.similarity


def test_a_pair_just_over_the_threshold_is_always_found():
    # MinHash LSH (the earlier candidate step, with its fixed seed) missed both pairs: a near
    # duplicate kept beside its original, free to land on the other side of the train/test split.
    pairs = [("her be in are are in that is be are the not ticket 875365 about the late parcel",
              "her be in are are in that xs be are the not ticket 875365 about the late parcyl"),
             ("were not of and from and had have with on had are ticket 419404 about the late parcel",
              "were not of and from and had have with on had are tickexy419404 about the late parcyl")]
    for a, b in pairs:
        assert 0.8 <= jaccard(shingles(a), shingles(b)) < 0.82
        d = find_duplicates([a, b])
        assert d.of == {1: 0} and d.kind == {1: "near"}


def test_templated_inputs_cost_a_few_exact_comparisons_each():
    # Every pair here is at Jaccard ~0.5 under a shared template; the LSH candidate step asked for
    # ~107 exact comparisons a text at 2,000 texts, and twice as many at twice the texts.
    rng = random.Random(1)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(20000)]
    texts = [TEMPLATE.format(words(rng, vocab, 50)) for _ in range(2000)]
    texts += [t.replace("Ticket: ", "Ticket:  x") for t in texts[:50]]  # 50 near copies, found
    d = find_duplicates(texts)
    assert len(d.of) == 50 and set(d.kind.values()) == {"near"}
    assert d.compared <= 2 * len(texts)


def test_memory_is_a_few_kilobytes_a_text_not_a_set_of_strings():
    # A Python set of 5-character strings costs ~60 KB for a 400-character text (~400 str objects
    # and a hash table); the fingerprints hold 4-8 bytes a shingle.
    rng = random.Random(2)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(20000)]
    texts = [words(rng, vocab, 400) for _ in range(1000)]
    tracemalloc.start()
    try:
        find_duplicates(texts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / len(texts) < 20_000  # bytes a text, at the peak


def test_find_duplicates_takes_no_seed():
    # The exact index samples nothing: a seed argument (curate and redistill passed curate.seed) read
    # as if changing curate.seed could change which duplicates are found, and it changed nothing.
    with pytest.raises(TypeError, match="seed"):
        find_duplicates(["a b c", "a b c"], seed=1)
