"""`potstill redistill` as cron runs it, through the real CLI on a tiny served run: the exit code of
a kept champion, rollback to a challenger that lost, the run directory held against a concurrent
command, and the champion's base model named by another spelling of the same path."""

from __future__ import annotations

import json

from tests.helpers.cli import run_main
from tests.redistill.test_redistill import _copy_original


def test_the_champions_base_named_by_another_spelling_of_its_path_is_the_same_base(served_run, tmp_path,
                                                                                   tiny_model, tiny_model_b,
                                                                                   monkeypatch, capsys):
    """Found by an audit: RUN/train.json's base_model and student.model were compared as strings, so
    the champion's own base written /a/./b, or through a symlink (RUN/potstill.yaml is saved with the
    path resolved, train.json keeps it as the user typed it) was refused as another model."""
    bare = tmp_path / "bare"
    _copy_original(served_run, bare, "calls.sqlite*")  # so that the check after the base's is the error
    link = tmp_path / "models"
    link.symlink_to(tiny_model.parent, target_is_directory=True)
    missing = f"error: {bare / 'calls.sqlite'} not found: no served traffic (serve the student with `potstill serve` first)"
    for base in (f"{tiny_model.parent}/./{tiny_model.name}", str(link / tiny_model.name)):
        (bare / "train.json").write_text(json.dumps({"base_model": base}))
        assert run_main(monkeypatch, capsys, "redistill", str(bare)) == (2, [missing]), base
    (bare / "train.json").write_text(json.dumps({"base_model": str(tiny_model_b)}))
    code, err = run_main(monkeypatch, capsys, "redistill", str(bare))
    assert code == 2 and err == [f"error: redistill: the champion was trained from {tiny_model_b} but student.model "
                                 f"is {tiny_model}: a challenger must start from the champion's base (pass -c with "
                                 "the run's config)"], err
