"""Exact near-duplicate search over character 5-gram sets: compact fingerprints and a prefix-filter index.

A fingerprint is a text's 5-gram set (``dedup.shingles``) as a sorted array of unique integer ids,
4 or 8 bytes a shingle, where a Python set of 5-character strings costs ~160 (about 64 KB for a
400-character input). Jaccard is computed on the ids, so it is the same number as on the strings.

``NearIndex`` finds every kept fingerprint whose Jaccard with a new one reaches the threshold t,
with no false negatives (prefix filtering, Chaudhuri et al. 2006; positional filter, Xiao et al.
2008, "PPJoin"). Ids are numbered in one global order, rarest shingle first. If J(x, y) >= t then
their overlap o >= a = t(|x|+|y|)/(1+t) >= t*max(|x|, |y|), so x and y share a shingle among the
first |x| - ceil(t|x|) + 1 ids of x and the first |y| - ceil(t|y|) + 1 of y (at t = 0.8: the rarest
20%). Only those prefixes are indexed and probed. At their first shared shingle, place i in x and j
in y, o <= min(|x| - i, |y| - j), so the pair is only a candidate when both are >= a. That prunes
templated inputs (a fixed prompt around a short variable part, Jaccard 0.5-0.65 pair after pair):
their shared shingles are frequent, late in the order, with too little after them. Each candidate
is then decided by its exact Jaccard.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SHINGLE = 5  # characters: long enough to ignore letter frequencies, short enough for headlines
_BITS = 12  # a code point below 4095, +1 (0 pads a text shorter than 5), fits 12 bits: 5 x 12 = 60 bits
_HASHED = np.uint64(1 << 63)  # marks an id hashed from a 5-gram with a higher code point (CJK, emoji)
# Every bound is taken at t minus this, so float rounding can only add candidates, never lose one
# (a Jaccard that rounds up to t is off from it by ~1e-16).
_SLACK = 1e-9
_LONG = 32  # entries a shingle's posting list holds before it is split by bound (below: scanning is cheaper)


def fingerprint_key(key: str, k: int = SHINGLE) -> np.ndarray:
    """The uint64 5-gram ids of an already normalised text (``dedup_key``), sorted and unique.

    5-grams of code points below U+0FFF (Latin, Greek, Cyrillic, Hebrew, Arabic, Indic scripts) are
    packed exactly, so two distinct ones never share an id. Others are hashed to 63 bits (two such
    5-grams share an id with probability ~2^-63) with the top bit set, apart from every packed id.
    A text shorter than k is one shingle, itself, as ``shingles`` has it.
    """
    cp = np.frombuffer(key.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64) + np.uint64(1)
    if len(cp) < k:
        win = np.zeros((1, k), np.uint64)
        win[0, : len(cp)] = cp
    else:
        win = sliding_window_view(cp, k)
    packed = np.zeros(len(win), np.uint64)
    for col in range(k):
        packed = (packed << np.uint64(_BITS)) | win[:, col]
    wide = (win >= np.uint64(1 << _BITS)).any(axis=1)
    if wide.any():
        packed[wide] = _hash_rows(win[wide])
    return np.unique(packed)


def _hash_rows(win: np.ndarray) -> np.ndarray:
    h = np.full(len(win), 0xCBF29CE484222325, np.uint64)  # FNV-1a over code points, then murmur3's finaliser
    for col in range(win.shape[1]):
        h = (h ^ win[:, col]) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    return h | _HASHED


def renumber(prints: Iterable[np.ndarray], bound: int) -> tuple[list[np.ndarray], int, int]:
    """Every fingerprint's ids renumbered 0..U-1 in the global order (fewest fingerprints first, then by id).

    Returns the uint32 fingerprints (sorted, so a prefix is the first ids), the number of ids held by
    one fingerprint alone (ids below it are in no other, so they never make a pair) and the number of ids.
    ``prints`` is read once, into one array of ``bound`` ids at most (the sum of the texts' lengths
    will do): peak memory is ~3 x 8 bytes a shingle, for a moment (that array, its sort order and the
    sorted copy), then 4 bytes a shingle.
    """
    flat = np.empty(bound, np.uint64)
    sizes, at = [], 0
    for fp in prints:
        flat[at : at + len(fp)] = fp
        at += len(fp)
        sizes.append(len(fp))
    if not sizes:
        return [], 0, 0
    flat = flat[:at]
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    del flat
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    del ordered
    counts = np.diff(np.append(starts, len(order)))
    del starts
    new = np.empty(len(counts), np.uint32)
    new[np.argsort(counts, kind="stable")] = np.arange(len(counts), dtype=np.uint32)  # ties by id (ascending)
    singles = int(np.count_nonzero(counts == 1))
    ids = np.empty(len(order), np.uint32)
    ids[order] = np.repeat(new, counts)
    universe = len(new)
    del order, counts, new
    out, at = [], 0
    for n in sizes:
        fp = ids[at : at + n].copy()  # a copy, so a dropped text's ids can be freed apart from the rest
        fp.sort()
        out.append(fp)
        at += n
    return out, singles, universe


class NearIndex:
    """Kept fingerprints, and every one whose Jaccard with a new fingerprint reaches ``threshold``.

    Fingerprints are sorted id arrays whose ascending order is the global order (``renumber``);
    ids below ``shared_from`` are in one fingerprint only, and neither indexed nor probed.
    """

    def __init__(self, threshold: float, shared_from: int = 0, universe: int | None = None):
        self.threshold = threshold
        # With ids below ``universe`` (``renumber``'s), overlaps are counted in a table of one byte an id.
        self._member = np.zeros(universe, np.uint8) if universe else None
        self.t = threshold - _SLACK
        self.shared_from = shared_from
        self.fingerprints: list[np.ndarray] = []
        self.compared = 0  # candidates whose exact Jaccard was computed
        self.sizes: list[int] = []  # len(fingerprints[y]), read for every posting entry a probe meets
        self.names: list[object] = []
        # shingle id -> [y << 32 | j]: y a kept fingerprint, j the shingle's place in it. A list past
        # _LONG entries moves to `split`, keyed by floor(|y| - (1+t) j), so a probe skips in one
        # comparison the many entries a frequent shingle gathers whose suffix is too short for it.
        self.postings: dict[int, list[int]] = {}
        self.split: dict[int, dict[int, list[int]]] = {}

    def prefix(self, fp: np.ndarray) -> list[tuple[int, int]]:
        """(place, id) of the fingerprint's prefix; query and add both need it."""
        p = min(len(fp), int(len(fp) * (1 - self.t)) + 1)
        head = fp[:p]
        places = np.flatnonzero(head >= self.shared_from) if self.shared_from else np.arange(p)
        return list(zip(places.tolist(), head[places].tolist()))

    def query(self, fp: np.ndarray, prefix: list[tuple[int, int]] | None = None) -> list[tuple[float, int]]:
        """(Jaccard, kept index) of every kept fingerprint at or above the threshold, exact."""
        found = sorted(self._candidates(fp, self.prefix(fp) if prefix is None else prefix))
        self.compared += len(found)
        if not found:
            return []
        # One numpy pass over every candidate's ids, not a call per pair.
        others = [self.fingerprints[y] for y in found]
        flat = np.concatenate(others)
        # A gather from a table marking fp's ids beats the binary search below (30,000 texts of random
        # words: 21 -> 15 s of CPU in all).
        if self._member is not None:
            self._member[fp] = 1
            hit = self._member[flat]
            self._member[fp] = 0
        else:
            at = np.searchsorted(fp, flat)
            at[at == len(fp)] = 0
            hit = (fp[at] == flat).astype(np.int32)
        sizes = np.array([len(o) for o in others])
        inter = np.add.reduceat(hit, np.concatenate(([0], np.cumsum(sizes)[:-1])), dtype=np.int64).tolist()
        out = []
        for y, n, k in zip(found, sizes.tolist(), inter):
            union = len(fp) + n - k
            sim = k / union if union else 1.0  # as dedup.jaccard computes it on the strings
            if sim >= self.threshold:
                out.append((sim, y))
        return out

    def add(self, fp: np.ndarray, name: object = None, prefix: list[tuple[int, int]] | None = None) -> int:
        """Keep ``fp``; returns its kept index (``names[index]`` is ``name``)."""
        y = len(self.fingerprints)
        self.fingerprints.append(fp)
        self.sizes.append(len(fp))
        self.names.append(name)
        sy, t1 = len(fp), 1 + self.t
        for j, w in self.prefix(fp) if prefix is None else prefix:
            entry = y << 32 | j
            if (buckets := self.split.get(w)) is not None:
                buckets.setdefault(math.floor(sy - t1 * j), []).append(entry)
                continue
            entries = self.postings.setdefault(w, [])
            entries.append(entry)
            if len(entries) > _LONG:
                buckets = self.split[w] = {}
                for e in self.postings.pop(w):
                    ey, ej = e >> 32, e & 0xFFFFFFFF
                    buckets.setdefault(math.floor(self.sizes[ey] - t1 * ej), []).append(e)
        return y

    def _candidates(self, fp: np.ndarray, prefix: list[tuple[int, int]]) -> set[int]:
        sx, t, t1 = len(fp), self.t, 1 + self.t
        need = t * sx  # A: |y| - (1+t) j >= t |x|, y's suffix from the shared shingle is long enough
        floor_need = math.floor(need)
        sizes, postings, split = self.sizes, self.postings, self.split
        found: set[int] = set()
        for i, w in prefix:
            room = sx - t1 * i  # B: t |y| <= |x| - (1+t) i, x's suffix is long enough
            lists = [postings[w]] if w in postings else [
                entries for bound, entries in split.get(w, {}).items() if bound >= floor_need]
            for entries in lists:
                for e in entries:
                    y = e >> 32
                    if y not in found:
                        sy = sizes[y]
                        if t * sy <= room and sy - t1 * (e & 0xFFFFFFFF) >= need:
                            found.add(y)
        return found
