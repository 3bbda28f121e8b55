"""`potstill watch RUN -c other.yaml` judges with the task RUN/student was trained for, or not at all.

Found by a review: a -c whose labels were not the run's parsed every served and training answer as
"(invalid)", so a label-mix drift that the run's own config flagged (TV 0.98) read "ok"; nothing
compared the config's task with the run's. Real parts: a tiny student on disk, real ledger rows,
the real CLI in-process."""

from __future__ import annotations

import pytest
import yaml

from potstill.errors import PotstillError
from potstill.ledger import Ledger
from potstill.rundir import check_trained_task
from tests.helpers.cli import run_main
from tests.watch.test_watch_after_swap import _cfg, _run, _served


def _config(**task) -> dict:
    data = {"run_dir": ".", **_cfg().model_dump(mode="json", include={"task", "watch"})}
    data["task"].update(task)
    return data


def test_a_config_with_another_task_is_refused_naming_the_field(tmp_path, tiny_model, monkeypatch, capsys):
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:60], current, False, 1000.0)
    (run / "potstill.yaml").write_text(yaml.safe_dump(_config()))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(_config(labels=["market", "team"])))
    code, err = run_main(monkeypatch, capsys, "watch", str(run), "-c", str(other))
    assert code == 2 and err == [
        'error: watch: task.labels is ["market", "team"] in the config but ["business", "sports", "tech", '
        f'"politics"] in {run / "potstill.yaml"}, the task RUN/student was trained for; give -c a config with the '
        "run's task, or none"], err
    assert not (run / "watch" / "report.json").exists()

    # The run's task with other watch settings: what -c is for, judged as before.
    same = _config()
    same["watch"]["permutations"] = 399
    other.write_text(yaml.safe_dump(same))
    code, err = run_main(monkeypatch, capsys, "watch", str(run), "-c", str(other))
    assert code in (0, 3), err
    assert (run / "watch" / "report.json").exists()


def test_a_saved_task_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "potstill.yaml").write_text("task:\n  labels: [a, b\n")
    with pytest.raises(PotstillError, match=r"potstill.yaml: invalid YAML: .*; watch compares the config's task"):
        check_trained_task(tmp_path, _cfg().task, "watch")
