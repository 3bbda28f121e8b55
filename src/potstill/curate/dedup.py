"""Exact and near-duplicate inputs.

Exact: the same text after Unicode compatibility normalisation (NFKC), dropping invisible format
characters (zero-width spaces, soft hyphens, BOMs), case folding and folding whitespace. Near: the
Jaccard similarity of character 5-gram sets reaches the threshold, every such pair found
(``near.NearIndex``: prefix filtering, exact, near-linear on templated inputs too). Records
that are duplicates of each other (transitively) form a cluster and only its first member is
kept: with one survivor per cluster, no near-duplicate pair can straddle the train/test border.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from potstill.curate.near import SHINGLE, NearIndex, fingerprint_key, renumber
from potstill.progress import bar
from potstill.records import INSTRUCTION_ROLES, content_text
from potstill.tool_calls import as_text_turns, has_tool_turns



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
    """The text dedup compares for a record: every message's but a system or developer one, one per line.

    A record's ``text`` is its last user message, what a classifier reads; chat logs hold many
    conversations that end with the same turn ("Tell me more."), and those are different inputs.
    A one-message record compares its text, as before. Tool turns count as the student reads them
    (``as_text_turns``): a request and the turn after its call are two inputs. System and developer
    turns are left out: chat logs share one long system prompt (under one of 262 characters, 18 of 20
    different one-line requests were near duplicates of the first), and serve drops them anyway
    (the run's instruction replaces them).
    """
    messages = [m for m in messages if m.get("role") not in INSTRUCTION_ROLES]
    if has_tool_turns(messages):
        messages = as_text_turns(messages)
    return "\n".join(content_text(m.get("content")) for m in messages)


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    t = dedup_key(text)
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def fingerprint(text: str) -> np.ndarray:
    """``shingles(text)`` as sorted unique uint64 ids (``near.fingerprint_key``): 8 bytes a 5-gram, not ~160."""
    return fingerprint_key(dedup_key(text))


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
    compared: int = 0  # exact Jaccard computations: pairs the index could not rule out (a few a text)

    def renamed(self, order: list[int]) -> Duplicates:
        """These duplicates, found among ``[texts[i] for i in order]``, named by indices into ``texts``
        (j then comes before i in ``order``, not necessarily in ``texts``)."""
        return Duplicates(of={order[i]: order[j] for i, j in self.of.items()},
                          kind={order[i]: k for i, k in self.kind.items()},
                          similarity={order[i]: s for i, s in self.similarity.items()}, compared=self.compared)


def find_duplicates(texts: list[str], near: bool = True, threshold: float = 0.8) -> Duplicates:
    """Mark every text that duplicates an earlier kept one; earlier texts win, so new data never evicts old.

    Near: every kept text with ``jaccard(shingles(a), shingles(b)) >= threshold`` is found (``NearIndex``,
    exact, no sampling, so no seed), the most similar one wins, the earliest on a tie.
    """
    dups = Duplicates()
    keys = [dedup_key(t) for t in texts]
    first_by_key: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_by_key.setdefault(key, i)
    index, prints = None, {}
    if near:
        # Every input is counted before the first query, so the order is the inputs' own (rarest
        # shingles first) and a shingle one input alone holds is skipped: most of a random text's
        # prefix, and a templated text's fixed part comes last.
        firsts = sorted(first_by_key.values())
        bound = sum(max(1, len(keys[i])) for i in firsts)  # a text of L characters has at most L 5-grams
        fps, singles, universe = renumber((fingerprint_key(keys[i]) for i in firsts), bound)
        prints = dict(zip(firsts, fps))
        del fps
        index = NearIndex(threshold, shared_from=singles, universe=universe)
    with bar("curate: duplicates", len(texts)) as advance:
        for i, key in enumerate(keys):
            advance()
            j = first_by_key[key]
            if j != i:
                if j in dups.of:  # its first copy was a near duplicate, dropped: this one is the same near one
                    dups.of[i], dups.kind[i], dups.similarity[i] = dups.of[j], dups.kind[j], dups.similarity[j]
                else:
                    dups.of[i], dups.kind[i], dups.similarity[i] = j, "exact", 1.0
                continue
            if index is None:
                continue
            fp = prints.pop(i)  # a dropped text's fingerprint is freed; a kept one moves to the index
            prefix = index.prefix(fp)
            matches = index.query(fp, prefix)
            if matches:
                sim, y = max(matches, key=lambda m: (m[0], -m[1]))  # kept indices grow with i: -y is the earliest
                dups.of[i], dups.kind[i], dups.similarity[i] = index.names[y], "near", sim
                continue
            # Only kept texts enter the index, so every match points at a survivor.
            index.add(fp, i, prefix)
    dups.compared = index.compared if index else 0
    return dups
