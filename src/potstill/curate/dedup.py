"""Exact and near-duplicate inputs.

Exact: the same text after Unicode compatibility normalisation (NFKC), dropping invisible format
characters (zero-width spaces, soft hyphens, BOMs), case folding and folding whitespace. Near: MinHash LSH (datasketch)
over character 5-gram sets proposes candidate pairs, and each candidate is confirmed with the
true Jaccard similarity of the two sets, so LSH's false positives never drop a record. Records
that are duplicates of each other (transitively) form a cluster and only its first member is
kept: with one survivor per cluster, no near-duplicate pair can straddle the train/test border.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from datasketch import MinHash, MinHashLSH

from potstill.progress import bar
from potstill.records import content_text
from potstill.tool_calls import as_text_turns, has_tool_turns

SHINGLE = 5  # characters: long enough to ignore letter frequencies, short enough for headlines
NUM_PERM = 128  # MinHash permutations: the Jaccard estimate's standard error is ~ 1/sqrt(128) = 0.09
CANDIDATE_MARGIN = 0.2  # ~2 standard errors under the threshold: misses become rare, extra candidates cheap


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def dedup_key(text: str) -> str:
    """The text as duplicates are compared: one input typed, exported or decoded two ways is one key.

    NFD against NFC (macOS, some CRM exports), non-breaking and zero-width spaces, full-width
    letters and ß/SS otherwise make two copies of one input look different, and the split (a hash
    of ``normalise``) can then put them on both sides of the train/test border. Only comparisons
    use this; the records keep their text, and ``normalise`` (the split's hash) is unchanged so no
    record moves split.
    """
    t = "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")
    return normalise(t.casefold())


def conversation(messages: list[dict[str, Any]]) -> str:
    """The text dedup compares for a record: every message's, one per line.

    A record's ``text`` is its last user message, what a classifier reads; chat logs hold many
    conversations that end with the same turn ("Tell me more."), and those are different inputs.
    A one-message record compares its text, as before. Tool turns count as the student reads them
    (``as_text_turns``): a request and the turn after its call are two inputs.
    """
    if has_tool_turns(messages):
        messages = as_text_turns(messages)
    return "\n".join(content_text(m.get("content")) for m in messages)


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    t = dedup_key(text)
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Duplicates:
    """``of[i] = j`` when record i duplicates the kept record j (j < i); ``kind[i]`` is exact or near.

    j is always a survivor: an exact copy of a text that was itself dropped as a near duplicate is that
    near duplicate of its survivor (same shingles, same similarity), never an exact one of a dropped record.
    """

    of: dict[int, int] = field(default_factory=dict)
    kind: dict[int, str] = field(default_factory=dict)
    similarity: dict[int, float] = field(default_factory=dict)


def find_duplicates(texts: list[str], near: bool = True, threshold: float = 0.8, seed: int = 1) -> Duplicates:
    """Mark every text that duplicates an earlier kept one; earlier texts win, so new data never evicts old."""
    dups = Duplicates()
    first_by_key: dict[str, int] = {}
    sets = [shingles(t) for t in texts]
    # LSH is probabilistic near its threshold (a pair at exactly 0.8 is found about half the
    # time), so it proposes candidates from a lower bar and the exact Jaccard decides.
    lsh = MinHashLSH(threshold=max(0.05, threshold - CANDIDATE_MARGIN), num_perm=NUM_PERM) if near else None
    with bar("curate: duplicates", len(texts)) as advance:
        for i, text in enumerate(texts):
            advance()
            key = dedup_key(text)
            if key in first_by_key:
                j = first_by_key[key]
                if j in dups.of:  # its first copy was a near duplicate, dropped: this one is the same near one
                    dups.of[i], dups.kind[i], dups.similarity[i] = dups.of[j], dups.kind[j], dups.similarity[j]
                else:
                    dups.of[i], dups.kind[i], dups.similarity[i] = j, "exact", 1.0
                continue
            first_by_key[key] = i
            if lsh is None:
                continue
            m = MinHash(num_perm=NUM_PERM, seed=seed)
            m.update_batch([s.encode() for s in sets[i]])
            best, best_sim = None, 0.0
            for cand in lsh.query(m):
                j = int(cand)
                sim = jaccard(sets[i], sets[j])
                if sim >= threshold and (sim > best_sim or (sim == best_sim and j < (best or j + 1))):
                    best, best_sim = j, sim
            if best is not None:
                dups.of[i], dups.kind[i], dups.similarity[i] = best, "near", best_sim
                continue
            # Only kept texts enter the index, so every match points at a survivor.
            lsh.insert(str(i), m)
    return dups
