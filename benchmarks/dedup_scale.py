"""Near-duplicate detection on templated inputs: the MinHash LSH step it replaced against the exact index.

Inputs are what an app sends: a fixed support-ticket prompt around ~50 characters of ticket text
(random words), so most pairs sit at Jaccard ~0.5, under curate's 0.8 bar; 5% of them are a copy
of an earlier one with one word changed (a near duplicate, Jaccard >= 0.85) and 2% an exact copy.
Each implementation runs in its own process (CPU seconds and the peak resident memory it added),
on 1k, 4k and 8k inputs, and the two must drop the same inputs for the same kept ones, with the
same similarity; exit 1 if not.

    PYTHONPATH=src:. python benchmarks/dedup_scale.py            # writes benchmarks/dedup_scale.json

The old implementation (potstill before this change, kept below) needs ``pip install datasketch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = ("You are a support assistant for Acme Corp. Read the customer ticket below and answer with its "
            "category only.\nTicket: {}\nCategory:")
SIZES = (1000, 4000, 8000)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(20000)]
    tickets: list[list[str]] = []
    out = []
    for _ in range(n):
        r = rng.random()
        if tickets and r < 0.05:  # a near copy: one word of an earlier ticket swapped
            words = list(rng.choice(tickets))
            words[rng.randrange(len(words))] = rng.choice(vocab)
        elif tickets and r < 0.07:  # an exact copy
            words = rng.choice(tickets)
        else:
            words = []
            while sum(len(w) + 1 for w in words) < 50:
                words.append(rng.choice(vocab))
        tickets.append(words)
        out.append(TEMPLATE.format(" ".join(words)))
    return out


def old_find_duplicates(texts: list[str], threshold: float = 0.8, seed: int = 1):
    """potstill's find_duplicates before the exact index: LSH at threshold - 0.2, exact Jaccard on string sets."""
    from datasketch import MinHash, MinHashLSH

    from potstill.curate.dedup import Duplicates, dedup_key, jaccard, shingles

    dups, first_by_key = Duplicates(), {}
    sets = [shingles(t) for t in texts]
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=128)
    for i, text in enumerate(texts):
        key = dedup_key(text)
        if key in first_by_key:
            j = first_by_key[key]
            if j in dups.of:
                dups.of[i], dups.kind[i], dups.similarity[i] = dups.of[j], dups.kind[j], dups.similarity[j]
            else:
                dups.of[i], dups.kind[i], dups.similarity[i] = j, "exact", 1.0
            continue
        first_by_key[key] = i
        m = MinHash(num_perm=128, seed=seed)
        m.update_batch([s.encode() for s in sets[i]])
        best, best_sim = None, 0.0
        for cand in lsh.query(m):
            j = int(cand)
            sim = jaccard(sets[i], sets[j])
            dups.compared += 1
            if sim >= threshold and (sim > best_sim or (sim == best_sim and j < (best or j + 1))):
                best, best_sim = j, sim
        if best is not None:
            dups.of[i], dups.kind[i], dups.similarity[i] = best, "near", best_sim
            continue
        lsh.insert(str(i), m)
    return dups


def one(impl: str, n: int) -> dict:
    """Run one implementation on n inputs in this process; what the parent compares and records."""
    os.environ["POTSTILL_PROGRESS"] = "never"
    from potstill.curate.dedup import find_duplicates

    data = texts(n)
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    cpu, wall = time.process_time(), time.perf_counter()
    d = (old_find_duplicates if impl == "old" else find_duplicates)(data)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"impl": impl, "n": n, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "peak_added_mb": round((peak - rss_before) / 2**20, 1), "exact_comparisons": d.compared,
            "dropped": {"exact": sum(k == "exact" for k in d.kind.values()), "near": sum(k == "near" for k in d.kind.values())},
            "result": sorted((i, d.of[i], d.kind[i], d.similarity[i]) for i in d.of)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return 0
    rows, same = [], True
    for n in SIZES:
        runs = {}
        for impl in ("new", "old"):
            p = subprocess.run([sys.executable, __file__, "--one", impl, str(n)], capture_output=True, text=True, check=True)
            runs[impl] = json.loads(p.stdout)
        agree = runs["old"].pop("result") == runs["new"].pop("result")
        same &= agree
        row = {"n": n, "same_output": agree, "old": runs["old"], "new": runs["new"],
               "cpu_speedup": round(runs["old"]["cpu_s"] / max(runs["new"]["cpu_s"], 1e-3), 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({
        "what": "find_duplicates (curate, redistill) on templated inputs at threshold 0.8: MinHash LSH + exact "
                "Jaccard on string sets (old) against the exact prefix-filter index on uint32 fingerprints (new)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d"), "rows": rows, "same_output": same}, indent=1) + "\n")
    if not same:
        print("dedup_scale: the old and new implementations dropped different inputs", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
