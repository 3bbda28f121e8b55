"""Artifacts written whole or not at all: ``atomic_write`` (a temp file beside the target, renamed
over it), ``atomic_files`` (a set that belongs together), ``atomic_dir`` (a folder), and the JSON,
JSONL and text writers on top of them. Re-exported by ``potstill.records``, where they lived."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from pydantic import BaseModel

from potstill import leftovers


def _existing_folder(path: Path) -> Path:
    """The nearest folder above ``path`` that exists. A file (or a dangling link) in the way is the
    error ``mkdir`` names for it, said now, not after the whole write."""
    folder = path.parent
    while not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            path.parent.mkdir(parents=True, exist_ok=True)  # raises FileExistsError / NotADirectoryError
        folder = folder.parent
    return folder


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[TextIO]:
    """Open a temp file beside ``path`` for writing; on success it is renamed over ``path``.

    A crash mid-write leaves the previous file (or none), never a half-written one; the temp file of
    a writer killed outright is removed by the next write of ``path`` (``leftovers``). Folders missing
    above ``path`` are made only when the write succeeds: until then the temp file waits in the
    nearest folder that exists (the same file system, so the rename stays atomic), so a failed write
    (an import of a bad file to ``-o new/dir/records.jsonl``) leaves no new empty folder either.
    """
    path = Path(path)
    home = _existing_folder(path)
    leftovers.remove(home, lambda name: name == path.name)
    try:
        fd, tmp = tempfile.mkstemp(dir=home, prefix=f".{path.name}.{leftovers.owner()}.", suffix=".tmp")
    except OSError as e:
        # It names the temp file it could not make (/proc/.x.jsonl.oa7bui0h.tmp), which the user never
        # heard of: the error is about the path they gave.
        e.filename = str(path)
        raise
    made: list[Path] = []  # the folders this call made, outermost first
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        ordinary_modes(Path(tmp))  # mkstemp makes 0600 files
        missing, folder = [], path.parent
        while folder != home and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):  # outermost first
            try:
                d.mkdir()
                made.append(d)
            except FileExistsError:  # another writer made it meanwhile: theirs, kept
                if not d.is_dir():
                    raise
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _name_the_path(e, path)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:  # another writer's file went in meanwhile
                break
        raise


@contextlib.contextmanager
def atomic_files(paths: Iterable[str | Path]) -> Iterator[dict[Path, TextIO]]:
    """``atomic_write`` for artifacts that belong together (a stage's train/val/test): every temp
    file is written before any replaces its path, so a failure midway (a full disk, an exception)
    leaves all the previous files, never new ones beside old ones. Renames do not fail for want of
    space; a kill between them is the only window left, microseconds rather than a whole write."""
    with contextlib.ExitStack() as stack:
        files = {Path(p): stack.enter_context(atomic_write(p)) for p in paths}
        yield files
        # ExitStack exits last-entered first: each atomic_write then renames its file into place.


def umask() -> int:
    """The process's umask, read from /proc where it is there (Linux 4.7+): ``os.umask`` reads it only by
    setting another, and a file another thread made in between got that one."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def ordinary_modes(root: Path) -> None:
    """Give ``root`` (a file, or a folder and everything in it) the modes a plain ``open`` and ``mkdir``
    would have under the process's umask, as every artifact potstill writes whole has: mkstemp makes
    0600 files and mkdtemp 0700 folders, and safetensors writes 0600, so a student trained by one user
    could not be served by a teammate under `umask 002` (its sidecars were 0600 whatever the umask),
    while a fixed 0644 made teacher.jsonl world-readable under `umask 077`.

    A folder keeps its setgid and sticky bits, and gets the setgid of a setgid parent, as ``mkdir`` gives
    it: in a group-shared run (a setgid folder) a student folder without it gave every file written into it
    later (the int8 and imatrix sidecars) the writer's own group, which a teammate may not read."""
    mask = umask()
    for p in (root, *(root.rglob("*") if root.is_dir() else ())):
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        if stat.S_ISDIR(mode):
            p.chmod(0o777 & ~mask | mode & (stat.S_ISGID | stat.S_ISVTX) | p.parent.stat().st_mode & stat.S_ISGID)
        else:
            p.chmod(0o666 & ~mask | mode & 0o111 & ~mask)


# (folder, fn) of the innermost ``finishing``.
_FINISH: ContextVar[tuple[Path, Callable[[Path], None]] | None] = ContextVar("_FINISH", default=None)


@contextlib.contextmanager
def finishing(path: str | Path, fn: Callable[[Path], None]) -> Iterator[list[Path]]:
    """While inside, an ``atomic_dir(path)`` written by code that knows nothing of the caller calls
    ``fn(tmp)`` on its temp directory once it is written, before the rename, so that what ``fn`` adds
    (export's model card and mark) appears with the rest or not at all. Yields the list of the temp
    directories ``fn`` ran on: empty if nothing wrote ``path`` through ``atomic_dir``."""
    ran: list[Path] = []

    def record(tmp: Path) -> None:
        fn(tmp)
        ran.append(tmp)

    token = _FINISH.set((Path(os.path.abspath(path)), record))
    try:
        yield ran
    finally:
        _FINISH.reset(token)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` whole. The temp directory
    of a writer killed outright (a model's size) is removed by the next write of ``path`` (``leftovers``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leftovers.remove(path.parent, lambda name: name == path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-{leftovers.owner()}-"))
    try:
        yield tmp
        finish = _FINISH.get()
        if finish is not None and finish[0] == Path(os.path.abspath(path)):
            finish[1](tmp)
        ordinary_modes(tmp)
        _swap_in(tmp, path)
    except BaseException as e:
        _remove(tmp)
        failed = _write_failure(e, path)
        if failed is not e:
            raise failed from e
        raise


def _name_the_path(e: BaseException, path: Path) -> None:
    """A failed ``write`` names no file ('[Errno 28] No space left on device'): it names ``path``."""
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        e.filename = str(path)


def _write_failure(e: BaseException, path: Path) -> BaseException:
    """What a library that writes its own files into an ``atomic_dir`` raised, as the OSError behind it,
    naming the folder: torch's zip writer says 'unexpected pos 170112 vs 170064' (the OSError is its
    context when it writes through a Python file, ``checkpoint.save``), safetensors 'I/O error: No space
    left on device (os error 28)'; neither is an OSError, so a full disk was a traceback. Anything else
    is returned as it is."""
    _name_the_path(e, path)
    text = str(e)
    if not (type(e).__name__ == "SafetensorError" and "I/O error" in text
            or isinstance(e, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text)):
        return e
    code = re.search(r"\(os error (\d+)\)", text)
    if code:
        return OSError(int(code[1]), os.strerror(int(code[1])), str(path))
    cause = e.__cause__ or e.__context__
    while cause is not None and not (isinstance(cause, OSError) and cause.errno):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return OSError(cause.errno, cause.strerror, str(path))
    return OSError(errno.EIO, f"could not write it ({text.splitlines()[0] if text else type(e).__name__}; is the "
                              "disk full?)", str(path))


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder ``tmp`` at ``path``, and delete what was there (a folder, or a promoted
    student's link RUN/student -> students/ID, whose target is kept) only once it is out of the way.

    The old folder was deleted first and the new one renamed in after: a second writer of ``path``
    meanwhile (two `potstill export` of one run) failed with 'Directory not empty' or FileNotFoundError,
    and a reader in that window, as long as the delete of a model's folder, found no folder or half
    of one. Now the two are exchanged in one ``renameat2`` (Linux >= 3.15): ``path`` always names a
    whole folder, and each writer's goes in whole, the last one's staying. Elsewhere (another kernel,
    a file system without it) the old one is renamed aside first, a gap of one rename; a writer whose
    rename loses to another's moves that one aside in turn. A kill after the exchange (or in the gap)
    leaves the old folder under a temp name that carries this process (``leftovers``): the next write
    of ``path`` deletes it."""
    while True:
        there = path.is_dir() or path.is_symlink()  # a file there is refused by the rename, not deleted
        if there and exchange(tmp, path):
            _remove(tmp)  # tmp now holds the old folder or link
            return
        aside = path.with_name(f".{path.name}-{leftovers.owner()}-{secrets.token_hex(4)}") if there else None
        try:
            if aside is not None:
                try:
                    os.replace(path, aside)
                except FileNotFoundError:  # another writer has just moved it aside
                    aside = None
            os.replace(tmp, path)
        except BaseException as e:  # Ctrl-C between the two renames too
            lost = isinstance(e, OSError) and e.errno in (errno.ENOTEMPTY, errno.EEXIST)  # another's went in
            if aside is not None and (aside.exists() or aside.is_symlink()):
                if lost:
                    _remove(aside)
                elif not (path.exists() or path.is_symlink()):
                    os.replace(aside, path)  # the old folder back where it was: nothing lost
            if not lost:
                raise
            continue  # that one is moved aside in turn
        if aside is not None:
            _remove(aside)
        return


def _remove(path: Path) -> None:
    """Delete a folder, or just the link where ``path`` is one (its target is kept)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False when the kernel or libc cannot (or either is missing)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows as JSONL atomically (see ``atomic_write``); returns the number of rows."""
    with atomic_write(path) as f:
        return dump_jsonl(f, rows)


def dump_jsonl(f: TextIO, rows: Iterable[Any]) -> int:
    """Rows (records or plain objects) as JSON lines into ``f``; returns the number of rows."""
    n = 0
    for row in rows:
        if isinstance(row, BaseModel):
            f.write(row.model_dump_json(exclude_none=True))
        else:
            f.write(json.dumps(row, ensure_ascii=False))
        f.write("\n")
        n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically (see ``atomic_write``)."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (see ``atomic_write``)."""
    with atomic_write(path) as f:
        f.write(text)
