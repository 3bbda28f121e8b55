"""A pipeline stage, declared once: the config it reads, the artifacts it reads and writes, its body.

Everything else derives from the declaration (``potstill.pipeline.STAGES``): the fingerprint
that decides whether the stage is up to date, its CLI flags, and the fields it records in the
run's ``potstill.yaml``. A field a stage reads but does not declare would leave the stage
"up to date" with stale numbers when it changes; ``tests/test_stages.py`` records every field
each stage's body actually reads and fails on any that is not declared.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import yaml
from pydantic import BaseModel
from rich.markup import escape

from potstill.config import MODEL_REF, Config, flat_fields, load_config, path_roles, relative_paths, set_dotted
from potstill.errors import PotstillError, url_without_credentials
from potstill.hashing import hash_path
from potstill.progress import say, stop_if_unread
from potstill.inputs import load_inputs  # noqa: F401  (re-exported: pilot, preflight and tests load it from here)
from potstill.records import write_text
from potstill.rundir import RunDir, exclusive

if TYPE_CHECKING:
    from potstill.tracking_live import Live

Body = Callable[[Config, RunDir], dict[str, Any]]


def leaf_fields(names: tuple[str, ...] | list[str]) -> list[str]:
    """Dotted leaf fields named by sections (``teacher``), subsections (``teacher.few_shot``) or leaves."""
    leaves = [k for k, _, _ in flat_fields(Config)]
    out: list[str] = []
    for name in names:
        hits = [k for k in leaves if k == name or k.startswith(name + ".")]
        if not hits:
            raise ValueError(f"no config field or section named {name!r}")
        out += [k for k in hits if k not in out]
    return out


def get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def by_content(key: str, value: Any, cfg: Config | None = None, _section: Any = None) -> Any:
    """A path field that names an existing file or directory counts by its sha256 (see ``PathRole``),
    and, given the run's ``cfg``, a model field that names a hub id counts by its pinned commit.

    A whole section held in one field (``evaluate.judge.teacher``, a teacher section or None) counts
    with each path inside it by content too: by name, an edited judge replay or few-shot file would
    leave evaluate "up to date" on the old verdicts."""
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
        for sub in path_roles():
            if sub.startswith(key + "."):
                *parents, leaf = sub[len(key) + 1:].split(".")
                node: Any = data
                for p in parents:
                    node = node.get(p) if isinstance(node, dict) else None
                if isinstance(node, dict) and leaf in node:
                    node[leaf] = by_content(sub, node[leaf], cfg, node)
        return data
    role = path_roles().get(key)
    # Not an empty one (an API teacher's unset model): Path("") is the working directory, whose every
    # file was hashed, so a test writing beside it (or a project's own files) changed the fingerprint.
    if role and role.content and isinstance(value, str) and value.strip():
        from potstill.hub_files import is_hub_file, local_file

        if is_hub_file(value):  # by the content fetched (an unpinned revision moves with the hub)
            return {"file_sha256": hash_path(local_file(value))}
        if Path(value).is_file():
            return {"file_sha256": hash_path(value)}
        # A local model directory (student.model, teacher.model, train.teacher_model): by name
        # alone, a base model retrained in place would leave train "up to date" on the old weights.
        if Path(value).is_dir():
            # One run fingerprints a local model in up to four stages; hash_file reads each version
            # of a file once per process (a 7B model is ~15 GB to read).
            return {"dir_sha256": hash_path(value)}
        if role == MODEL_REF and cfg is not None and _hub_id(value):
            section = _section if _section is not None else get_dotted(cfg, key.rpartition(".")[0])
            kind = section.get("type") if isinstance(section, dict) else getattr(section, "type", None)
            if kind in (None, "local"):  # a student, train.teacher_model, a local teacher: not an API's model name
                from potstill.models.loading import hub_revision

                # By name alone, a new upstream revision left train and evaluate "up to date" on the
                # old weights; the commit is the one this process's loads read (hub_revision pins it).
                return {"hub": hub_revision(value)}
    return value


def _hub_id(spec: str) -> bool:
    """Whether a model spec names a hub repo (``org/name``, ``org/name@rev``), as ``models.loading.resolve`` reads it."""
    return bool(spec) and not spec.startswith(("bundled:", ".", "/", "~")) and not spec.endswith(".gguf") \
        and spec.count("/") <= 1 and not Path(spec).expanduser().exists()


@dataclass(frozen=True)
class Stage:
    """One stage of ``potstill run``.

    ``reads``: config sections or fields the body uses; any change to one reruns the stage,
    except those in ``tunes`` (settings of *how* it runs, such as rate limits, that cannot change
    what it writes). Both become the command's flags. ``inputs``/``outputs``: artifact names in
    the run directory; a changed input reruns the stage, a missing or edited output too.
    ``body``: ``"module:function"`` taking ``(cfg, run)`` and returning the summary kept in the
    manifest, imported only when the stage runs (so ``potstill --help`` loads no torch).
    ``scratch``: names in the run directory the body keeps only so that a stopped run resumes (train's
    checkpoints), removed once the stage is marked done, or found done by a later command (a kill
    came between the two).
    ``before``: ``"module:function"`` taking the run directory, called before the inputs are hashed:
    an input the body would rewrite on opening (curate's review.sqlite, migrated by its store) is
    rewritten first, so the fingerprint marked done is that of the file the next run hashes.
    """

    name: str
    doc: str
    reads: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    body: str
    tunes: tuple[str, ...] = ()
    preflight: bool = False  # its command refuses to start when ``potstill preflight``'s checks for it fail
    tracked: bool = False  # logged to the trackers in ``tracking`` (declare "tracking" in reads and tunes)
    scratch: tuple[str, ...] = ()
    before: str = ""

    def __post_init__(self) -> None:
        stray = set(leaf_fields(self.tunes)) - set(leaf_fields(self.reads))
        if stray:
            raise ValueError(f"{self.name}: tunes {sorted(stray)} are not among its reads")

    def fields(self) -> list[str]:
        """Every leaf config field this stage uses: its CLI flags and its part of the saved config."""
        return leaf_fields(self.reads)

    def fingerprinted(self) -> list[str]:
        tunes = set(leaf_fields(self.tunes))
        return [k for k in self.fields() if k not in tunes]

    def fingerprint(self, cfg: Config, run: RunDir) -> str:
        settings = {k: by_content(k, get_dotted(cfg, k), cfg) for k in self.fingerprinted()}
        return run.fingerprint(self.name, settings, [run / name for name in self.inputs])

    def up_to_date(self, cfg: Config) -> bool:
        run = RunDir(cfg.run_dir)
        return run.is_done(self.name, self.fingerprint(cfg, run))

    def run(self, cfg: Config, force: bool = False) -> dict[str, Any]:
        """Run the body unless the manifest says these settings and inputs already produced the outputs."""
        from potstill import tracking

        if self.tracked:
            tracking.check(cfg)  # a tracker that is not installed is one line now, not after an hour of training
        check_saved_config(Path(cfg.run_dir))
        with held_run(cfg):
            done = self._run(cfg, force)
        stop_if_unread()  # `potstill run | head -1`: the stage is recorded, the next one does not start
        return done

    def _run(self, cfg: Config, force: bool) -> dict[str, Any]:
        run = RunDir(cfg.run_dir)
        if self.before:
            module, func = self.before.split(":")
            getattr(importlib.import_module(module), func)(run.path)
        fp = self.fingerprint(cfg, run)
        main = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch, one process records
        if not force and run.is_done(self.name, fp):
            say(f"[dim]{self.name}: up to date, skipped[/dim]")
            summary = run.manifest()["stages"][self.name].get("summary", {})
            if main:
                self._drop_scratch(run)
                save_config(cfg, run, self)
                self._track(cfg, run, summary, retry=True)
            return {"skipped": True, **summary}
        if not force and main and run.code_changed(self.name):
            # Said, since nothing the user did explains the rerun (an upgrade, a `git pull`), and train's
            # can be long; what was paid for is not paid again.
            say(f"[dim]{self.name}: potstill changed since {self.name} ran: running it again (potstill's code "
                "is part of every stage's fingerprint; a teacher or judge answer already in the ledger is not "
                "asked for again)[/dim]")
        module, func = self.body.split(":")
        body: Body = getattr(importlib.import_module(module), func)
        from potstill.tracking_live import Live, following

        # A body that trains follows it live in the trackers (tracking_live); the runs it opens
        # stay open until _track gives them the recorded stage, or end failed if the stage fails.
        live = Live.main(cfg, self.name, self._params(cfg), run.path) if self.tracked else None
        with following(live):
            summary = body(cfg, run)
            if main:
                # Each input's digest as this run read it (memoised: hashed for the fingerprint already),
                # so a later command can tell which student an eval.json is of (export's model card).
                digests = {name: hash_path(run / name) for name in self.inputs if (run / name).exists()}
                run.mark_done(self.name, fp, list(self.outputs), {"summary": summary, "input_digests": digests})
                self._drop_scratch(run)
                save_config(cfg, run, self)
                self._track(cfg, run, summary, live=live)
        return {"skipped": False, **summary}

    def _drop_scratch(self, run: RunDir) -> None:
        import shutil

        for name in self.scratch:
            shutil.rmtree(run / name, ignore_errors=True)

    def _params(self, cfg: Config) -> dict[str, Any]:
        """What a tracker logs as the stage's parameters: the fields that decide what it writes."""
        return {k: get_dotted(cfg, k) for k in self.fingerprinted()}

    def _track(self, cfg: Config, run: RunDir, summary: dict[str, Any], retry: bool = False,
               live: Live | None = None) -> None:
        """Log the finished stage to its trackers; ``retry``: only to those that failed when it ran
        (the manifest keeps their names), so a tracker that was down logs it once, on a later run.
        ``live``: the runs that followed its training, which get the rest rather than a second run."""
        from potstill import tracking

        if not self.tracked:
            return
        pending = run.manifest()["stages"][self.name].get("untracked", [])
        trackers = [t for t in cfg.tracking if t in pending] if retry else list(cfg.tracking)
        if not trackers:
            return
        failed = tracking.after_stage(cfg.model_copy(update={"tracking": trackers}), self.name, self._params(cfg),
                                      summary, run.path, live=live)
        run.set_untracked(self.name, sorted(set(failed) | (set(pending) - set(trackers))))


@contextlib.contextmanager
def held_run(cfg: Config) -> Iterator[None]:
    """The run directory, made and held against a second command (``rundir.exclusive``) while the
    block runs. Under torchrun / accelerate launch the ranks of one command share it: rank 0 holds
    it for them."""
    made = _missing_dirs(Path(cfg.run_dir))
    run = RunDir(cfg.run_dir)
    with exclusive(run.path) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        try:
            yield
        except BaseException:
            # A stage that fails before writing anything leaves no empty run directory that looks
            # like a started run; rmdir removes only what is still empty, so nothing written is lost.
            # Only under the lock: a command refused it may have seen the directory missing an instant
            # before the holder made it, and the holder's directory is still empty while it loads
            # models. Removed, the holder's lock guarded a deleted directory, its writes made a new one
            # and a third command was let in beside it.
            for d in made:
                try:
                    d.rmdir()
                except OSError:
                    break
            raise


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what ``RunDir`` will create)."""
    out = []
    path = path.absolute()
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


# The first line of every potstill.yaml that potstill writes into a run directory: this one's, and
# `potstill quickstart`'s ("# Written by `potstill quickstart`...").
WRITTEN = ("# Written by potstill", "# Written by `potstill")


def check_saved_config(run_dir: Path) -> None:
    """Refuse, before a stage starts, a RUN/potstill.yaml that potstill did not write: ``save_config``
    would replace it. With `run_dir: .` in a hand-written config (or a run directory holding one) that
    was the user's own file, loaded by this very command: its comments went, and the user info and
    key of a base_url in it, the only copy, with them."""
    path = run_dir / "potstill.yaml"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:  # none yet (or unreadable: save_config's write then says so)
        return
    if not first.lstrip("\ufeff").startswith(WRITTEN):
        raise PotstillError(f"{path} is not one potstill wrote (no '# Written by potstill' first line), and a stage "
                            "records its settings there: keep your config outside the run directory (or give "
                            "run_dir another folder) so it is not written over")


def save_config(cfg: Config, run: RunDir, stage: Stage) -> None:
    """Record in RUN/potstill.yaml the fields ``stage`` ran with, and the sections no stage reads
    (serve, watch, redistill, export): what ``serve``, ``watch`` and ``redistill`` load by default.

    Fields of other stages keep their saved values, so a single-stage command run with another
    config file does not rewrite the settings that produced the other artifacts.
    """
    from potstill.pipeline import STAGES  # the declarations live there; pipeline imports this module

    path = run / "potstill.yaml"
    new = relative_paths(cfg, run.path)
    saved = _read_saved(path)
    if saved is None:
        data = new
    else:
        data = saved
        staged = {k for s in STAGES.values() for k in s.fields()}
        keys = stage.fields() + [k for k, _, _ in flat_fields(Config) if k not in staged]
        for key in keys:
            set_dotted(data, key, get_dotted_plain(new, key))
    data["run_dir"] = "."
    stripped = _strip_url_credentials(data)
    if stripped:
        say(f"[dim]{stage.name}: {', '.join(stripped)} saved in {path} without its user info and query (a key "
            "there is never written down); give serve, watch and redistill -c with your config[/dim]")
    write_text(path, f"{WRITTEN[0]}: the settings this run's stages last ran with (paths relative to this\n"
                     "# file); `potstill serve|watch|redistill RUN` load it unless given -c.\n"
               + yaml.safe_dump(data, sort_keys=False, width=100))


# The fields that hold a server's URL, which can carry a key (user:password@, ?api-key=).
_URL_FIELDS = ("base_url", "ray_endpoints")


def _strip_url_credentials(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Remove user info and query strings from every URL field in ``data``, in place; the fields changed."""
    changed = []
    for k, v in data.items():
        if isinstance(v, dict):
            changed += _strip_url_credentials(v, f"{prefix}{k}.")
        elif k in _URL_FIELDS and v:
            clean = [url_without_credentials(u) for u in v] if isinstance(v, list) else \
                url_without_credentials(v)
            if clean != v:
                data[k] = clean
                changed.append(prefix + k)
    return changed


def get_dotted_plain(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def _read_saved(path: Path) -> dict[str, Any] | None:
    """The saved config as plain data, or None when there is none, or when it no longer loads (a hand
    edit, another potstill version's field): then it is moved aside whole, never written over, since
    it may be the only record of the settings that produced the other stages' artifacts."""
    if not path.exists():
        return None
    try:
        return relative_paths(load_config(path), path.parent)
    except PotstillError as e:
        aside = path.with_name(path.name + ".broken")
        n = 0
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.broken.{n}")
        os.replace(path, aside)
        say(f"[yellow]warning:[/yellow] {escape(str(e))}; moved it to {escape(aside.name)} and wrote a new one "
            "(the other stages' settings are in the old file)")
        return None
