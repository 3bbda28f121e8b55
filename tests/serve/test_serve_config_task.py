"""`potstill serve RUN -c other.yaml` serves the task RUN/student was trained for, or refuses.

Found by a review: serve took the task from -c without the check watch and redistill make, so a
config with other labels served labels the student never learned, marked "confident", with 0%
escalated. Real parts: a run directory on disk, the real CLI in-process, a real taken port."""

from __future__ import annotations

import socket

import yaml

from tests.helpers.cli import run_main

TASK = {"type": "classification", "labels": ["a", "b"], "instruction": "classify"}


def test_a_config_with_another_task_is_refused_before_the_port(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "potstill.yaml").write_text(yaml.safe_dump({"run_dir": ".", "task": TASK}))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"run_dir": str(run), "task": {**TASK, "labels": ["sports", "politics"]}}))
    with socket.socket() as taken:  # held: the refusal must come first, not "cannot listen"
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = run_main(monkeypatch, capsys, "serve", str(run), "-c", str(other), "--port", port,
                             "--api-key-env", "")
        assert code == 2 and err == [
            'error: serve: task.labels is ["sports", "politics"] in the config but ["a", "b"] in '
            f"{run / 'potstill.yaml'}, the task RUN/student was trained for; give -c a config with the run's "
            "task, or none"], err

        # The run's task with another serve setting is what -c is for: it gets as far as the port.
        other.write_text(yaml.safe_dump({"run_dir": str(run), "task": TASK, "serve": {"max_messages": 8}}))
        code, err = run_main(monkeypatch, capsys, "serve", str(run), "-c", str(other), "--port", port,
                             "--api-key-env", "")
        assert code == 2 and len(err) == 1 and "cannot listen" in err[0], err
