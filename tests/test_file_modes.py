"""Every file potstill writes whole (``atomic``, the sidecars beside a student, a cache entry) gets the
mode a plain ``open`` gives under the process's umask, as its weights do: 0664 under a team's
`umask 002`, 0600 under `umask 077`."""

from __future__ import annotations

import contextlib
import os
import stat

import numpy as np
import pytest

from potstill import sidecar
from potstill.errors import PotstillError
from potstill.records import write_jsonl
from tests.helpers.accounts import shared_dir, without_root


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,want", [(0o077, 0o600), (0o002, 0o664)])
def test_an_artifact_written_whole_follows_the_umask(tmp_path, mask, want):
    """teacher.jsonl and train.jsonl were chmod 0644 whatever the umask: world-readable customer text
    under `umask 077`, not group-writable under `umask 002`."""
    with umask(mask):
        write_jsonl(tmp_path / "teacher.jsonl", [{"input": "x"}])
    assert mode(tmp_path / "teacher.jsonl") == want


def test_a_sidecar_follows_the_umask_as_the_weights_beside_it(tmp_path):
    """imatrix.safetensors and int8_calibration.safetensors kept mkstemp's 0600 under any umask: a
    teammate exporting the run got 'Permission denied', serving it an error about a missing file."""
    with umask(0o002):
        out = sidecar.write(tmp_path / "imatrix.safetensors", {"a": np.zeros(2, dtype=np.float32)},
                            {"version": 1}, "numpy")
    assert mode(out) == 0o664
    with umask(0o077):
        sidecar.write(out, {"a": np.zeros(2, dtype=np.float32)}, {"version": 1}, "numpy")
    assert mode(out) == 0o600


@pytest.fixture
def shared():
    with shared_dir() as d:
        yield d


def test_a_calibration_that_may_not_be_read_says_so_without_advice_to_delete_it(shared):
    """safetensors reports a file it may not open as 'No such file or directory', and serve said
    '...: not a readable int8 calibration (FileNotFoundError ...); delete it to run uncalibrated int8'
    of a good calibration another account had written 0600."""
    from potstill.engines import calibration

    student = shared / "student"
    student.mkdir(mode=0o755)
    sidecar.write(calibration.path(student), {"a": np.zeros(2, dtype=np.float32)}, {"version": calibration.VERSION},
                  "numpy")
    calibration.path(student).chmod(0)
    with without_root(), pytest.raises(PotstillError) as e:
        calibration.load(student)
    assert str(e.value) == f"{calibration.path(student)}: cannot read the int8 calibration: Permission denied"


def test_a_cache_entry_follows_the_umask(tmp_path):
    """A converted model's cache entry kept mkdtemp's 0700: another account sharing POTSTILL_CACHE
    could not read it."""
    from potstill.models.loading import cache_entry

    with umask(0o022), cache_entry(tmp_path / "entry", "INFO") as tmp:
        (tmp / "INFO").write_text("{}")
    assert mode(tmp_path / "entry") == 0o755 and mode(tmp_path / "entry" / "INFO") == 0o644


@pytest.mark.parametrize("made", [True, False])
def test_a_read_only_cache_is_one_line_naming_it_and_POTSTILL_CACHE(shared, monkeypatch, made):
    """A converted model's cache entry under a cache this account may not write (a read-only home in a
    container, a teammate's shared cache) ended in 'Permission denied: .../converted', naming neither
    the cache nor how to put it elsewhere."""
    from potstill.hashing import cache_dir
    from potstill.models.loading import cache_entry

    monkeypatch.setenv("POTSTILL_CACHE", str(shared / "cache"))
    folder = cache_dir() / "converted"
    (folder if made else cache_dir()).mkdir(parents=True)  # the entry's folder there, or still to make
    for p in (cache_dir(), folder):
        if p.exists():
            p.chmod(0o555)
    with without_root(), pytest.raises(PotstillError) as e:
        with cache_entry(folder / "abc-t2", "config.json"):
            raise AssertionError("a temp folder was made in a read-only cache")
    assert str(e.value) == (f"{folder}: the potstill cache cannot be written there (Permission denied); set "
                            "POTSTILL_CACHE to a writable folder (export POTSTILL_CACHE=/tmp/potstill-cache)")


def test_a_folder_written_whole_into_a_group_shared_one_keeps_its_setgid(tmp_path):
    """ordinary_modes cleared a folder's setgid bit: in a group-shared run (a setgid folder, group-writable
    under `umask 007`) student/ lost the bit mkdir gives it, so a sidecar written into it later took the
    writer's own group, and a teammate got 'Permission denied'. Folders keep setgid and sticky, and get a
    setgid parent's, as mkdir gives it."""
    from potstill.atomic import atomic_dir

    run = tmp_path / "run"
    run.mkdir()
    if os.geteuid() == 0:
        os.chown(run, -1, 65534)  # nogroup: not the writer's own group
    run.chmod(0o2770)
    with umask(0o007):
        with atomic_dir(run / "student") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            (tmp / "sub").mkdir()
            (tmp / "copied").mkdir()
            (tmp / "copied").chmod(0o700)  # as shutil.copytree copies a mode without the bit
            (tmp / "sticky").mkdir()
            (tmp / "sticky").chmod(0o1700)
        out = sidecar.write(run / "student" / "int8_calibration.safetensors", {"a": np.zeros(2, dtype=np.float32)},
                            {"version": 1}, "numpy")
    student = run / "student"
    assert [mode(student / d) for d in ("", "sub", "copied")] == [0o2770] * 3
    assert mode(student / "sticky") == 0o3770
    assert mode(student / "model.safetensors") == 0o660 and mode(out) == 0o660
    assert out.stat().st_gid == run.stat().st_gid
