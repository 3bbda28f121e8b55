"""generate.engine ray beyond one API endpoint: a local teacher model in each worker, and one
endpoint per worker, on a local Ray cluster (ray.init(num_cpus=2)); answers land in the one ledger."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.records import read_records
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, check_output, project

LABELS = ["sports", "tech", "politics"]


@pytest.fixture
def ray_cluster(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("TEACHER_KEY", SECRET)  # before ray.init: workers take the driver's environment then
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def local_project(tmp, teacher_dir, n: int, run: str) -> dict:
    (tmp / "inputs.jsonl").write_text("".join(
        json.dumps({"id": f"r{i}", "input": f"the {['match', 'phone', 'vote'][i % 3]} story number {i}"}) + "\n"
        for i in range(n)))
    cfg = {"run_dir": run, "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": "local", "model": str(teacher_dir), "prompt_format": "chat", "batch_size": 4}}
    (tmp / f"{run}.yaml").write_text(yaml.safe_dump(cfg))
    return {"path": tmp / f"{run}.yaml"}


def test_local_teacher_in_each_ray_worker_matches_one_process(tmp_path, tiny_model_b, ray_cluster):
    one = local_project(tmp_path, tiny_model_b, 24, "one")
    generate_stage(load_config(one["path"]))
    sharded = local_project(tmp_path, tiny_model_b, 24, "ray")
    summary = generate_stage(load_config(sharded["path"], {"generate.engine": "ray", "generate.ray_workers": 2}))
    assert summary["calls"] == 24 and summary["errors"] == 0
    a = {r.id: r for r in read_records(tmp_path / "one" / "teacher.jsonl")}
    b = {r.id: r for r in read_records(tmp_path / "ray" / "teacher.jsonl")}
    assert sorted(b) == sorted(a)  # every input exactly once
    for k in a:
        assert b[k].output == a[k].output
        assert b[k].label_probs == pytest.approx(a[k].label_probs, abs=1e-5)  # the soft labels too
    db = sqlite3.connect(tmp_path / "ray" / "calls.sqlite")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT request_hash) FROM calls WHERE role='teacher'").fetchone() == (24, 24)
    # Rerun: everything comes from the ledger, no worker is started for nothing.
    again = generate_stage(load_config(sharded["path"], {"generate.engine": "ray", "generate.ray_workers": 2}), force=True)
    assert again["calls"] == 0 and again["cache_hits"] == 24


def test_each_ray_worker_calls_its_own_endpoint(tmp_path, ray_cluster):
    with Loopback(key=SECRET, seed=2) as a, Loopback(key=SECRET, seed=3) as b:
        cfg = load_config(project(tmp_path, a.base_url, 120), {
            "generate.engine": "ray", "generate.ray_workers": 2, "generate.ray_endpoints": [a.base_url, b.base_url]})
        summary = generate_stage(cfg)
        got = sum(a.stats()["answered"].values()), sum(b.stats()["answered"].values())
    check_output(tmp_path / "run" / "teacher.jsonl", 120)
    assert summary["calls"] == 120 and got == (60, 60)  # round-robin shards, one endpoint each


def test_ray_asks_for_gpus_it_cannot_have(tmp_path, tiny_model_b, ray_cluster):
    p = local_project(tmp_path, tiny_model_b, 4, "gpu")
    cfg = load_config(p["path"], {"generate.engine": "ray", "generate.ray_gpus_per_worker": 1})
    with pytest.raises(PotstillError, match="needs 2 GPUs; Ray sees 0"):
        generate_stage(cfg)
    assert not (tmp_path / "gpu" / "teacher.jsonl").exists()
