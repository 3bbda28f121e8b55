"""How many real gold-labelled articles to mix into the quickstart's train split, measured.

    python benchmarks/quickstart_mix.py [--inputs 300] [--test 100] [--orders 1] [--real 0 75 150 300]

One reduced quickstart (fewer inputs, one shot order, no pilot) labels its inputs once; then
curate, train and evaluate rerun for each number of real articles on the same teacher labels
and the same test split, so the rows differ only in the mix. Writes quickstart_mix.json beside
this script: per mix, the train size, train seconds, the student's gold accuracy and agreement
with the teacher, the teacher's gold accuracy on the same test articles, and the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from potstill.pipeline import run_all
from potstill.quickstart import quickstart_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=300)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--orders", type=int, default=1)
    ap.add_argument("--real", type=int, nargs="+", default=[0, 75, 150, 300])
    ap.add_argument("--out", default=str(Path(__file__).with_name("quickstart_mix.json")))
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="potstill-mix-"))
    # Without the untrained student and with few latency samples: the mix changes neither.
    over = {"evaluate.include_untrained": False, "evaluate.latency_samples": 5, "curate.real_ratio": 10.0}
    rows = []
    for n_real in args.real:
        cfg = quickstart_config(run, over, n_inputs=args.inputs, n_test=args.test, orders=args.orders, n_real=n_real)
        t0 = time.perf_counter()
        out = run_all(cfg, skip_pilot=True)
        ev = json.loads((run / "eval.json").read_text())
        card = json.loads((run / "card.json").read_text())
        s, t = ev["models"]["student"], ev["models"]["teacher"]
        rows.append({"real": n_real, "real_added": card["counts"].get("real_added", 0), "train": card["counts"]["train"],
                     "test": ev["n_test"], "seconds": {k: v["seconds"] for k, v in out["timings"].items()},
                     "wall_s": round(time.perf_counter() - t0, 1), "student_gold": s["gold_metric"],
                     "teacher_gold": t["gold_metric"], "agreement": s["agreement_with_teacher"],
                     "gold_ratio": ev["slices"][0]["gold"]["relative"], "decision": ev["verdict"]["decision"],
                     "reason": ev["verdict"]["reason"]})
        print(json.dumps(rows[-1]), flush=True)
    result = {"what": "reduced quickstart: same teacher labels and test split, real gold-labelled articles mixed "
                      "into train", "args": vars(args), "cpus": os.cpu_count(), "loadavg_1m_end": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
