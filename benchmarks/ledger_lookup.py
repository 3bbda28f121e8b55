"""The ledger's cache lookups by hash, before and after they were made to use the hash index.

Until 2026-12-07 SQLite (3.40, no ANALYZE statistics) ran ``request_hash IN (2 or more hashes) AND
role=?`` through calls_role_stage, and role teacher is nearly every row: each query of 500 hashes read
the whole ledger. This builds ledgers of N teacher generate rows (requests of ~1 KB, as an API
teacher's chat with its instruction; one row in 10 a serve escalation), then in one process, the
two taking turns:

- ``lookup_all``: every generate hash looked up, as generate does before it sends anything (the
  old query text vs ``Ledger.lookup``);
- ``serve_pair``: 200 lookups of 2 hashes, as serve does on an escalation with generate.n > 1;
- ``escalation_one``: 200 ``served_escalations`` of 1 hash, as serve does on each cache miss.

Exit 1 if the old and the new queries answer differently.

    PYTHONPATH=src:. python benchmarks/ledger_lookup.py                 # 10k and 100k rows
    PYTHONPATH=src:. python benchmarks/ledger_lookup.py --rows 10000 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from potstill.ledger import Call, Ledger

# The queries as they were before (ledger.py at b9eca09), run on the same connection.
OLD_LOOKUP = ("SELECT request_hash, response FROM calls WHERE status='ok' AND role=? AND stage<>'serve'"
              " AND request_hash IN ({q}) ORDER BY id")
OLD_ESCALATIONS = ("SELECT request_hash, response, input_tokens, output_tokens FROM calls WHERE stage='serve' AND"
                   " role='teacher' AND status='ok' AND request_hash IN ({q}) AND"
                   " json_extract(response, '$.teacher_stop_reason') IS NOT NULL ORDER BY id")


def build(path: Path, n: int) -> tuple[list[str], list[str]]:
    """A ledger of ``n`` teacher rows: 9 in 10 generate answers, 1 in 10 serve escalations."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    gen, served = [], []
    with Ledger(path) as led:
        for start in range(0, n, 5000):
            rows = []
            for i in range(start, min(n, start + 5000)):
                text = " ".join(rng.choice(words) for _ in range(150))  # ~1 KB of request JSON
                req = {"model": "m", "messages": [{"role": "system", "content": "Classify the ticket."},
                                                  {"role": "user", "content": text}], "max_tokens": 16}
                h = f"{i:064x}"
                if i % 10 == 9:
                    served.append(h)
                    rows.append(Call(h, "teacher", "serve", "m", req, {"content": "billing",
                                                                      "teacher_stop_reason": "stop"}, 300, 2))
                else:
                    gen.append(h)
                    rows.append(Call(h, "teacher", "generate", "m", req, {"output": "billing"}, 300, 2,
                                     stop_reason="stop"))
            led.record_many(rows)
    return gen, served


def old_lookup(db: sqlite3.Connection, hashes: list[str]) -> dict:
    out = {}
    for i in range(0, len(hashes), 500):
        part = hashes[i : i + 500]
        out.update({h: json.loads(r) for h, r in db.execute(
            OLD_LOOKUP.format(q=",".join("?" * len(part))), ["teacher", *part])})
    return out


def plan(db: sqlite3.Connection, sql: str, args: list) -> str:
    return " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    got = fn()
    return time.perf_counter() - t, got


def bench(n: int, work: Path) -> dict:
    path = work / f"ledger{n}.sqlite"
    t0 = time.perf_counter()
    gen, served = build(path, n)
    built_s = time.perf_counter() - t0
    led = Ledger(path, readonly=True)
    db = led._db
    rng = random.Random(1)
    pairs = [[rng.choice(gen), f"{rng.getrandbits(256):064x}"] for _ in range(200)]  # a hit and a miss (sampled)
    ones = [[rng.choice(served)] for _ in range(200)]
    res: dict = {"rows": n, "generate_rows": len(gen), "serve_escalations": len(served), "build_s": round(built_s, 1),
                 "file_mb": round(path.stat().st_size / 2**20, 1)}
    # Plans, as run (the new ones traced from the Ledger's own statements).
    sent: list[str] = []
    db.set_trace_callback(sent.append)
    led.lookup(gen[:2]), led.served_escalations(served[:1])
    db.set_trace_callback(None)
    res["plans"] = {
        "lookup_old": plan(db, OLD_LOOKUP.format(q="?,?"), ["teacher", *gen[:2]]),
        "lookup_new": plan(db, sent[0], []),
        "escalations_old": plan(db, OLD_ESCALATIONS.format(q="?"), served[:1]),
        "escalations_new": plan(db, sent[1], []),
    }
    # Taking turns, new first then old, twice; best of the two for each.
    runs: dict[str, list[float]] = {k: [] for k in ("lookup_all_old", "lookup_all_new", "serve_pair_old",
                                                    "serve_pair_new", "escalation_one_old", "escalation_one_new")}
    for _ in range(2):
        s, new = timed(lambda: led.lookup(gen))
        runs["lookup_all_new"].append(s)
        s, old = timed(lambda: old_lookup(db, gen))
        runs["lookup_all_old"].append(s)
        if new != old or len(new) != len(gen):
            sys.exit(f"{n} rows: the new lookup found {len(new)} answers, the old {len(old)}")
        s, new = timed(lambda: [led.lookup(p) for p in pairs])
        runs["serve_pair_new"].append(s)
        s, old = timed(lambda: [old_lookup(db, p) for p in pairs])
        runs["serve_pair_old"].append(s)
        if new != old:
            sys.exit(f"{n} rows: serve's pair lookups differ")
        s, new = timed(lambda: [led.served_escalations(h) for h in ones])
        runs["escalation_one_new"].append(s)
        s, old = timed(lambda: [db.execute(OLD_ESCALATIONS.format(q="?"), h).fetchall() for h in ones])
        runs["escalation_one_old"].append(s)
        if [set(x) for x in new] != [{r[0] for r in x} for x in old] or not all(new):
            sys.exit(f"{n} rows: served_escalations differ")
    best = {k: min(v) for k, v in runs.items()}
    res["lookup_all"] = {"hashes": len(gen), "old_s": round(best["lookup_all_old"], 3),
                         "new_s": round(best["lookup_all_new"], 3),
                         "old_us_per_hash": round(best["lookup_all_old"] / len(gen) * 1e6, 1),
                         "new_us_per_hash": round(best["lookup_all_new"] / len(gen) * 1e6, 1),
                         "speedup": round(best["lookup_all_old"] / best["lookup_all_new"], 1)}
    for k in ("serve_pair", "escalation_one"):
        res[k] = {"calls": 200, "old_ms_per_call": round(best[k + "_old"] / 200 * 1e3, 3),
                  "new_ms_per_call": round(best[k + "_new"] / 200 * 1e3, 3),
                  "speedup": round(best[k + "_old"] / best[k + "_new"], 1)}
    res["runs_s"] = {k: [round(x, 4) for x in v] for k, v in runs.items()}
    led.close()
    path.unlink()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    out: dict = {"what": __doc__.split("\n\n")[0],
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
                 "load_before": [round(x, 2) for x in os.getloadavg()], "ledgers": []}
    with tempfile.TemporaryDirectory() as work:
        for n in args.rows:
            r = bench(n, Path(work))
            out["ledgers"].append(r)
            print(f"{n} rows: lookup of {r['lookup_all']['hashes']} hashes {r['lookup_all']['old_s']} s -> "
                  f"{r['lookup_all']['new_s']} s; serve pair {r['serve_pair']['old_ms_per_call']} -> "
                  f"{r['serve_pair']['new_ms_per_call']} ms; escalation {r['escalation_one']['old_ms_per_call']} -> "
                  f"{r['escalation_one']['new_ms_per_call']} ms", flush=True)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
