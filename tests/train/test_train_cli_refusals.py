"""`potstill train` on input it cannot train on: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import run_main
from tests.helpers.train_run import train_run


@pytest.fixture
def work(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    return train_run(tmp_path, tiny_model, "  int8_calibration: 0\n", records=False)


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_an_empty_training_split_is_one_line(work, monkeypatch, capsys, text):
    """An empty train.jsonl (a curate that kept nothing, a truncated copy) ended in collate's
    'ValueError: max() arg is an empty sequence' traceback, after the student had loaded, and left
    an empty metrics.jsonl behind."""
    (work / "run" / "train.jsonl").write_text(text)
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml")
    assert (code, err) == (2, ["error: run/train.jsonl: no training examples; run `potstill curate` (or add "
                               "records) first"])
    assert sorted(p.name for p in (work / "run").iterdir()) == ["train.jsonl"]


def test_the_library_refuses_no_records(tiny_model, tmp_path):
    from potstill.config import TaskConfig, TrainConfig
    from potstill.errors import PotstillError
    from potstill.models.loading import load_lm
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.trainer import train

    task = get_task(TaskConfig(type="classification", labels=["sports", "tech"]))
    lm = load_lm(str(tiny_model))
    with pytest.raises(PotstillError, match="^train: no training examples$"):
        train(lm, student_format(lm, task), task, [], [], TrainConfig(), 64, tmp_path / "student", tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_keep_best_without_eval_every_is_one_line(work, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.keep_best", "true")
    assert code == 2 and len(err) == 1 and "train.keep_best picks among the val losses that train.eval_every " \
                                              "measures; set eval_every (e.g. 50)" in err[0], err


def test_early_stopping_without_eval_every_is_one_line(work, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.early_stopping_patience", "3")
    assert code == 2 and err == ["error: train.early_stopping_patience counts the val losses that train.eval_every "
                                 "measures; set eval_every (e.g. 50)"], err
    assert sorted(p.name for p in (work / "run").iterdir()) == []


def _splits(work):
    from potstill.records import Record, write_jsonl

    rows = [Record(messages=[{"role": "user", "content": t}], output=lab, label=lab)
            for t, lab in [("the team won the match", "sports"), ("new phone software", "tech"),
                           ("a late goal to win", "sports"), ("the internet and a computer", "tech")]]
    write_jsonl(work / "run" / "train.jsonl", rows)
    write_jsonl(work / "run" / "val.jsonl", rows[:2])


def test_the_closing_line_says_the_run_stopped_early(work, monkeypatch, capsys):
    _splits(work)
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.eval_every", "1",
                         "--train.early_stopping_patience", "1", "--train.early_stopping_threshold", "100",
                         "--train.epochs", "2", "--train.batch_size", "2")
    assert code == 0
    summary = json.loads((work / "run" / "train.json").read_text())
    assert (summary["steps"], summary["stopped_early"]) == (2, True)  # of 4: a second measurement, not 100 lower
    assert any(line.startswith("train: 2 steps over 4 examples") and line.endswith(
        "; stopped early: no lower val loss in the last 1 measurement (train.early_stopping_patience)")
        for line in err), err


def test_keep_best_names_the_step_it_kept(work, monkeypatch, capsys):
    _splits(work)
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.eval_every", "1", "--train.keep_best",
                         "true", "--train.epochs", "2", "--train.batch_size", "2")
    assert code == 0
    best = json.loads((work / "run" / "train.json").read_text())["best_step"]
    assert any(f"the student of step {best} (train.keep_best)" in line for line in err), err
