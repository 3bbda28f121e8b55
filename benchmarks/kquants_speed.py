"""potstill's numpy k-quant writer (``export.kquants``) against an older copy of itself: the same bytes, and how fast.

    PYTHONPATH=src python benchmarks/kquants_speed.py [--old PATH] [--repeats 3] [--file F32.gguf]

``--old`` is an older ``kquants.py`` (default: the row-wise fit this one replaced, ``git show
e8253a5:src/potstill/export/kquants.py``). Every kind (Q4_K, Q5_K, Q6_K) is written by both from the
same inputs, without and with an importance matrix: a 1,024 x 2,816 heavy-tailed matrix (Student-t,
5 dof, 1% of the columns 8x, as tests/export/test_kquants.py), a 576 x 1,536 gaussian, and a
matrix of awkward rows (zeros, -0.0, constants of either sign, a lone outlier, tiny and subnormal values,
one sign only). Then each kind's seconds on the 1,024 x 2,816 matrix, old and new in the same process on
the same inputs, best of ``--repeats`` (new with its default threads, and on one thread). Writes
``benchmarks/kquants_speed.json``; exits 1 if any byte differs. ``--file``: an f32 GGUF also
requantized whole (``gguf_quant.requantize``) to q4_k_m and q6_k by each, timed once each, the two
files compared byte for byte.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from checks import finish  # noqa: E402
from potstill.export import kquants  # noqa: E402

KINDS = ("Q4_K", "Q5_K", "Q6_K")
BASELINE = "e8253a5"  # the row-wise fit, before this benchmark


def load_old(path: str | None) -> tuple[ModuleType, dict[str, str]]:
    """The older kquants as a module of its own, from ``path`` or else git's HEAD copy; what it was."""
    if path is None:
        root = Path(__file__).resolve().parents[1]
        text = subprocess.run(["git", "show", f"{BASELINE}:src/potstill/export/kquants.py"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
        label = f"git {BASELINE}"
    else:
        text, label = Path(path).read_text(), path
    with tempfile.TemporaryDirectory(prefix="potstill-kquants-") as tmp:
        file = Path(tmp) / "kquants_old.py"
        file.write_text(text)
        spec = importlib.util.spec_from_file_location("kquants_old", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module, {"from": label, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.distributions.StudentT(5.0).sample((rows, cols)) * 0.02
    x[:, torch.rand(cols, generator=g) < 0.01] *= 8
    return x.numpy()


def awkward(cols: int = 1024) -> np.ndarray:
    """Rows that reach the fit's edge cases: zero and constant sub-blocks, one sign only, a lone outlier."""
    rng = np.random.default_rng(2)
    rows = [np.zeros(cols), np.full(cols, 0.25), np.full(cols, -1.0), np.full(cols, 3e-8),
            np.abs(rng.standard_normal(cols)) * 0.01, -np.abs(rng.standard_normal(cols)) * 0.01,
            rng.standard_normal(cols) * 1e-6]
    spike = rng.standard_normal(cols) * 0.01
    spike[::97] = 5.0
    rows.append(spike)
    half = rng.standard_normal(cols) * 0.02
    half[: cols // 2] = 0.0
    rows.append(half)
    steps = np.repeat(rng.standard_normal(cols // 16), 16) * 0.05  # constant 16-weight runs (Q6_K's sub-blocks)
    rows.append(steps)
    grid = rng.integers(-8, 8, cols) * 2.0 ** -10  # values on a grid
    rows.append(grid)
    mixed = rng.standard_normal(cols) * 0.02
    mixed[32:64], mixed[256:288], mixed[512:528] = 0.0, 0.7, -0.3
    rows.append(mixed)
    rows.append(np.full(cols, -0.0))
    tiny = rng.standard_normal(cols) * 1e-40  # subnormal in float32
    tiny[::5] = 1e-45
    rows.append(tiny)
    return np.stack(rows).astype(np.float32)


def importance(cols: int, seed: int, zeros: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imp = np.exp(rng.standard_normal(cols) * 1.5).astype(np.float32)
    if zeros:
        imp[rng.random(cols) < 0.05] = 0.0  # channels that never saw an input
    return imp


def best_of(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Each call's best time of ``repeats``, the calls taking turns (a busy spell on the machine then
    falls on all of them, not on one)."""
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def machine() -> dict[str, Any]:
    try:
        lscpu = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                     .stdout.splitlines() if ":" in line)
    except OSError:
        lscpu = {}
    field = lambda name: lscpu.get(name, "").strip()  # noqa: E731
    return {"cpu_model": field("Model name"), "cpus": os.cpu_count(), "threads_per_core": field("Thread(s) per core"),
            "l2_cache": field("L2 cache"), "numpy": np.__version__, "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg())}


def requantize_both(f32: Path, old: ModuleType, failures: list[str]) -> dict[str, Any]:
    """``f32`` requantized by gguf_quant with the old k-quant writer and with the new one: seconds, same bytes."""
    from potstill.export import gguf_quant

    out: dict[str, Any] = {"file": str(f32), "bytes": f32.stat().st_size}
    with tempfile.TemporaryDirectory(prefix="potstill-kquants-file-") as tmp:
        for mix in ("q4_k_m", "q6_k"):
            row, digests = {}, {}
            for who, module in (("old", old), ("new", kquants)):
                gguf_quant.kquants = module
                try:
                    t0 = time.perf_counter()
                    gguf_quant.requantize(f32, Path(tmp) / f"{who}.gguf", mix)
                    row[f"{who}_s"] = round(time.perf_counter() - t0, 2)
                finally:
                    gguf_quant.kquants = kquants
                digests[who] = hashlib.sha256((Path(tmp) / f"{who}.gguf").read_bytes()).hexdigest()
            row["identical"] = digests["old"] == digests["new"]
            row["speedup"] = round(row["old_s"] / row["new_s"], 2)
            print(f"{f32.name} {mix}: old {row['old_s']} s, new {row['new_s']} s, "
                  + ("identical" if row["identical"] else "FILES DIFFER"), flush=True)
            if not row["identical"]:
                failures.append(f"{mix} of {f32}: the files differ")
            out[mix] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help=f"an older kquants.py (default: git {BASELINE}'s)")
    ap.add_argument("--file", type=Path, help="an f32 GGUF to requantize whole with each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    old, old_label = load_old(args.old)
    start = machine()

    big = heavy_tailed(1024, 2816)
    inputs = {"student_t_1024x2816": big,
              "gaussian_576x1536": (np.random.default_rng(1).standard_normal((576, 1536)) * 0.02).astype(np.float32),
              "awkward_14x1024": awkward()}
    failures: list[str] = []
    identity: list[dict[str, Any]] = []
    for name, x in inputs.items():
        cols = x.shape[1]
        for imp_name, imp in (("none", None), ("imatrix", importance(cols, 3)),
                              ("imatrix_with_zeros", importance(cols, 4, zeros=True))):
            for kind in KINDS:
                a, b = old.quantize(x, kind, imp), kquants.quantize(x, kind, imp)
                # other chunks and threads: each sub-block's bytes are its own
                c = kquants.quantize(x, kind, imp, rows_per_chunk=5, threads=3)
                same = a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b)) and np.array_equal(b, c)
                differ = int((a != b).sum()) if a.shape == b.shape else -1
                identity.append({"input": name, "importance": imp_name, "kind": kind, "bytes": int(b.size),
                                 "identical": same, "bytes_differing": differ})
                print(f"{name:22s} {imp_name:20s} {kind}: " + ("identical" if same else f"{differ} bytes differ"),
                      flush=True)
                if not same:
                    failures.append(f"{kind} on {name} (importance {imp_name}): {differ} of {b.size} bytes differ")

    timings: dict[str, dict[str, float]] = {}
    imp = importance(big.shape[1], 3)
    for kind in KINDS:
        for imp_name, w in (("none", None), ("imatrix", imp)):
            t = best_of({"old": lambda: old.quantize(big, kind, w), "new": lambda: kquants.quantize(big, kind, w),
                         "one": lambda: kquants.quantize(big, kind, w, threads=1)}, args.repeats)
            timings[f"{kind}/{imp_name}"] = {"old_s": round(t["old"], 4), "new_s": round(t["new"], 4),
                                             "new_one_thread_s": round(t["one"], 4),
                                             "speedup": round(t["old"] / t["new"], 2),
                                             "speedup_one_thread": round(t["old"] / t["one"], 2)}
            print(f"{kind} importance={imp_name}: old {t['old']:.3f} s, new {t['new']:.3f} s "
                  f"({t['old'] / t['new']:.2f}x), new on one thread {t['one']:.3f} s ({t['old'] / t['one']:.2f}x)",
                  flush=True)

    whole = requantize_both(args.file, old, failures) if args.file else None
    out = {"what": "export.kquants.quantize: old (--old) vs new, same process, same inputs; "
                   f"seconds for a 1,024 x 2,816 float32 matrix, best of {args.repeats}",
           "old": old_label, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": start, "loadavg_at_end": list(os.getloadavg()),
           "new_threads": min(kquants._cpus(), kquants.MAX_THREADS), "timings": timings, "whole_file": whole,
           "byte_identity": {"cases": len(identity), "identical": sum(c["identical"] for c in identity),
                             "per_case": identity}}
    finish(out, failures, args.out)


if __name__ == "__main__":
    main()
