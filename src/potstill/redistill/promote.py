"""Atomic promotion: RUN/student becomes a symlink into RUN/students/<id>/, swapped by one rename.

Readers (``potstill serve``, ``potstill evaluate``) open RUN/student; at every instant it names a
complete student. A promotion writes a new symlink beside it and renames it over the old one
(``rename(2)`` is atomic). The first promotion must turn the trained directory RUN/student into a
symlink: it exchanges the two paths with ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15), so even
then no reader sees RUN/student missing; the old directory then moves to RUN/students/<id>/ and
stays there for rollback. Where that call does not exist the old directory is moved first and
the symlink follows, with a gap of one rename.
"""

from __future__ import annotations

import os
from pathlib import Path

from potstill.atomic import exchange
from potstill.errors import PotstillError
from potstill.hashing import hash_path
from potstill.records import write_json
from potstill.rundir import RunDir, exclusive


def _adopted(run_dir: Path, target: Path) -> dict | None:
    """The manifest with ``target`` recorded as the train stage's output, to write once RUN/student names
    it; None when no train stage is recorded (nothing to adopt). Raises on a manifest that cannot be read.

    Otherwise ``potstill run`` would see RUN/student changed, call the train stage stale and
    retrain over the promoted student; with it, train stays done and evaluate (whose input, the
    student, changed) re-measures the new champion."""
    m = RunDir(run_dir).manifest()
    entry = m.get("stages", {}).get("train")
    if entry is None:
        return None
    # target's files under their names relative to it: what RUN/student hashes to once it names target.
    entry.setdefault("outputs", {})["student"] = hash_path(target)
    entry["promoted"] = os.path.join("students", target.name)
    return m


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever is free."""
    kept, n = path, 1
    while kept.exists() or kept.is_symlink():
        n += 1
        kept = path.with_name(f"{path.name}-{n}")
    return kept


def current(run_dir: Path) -> Path:
    """The directory RUN/student names now."""
    return (Path(run_dir) / "student").resolve()


def finish_interrupted(run_dir: Path, keep_as: str = "original") -> Path:
    """Clear what a promotion stopped half-way left in RUN/.student.promote; returns that path, now free.

    A link there is one that never replaced RUN/student: removed. A directory is the old champion of
    a first promotion stopped between its two renames: the exchange put it there and the move into
    RUN/students/<keep_as> never ran. That move is finished, or the champion would stay hidden there,
    out of rollback's reach. Call it holding the run directory (``rundir.exclusive``)."""
    tmp = Path(run_dir) / ".student.promote"
    if tmp.is_symlink():
        tmp.unlink()
    elif tmp.exists():
        students = Path(run_dir) / "students"
        students.mkdir(exist_ok=True)
        os.rename(tmp, _unused(students / keep_as))
    return tmp


def switch(run_dir: Path, target: Path, keep_as: str = "original") -> dict[str, str]:
    """Point RUN/student at ``target`` (a directory under RUN/students/) atomically.

    A plain directory at RUN/student is kept as RUN/students/<keep_as>/. Returns
    {previous, current} as paths relative to the run directory. The run directory is held meanwhile
    (``rundir.exclusive``), as a stage holds it: the manifest is rewritten here (``_adopted``).
    """
    with exclusive(run_dir):
        return _switch(Path(run_dir), target, keep_as)


def _switch(run_dir: Path, target: Path, keep_as: str) -> dict[str, str]:
    link, students = run_dir / "student", run_dir / "students"
    # The entry in students/, not where it leads: one kept for a champion that lives elsewhere is a link.
    target = Path(os.path.abspath(target))
    if target.parent.resolve() != students.resolve():
        raise PotstillError(f"{target}: a promoted student must live in {students}/")
    if not (target / "config.json").exists() and not (target / "adapter_config.json").exists():
        raise PotstillError(f"{target}: not a student directory (no config.json)")
    if not link.exists() and not link.is_symlink():
        raise PotstillError(f"{link}: no champion to replace (run `potstill train` first)")
    # Everything that can refuse comes before the first rename: a manifest that cannot be read raised
    # after RUN/student was switched, so a running server swapped in a student the command reported
    # as an error, and no decision record said why it was promoted.
    adopted = _adopted(run_dir, target)
    tmp = finish_interrupted(run_dir, keep_as)
    # Relative, so a copied or moved run directory keeps working.
    os.symlink(os.path.join("students", target.name), tmp)
    if link.is_symlink():
        named = Path(os.path.abspath(link.parent / os.readlink(link)))
        if named.parent.resolve() == students.resolve():
            previous = os.path.join("students", named.name)
        elif link.exists():
            # RUN/student linked to a champion outside RUN/students/ (trained elsewhere): a link to it is
            # kept as students/<keep_as>, or rollback could not reach it (its target must be in students/).
            students.mkdir(exist_ok=True)
            kept = _unused(students / keep_as)
            os.symlink(link.resolve(), kept)
            previous = os.path.join("students", kept.name)
        else:  # a dangling link: nothing to keep
            previous = os.readlink(link)
        os.replace(tmp, link)
    else:
        students.mkdir(exist_ok=True)
        kept = _unused(students / keep_as)
        if exchange(tmp, link):
            os.rename(tmp, kept)  # tmp now holds the old directory
        else:
            os.rename(link, kept)
            os.replace(tmp, link)
        previous = os.path.join("students", kept.name)
    if adopted is not None:
        write_json(RunDir(run_dir).manifest_path, adopted)
    return {"previous": previous, "current": os.path.join("students", target.name)}
