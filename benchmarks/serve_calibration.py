"""How serve's calibrated routing holds out of sample: shares escalated on val and on test.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/serve_calibration.py RUN [--out benchmarks/serve_calibration.json]

RUN is a finished run (the quickstart's). Loads the service as `potstill serve RUN` does
(recalibrating), answers val and test through its engine, and counts each routing reason. For the
OOD threshold it also reports the old rule (the ood_quantile of val's distances alone) beside the
pooled one (val plus training inputs left out of the reference), and the share of test and of the
held-out training inputs beyond each. Exits 1 (after writing the JSON) when the served threshold
is not that pooled quantile.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import torch

from potstill.records import read_records
from potstill.serve import run_config
from potstill.serve.routing import MIN_OOD, _quantile, ood_distance
from potstill.serve.calibration import reference_and_holdout
from potstill.serve.service import load_service


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    cfg = run_config(args.run, None, {"serve.api_key_env": ""})
    ledger = Path(tempfile.mkdtemp(prefix="potstill-calib-")) / "calls.sqlite"
    service = load_service(args.run, cfg, recalibrate=True, ledger_path=ledger)
    failure = None
    try:
        live, q = service.live, cfg.serve.ood_quantile
        _, held = reference_and_holdout(read_records(args.run / "train.jsonl"), cfg.serve.ood_reference)
        splits = {"val": read_records(args.run / "val.jsonl"), "test": read_records(args.run / "test.jsonl")}
        dist, out = {}, {"run": str(args.run), "engine": live.engine.identity, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "routing": {k: v for k, v in live.routing.to_json().items() if k != "stats"},
                         "stats": {k: v for k, v in live.routing.stats.items() if k != "sweep"}, "splits": {}}
        for name, recs in splits.items():
            answers = live.engine.answer([r.messages for r in recs])
            dist[name] = ood_distance(torch.stack([a.embedding for a in answers]), live.reference)
            reasons = collections.Counter(live.routing.decide(a.confidence, d, a.invalid)[1]
                                          for a, d in zip(answers, dist[name]))
            agree = sum(a.parsed == r.output for a, r in zip(answers, recs)) / len(recs)
            out["splits"][name] = {"n": len(recs), "reasons": {k: v / len(recs) for k, v in reasons.items()},
                                   "escalated": 1 - reasons["confident"] / len(recs), "student_alone_agreement": agree}
        dist["held-out training inputs"] = ood_distance(live.engine.embed([r.messages for r in held]), live.reference)
        old = _quantile(dist["val"], q)
        # The served threshold must be the rule as documented: the quantile of val pooled with the
        # held-out training inputs (floored at MIN_OOD); else these shares measure something else.
        pooled = max(_quantile(dist["val"] + dist["held-out training inputs"], q), MIN_OOD)
        if abs(pooled - live.routing.ood_threshold) > 1e-5:
            failure = f"served OOD threshold {live.routing.ood_threshold:.6f} is not the pooled quantile {pooled:.6f}"
        out["ood_threshold_val_only"], out["ood_threshold_pooled"] = old, live.routing.ood_threshold
        out["share_beyond"] = {name: {"val_only": sum(x > old for x in d) / len(d),
                                      "pooled": sum(x > live.routing.ood_threshold for x in d) / len(d)}
                               for name, d in dist.items()}
    finally:
        service.close()
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("splits", "share_beyond")}, indent=2))
    if failure:
        raise SystemExit(f"CORRECTNESS FAILED: {failure}")


if __name__ == "__main__":
    main()
