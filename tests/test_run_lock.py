"""Two potstill commands on one run directory at once: the second is refused in one line, and the
first finishes with its own artifacts and manifest (interleaved, the manifest recorded one
process's fingerprint over the other's outputs)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import Header

from tests.helpers.chat_server import ChatServer
from tests.test_pipeline import potstill, teacher_calls, write_inputs


class GatedServer(ChatServer):
    """A chat server that holds every request until ``gate`` is set, so a stage can be caught midway."""

    def __init__(self, model_dir: str):
        super().__init__(model_dir)
        self.gate, self.reached = threading.Event(), threading.Event()

    def chat(self, body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
        self.reached.set()
        self.gate.wait(120)
        return super().chat(body, authorization)


def _project(root: Path, base_url: str, student: Path) -> None:
    write_inputs(root / "inputs.jsonl", 4)
    (root / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "run",
        "task": {"type": "freetext", "instruction": "summarise the text"},
        "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "openai", "model": "tiny", "base_url": base_url, "api_key_env": "TEACHER_KEY",
                    "concurrency": 2},
        "student": {"model": str(student), "max_length": 64},
        "pilot": {"n": 3},
        "curate": {"val": 2, "test": 3},
    }))


def test_a_second_command_on_a_busy_run_directory_is_refused_in_one_line(tmp_path, tiny_model, tiny_model_b):
    env = {**os.environ, "TEACHER_KEY": "unused"}
    with GatedServer(str(tiny_model_b)) as teacher:
        _project(tmp_path, teacher.base_url, tiny_model)
        first = subprocess.Popen([sys.executable, "-m", "potstill", "generate", "-c", "potstill.yaml"], cwd=tmp_path,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert teacher.reached.wait(120), "the first generate never asked the teacher"
            for args in (("run", "-c", "potstill.yaml"), ("generate", "-c", "potstill.yaml", "--force"),
                         ("curate", "-c", "potstill.yaml")):
                second = subprocess.Popen([sys.executable, "-m", "potstill", *args], cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    _, err = second.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    second.kill()
                    second.communicate()
                    raise AssertionError(f"`potstill {args[0]}` waited on the busy run instead of refusing")
                assert second.returncode == 2, err
                assert err.strip().count("\n") == 0 and "Traceback" not in err, err
                assert "another potstill command" in err and str(Path("run")) in err, err
            assert not (tmp_path / "run" / "teacher.jsonl").exists()
        finally:
            teacher.gate.set()
            _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
        assert sum(teacher.requests.values()) == 12  # the refused commands asked the teacher nothing
    assert teacher_calls(tmp_path / "run") == 12
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"generate"}
    # Released, the run directory takes the next command.
    again = potstill("generate", "-c", "potstill.yaml", cwd=tmp_path, env={"TEACHER_KEY": "unused"})
    assert again.returncode == 0 and "generate: up to date, skipped" in again.stderr, again.stderr


HOLDER = """
import sys
from pathlib import Path
from potstill.rundir import RunDir, exclusive
with exclusive(RunDir(sys.argv[1]).path):
    print('held', flush=True)
    sys.stdin.readline()  # loading models: nothing written into the run directory yet
"""


def test_a_refused_command_leaves_the_directory_another_holds(tmp_path, monkeypatch):
    """Two commands starting at one instant on a new run directory: the refused one saw it missing
    just before the other made and locked it. Its cleanup removed the still-empty directory, so
    the holder's lock guarded a deleted one and a third command was let in beside it."""
    import pytest

    from potstill import stage
    from potstill.config import Config
    from potstill.errors import PotstillError
    from potstill.rundir import exclusive

    run = tmp_path / "runs" / "a"
    cfg = Config.model_validate({"run_dir": str(run), "task": {"type": "freetext", "instruction": "x"}})
    holder: list[subprocess.Popen[str]] = []
    missing_dirs = stage._missing_dirs

    def other_command_arrives(path: Path) -> list[Path]:
        # The other command makes and locks the directory right after this one found it missing.
        made = missing_dirs(path)
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        holder.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        return made

    monkeypatch.setattr(stage, "_missing_dirs", other_command_arrives)
    try:
        with pytest.raises(PotstillError, match="another potstill command"):
            with stage.held_run(cfg):
                raise AssertionError("took the run directory another process holds")
        assert run.is_dir()  # the holder's directory, left where it is
        with pytest.raises(PotstillError, match="another potstill command"):  # and still guarded
            with exclusive(run):
                pass
    finally:
        for p in holder:
            p.communicate("go\n", timeout=60)
    assert holder and holder[0].returncode == 0
