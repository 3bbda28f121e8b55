"""potstill's own code is part of every stage's fingerprint: a run made by one version of the code is
run again by another, and says why. Before, the fingerprint held the release number ("0.1.0" through
every change), so an upgraded potstill said "curate: up to date, skipped" over data its new checks
would reject. Real parts: a copy of the package run through the CLI as an installed one is, a real
chat server on 127.0.0.1 backed by a tiny model, the run's real ledger."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import potstill
from potstill.config import load_config
from potstill.pipeline import STAGES
from tests.helpers.chat_server import ChatServer
from tests.test_pipeline import teacher_calls, write_inputs


def _generate(project: Path, package: Path) -> subprocess.CompletedProcess:
    # The copy is potstill for this process, as a wheel's site-packages or an editable checkout is.
    env = {**os.environ, "PYTHONPATH": str(package.parent), "TEACHER_KEY": "unused"}
    return subprocess.run([sys.executable, "-m", "potstill", "generate", "-c", "potstill.yaml"], cwd=project,
                          capture_output=True, text=True, env=env, timeout=300)


def test_a_stage_recorded_by_other_code_runs_again_and_says_why(tmp_path, tiny_model, tiny_model_b, monkeypatch):
    package = tmp_path / "site" / "potstill"
    shutil.copytree(Path(potstill.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    project = tmp_path / "project"
    project.mkdir()
    write_inputs(project / "inputs.jsonl", 2)
    with ChatServer(str(tiny_model_b)) as teacher:
        (project / "potstill.yaml").write_text(yaml.safe_dump({
            "run_dir": "run", "task": {"type": "freetext", "instruction": "summarise the text"},
            "data": {"inputs": "inputs.jsonl"},
            "teacher": {"type": "openai", "model": "tiny", "base_url": teacher.base_url, "api_key_env": "TEACHER_KEY",
                        "max_tokens": 4},
            "student": {"model": str(tiny_model), "max_length": 64},
        }))
        monkeypatch.setenv("TEACHER_KEY", "unused")
        assert STAGES["generate"].run(load_config(project / "potstill.yaml"))["skipped"] is False
        asked = sum(teacher.requests.values())
        assert asked == 6 and teacher_calls(project / "run") == 6
        # The copy holds this code: the run made here is up to date for it.
        same = _generate(project, package)
        assert same.returncode == 0 and "generate: up to date, skipped" in same.stderr, same.stderr

        # An upgrade that leaves the release number as it was: one line of the code changes.
        stage_py = package / "generate" / "stage.py"
        stage_py.write_text(stage_py.read_text() + "\n# the next release\n")
        upgraded = _generate(project, package)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "up to date" not in upgraded.stderr, upgraded.stderr
        line = next(ln for ln in upgraded.stderr.splitlines() if "potstill changed" in ln)
        assert line.startswith("generate: potstill changed since generate ran: running it again"), line
        # What was paid for is not paid again: every answer came from the ledger.
        assert sum(teacher.requests.values()) == asked and teacher_calls(project / "run") == 6
        entry = json.loads((project / "run" / "manifest.json").read_text())["stages"]["generate"]
        assert entry["code_version"] == potstill.__version__ and len(entry["code_digest"]) == 64

