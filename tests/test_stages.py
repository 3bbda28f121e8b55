"""Stage declarations (``potstill.pipeline.STAGES``) against what the stages really do.

One real run of every stage on tiny models, with every config field read by each stage's body
recorded, proves the declarations cover what the bodies read. Then each config field in turn is
changed, and the skip-if-done check over that real run's manifest must rerun exactly the stages
that declare it (and none for a field no stage declares).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from potstill import stage as stage_mod
from potstill.config import Config, Section, flat_fields, load_config, path_roles, set_dotted
from potstill.pipeline import STAGES, run_all
from potstill.rundir import RunDir
from potstill.stage import Stage, get_dotted, save_config
from tests.test_pipeline import LABELS, write_inputs

DECLARED = sorted({k for s in STAGES.values() for k in s.fields()})
# run_dir names the run itself; changing it points at another (empty) run.
UNDECLARED = sorted(k for k, _, _ in flat_fields(Config) if k not in DECLARED and k != "run_dir")
ANNOTATIONS = {k: a for k, a, _ in flat_fields(Config)}


class ReadRecorder:
    """Records ``section.field`` for every config field read while a stage's body runs.

    Pydantic keeps field values in the instance ``__dict__``, so a read is an attribute lookup
    on a Section; ``model_dump`` reads without one and goes unrecorded (an undercount, never a
    false alarm).
    """

    def __init__(self, cfg: Config):
        self.prefix: dict[int, str] = {}
        self._index(cfg, "")
        self.reads: dict[str, set[str]] = {}
        self.current: str | None = None

    def _index(self, model: BaseModel, prefix: str) -> None:
        self.prefix[id(model)] = prefix
        for name in type(model).model_fields:
            value = model.__dict__[name]
            if isinstance(value, BaseModel):
                self._index(value, f"{prefix}{name}.")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        recorder, original = self, Section.__getattribute__

        def getattribute(obj: Any, name: str) -> Any:
            value = original(obj, name)
            if recorder.current and id(obj) in recorder.prefix and name in type(obj).model_fields:
                if not isinstance(value, BaseModel):
                    recorder.reads[recorder.current].add(recorder.prefix[id(obj)] + name)
            return value

        Section.__getattribute__ = getattribute  # type: ignore[method-assign]
        try:
            yield
        finally:
            Section.__getattribute__ = original  # type: ignore[method-assign]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        current, self.current = self.current, None
        try:
            yield
        finally:
            self.current = current


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, tiny_model, tiny_model_b):
    """A project with every stage run once, for real, and the fields each stage's body read."""
    root = tmp_path_factory.mktemp("stages")
    write_inputs(root / "inputs.jsonl")
    (root / "shots.jsonl").write_text("".join(json.dumps({"input": f"{w} match vote", "label": lab}) + "\n"
                                              for w, lab in zip(["phone", "team", "party"], LABELS)))
    (root / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "run",
        "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "local", "model": str(tiny_model_b), "batch_size": 4, "price": {"usd_per_hour": 1.0},
                    "few_shot": {"path": "shots.jsonl", "k": 2}},
        "student": {"model": str(tiny_model), "max_length": 64},
        "pilot": {"n": 6},
        "curate": {"val": 4, "test": 8},
        "train": {"lr": 0.01, "epochs": 1, "batch_size": 4},
        "evaluate": {"latency_samples": 3, "batch_size": 4},
        "report": {"bootstrap_samples": 100},
    }))
    cfg = load_config(root / "potstill.yaml")
    recorder = ReadRecorder(cfg)
    real_run = Stage.run

    def recorded(self: Stage, cfg: Config, force: bool = False) -> dict:
        recorder.reads[self.name], recorder.current = set(), self.name
        try:
            return real_run(self, cfg, force)
        finally:
            recorder.current = None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Stage, "run", recorded)
        # The fingerprint and the saved config read every declared field: only the body counts.
        mp.setattr(Stage, "fingerprint", _paused(recorder, Stage.fingerprint))
        mp.setattr(stage_mod, "save_config", _paused(recorder, save_config))
        with recorder.installed():
            runs = run_all(cfg)["results"]
    assert not any(r["skipped"] for r in runs.values())
    return root, cfg, recorder.reads


def _paused(recorder: ReadRecorder, fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with recorder.paused():
            return fn(*args, **kwargs)

    return call


def test_every_field_a_stage_reads_is_declared(done_run):
    _, _, reads = done_run
    assert set(reads) == set(STAGES)
    for name, fields in reads.items():
        assert fields, f"{name}: no reads recorded (the recorder is broken)"
        # run_dir is where the run is, not a setting of it.
        undeclared = fields - set(STAGES[name].fields()) - {"run_dir"}
        assert not undeclared, f"{name} reads {sorted(undeclared)} but does not declare them"
    # The bug this guards against: pilot asks the teacher through generate's settings.
    assert "generate.n" in reads["pilot"] and "generate.n" in STAGES["pilot"].fingerprinted()


def test_the_field_lists_are_not_empty():
    assert len(DECLARED) > 80 and len(UNDECLARED) > 20
    assert {"generate.n", "train.lr", "curate.seed", "report.seed", "data.inputs"} <= set(DECLARED)
    assert {"serve.port", "watch.window", "redistill.min_gain", "export.dtype"} <= set(UNDECLARED)


def _other_value(cfg: Config, key: str, tmp: Path) -> Any:
    """A valid value for ``key`` different from the current one (a new file's path for a file field)."""
    value = get_dotted(cfg, key)
    role = path_roles().get(key)
    if role and role.resolve:
        path = tmp / f"{key}.jsonl"
        old = Path(value).read_text() if value and Path(value).is_file() else ""
        path.write_text(old + json.dumps({"input": "one more line"}) + "\n")
        return str(path)
    ann = ANNOTATIONS[key]
    literal = [a for a in typing.get_args(typing.get_args(ann)[0] if typing.get_origin(ann) is list else ann)
               if isinstance(a, str)] if "Literal" in str(ann) else []
    if isinstance(value, bool):
        candidates: list[Any] = [not value]
    elif isinstance(value, (int, float)):
        candidates = [value + 1, value / 2 if value else 0.5, value - 1, value + 0.01]
    elif isinstance(value, list):
        candidates = [value[:-1], value + ["x"], *([a] for a in literal)]
    elif isinstance(value, dict):
        candidates = [{**value, "zz": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}, {"type": "object"},
                      {k: v / 2 if isinstance(v, (int, float)) else v for k, v in value.items()}, {"zz": 1},
                      {"input": "text"}]
    elif isinstance(value, str):  # a number too, for a field that is a number or a word (recheck_margin: auto)
        candidates = [*literal, value + "x", 0.5, True]  # True: a field that is a flag or a word (teacher.reasoning: auto)
    else:  # None
        # 'root ::= "x"': a grammar; 2048: a field with a floor (teacher.thinking_budget, at least 1024)
        candidates = [1, 0.5, "x", {"type": "object"}, ["x"], 'root ::= "x"', 2048]
    data = cfg.model_dump(mode="json")
    for candidate in candidates:
        set_dotted(data, key, candidate)
        try:
            new = get_dotted(Config.model_validate(data), key)
        except ValidationError:
            continue
        if new != value:
            return candidate
    raise AssertionError(f"found no other valid value for {key} (from {value!r})")


def _rerun(cfg: Config, key: str, tmp: Path) -> set[str]:
    data = cfg.model_dump(mode="json")
    if key in ("task.tools", "task.parallel_tool_calls", "task.tool_choice"):
        # Only a tools task takes tools, parallel calls or replies: its type comes with them (the same stages read each).
        data["task"].update(type="tools", json_schema=None, tools=[{"type": "function", "function": {"name": "f"}}],
                            parallel_tool_calls=key == "task.parallel_tool_calls",
                            tool_choice="auto" if key == "task.tool_choice" else "required")
    else:
        set_dotted(data, key, _other_value(cfg, key, tmp))
    changed = Config.model_validate(data)
    return {name for name, s in STAGES.items() if not s.up_to_date(changed)}


def test_an_unchanged_config_reruns_nothing(done_run):
    _, cfg, _ = done_run
    assert all(s.up_to_date(cfg) for s in STAGES.values())


@pytest.mark.parametrize("key", DECLARED)
def test_a_declared_field_reruns_exactly_the_stages_that_declare_it(done_run, key, tmp_path):
    _, cfg, _ = done_run
    expected = {name for name, s in STAGES.items() if key in s.fingerprinted()}
    assert _rerun(cfg, key, tmp_path) == expected


@pytest.mark.parametrize("key", UNDECLARED)
def test_a_field_no_stage_declares_reruns_nothing(done_run, key, tmp_path):
    _, cfg, _ = done_run
    assert _rerun(cfg, key, tmp_path) == set()


@pytest.mark.parametrize("key, value, expected", [
    # The student's hourly price is a cost assumption of pilot and evaluate: train never reads it.
    ("student.usd_per_hour", 0.5, {"pilot", "evaluate"}),
    # The inputs' source and licence and the teacher's terms are written in the dataset card only.
    ("data.license", "CC-BY-4.0", {"curate"}),
    ("data.source", "our inbox", {"curate"}),
    ("teacher.terms", "no competing models", {"curate"}),
    # What the teacher's calls cost is the ledger's record of them (like generate.prices);
    # evaluate times a local teacher and prices it now.
    ("teacher.price.usd_per_hour", 3.0, {"evaluate"}),
    # A per-call or token price reprices the recorded calls in pilot.json and eval.json alike.
    ("teacher.price.usd_per_call", 0.02, {"pilot", "evaluate"}),
    ("teacher.price.output_per_mtok", 8.0, {"pilot", "evaluate"}),
])
def test_a_cost_or_card_setting_reruns_neither_generate_nor_train(done_run, key, value, expected):
    _, cfg, _ = done_run
    data = cfg.model_dump(mode="json")
    set_dotted(data, key, value)
    changed = Config.model_validate(data)
    assert {name for name, s in STAGES.items() if not s.up_to_date(changed)} == expected


def test_a_file_field_counts_by_content_not_by_name(done_run, tmp_path):
    root, cfg, _ = done_run
    copy = tmp_path / "same.jsonl"
    shutil.copy(cfg.data.inputs, copy)
    moved = cfg.model_copy(update={"data": cfg.data.model_copy(update={"inputs": str(copy)})})
    assert all(s.up_to_date(moved) for s in STAGES.values())


def test_a_local_model_directory_counts_by_content(done_run, tmp_path):
    """student.model naming a local directory: a copy elsewhere reruns nothing; the same directory
    with new weights (a base model retrained in place) reruns every stage that loads it."""
    root, cfg, _ = done_run
    base = tmp_path / "base"
    shutil.copytree(cfg.student.model, base)
    moved = cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": str(base)})})
    assert all(s.up_to_date(moved) for s in STAGES.values())
    weights = next(base.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert {n for n, s in STAGES.items() if not s.up_to_date(moved)} == {"pilot", "train", "evaluate"}


def test_an_edited_output_reruns_its_stage(done_run, tmp_path):
    root, cfg, _ = done_run
    other = tmp_path / "run"
    shutil.copytree(root / "run", other)
    with open(other / "card.md", "a") as f:
        f.write("edited by hand\n")
    moved = cfg.model_copy(update={"run_dir": str(other)})
    assert {n for n, s in STAGES.items() if not s.up_to_date(moved)} == {"curate"}


def test_a_rebuilt_report_leaves_evaluate_up_to_date(done_run, tmp_path):
    """`potstill report RUN --compare OTHER` rewrites RUN/report.html from the same eval.json; the
    next `potstill run` must not take that for an edited output, rerun evaluate (timing every
    student again) and overwrite the comparison. A report.html edited any other way still reruns it."""
    import subprocess
    import sys

    root, cfg, _ = done_run
    other = tmp_path / "run"
    shutil.copytree(root / "run", other)
    moved = cfg.model_copy(update={"run_dir": str(other)})
    before = (other / "report.html").read_text()
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "report", str(other), "--compare", str(root / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (other / "report.html").read_text() != before and "id='compare'" in (other / "report.html").read_text()
    assert all(s.up_to_date(moved) for s in STAGES.values())
    with open(other / "report.html", "a") as f:
        f.write("edited by hand\n")
    assert {n for n, s in STAGES.items() if not s.up_to_date(moved)} == {"evaluate"}


def test_report_into_a_run_another_command_holds_is_refused(done_run, tmp_path, monkeypatch, capsys):
    """Found by an audit: `potstill report RUN` rewrote RUN/report.html and the manifest (``RunDir.rebuilt``)
    without the run directory's lock that every stage holds, so under a running evaluate one
    read-modify-write of manifest.json lost the other's (evaluate then reran on the next run, or
    the page recorded was not the page on disk). It holds the run now, and is refused while
    another command does; a page written elsewhere (--out) touches nothing of the run."""
    from tests.helpers.cli import run_main
    from tests.helpers.run_lock import held_elsewhere

    root, _, _ = done_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    page, manifest = (run / "report.html").read_bytes(), (run / "manifest.json").read_bytes()
    with held_elsewhere(run):
        code, err = run_main(monkeypatch, capsys, "report", str(run))
        assert code == 2 and len(err) == 1 and "another potstill command is running" in err[0], err
        assert (run / "report.html").read_bytes() == page and (run / "manifest.json").read_bytes() == manifest
        assert run_main(monkeypatch, capsys, "report", str(run), "--out", str(tmp_path / "copy.html"))[0] == 0
        assert (tmp_path / "copy.html").exists() and (run / "manifest.json").read_bytes() == manifest
    assert run_main(monkeypatch, capsys, "report", str(run))[0] == 0


def test_the_run_saves_the_config_it_ran_with(done_run):
    root, cfg, _ = done_run
    saved = load_config(root / "run" / "potstill.yaml")
    assert saved.model_dump(exclude={"run_dir"}) == cfg.model_dump(exclude={"run_dir"})
    assert Path(saved.run_dir) == root / "run"
    # Paths are stored relative to the run directory, so a project moved whole still loads.
    text = yaml.safe_load((root / "run" / "potstill.yaml").read_text())
    assert text["data"]["inputs"] == "../inputs.jsonl" and text["run_dir"] == "."


def test_a_single_stage_records_only_its_own_fields(tmp_path):
    run = RunDir(tmp_path / "run")
    a = load_config(None, {"run_dir": str(run.path), "task.labels": ["x", "y"], "teacher.temperature": 0.5,
                           "train.lr": 0.1})
    save_config(a, run, STAGES["generate"])
    b = load_config(None, {"run_dir": str(run.path), "task.labels": ["x", "y"], "teacher.temperature": 0.7,
                           "train.lr": 0.2, "serve.port": 9000})
    save_config(b, run, STAGES["train"])
    saved = load_config(run / "potstill.yaml")
    # train's field from b; teacher.temperature from a (train does not read it); serve from the latest.
    assert (saved.train.lr, saved.teacher.temperature, saved.serve.port) == (0.2, 0.5, 9000)
    assert sorted(p.name for p in run.path.iterdir()) == ["potstill.yaml"]  # no temp file left behind


def test_a_local_model_path_is_saved_relative_to_the_run(tmp_path, monkeypatch):
    """A model written ./x or ../x in a config is a path relative to that config's folder; the run's
    potstill.yaml kept it as written (relative to the shell's folder), so serve, watch and redistill,
    loading it from RUN/, looked beside the run for another directory (or, once './' was gone, a hub
    id): redistill refused the champion's own base."""
    project = tmp_path / "project"
    for name in ("student", "teacher", "big"):
        (project / "models" / name).mkdir(parents=True)
        (project / "models" / name / "config.json").write_text("{}")
    (tmp_path / "shared.gguf").write_text("not read")
    (project / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "runs/a", "task": {"labels": ["x", "y"]},
        "teacher": {"model": "./models/teacher"}, "student": {"model": "./models/student"},
        "train": {"teacher_model": "../shared.gguf"},
        "evaluate": {"judge": {"teacher": {"type": "local", "model": str(project / "models" / "big")}}},
    }))
    monkeypatch.chdir(project)
    cfg = load_config("potstill.yaml")
    run = RunDir(cfg.run_dir)
    for s in STAGES.values():
        save_config(cfg, run, s)
    want = {"student.model": project / "models" / "student", "teacher.model": project / "models" / "teacher",
            "train.teacher_model": tmp_path / "shared.gguf"}
    for where in (project, tmp_path, project / "runs" / "a"):  # serve RUN from any folder
        monkeypatch.chdir(where)
        saved = load_config(project / "runs" / "a" / "potstill.yaml")
        for key, path in want.items():
            assert Path(get_dotted(saved, key)).resolve() == path, (where, key, get_dotted(saved, key))
        # An absolute path stays one (a run moved alone still finds the model).
        assert get_dotted(saved, "evaluate.judge.teacher.model") == str(project / "models" / "big")
    # The saved file, saved again by the next stage, still names the same folders.
    monkeypatch.chdir(project)
    save_config(cfg, run, STAGES["curate"])
    saved = load_config(project / "runs" / "a" / "potstill.yaml")
    assert Path(saved.student.model).resolve() == want["student.model"]
    # A hub id stays a hub id, and an API teacher's model its served name, even beside a folder of that name.
    hub = load_config(None, {"run_dir": str(run.path), "task.labels": ["x", "y"], "student.model": "org/name",
                             "teacher.type": "openai", "teacher.model": "models/teacher"})
    save_config(hub, run, STAGES["train"])
    save_config(hub, run, STAGES["generate"])
    text = yaml.safe_load((run / "potstill.yaml").read_text())
    assert (text["student"]["model"], text["teacher"]["model"]) == ("org/name", "models/teacher")


def test_stage_commands_take_exactly_their_declared_flags():
    import typer.main

    from potstill.cli import app

    click_app = typer.main.get_command(app)
    for name, s in STAGES.items():
        flags = {o for p in click_app.commands[name].params for o in p.opts if o.startswith("--") and "." in o}
        assert flags == {f"--{k}" for k in s.fields() if "." in k}, name
    serve = {o for p in click_app.commands["serve"].params for o in p.opts}
    assert {"--serve.port", "--port", "--api-key-env", "--target-escalation", "--recalibrate"} <= serve
    redistill = {o for p in click_app.commands["redistill"].params for o in [*p.opts, *p.secondary_opts]}
    assert {"--student-sample", "--new-test", "--promote", "--no-promote", "--redistill.promote", "--rollback"} <= redistill


def test_a_file_hash_is_read_once_per_version(tmp_path, monkeypatch):
    """Fingerprints hash a model's files for several stages and fields in one command: each version
    of a file is read once; a rewrite (new size or mtime) or a replacement (new inode) is read again."""
    import builtins
    import os

    from potstill.hashing import hash_file

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    first = hash_file(f)
    assert hash_file(f) == first and opened.count(str(f)) == 1
    f.write_bytes(b"b" * 1000)  # same size, rewritten in place: a new mtime
    os.utime(f, ns=(1, 1))
    assert hash_file(f) != first and opened.count(str(f)) == 2
    tmp = tmp_path / "new.bin"
    tmp.write_bytes(b"a" * 1000)
    os.utime(tmp, ns=(1, 1))
    tmp.replace(f)  # same size and mtime as before, another inode
    assert hash_file(f) == first and opened.count(str(f)) == 3


def test_evaluate_with_a_judge_reads_only_declared_fields(tmp_path, tiny_model):
    """The done run's evaluate has no judge (a classification task); an API judge runs on the
    teacher engine with the generate section's limits, budget and prices, which evaluate must
    declare (as settings of how it runs) to take them as flags and to record them."""
    from tests.evaluate.test_judge import judge_app, judged_run, stage_config
    from tests.helpers.live_server import LiveServer

    run = judged_run(tmp_path, tiny_model)
    (run / "train.json").write_text("{}")
    with LiveServer(judge_app("fair", [])) as srv:
        cfg = stage_config(run, srv.url, tiny_model)
        recorder = ReadRecorder(cfg)
        recorder.reads["evaluate"], recorder.current = set(), "evaluate"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Stage, "fingerprint", _paused(recorder, Stage.fingerprint))
            mp.setattr(stage_mod, "save_config", _paused(recorder, save_config))
            with recorder.installed():
                STAGES["evaluate"].run(cfg)
    # The judge's own teacher section is one leaf field (evaluate.judge.teacher): its fields count as it.
    reads = {"evaluate.judge.teacher" if k.startswith("evaluate.judge.teacher.") else k
             for k in recorder.reads["evaluate"]}
    assert "evaluate.judge.enabled" in reads and any(k.startswith("generate.") for k in reads)
    assert sorted(reads - set(STAGES["evaluate"].fields()) - {"run_dir"}) == []
    # Limits and prices: how the judge is asked, not what evaluate reports from cached verdicts.
    assert not {k for k in STAGES["evaluate"].fingerprinted() if k.startswith("generate.")}


def test_an_empty_model_field_is_not_the_working_directory(tmp_path, monkeypatch):
    """teacher.model is '' until set (an API teacher names its model): Path('') is the working directory,
    whose every file was hashed into evaluate's fingerprint, which then moved with any file written there."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides={"run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "a"}})
    assert cfg.teacher.model == ""
    before = STAGES["evaluate"].fingerprint(cfg, RunDir(cfg.run_dir))
    (tmp_path / "notes.txt").write_text("a file beside the project")
    assert STAGES["evaluate"].fingerprint(cfg, RunDir(cfg.run_dir)) == before


def test_the_judges_files_count_by_content_not_by_name(tmp_path):
    """evaluate.judge.teacher is a whole teacher section: its replay and few-shot files count by
    their bytes as the run's teacher's do, so an edited file reruns evaluate and a copy does not."""
    replay, shots = tmp_path / "judge.jsonl", tmp_path / "shots.jsonl"
    replay.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]}) + "\n")
    shots.write_text(json.dumps({"input": "q", "output": "A"}) + "\n")

    def fingerprint(replay_path: Path) -> str:
        judge = {"enabled": True, "teacher": {"type": "replay", "replay_path": str(replay_path),
                                              "few_shot": {"path": str(shots), "k": 1}}}
        cfg = load_config(overrides={"run_dir": str(tmp_path / "run"), "evaluate.judge": judge,
                                     "task": {"type": "freetext", "instruction": "answer"}})
        return STAGES["evaluate"].fingerprint(cfg, RunDir(cfg.run_dir))

    before = fingerprint(replay)
    copy = tmp_path / "copy.jsonl"
    shutil.copy(replay, copy)
    assert fingerprint(copy) == before
    replay.write_text(replay.read_text().replace('"A"', '"B"'))
    assert fingerprint(replay) != before
    edited = fingerprint(replay)
    shots.write_text(shots.read_text().replace('"A"', '"B"'))
    assert fingerprint(replay) != edited
