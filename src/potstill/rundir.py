"""The run directory: artifacts of every stage plus ``manifest.json``.

Each stage has a *fingerprint*: the hash of the settings it declares (``potstill.stage.Stage``),
of the artifacts it reads and of potstill's code (``code_digest``). After it succeeds the manifest stores that
fingerprint and the hashes of the artifacts it wrote. A stage is skipped when its fingerprint is
unchanged and its outputs still hash to what was recorded; a rerun stage that writes different
outputs changes the fingerprint of every stage that reads them, so those rerun too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, NoReturn

import yaml
from pydantic import ValidationError

from potstill import __version__
from potstill.config import TaskConfig, safe_load, yaml_problem
from potstill.errors import PotstillError
from potstill.hashing import hash_obj, hash_path
from potstill.ledger import Ledger
from potstill.records import write_json


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / "manifest.json"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def ledger(self) -> Ledger:
        return Ledger(self.path / "calls.sqlite")

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:  # a hand edit or a merge conflict: write_json itself is atomic
            self._refuse(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})")
        except UnicodeDecodeError as e:
            self._refuse(f"not UTF-8 text (byte {e.start})")
        if not isinstance(m, dict) or not isinstance(m.get("stages"), dict):
            self._refuse("not a potstill manifest (no 'stages' object)")
        for name, entry in m["stages"].items():
            if not isinstance(entry, dict):
                self._refuse(f"not a potstill manifest (stage '{name}' is not an object)")
            outputs = entry.get("outputs", {})
            if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
                self._refuse(f"not a potstill manifest (stage '{name}': 'outputs' is not an object of file hashes)")
            untracked = entry.get("untracked", [])
            if not isinstance(untracked, list) or not all(isinstance(v, str) for v in untracked):
                self._refuse(f"not a potstill manifest (stage '{name}': 'untracked' is not a list of names)")
        return m

    def _refuse(self, why: str) -> NoReturn:
        # Not rewritten over: it may be the only record of which artifacts a stage wrote.
        raise PotstillError(f"{self.manifest_path}: {why}; move it aside (the stages then run again)")

    def fingerprint(self, stage: str, settings: Any, inputs: list[str | Path]) -> str:
        """Hash of a stage's settings, its input artifacts' contents and potstill's code (``code_digest``).

        Settings that name files arrive already replaced by their content hash (``Stage.fingerprint``).
        """
        return hash_obj(
            {
                "stage": stage,
                "settings": settings,
                "inputs": {str(Path(p).name): hash_path(p) for p in inputs if Path(p).exists()},
                "missing": sorted(str(Path(p).name) for p in inputs if not Path(p).exists()),
                "code": code_digest(),
            }
        )

    def is_done(self, stage: str, fingerprint: str) -> bool:
        entry = self.manifest()["stages"].get(stage)
        if not entry or entry.get("fingerprint") != fingerprint:
            return False
        for name, digest in entry.get("outputs", {}).items():
            p = self.path / name
            if not p.exists() or hash_path(p) != digest:
                return False
        return True

    def mark_done(self, stage: str, fingerprint: str, outputs: list[str], info: dict[str, Any] | None = None) -> None:
        m = self.manifest()
        m["stages"][stage] = {
            "fingerprint": fingerprint,
            "outputs": {name: hash_path(self.path / name) for name in outputs},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code_version": __version__,
            "code_digest": code_digest(),
            **(info or {}),
        }
        write_json(self.manifest_path, m)

    def code_changed(self, stage: str) -> bool:
        """Whether ``stage`` was recorded by other code than this process runs (an upgrade, a
        ``git pull`` of an editable install). A manifest written before the code's digest was kept
        holds only the release number, which never told two versions apart."""
        entry = self.manifest()["stages"].get(stage)
        if not entry:
            return False
        return (entry.get("code_digest") or entry.get("code_version")) != code_digest()

    def rebuilt(self, stage: str, name: str) -> None:
        """Record output ``name`` of ``stage`` as rebuilt from its other outputs, which still hold
        what the stage wrote (``potstill report`` redrawing report.html from eval.json): the stage
        stays up to date rather than rerunning over a page the user asked for."""
        m = self.manifest()
        outputs = m["stages"].get(stage, {}).get("outputs", {})
        if name not in outputs:
            return
        for other, digest in outputs.items():
            p = self.path / other
            if other != name and (not p.exists() or hash_path(p) != digest):
                return
        outputs[name] = hash_path(self.path / name)
        write_json(self.manifest_path, m)

    def set_untracked(self, stage: str, trackers: list[str]) -> None:
        """Record the trackers a finished stage is not yet logged to (``potstill.stage.Stage._track``)."""
        m = self.manifest()
        entry = m["stages"][stage]
        if sorted(entry.get("untracked", [])) == sorted(trackers):
            return
        if trackers:
            entry["untracked"] = trackers
        else:
            entry.pop("untracked", None)
        write_json(self.manifest_path, m)


@functools.cache
def code_digest() -> str:
    """sha256 of potstill's own source: every ``.py`` file of the package, by its path inside it
    and its bytes, read once per process (~190 files, 2.6 MB: a few milliseconds).

    Part of every stage's fingerprint. The release number (``__version__``) stayed "0.1.0" through
    changes to what stages write (curate setting aside answers that hold a special token), so an
    upgraded potstill said "up to date, skipped" over a dataset its own checks would reject. The
    package's files are read where they are installed, in an editable checkout or a wheel's
    site-packages alike; a package not held in files (a zip import) falls back to the release.
    """
    root = Path(__file__).parent  # this module is at the package's top
    h = hashlib.sha256()
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py"))
    for name, p in files:
        data = p.read_bytes()
        # Lengths first: no two different file sets give the same byte stream.
        h.update(f"{len(name)}:{name}{len(data)}:".encode())
        h.update(data)
    return h.hexdigest() if files else __version__


# Run directories this process holds: `potstill run` holds its directory across the stages, and
# each stage takes it again on the way in.
_HELD: set[Path] = set()


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold the run directory ``path`` (an existing directory) for this process, or refuse at once.

    Two commands at once on one run would write over each other's artifacts, and the manifest
    would record one's fingerprint beside the other's outputs (a later run then skips a stage on
    the wrong weights). The lock is ``flock`` on the directory itself: nothing is written into it,
    and a killed process lets go with its descriptor. Where there are no such locks (Windows, a
    file system without them), the command runs unguarded.
    """
    key = Path(path).resolve()
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if key in _HELD or fcntl is None:
        yield
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            raise PotstillError(f"{path}: another potstill command is running a stage in this run directory; "
                                "wait for it to finish (two at once would write over each other's artifacts)") from None
        except OSError:  # some network and container mounts
            locked = False
        if locked:
            _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


CHALLENGER_TRAIN = "challenger_train.jsonl"  # RUN/redistill/<id>/: every record challenger <id> was trained on


def student_train_path(run_dir: str | Path) -> Path:
    """The records the student RUN/student names was trained on: RUN/train.jsonl, or, for a
    challenger redistill promoted (RUN/students/<id>/), RUN/redistill/<id>/challenger_train.jsonl,
    which adds the served traffic it learnt. Serve's out-of-distribution reference, watch's drift
    reference and the next redistill's old data read it: with RUN/train.jsonl alone, the traffic a
    promoted student learnt stayed "out of distribution" and went on to the teacher."""
    run_dir = Path(run_dir)
    student = (run_dir / "student").resolve()
    if student.parent == (run_dir / "students").resolve():
        kept = run_dir / "redistill" / student.name / CHALLENGER_TRAIN
        if kept.is_file():
            return kept
    return run_dir / "train.jsonl"


def check_trained_task(run_dir: str | Path, task: TaskConfig, command: str) -> None:
    """Refuse ``task`` in one line where it is not the task of RUN/potstill.yaml, naming the field.

    That file holds the task every stage last ran with, train's included (``stage.save_config``),
    and is what ``watch`` and ``redistill`` load unless given -c. A -c with other labels parsed every
    served and training answer as invalid, so watch read a label-mix drift as "ok"; another instruction
    embedded and compared the students on prompts the champion never saw. A run without the file
    (built by hand) has no record to compare with."""
    path = Path(run_dir) / "potstill.yaml"
    if not path.is_file():
        return
    saved = _saved_task(path, command)
    mine, theirs = task.model_dump(mode="json"), saved.model_dump(mode="json")
    differ = [k for k in mine if mine[k] != theirs.get(k)]
    if not differ:
        return
    first, rest = differ[0], [f"task.{k}" for k in differ[1:]]
    also = f" ({', '.join(rest)} {'differs' if len(rest) == 1 else 'differ'} too)" if rest else ""
    raise PotstillError(f"{command}: task.{first} is {_shown(mine[first])} in the config but {_shown(theirs[first])} "
                        f"in {path}{also}, the task RUN/student was trained for; give -c a config with the run's "
                        "task, or none")


def _saved_task(path: Path, command: str) -> TaskConfig:
    """The task section of RUN/potstill.yaml (the rest of the file is not needed), or one line saying
    why it cannot be read: the task the student learnt is then unknown, and nothing is judged."""
    why = "not a mapping at the top level"
    try:
        data = safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            return TaskConfig.model_validate(data.get("task") or {})
    except UnicodeDecodeError as e:
        why = f"not UTF-8 text (byte {e.start})"
    except yaml.YAMLError as e:
        why = f"invalid YAML: {yaml_problem(e)}"
    except ValidationError as e:
        err = e.errors()[0]
        why = f"task.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" if err["loc"] else f"task: {err['msg']}"
    raise PotstillError(f"{path}: {why}; {command} compares the config's task with the one there, the task "
                        "RUN/student was trained for: fix the file")


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
