"""A tools task's tiny student trained in the test (potstill's train stage, 1-2 s) and served."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from tests.helpers.live_server import LiveServer


@contextlib.contextmanager
def trained_and_served(root: Path, teacher: Any, task: dict[str, Any], rows: str) -> Iterator[tuple[Any, Any]]:
    """(service, live server) of a run under ``root`` whose student learnt ``rows`` (JSONL records,
    its train and val splits) for ``task``, served under the task's schema (``guided_json``) with
    ``teacher`` (an app) on loopback as its teacher; routing forced to the student."""
    from potstill.config import load_config
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from potstill.train.stage import train_stage
    from tests.export.conftest import make_bpe_model
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    os.environ["TEACHER_KEY"] = TEACHER_KEY
    os.environ["SERVE_KEY"] = SERVE_KEY
    with LiveServer(teacher) as served_teacher:
        bpe = make_bpe_model(root / "bpe")
        run = write_run(root, bpe, served_teacher.url + "/v1", task=task, guided_json=True)
        (run / "train.jsonl").write_text(rows)
        (run / "val.jsonl").write_text(rows)
        train_stage(load_config(run / "potstill.yaml", {
            "run_dir": str(run), "student.model": str(bpe), "train.epochs": 40, "train.lr": 0.01,
            "train.batch_size": 4, "train.lr_scheduler": "constant", "train.device": "cpu"}))
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        service.routing = Routing(confidence_threshold=-float("inf"), ood_threshold=float("inf"))
        try:
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                yield service, live
        finally:
            service.close()
