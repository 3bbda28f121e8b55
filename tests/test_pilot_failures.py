"""The pilot when the teacher gives no usable answer: one error line, no pilot.json, not recorded as
done (so a rerun with the key fixed runs), and the key in no message or file. Real parts: the
official openai client over HTTP to a server on 127.0.0.1 backed by a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import Header
from fastapi.responses import JSONResponse

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.pilot.stage import pilot_stage
from potstill.pipeline import STAGES
from tests.helpers.chat_server import ChatServer

SECRET = "sk-pilot-right-0c5e1a9d7b3f42e6"
WRONG = "sk-pilot-wrong-8a2d4f6b1c9e7035"
TEXTS = ["the team won the match", "new phone software", "a vote in the election", "the film star",
         "bank profit and market shares", "the internet and computer"]


class KeyEchoServer(ChatServer):
    """ChatServer whose 401 repeats the key it was sent, as some providers' do (so a leak would show);
    it also refuses inputs containing ``refuse`` with that 401."""

    refuse: str | None = None

    def chat(self, body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
        if authorization != f"Bearer {self.api_key}" or (self.refuse and self.refuse in str(body["messages"])):
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {authorization}",
                                           "type": "invalid_request_error"}}, status_code=401)
        return super().chat(body, authorization)


@pytest.fixture(scope="module")
def server(tiny_model_b):
    with KeyEchoServer(str(tiny_model_b), api_key=SECRET) as s:
        yield s


def project(root: Path, base_url: str, student: Path) -> Path:
    # freetext: the tiny teacher's answers are valid (non-empty); it names no label of a classification.
    (root / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in TEXTS))
    cfg = {
        "run_dir": "run", "task": {"type": "freetext", "instruction": "summarise"}, "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "openai", "model": "tiny-teacher", "base_url": base_url, "api_key_env": "TEACHER_KEY",
                    "concurrency": 2, "max_tokens": 4, "max_retries": 0},
        "student": {"model": str(student), "max_length": 64}, "pilot": {"n": len(TEXTS)},
        "evaluate": {"latency_samples": 2, "batch_size": 4},
    }
    (root / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return root / "potstill.yaml"


def test_failed_teacher_stops_the_pilot_and_a_rerun_runs(server, tmp_path, tiny_model, monkeypatch, capsys):
    path, run = project(tmp_path, server.base_url, tiny_model), tmp_path / "run"
    cfg = load_config(path)
    monkeypatch.setenv("TEACHER_KEY", WRONG)
    with pytest.raises(PotstillError) as e:
        pilot_stage(cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"{len(TEXTS)} of {len(TEXTS)} teacher calls failed" in msg and "401" in msg, msg
    assert not (run / "pilot.json").exists() and not STAGES["pilot"].up_to_date(cfg)

    # The key fixed (no setting changed), the pilot runs: before, it said "up to date, skipped".
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    before = sum(server.requests.values())
    out = pilot_stage(cfg)
    assert out["skipped"] is False and sum(server.requests.values()) - before == len(TEXTS)
    pilot = json.loads((run / "pilot.json").read_text())
    assert pilot["teacher_errors"] == 0 and pilot["valid"] > 0

    # Some inputs refused: the pilot goes on, over the others, and says how many on one line.
    server.refuse = "phone"
    try:
        capsys.readouterr()
        out = pilot_stage(load_config(path, {"teacher.model": "tiny-teacher-2"}))  # new requests, not cached answers
    finally:
        server.refuse = None
    partial = json.loads((run / "pilot.json").read_text())
    assert out["skipped"] is False and partial["teacher_errors"] == 1
    models = partial["models"]
    assert models["teacher"]["n"] == models["untrained student"]["n"] == partial["valid"] < len(TEXTS)
    assert models["teacher"]["latency_batch1"]["n"] == partial["valid"]  # the ledger rows of usable answers
    share = [line for line in capsys.readouterr().err.splitlines() if "teacher calls failed" in line]
    assert len(share) == 1 and share[0].startswith(f"pilot: 1 of {len(TEXTS)} teacher calls failed (teacher error:")
    assert f"over the other {partial['valid']} of {len(TEXTS)} inputs" in share[0], share

    # A later failure leaves the last good pilot.json as it was.
    written = (run / "pilot.json").read_bytes()
    monkeypatch.setenv("TEACHER_KEY", WRONG)
    with pytest.raises(PotstillError):
        pilot_stage(load_config(path, {"teacher.model": "tiny-teacher-3"}))
    assert (run / "pilot.json").read_bytes() == written


def test_failed_pilot_is_one_line_from_the_cli_and_never_shows_the_key(server, tmp_path, tiny_model):
    project(tmp_path, server.base_url, tiny_model)
    bad = subprocess.run([sys.executable, "-m", "potstill.cli", "pilot", "-c", "potstill.yaml"], cwd=tmp_path,
                         env={**os.environ, "TEACHER_KEY": WRONG}, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "teacher calls failed" in bad.stderr and "401" in bad.stderr
    assert "Bearer ***" in bad.stderr  # the server did send the key back; the line shows it redacted
    blobs = [bad.stdout, bad.stderr] + [p.read_bytes().decode("utf-8", "replace")
                                        for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert not any(WRONG in b for b in blobs)
    assert not (tmp_path / "run" / "pilot.json").exists()


def test_a_student_that_cannot_load_is_named_by_the_pilot(tmp_path, monkeypatch, capsys):
    """Found by a review: `potstill pilot` with a student.model folder holding no model said
    "error: evaluate: ./empty: directory has no config.json ...", naming a stage that never ran (the
    pilot loads the untrained student as evaluate's settings say). The pilot is named first now."""
    from tests.helpers.cli import run_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in TEXTS))
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": t}, {"role": "assistant", "content": "a"}]}) + "\n" for t in TEXTS))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "run_dir": "run", "task": {"labels": ["a", "b"]}, "data": {"inputs": "in.jsonl"},
        "teacher": {"type": "replay", "replay_path": "logs.jsonl"}, "student": {"model": "./empty"}}))
    code, err = run_main(monkeypatch, capsys, "pilot", "-c", "c.yaml")
    assert code == 2 and err[-1] == ("error: pilot: empty: directory has no config.json or "
                                     "adapter_config.json (loaded with the evaluate section's engine settings)"), err
    assert not (tmp_path / "run" / "pilot.json").exists()
