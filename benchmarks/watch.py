"""Does `potstill watch` flag shifted traffic and leave unshifted traffic alone? (issue 9)

On a COPY of a quickstart run (BBC News topics, SmolLM2-135M student, gemma-3-270m teacher):
1. starts the real `potstill serve RUN` and sends three kinds of traffic through it with the
   official openai client (8 threads), one condition after the other:
   - unshifted: held-out BBC articles (not in train.jsonl), the corpus' own topic mix;
   - topic: held-out BBC articles on two topics only (sport, tech);
   - domain: another kind of English, produced offline: the first sentence of Python
     standard-library docstrings (software documentation instead of news). Not another language:
     nothing here can translate offline, and we do not pretend otherwise;
2. after each condition runs the real `potstill watch RUN` (a subprocess: its exit code and wall
   time) on the latest window, i.e. that condition's last requests;
3. the 20-seed sweep: embeds each condition's served rows once (the same ``embed_all`` watch uses)
   and, per seed, draws a window of the condition's rows and a reference sample with that seed
   and judges it with ``potstill.watch.judge`` (the function `potstill watch` decides with), at
   the default thresholds. Windows of different seeds overlap (a window of 200 from a pool of a
   few hundred served rows); the JSON says how large each pool was.

    python benchmarks/watch.py --run /tmp/me/run   # a copy: this writes calls.sqlite rows and RUN/watch/
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import random
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

KEY_ENV = "WATCH_BENCH_KEY"
CONDITIONS = ("unshifted", "topic", "domain")


def docstring_sentences(n: int, seed: int = 0) -> list[str]:
    """First sentences (8-60 words) of docstrings of public functions and classes in the standard library."""
    skip = re.compile(r"^(_|test|idlelib|tkinter|turtle|antigravity|this|lib2to3|ensurepip|venv|pydoc_data)")
    found: dict[str, None] = {}
    for name in sorted(sys.stdlib_module_names):
        if skip.match(name):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific modules
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            first = re.split(r"(?<=[.!?])\s", " ".join(doc.split("\n\n")[0].split()), maxsplit=1)[0]
            if 8 <= len(first.split()) <= 60:
                found[first] = None
    pool = sorted(found)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def pools(run: Path, n_unshifted: int, n_topic: int, n_domain: int) -> dict[str, list[str]]:
    from potstill.quickstart.bbc import load_articles
    from potstill.records import read_records

    train_ids = {r.id for r in read_records(run / "train.jsonl")}
    held = [a for a in load_articles() if a["id"] not in train_ids]
    rng = random.Random(0)
    rng.shuffle(held)
    return {
        "unshifted": [a["text"] for a in held[:n_unshifted]],
        "topic": [a["text"] for a in held if a["label"] in ("sports", "tech")][:n_topic],
        "domain": docstring_sentences(n_domain),
    }


def max_id(run: Path) -> int:
    db = sqlite3.connect(f"file:{run / 'calls.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()[0])
    finally:
        db.close()


def start_server(run: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["potstill", "serve", str(run), "--port", str(port), "--api-key-env", KEY_ENV],
                            stdout=subprocess.DEVNULL, stderr=open(run / "watch-bench-serve.log", "w"))
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"potstill serve exited with {proc.returncode}; see {run / 'watch-bench-serve.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(2)
    raise SystemExit("potstill serve did not come up in 10 minutes")


def send(port: int, texts: list[str]) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=os.environ[KEY_ENV], max_retries=0, timeout=300)

    def one(t: str) -> str:
        c = client.chat.completions.create(model="potstill", messages=[{"role": "user", "content": t}])
        return c.model_extra["potstill"]["answered_by"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        who = list(ex.map(one, texts))
    return {"requests": len(texts), "seconds": time.perf_counter() - t0, "teacher_share": who.count("teacher") / len(who)}


def watch_cli(run: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(["potstill", "watch", str(run)], capture_output=True, text=True,
                       env={**os.environ, "POTSTILL_PROGRESS": "never"})
    seconds = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        raise SystemExit(f"potstill watch failed ({p.returncode}): {p.stderr}")
    report = json.loads((run / "watch" / "report.json").read_text())
    return {"exit_code": p.returncode, "wall_s": seconds, "drift": report["drift"], "traffic": report["traffic"],
            "checks": {k: {kk: vv for kk, vv in v.items() if kk not in ("per_window", "window_sizes")}
                       for k, v in report["checks"].items()}, "table": p.stdout}


def summarize(verdicts: list[dict]) -> dict:
    def stats(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"min": xs[0], "median": xs[len(xs) // 2], "max": xs[-1]}

    c = [v["checks"] for v in verdicts]
    out = {"flagged": sum(v["drift"] for v in verdicts), "seeds": len(verdicts),
           "input_flagged": sum(x["input"]["flagged"] for x in c), "input_p": stats([x["input"]["p_value"] for x in c]),
           "input_mmd": stats([x["input"]["effect"] for x in c]),
           "input_null_mmd_p95": stats([x["input"]["null_effect_p95"] for x in c]),
           "escalation_flagged": sum(x["escalation"]["flagged"] for x in c),
           "escalation_share": stats([x["escalation"]["share"] for x in c]),
           "judge_s": stats([v["judge_s"] for v in verdicts])}
    if "labels" in c[0]:
        out.update({"labels_flagged": sum(x["labels"]["flagged"] for x in c), "labels_p": stats([x["labels"]["p_value"] for x in c]),
                    "labels_tv": stats([x["labels"]["tv"] for x in c])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="A COPY of a quickstart run directory.")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--port", type=int, default=8741)
    ap.add_argument("--unshifted", type=int, default=600)
    ap.add_argument("--topic", type=int, default=400)
    ap.add_argument("--domain", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    os.environ.setdefault(KEY_ENV, "sk-watch-bench-" + os.urandom(6).hex())

    from potstill.models.loading import load_lm
    from potstill.records import read_records
    from potstill.serve import run_config
    from potstill.serve.engine import TransformersEngine, embed_all
    from potstill.tasks import get_task
    from potstill.watch import judge, read_traffic
    from potstill.watch.stage import expected_escalation, label_of, reference_sample

    run = args.run
    texts = pools(run, args.unshifted, args.topic, args.domain)
    served, e2e, ranges = {}, {}, {}
    proc = start_server(run, args.port)
    try:
        for cond in CONDITIONS:
            lo = max_id(run)
            served[cond] = send(args.port, texts[cond])
            ranges[cond] = (lo, max_id(run))
            e2e[cond] = watch_cli(run)
            print(cond, served[cond], {k: e2e[cond][k] for k in ("exit_code", "wall_s", "drift")}, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    # The sweep: every condition's served rows embedded once, windows drawn per seed.
    cfg = run_config(run, None)
    w0 = cfg.watch
    task = get_task(cfg.task)
    engine = TransformersEngine(load_lm(str(run / "student")), task)
    train = read_records(run / "train.jsonl")
    t0 = time.perf_counter()
    train_emb = embed_all(engine, [r.messages for r in train], w0.batch_size, "embed train")
    embed_s = time.perf_counter() - t0
    index = {r.id: i for i, r in enumerate(train)}
    expected, n_expected, _ = expected_escalation(run)
    rows = read_traffic(run / "calls.sqlite", window=0, since=0.0)
    sweep, pool_sizes = {}, {}
    for cond in CONDITIONS:
        lo, hi = ranges[cond]
        mine = [s for s in rows if lo < s.id <= hi]
        pool_sizes[cond] = len(mine)
        t0 = time.perf_counter()
        emb = embed_all(engine, [s.messages for s in mine], w0.batch_size, f"embed {cond}")
        embed_s += time.perf_counter() - t0
        verdicts = []
        for seed in range(args.seeds):
            w = w0.model_copy(update={"seed": seed})
            pick = sorted(random.Random(f"window-{seed}").sample(range(len(mine)), w.window))
            ref = reference_sample(train, w)
            t1 = time.perf_counter()
            v = judge(emb[pick], train_emb[[index[r.id] for r in ref]], [label_of(task, mine[i].content) for i in pick],
                      [label_of(task, r.output) for r in ref if r.output is not None], [mine[i].escalated for i in pick],
                      expected, w, n_expected)
            v["judge_s"] = time.perf_counter() - t1
            verdicts.append(v)
        sweep[cond] = {"summary": summarize(verdicts), "per_seed": [
            {"seed": s, "drift": v["drift"], **{k: {kk: c[kk] for kk in ("p_value", "effect", "tv", "share", "flagged") if kk in c}
                                                for k, c in v["checks"].items()}} for s, v in enumerate(verdicts)]}
        print(cond, json.dumps(sweep[cond]["summary"]), flush=True)

    result = {
        "what": "potstill watch on a copy of the quickstart run: flag rate over seeds per traffic condition, at the default thresholds",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        "thresholds": w0.model_dump(),
        "conditions": {
            "unshifted": "held-out BBC articles (not in train.jsonl), the corpus' own topic mix",
            "topic": "held-out BBC articles on sport and tech only",
            "domain": "first sentences of Python standard-library docstrings (another domain of English; not another language)",
        },
        "served": {c: {**served[c], "ledger_rows": pool_sizes[c]} for c in CONDITIONS},
        "end_to_end": {c: {k: v for k, v in e2e[c].items() if k != "table"} for c in CONDITIONS},
        "end_to_end_table_unshifted": e2e["unshifted"]["table"],
        "sweep_method": (f"each condition's served rows (its ledger rows, answers and escalations as the server gave them) are "
                         f"embedded once with the student (watch's embed_all); per seed s, a window of {w0.window} rows is "
                         f"drawn with Random('window-s'), the reference sample and permutations use watch.seed = s, and "
                         f"potstill.watch.judge decides, as `potstill watch` does; windows of different seeds overlap "
                         f"(pools: {pool_sizes})"),
        "embedding_s_total": embed_s,
        "sweep": sweep,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
