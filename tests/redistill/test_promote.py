"""Promotion keeps the run directory consistent: the manifest adopts the new student, and a later
`potstill train` replaces the RUN/student symlink without touching the promoted directory."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from potstill.errors import PotstillError
from potstill.records import atomic_dir
from potstill.redistill.promote import current, switch
from potstill.rundir import RunDir


def _student(path, tag):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    # Weights whose header reads: a rollback refuses a student it can see will not load.
    save_file({"w": torch.zeros(1)}, path / "model.safetensors")


def test_promotion_is_adopted_by_the_manifest_and_survives_a_retrain(tmp_path):
    run = RunDir(tmp_path)
    _student(tmp_path / "student", "champion")
    fp = run.fingerprint("train", {"lr": 1}, [])
    run.mark_done("train", fp, ["student"])
    _student(tmp_path / "students" / "abc", "challenger")

    out = switch(tmp_path, tmp_path / "students" / "abc")
    assert out == {"previous": "students/original", "current": "students/abc"}
    assert (tmp_path / "student").is_symlink() and current(tmp_path).name == "abc"
    # Without the adoption `potstill run` would call train stale and retrain over the promotion.
    assert run.is_done("train", fp)
    assert run.manifest()["stages"]["train"]["promoted"] == "students/abc"

    with atomic_dir(tmp_path / "student") as tmp:  # what save_lm does on a later `potstill train`
        (tmp / "config.json").write_text(json.dumps({"tag": "retrained"}))
    assert not (tmp_path / "student").is_symlink()
    assert json.loads((tmp_path / "student" / "config.json").read_text())["tag"] == "retrained"
    assert json.loads((tmp_path / "students" / "abc" / "config.json").read_text())["tag"] == "challenger"
    assert json.loads((tmp_path / "students" / "original" / "config.json").read_text())["tag"] == "champion"


def test_a_first_promotion_interrupted_between_its_renames_is_finished_by_the_next(tmp_path):
    import os

    from potstill.redistill import rollback

    # The state a crash leaves after renameat2 swapped the paths and before the old champion
    # directory moved on to students/: RUN/student is the new link, the champion sits in the temp name.
    _student(tmp_path / ".student.promote", "champion")
    _student(tmp_path / "students" / "abc", "challenger")
    os.symlink("students/abc", tmp_path / "student")
    _student(tmp_path / "students" / "def", "next challenger")

    out = switch(tmp_path, tmp_path / "students" / "def")
    assert out["current"] == "students/def" and not (tmp_path / ".student.promote").exists()
    assert json.loads((tmp_path / "students" / "original" / "config.json").read_text())["tag"] == "champion"
    assert rollback(tmp_path, "original")["current"] == "students/original"


def test_a_manifest_that_cannot_be_read_switches_nothing(tmp_path):
    """Found by a review: a promotion or a rollback renamed RUN/student first and read the manifest
    after, so an unreadable one failed the command (exit 2, no decision record) with RUN/student already
    naming the new student, which a running server then swapped in. Now nothing is renamed."""
    _student(tmp_path / "student", "champion")
    _student(tmp_path / "students" / "abc", "challenger")
    broken = '{"stages": {'  # a hand edit cut short
    (tmp_path / "manifest.json").write_text(broken)
    with pytest.raises(PotstillError, match=r"manifest.json: not valid JSON"):
        switch(tmp_path, tmp_path / "students" / "abc")
    assert not (tmp_path / "student").is_symlink()
    assert json.loads((tmp_path / "student" / "config.json").read_text())["tag"] == "champion"
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "student", "students"]
    assert os.listdir(tmp_path / "students") == ["abc"]

    # A rollback, RUN/student a link by then: the link stays as it was.
    (tmp_path / "manifest.json").unlink()
    switch(tmp_path, tmp_path / "students" / "abc")
    (tmp_path / "manifest.json").write_text(broken)
    with pytest.raises(PotstillError, match=r"manifest.json: not valid JSON"):
        switch(tmp_path, tmp_path / "students" / "original")
    assert os.readlink(tmp_path / "student") == os.path.join("students", "abc")
    assert not (tmp_path / ".student.promote").exists() and not (tmp_path / ".student.promote").is_symlink()
    assert (tmp_path / "manifest.json").read_text() == broken


def test_a_first_promotion_interrupted_between_its_renames_can_be_rolled_back(tmp_path):
    """Found by a review: only a later winning promotion moved the old champion out of
    RUN/.student.promote, so the rollback it was kept for was refused ("no student there"), and
    `--rollback students/original` named RUN/students/students/original. The rollback now finishes the move."""
    from potstill.redistill import rollback

    _student(tmp_path / ".student.promote", "champion")  # as in the test above: the crash's leftover
    _student(tmp_path / "students" / "abc", "challenger")
    os.symlink("students/abc", tmp_path / "student")

    assert rollback(tmp_path, "students/original") == {"previous": "students/abc", "current": "students/original"}
    assert json.loads((tmp_path / "student" / "config.json").read_text())["tag"] == "champion"
    assert not (tmp_path / ".student.promote").exists()
    with pytest.raises(PotstillError) as e:
        rollback(tmp_path, "students/gone")
    assert str(e.value) == f"{tmp_path / 'students' / 'gone'}: no student there to roll back to (see RUN/students/)"
