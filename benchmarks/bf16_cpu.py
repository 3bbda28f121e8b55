"""bf16 against fp32 on this CPU for the quickstart's two models: the trained student's forward
(engine transformers, eager) and the local teacher (gemma-3-270m, its three shot orders), the
evidence behind ``potstill.models.loading.bf16_native()`` (which makes the quickstart write
``dtype: bfloat16`` for the teacher and training where it is True).

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/bf16_cpu.py --run RUN --out benchmarks/bf16_zen4.json

RUN is a finished quickstart run. Student: its 250 test articles in batches of 16 (the best of
three passes, fp32 and bf16 taking turns) and 20 of them at batch 1 (median), label logits
compared. Teacher: ``--teacher-n`` test articles through the local teacher at each dtype (after 4
warming ones), the labels compared.

Correctness (exit 1 past it, after writing the JSON): the bf16 teacher gives the fp32 teacher's
label on at least ``MIN_TEACHER_SAME`` of the articles (the student's bf16 agreement is reported,
not gated: the quickstart keeps the student's int8 engine, re-checked in fp32).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.checks import finish

MIN_TEACHER_SAME = 0.97


def student(run: Path) -> dict:
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.models.prompting import label_token_ids
    from potstill.records import read_records
    from potstill.students import student_format
    from potstill.tasks import get_task

    cfg = load_config(run / "potstill.yaml")
    task = get_task(cfg.task)
    msgs = [r.messages for r in read_records(run / "test.jsonl")]
    engines = {d: load_engine("transformers", str(run / "student"), device="cpu", dtype=d) for d in ("float32", "bfloat16")}
    fmt = student_format(engines["float32"], task)
    ids = label_token_ids(engines["float32"].tokenizer, fmt, task.labels)
    for e in engines.values():  # warm
        e.score_labels(fmt, msgs[:32], ids, batch_size=16)
        e.score_labels(fmt, msgs[:2], ids, batch_size=1)
    walls: dict[str, list[float]] = {d: [] for d in engines}
    b1: dict[str, list[float]] = {d: [] for d in engines}
    logits = {}
    for _ in range(3):
        for d, e in engines.items():
            t0 = time.perf_counter()
            out = [e.score_labels(fmt, msgs[s:s + 16], ids, batch_size=16).logits for s in range(0, len(msgs), 16)]
            walls[d].append((time.perf_counter() - t0) / len(msgs))
            logits[d] = torch.cat(out)
            for m in msgs[:20]:
                t0 = time.perf_counter()
                e.score_labels(fmt, [m], ids, batch_size=1)
                b1[d].append(time.perf_counter() - t0)
    same = float((logits["float32"].argmax(-1) == logits["bfloat16"].argmax(-1)).float().mean())
    rows = {d: {"batch16_ms_per_input": round(min(walls[d]) * 1e3, 2),
                "batch1_p50_ms": round(statistics.median(b1[d]) * 1e3, 2)} for d in engines}
    return {"inputs": len(msgs), **rows, "same_label": same,
            "batch16_speedup": rows["float32"]["batch16_ms_per_input"] / rows["bfloat16"]["batch16_ms_per_input"],
            "batch1_speedup": rows["float32"]["batch1_p50_ms"] / rows["bfloat16"]["batch1_p50_ms"]}


def teacher(run: Path, n: int) -> dict:
    from potstill.config import load_config
    from potstill.records import Record, read_records
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    test = read_records(run / "test.jsonl")[: n + 4]
    labels, secs = {}, {}
    for d in ("float32", "bfloat16"):
        cfg = load_config(run / "potstill.yaml")
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"dtype": d})})
        t = get_teacher(cfg.teacher, get_task(cfg.task))
        reqs = [t.request(Record(messages=r.messages)) for r in test]
        t.run(reqs[:4], lambda i, r: None)  # loading, prefixes, calibration
        got: dict[int, str] = {}
        t0 = time.perf_counter()
        t.run(reqs[4:], lambda i, r: got.__setitem__(i, r.output))
        secs[d] = (time.perf_counter() - t0) / (len(reqs) - 4)
        labels[d] = [got[i] for i in range(len(reqs) - 4)]
        del t
    same = sum(a == b for a, b in zip(labels["float32"], labels["bfloat16"])) / len(labels["float32"])
    return {"articles": len(labels["float32"]), "s_per_article": {d: round(s, 4) for d, s in secs.items()},
            "speedup": secs["float32"] / secs["bfloat16"], "same_label": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--teacher-n", type=int, default=60)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                    if f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")})
    out = {"machine": {"cpus": torch.get_num_threads(), "cpu_flags": flags, "torch": torch.__version__,
                       "python": platform.python_version()}}
    out["student"] = student(a.run)
    print("student", json.dumps(out["student"]), flush=True)
    out["teacher"] = teacher(a.run, a.teacher_n)
    print("teacher", json.dumps(out["teacher"]), flush=True)
    failures = []
    if out["teacher"]["same_label"] < MIN_TEACHER_SAME:
        failures.append(f"bf16 teacher gives fp32's label on {out['teacher']['same_label']:.1%} < {MIN_TEACHER_SAME:.0%}")
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
