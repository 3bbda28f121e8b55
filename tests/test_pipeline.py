"""End to end through the real CLI on tiny models: every stage writes its artifacts, a rerun sends
no teacher call (the ledger proves it), and a changed setting reruns only what depends on it."""

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from potstill.config import load_config
from tests.helpers.chat_server import ChatServer
from tests.helpers.cli import run_in_process

LABELS = ["sports", "tech", "politics"]
KEYWORDS = {"sports": ["match", "team", "goal", "win"], "tech": ["phone", "software", "internet", "computer"],
            "politics": ["minister", "party", "vote", "election"]}
FILLER = "the a of to in and on for with by is was were has have market shares bank profit film music star".split()


def write_inputs(path: Path, n_per_label: int = 12) -> None:
    """Distinct short texts (no two are near-duplicates), each with two of its label's keywords."""
    rng = random.Random(0)
    rows = []
    for label, words in KEYWORDS.items():
        for _ in range(n_per_label):
            text = rng.sample(words, 2) + rng.sample(FILLER, 6)
            rng.shuffle(text)
            rows.append({"input": " ".join(text), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def potstill(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``potstill ARGS`` through the CLI's entry point, in this process (each command's fresh interpreter
    imported torch and transformers again, about 8 s of the pipeline's each)."""
    return run_in_process(list(args), cwd, {**os.environ, **(env or {})})


@pytest.fixture
def project(tmp_path, tiny_model, tiny_model_b):
    write_inputs(tmp_path / "inputs.jsonl")
    cfg = {
        "run_dir": "run",
        "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "local", "model": str(tiny_model_b), "prompt_format": "chat", "batch_size": 4,
                    "price": {"usd_per_hour": 1.0}},
        "student": {"model": str(tiny_model), "max_length": 64},
        "pilot": {"n": 10},
        "curate": {"val": 4, "test": 8},
        "train": {"lr": 0.01, "epochs": 3, "batch_size": 4},
        "evaluate": {"latency_samples": 3, "batch_size": 4},
    }
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def teacher_calls(run: Path) -> int:
    db = sqlite3.connect(run / "calls.sqlite")
    return db.execute("SELECT COUNT(*) FROM calls WHERE role='teacher'").fetchone()[0]


def test_run_twice_then_change_one_setting(project):
    run = project / "run"
    first = potstill("run", "-c", "potstill.yaml", cwd=project)
    assert first.returncode == 0, first.stderr
    for name in ("pilot.json", "teacher.jsonl", "train.jsonl", "val.jsonl", "test.jsonl", "card.md", "card.json",
                 "metrics.jsonl", "train.json", "eval.json", "manifest.json", "timings.json"):
        assert (run / name).exists(), name
    assert (run / "student" / "config.json").exists()
    # train calibrated the student for int8 on its training inputs (engines.calibration)
    cal = json.loads((run / "train.json").read_text())["int8_calibration"]
    assert cal["inputs"] > 0 and 0.02 <= cal["recheck_margin"] <= 0.5
    assert (run / "student" / "int8_calibration.safetensors").exists()
    assert "int8 calibration on" in first.stderr + first.stdout
    # and kept its importance matrix for the GGUF mixes (export.imatrix)
    imat = json.loads((run / "train.json").read_text())["imatrix"]
    assert imat["inputs"] > 0 and imat["layers"] > 0 and (run / "student" / "imatrix.safetensors").exists()
    # which, written after the int8 calibration, must not change the weights' identity the calibration
    # recorded (it did: the quickstart's int8 evaluate then refused the calibration as another model's)
    from potstill.engines import calibration
    from potstill.models.loading import model_identity

    kept = calibration.load(run / "student")
    assert calibration.weights_of(model_identity(str(run / "student"), run / "student")) == kept.info["weights"]
    n_calls = teacher_calls(run)
    # The run saved the config it ran with, which serve, watch and redistill load by default.
    assert load_config(run / "potstill.yaml").model_dump(exclude={"run_dir"}) == \
        load_config(project / "potstill.yaml").model_dump(exclude={"run_dir"})
    # 36 inputs; the pilot's 10 are a subset and come from the cache during generate.
    assert n_calls == 36
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["models"]) == {"untrained student", "teacher", "student"}
    assert ev["models"]["student"]["latency_batch1"]["n"] == 3
    assert isinstance(ev["verdict"]["go"], bool)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] * 0.5, losses  # the student learns the teacher's labels

    second = potstill("run", "-c", "potstill.yaml", cwd=project)
    assert second.returncode == 0, second.stderr
    assert teacher_calls(run) == n_calls  # the ledger proves no teacher call was made
    timings = json.loads((run / "timings.json").read_text())
    assert all(t["skipped"] for t in timings.values()), timings

    # A new learning rate reruns train and evaluate only.
    third = potstill("run", "-c", "potstill.yaml", "--train.lr", "0.02", cwd=project)
    assert third.returncode == 0, third.stderr
    timings = json.loads((run / "timings.json").read_text())
    assert {k for k, t in timings.items() if not t["skipped"]} == {"train", "evaluate"}
    assert teacher_calls(run) == n_calls
    assert load_config(run / "potstill.yaml").train.lr == 0.02


def test_kd_and_lora(project):
    out = potstill("run", "-c", "potstill.yaml", "--train.objective", "kd", "--train.method", "lora",
                   "--train.lr", "0.05", cwd=project)
    assert out.returncode == 0, out.stderr
    run = project / "run"
    assert (run / "student" / "adapter_config.json").exists()
    # LoRA: the adapter is calibrated too (loaded merged onto its base)
    assert json.loads((run / "train.json").read_text())["int8_calibration"]["inputs"] > 0, out.stderr
    # Retrained without calibration, the adapter (saved into the same directory) keeps no stale file.
    again = potstill("run", "-c", "potstill.yaml", "--train.objective", "kd", "--train.method", "lora",
                     "--train.lr", "0.05", "--train.int8_calibration", "0", cwd=project)
    assert again.returncode == 0, again.stderr
    assert (run / "student" / "adapter_config.json").exists()
    assert not (run / "student" / "int8_calibration.safetensors").exists()
    assert "int8_calibration" not in json.loads((run / "train.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("kd" in r for r in rows)
    # After a promotion RUN/student is a symlink into RUN/students/: retraining replaces the link
    # with a new directory and leaves the archived student as it was (an adapter was saved into the
    # link's target, overwriting the champion kept for rollback).
    kept = run / "students" / "champion"
    kept.parent.mkdir()
    (run / "student").rename(kept)
    (run / "student").symlink_to(Path("students") / "champion")
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    third = potstill("train", "-c", "potstill.yaml", "--train.objective", "kd", "--train.method", "lora",
                     "--train.lr", "0.02", "--train.int8_calibration", "0", cwd=project)
    assert third.returncode == 0, third.stderr
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    assert not (run / "student").is_symlink() and (run / "student" / "adapter_config.json").exists()
    # A full fine-tune and then an adapter: the adapter's directory holds no full weights beside it.
    for method in ("full", "lora"):
        out = potstill("train", "-c", "potstill.yaml", "--train.objective", "kd", "--train.method", method,
                       "--train.lr", "0.05", "--train.int8_calibration", "0", cwd=project)
        assert out.returncode == 0, out.stderr
    assert (run / "student" / "adapter_config.json").exists()
    assert not (run / "student" / "config.json").exists()
    assert not list((run / "student").glob("model*.safetensors"))
    # soft labels travelled from the teacher through curate into train.jsonl
    rec = json.loads((run / "train.jsonl").read_text().splitlines()[0])
    assert set(rec["label_probs"]) == set(LABELS) and abs(sum(rec["label_probs"].values()) - 1) < 1e-5


def test_a_lora_student_on_a_cut_base_is_calibrated_measured_and_served_cut(project):
    """The adapter of a student cut by student.num_layers sits in a folder that names the whole base: its
    int8 calibration and importance matrix were measured on the whole base (the int8 engine then refused
    the calibration: ranges for layers the served student lacks), and evaluate and serve ran it whole."""
    import torch

    from potstill.engines import calibration
    from potstill.engines.transformers import TransformersEngine
    from potstill.export import imatrix
    from potstill.models.scoring import decoder

    out = potstill("run", "-c", "potstill.yaml", "--train.method", "lora", "--train.lr", "0.05",
                   "--student.num_layers", "1", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "the untrained student is student.model cut to its first 1 layer (student.num_layers)" in out.stderr
    student = project / "run" / "student"
    cal = calibration.load(student)
    assert cal is not None and {k.split(".")[1] for k in cal.absmax if k.startswith("layers.")} == {"0"}
    assert imatrix.layers_of(imatrix.load(student)) == 1
    # The folder says how much of its base the adapter goes on: evaluate, serve, watch and redistill load
    # it by path alone (they loaded the whole base under the adapter, a model never trained or evaluated).
    assert json.loads((student / "potstill_layers.json").read_text()) == {"num_hidden_layers": 1}
    served = TransformersEngine.load(str(student), device="cpu")
    assert served.lm.model.config.num_hidden_layers == 1 and served.lm.identity.endswith("[:1]")
    layers = {n for n, m in decoder(served.lm.model).named_modules() if isinstance(m, torch.nn.Linear)}
    assert calibration.misfit(cal, served.lm.identity, layers) is None
    assert json.loads((project / "run" / "eval.json").read_text())["models"]["student"]


def test_bad_inputs_fail_with_one_line_and_leave_nothing(project):
    (project / "bad.jsonl").write_text('{"input": "fine"}\n{"input": oops}\n')
    out = potstill("generate", "-c", "potstill.yaml", "--data.inputs", "bad.jsonl", cwd=project)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "bad.jsonl:2: malformed JSON" in out.stderr
    assert not (project / "run" / "teacher.jsonl").exists()

    out = potstill("run", "-c", "potstill.yaml", "--train.learning_rate", "1", cwd=project)
    assert out.returncode != 0 and "No such option: --train.learning_rate" in out.stderr and "--train.lr" in out.stderr
    assert "Traceback" not in out.stderr
    cfg = yaml.safe_load((project / "potstill.yaml").read_text())
    cfg["train"]["learning_rate"] = 1
    (project / "typo.yaml").write_text(yaml.safe_dump(cfg))
    out = potstill("run", "-c", "typo.yaml", cwd=project)
    assert out.returncode != 0 and "unknown config field 'train.learning_rate'; did you mean 'train.lr'?" in out.stderr
    assert out.stderr.strip().count("\n") == 0

    out = potstill("generate", "-c", "potstill.yaml", "--teacher.type", "openai", "--teacher.model", "m",
                   "--teacher.api_key_env", "MY_TEACHER_KEY", cwd=project, env={"MY_TEACHER_KEY": ""})
    assert out.returncode != 0 and "MY_TEACHER_KEY is not set" in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert not (project / "run" / "teacher.jsonl").exists()


def test_gold_outside_the_label_set_is_warned_about_matched_by_case_or_refused(project):
    rows = [json.loads(x) for x in (project / "inputs.jsonl").read_text().splitlines()]
    rows[1]["label"], rows[2]["label"] = "Sports", "TECH"  # case only: matched to the label set
    rows[4]["label"], rows[30]["label"] = "sprots", "weather"  # 2 of 36 unknown (5.6%)
    (project / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = potstill("generate", "-c", "potstill.yaml", "--data.inputs", "odd.jsonl", cwd=project)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "2 of 36 gold labels (6%) are not in task.labels" in out.stderr
    assert "odd.jsonl:5: 'sprots'" in out.stderr and "data.max_unknown_gold=0.05" in out.stderr
    assert not (project / "run" / "teacher.jsonl").exists()

    # stderr is a pipe here, as in a run logged to a file: progress comes as plain lines (issue 16.7). A process
    # of its own: in this one, with torch loaded, generate can end before the first 0.2 s line is due.
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", "potstill.yaml", "--data.inputs",
                          "odd.jsonl", "--data.max_unknown_gold", "0.1"], cwd=project, capture_output=True, text=True,
                         env={**os.environ, "POTSTILL_PROGRESS": "auto", "POTSTILL_PROGRESS_INTERVAL": "0.2"}, timeout=600)
    assert out.returncode == 0, out.stderr
    assert any(ln.startswith("generate: teacher ") and "36/36 (100%), done in" in ln for ln in out.stderr.splitlines())
    assert 'warning: 2 of 36 gold labels (6%) are not in task.labels ("sports", "tech", "politics"); first at ' \
        in out.stderr
    assert "odd.jsonl:5: 'sprots'" in out.stderr and "2 gold labels matched task.labels only up to case" in out.stderr
    got = [json.loads(x) for x in (project / "run" / "teacher.jsonl").read_text().splitlines()]
    assert [g.get("label") for g in got[1:3]] == ["sports", "tech"]
    assert got[4].get("label") is None and got[4]["meta"]["unknown_label"] == "sprots"


def test_editing_a_file_named_in_the_config_reruns_its_stage_and_moving_the_project_does_not(project, tmp_path_factory):
    first = potstill("generate", "-c", "potstill.yaml", cwd=project)
    assert first.returncode == 0, first.stderr
    again = potstill("generate", "-c", "potstill.yaml", cwd=project)
    assert "generate: up to date, skipped" in again.stderr
    # The project moves to another directory: same contents, so still up to date.
    moved = tmp_path_factory.mktemp("moved") / "project"
    import shutil

    shutil.copytree(project, moved)
    out = potstill("generate", "-c", "potstill.yaml", cwd=moved)
    assert out.returncode == 0 and "generate: up to date, skipped" in out.stderr, out.stderr
    # A single stage saves the run's config too, with paths relative to the run, so it moves along.
    assert load_config(moved / "run" / "potstill.yaml").data.inputs == str(moved / "inputs.jsonl")
    # Editing the inputs in place reruns generate (the ledger still answers the old inputs).
    with open(moved / "inputs.jsonl", "a") as f:
        f.write(json.dumps({"input": "vote for the new phone minister"}) + "\n")
    out = potstill("generate", "-c", "potstill.yaml", cwd=moved)
    assert out.returncode == 0 and "up to date" not in out.stderr and "1 teacher calls" in out.stderr, out.stderr


def test_changing_generate_n_reruns_the_pilot(project, tiny_model_b):
    """The pilot asks the teacher through generate's settings: with generate.n changed, its numbers
    come from other requests, so it must not stay "up to date" (it did before stages declared
    what they read)."""
    cfg = yaml.safe_load((project / "potstill.yaml").read_text())
    with ChatServer(str(tiny_model_b)) as teacher:
        cfg["teacher"] = {"type": "openai", "model": "tiny", "base_url": teacher.base_url, "api_key_env": "TEACHER_KEY"}
        # Free text: the tiny teacher's answers are none of the labels, and a pilot with no usable
        # teacher answer stops (tests/test_pilot_failures.py).
        cfg["task"] = {"type": "freetext", "instruction": "classify the text"}
        (project / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        env = {"TEACHER_KEY": "unused-by-the-test-server"}
        first = potstill("pilot", "-c", "potstill.yaml", cwd=project, env=env)
        assert first.returncode == 0, first.stderr
        asked = sum(teacher.requests.values())
        assert asked == 10
        again = potstill("pilot", "-c", "potstill.yaml", cwd=project, env=env)
        assert "pilot: up to date, skipped" in again.stderr and sum(teacher.requests.values()) == asked
        changed = potstill("pilot", "-c", "potstill.yaml", "--generate.n", "2", cwd=project, env=env)
        assert changed.returncode == 0, changed.stderr
        assert "up to date" not in changed.stderr, changed.stderr
        assert sum(teacher.requests.values()) == 2 * asked  # each input asked anew, now for 2 samples
