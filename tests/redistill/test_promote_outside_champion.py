"""A champion that lives outside the run: RUN/student a symlink to a student trained elsewhere.

`switch` promoted the challenger (RUN/student now pointed into students/), then failed with a
ValueError traceback ('... is not in the subpath of ...') building its answer, so redistill wrote no
decision record, and the old champion was out of rollback's reach (a rollback target must be in
RUN/students/). redistill's record failed the same way without any promotion. Real files: student
directories on disk, the real symlinks and renames."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from potstill.redistill import rollback
from potstill.redistill.promote import current, switch


def _student(path, tag):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    # Weights whose header reads: a rollback refuses a student it can see will not load.
    save_file({"w": torch.zeros(1)}, path / "model.safetensors")
    return path


def test_a_champion_linked_from_outside_the_run_is_kept_for_rollback(tmp_path):
    run = tmp_path / "run"
    elsewhere = _student(tmp_path / "models" / "v1", "champion")
    _student(run / "students" / "b", "challenger")
    os.symlink(elsewhere, run / "student")

    out = switch(run, run / "students" / "b")
    assert out == {"previous": "students/original", "current": "students/b"}
    assert current(run) == (run / "students" / "b").resolve()
    # The champion stays where it was, reachable from RUN/students/ for the rollback the record names.
    assert (run / "students" / "original").resolve() == elsewhere.resolve()
    assert json.loads((elsewhere / "config.json").read_text())["tag"] == "champion"

    back = rollback(run, "students/original")
    assert back == {"previous": "students/b", "current": "students/original"}
    assert current(run) == elsewhere.resolve()
    assert json.loads((run / "student" / "config.json").read_text())["tag"] == "champion"
    # And forward again: the link kept in students/ is reused, no second copy is made.
    assert switch(run, run / "students" / "b")["previous"] == "students/original"
    assert sorted(p.name for p in (run / "students").iterdir()) == ["b", "original"]


def test_the_decision_record_names_a_champion_outside_the_run_by_its_path(tmp_path):
    # redistill's record named the champion relative to the run: a ValueError after the challenger was
    # trained and compared, promoted or not, and no record written.
    from potstill.redistill import run_path

    run = tmp_path / "run"
    elsewhere = _student(tmp_path / "models" / "v1", "champion")
    _student(run / "students" / "b", "challenger")
    os.symlink(elsewhere, run / "student")
    assert run_path(run, current(run)) == str(elsewhere.resolve())
    assert run_path(run, run / "students" / "b") == "students/b"
