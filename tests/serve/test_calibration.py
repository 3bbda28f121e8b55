"""Serve's calibration on a real run directory: the OOD threshold pools val with training inputs
the reference does not hold (a tiny student on disk; the teacher is never called)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch

from potstill.records import read_records
from potstill.serve import calibration, run_config
from potstill.serve.routing import ood_distance
from potstill.serve.service import load_service
from tests.serve.conftest import TEACHER_KEY, write_run


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def test_ood_threshold_pools_val_with_training_inputs_outside_the_reference(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1", ood_reference=10, api_key_env="")
    service = load_service(run, run_config(run, None), device="cpu")
    try:
        stats = service.routing.stats
        assert (stats["n_reference"], stats["n_ood_holdout"], stats["n_val"], stats["n_ood_sample"]) == (10, 10, 20, 30)
        train = read_records(run / "train.jsonl")
        # The reference: 10 of the 30 training inputs evenly spread (0, 3, ..., 27); held out: every
        # other one of the remaining 20.
        ref = [train[i] for i in range(0, 30, 3)]
        held = [r for i, r in enumerate(train) if i % 3][::2]
        embed = service.engine.embed
        assert torch.allclose(service.reference, embed([r.messages for r in ref]), atol=1e-5)
        val = read_records(run / "val.jsonl")
        dist = (ood_distance(embed([r.messages for r in val]), service.reference)
                + ood_distance(embed([r.messages for r in held]), service.reference))
        assert service.routing.ood_threshold == pytest.approx(max(_quantile(dist, 0.98), 1e-3), abs=1e-5)
    finally:
        service.close()
    assert os.path.exists(run / "serve" / "routing.json")


def test_a_corrupt_calibration_cache_is_calibrated_again(tmp_path, tiny_model, monkeypatch):
    """RUN/serve/routing.json edited by hand or cut short, or reference.pt truncated: serve stopped
    at start-up with json's JSONDecodeError or torch's unpickling error. Both are a cache of the
    calibration: redone and rewritten."""
    import json

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1", api_key_env="")
    first = load_service(run, run_config(run, None), device="cpu")
    routing, reference = first.routing, first.reference
    first.close()
    saved = json.loads((run / "serve" / "routing.json").read_text())
    for name, text in [("routing.json", '{"key": "' + saved["key"] + '", "confidence_threshold": 0.'),
                       ("routing.json", json.dumps({**saved, "stats": None, "ood_threshold": "high"})),
                       ("reference.pt", "PK\x03\x04 cut short")]:
        (run / "serve" / name).write_text(text)
        service = load_service(run, run_config(run, None), device="cpu")
        try:
            assert service.routing.confidence_threshold == pytest.approx(routing.confidence_threshold)
            assert service.routing.ood_threshold == pytest.approx(routing.ood_threshold)
            assert torch.allclose(service.reference, reference)
        finally:
            service.close()
        assert json.loads((run / "serve" / "routing.json").read_text()) == saved
        assert torch.allclose(torch.load(run / "serve" / "reference.pt")["reference"], reference)


def test_a_calibration_cut_between_its_two_files_is_not_taken_for_the_other_students(tmp_path, tiny_model, monkeypatch):
    """RUN/serve/ holds a pair, routing.json (thresholds, keyed by the student) and reference.pt (the
    OOD reference embeddings), written one after the other. A calibration of student B stopped
    between the two (here: routing.json's temp name is taken, as by a crash) left B's reference.pt
    beside A's routing.json; serving A again took the cache as A's and measured every request's
    distance against B's embeddings. Both files now carry the key: a pair that disagrees is redone."""
    from potstill.redistill.promote import switch
    from tests.helpers.tiny import make_model_dir

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1", api_key_env="")
    make_model_dir(run / "students" / "b", seed=2)
    shutil.copytree(tiny_model, run / "students" / "a")
    switch(run, run / "students" / "a")  # A and B both in students/: each keeps its path, so its key
    first = load_service(run, run_config(run, None), device="cpu")
    reference = first.reference
    first.close()
    switch(run, run / "students" / "b")

    def full_disk(path, text):  # routing.json's write fails after reference.pt's
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:
        m.setattr(calibration, "write_text", full_disk)
        with pytest.raises(OSError, match="No space left"):
            load_service(run, run_config(run, None), device="cpu")
    switch(run, run / "students" / "a")
    again = load_service(run, run_config(run, None), device="cpu")
    try:
        assert torch.allclose(again.reference, reference), "A served with B's out-of-distribution reference"
    finally:
        again.close()


def test_two_calibrations_of_one_run_at_once_both_finish(tmp_path, tiny_model, monkeypatch):
    """Two servers calibrating one run at once (started together, or both hot-swapping one promoted
    student) shared the temp names RUN/serve/reference.tmp and routing.tmp: the one that renamed
    first took the other's file, which stopped with FileNotFoundError naming a temp file the user
    never made (at start-up exit 2; on a hot swap, the old student served another minute). Here the
    other calibration runs whole between this one's save of reference.pt and its rename."""
    from potstill.models.loading import load_lm
    from potstill.serve.engine import TransformersEngine
    from potstill.tasks import get_task

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1", api_key_env="")
    cfg = run_config(run, None)
    task = get_task(cfg.task)
    engine = TransformersEngine(load_lm(str(run / "student"), device="cpu"), task)
    save, other = torch.save, []

    def save_then_the_other_server_calibrates(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if not other:
            other.append(None)  # once: the other server's own save below only saves
            other[0] = calibration.calibrate_run(run, cfg, engine, task, force=True)

    monkeypatch.setattr(torch, "save", save_then_the_other_server_calibrates)
    routing, reference = calibration.calibrate_run(run, cfg, engine, task, force=True)
    monkeypatch.setattr(torch, "save", save)
    assert other and torch.allclose(other[0][1], reference)
    assert sorted(os.listdir(run / "serve")) == ["reference.pt", "routing.json"]  # no temp file left
    cached = calibration.calibrate_run(run, cfg, engine, task)  # the pair on disk is one whole calibration
    assert cached[0].confidence_threshold == routing.confidence_threshold and torch.allclose(cached[1], reference)


def test_an_empty_val_split_is_named_with_what_to_do(tmp_path, tiny_model, monkeypatch):
    """curate kept no val records (a fraction of a few records): serve said "no record has a teacher output
    to calibrate on", as though the teacher had failed. It says the file is empty and names curate.val."""
    from potstill.errors import PotstillError

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1", api_key_env="")
    (run / "val.jsonl").write_text("")
    with pytest.raises(PotstillError, match=r"val.jsonl is empty: curate kept no validation records.*curate.val"):
        load_service(run, run_config(run, None), device="cpu")
