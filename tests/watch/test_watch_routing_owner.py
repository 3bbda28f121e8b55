"""`potstill watch` judges the escalation share against RUN/serve/routing.json only when serve
calibrated that file for the student now in RUN/student.

routing.json is one file that every `potstill serve` (and every hot swap) rewrites for the student
it loads. Promote B and serve it, stop the server, roll back to the original: routing.json is B's,
and watch judged the original's traffic against B's validation share, a verdict on numbers that
describe another model. Real parts: tiny students on disk, serve's own calibration, ledger rows as
serve writes them."""

from __future__ import annotations

import json

from potstill.config import Config
from potstill.ledger import Ledger
from potstill.models.loading import load_lm
from potstill.serve.calibration import calibrate_run
from potstill.serve.engine import TransformersEngine
from potstill.tasks import get_task
from potstill.watch import watch_run
from tests.helpers.tiny import make_model_dir
from tests.watch.test_watch_after_swap import LABELS, _run, _served


def _cfg(target: float) -> Config:
    return Config(task={"labels": LABELS, "instruction": "classify"},
                  serve={"target_escalation": target, "ood_quantile": 1.0},
                  watch={"window": 60, "min_requests": 30, "reference_size": 40, "permutations": 299})


def _calibrate(run, student_dir, cfg: Config) -> float:
    task = get_task(cfg.task)
    calibrate_run(run, cfg, TransformersEngine(load_lm(str(student_dir), device="cpu"), task), task, force=True)
    return json.loads((run / "serve" / "routing.json").read_text())["stats"]["val_escalation"]


def test_a_routing_file_calibrated_for_another_student_is_not_judged_against(tmp_path, tiny_model):
    run, texts, current = _run(tmp_path, tiny_model)
    (run / "val.jsonl").write_text((run / "train.jsonl").read_text())
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:15], current, True, 1000.0)  # a quarter escalated
        _served(ledger, texts[15:60], current, False, 2000.0)

    # routing.json as a server of student B left it (calibrated to escalate half of val).
    other = make_model_dir(tmp_path / "b", seed=2)
    assert _calibrate(run, other, _cfg(0.5)) >= 0.4
    report = watch_run(run, _cfg(0.0), device="cpu")
    esc = report["checks"]["escalation"]
    assert esc["share"] == 0.25
    assert esc["expected"] is None and esc["max"] is None and not esc["flagged"], esc
    note = next(n for n in report["notes"] if "routing.json" in n)
    assert "another student" in note and "reported but not judged" in note

    # Calibrated for the student in RUN/student: judged against its own share, as before.
    own = _calibrate(run, run / "student", _cfg(0.0))
    esc = watch_run(run, _cfg(0.0), device="cpu")["checks"]["escalation"]
    assert esc["expected"] == own and esc["flagged"] == (0.25 > own + 0.15)
