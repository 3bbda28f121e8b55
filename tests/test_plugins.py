"""Built-in tasks, teachers and engines resolve by name with or without the package's entry points."""

import tomllib
from pathlib import Path

import pytest

from potstill import plugins
from potstill.errors import PotstillError

ROOT = Path(__file__).resolve().parents[1]


def test_the_builtin_table_is_pyprojects_entry_points():
    """``plugins.BUILTIN`` and ``pyproject.toml``'s entry points name the same classes: a built-in
    added to one and not the other fails here."""
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = {g.removeprefix("potstill."): dict(v) for g, v in eps.items() if g.startswith("potstill.")}
    assert declared == plugins.BUILTIN


def test_builtins_load_without_any_installed_entry_point(monkeypatch):
    """A source checkout on PYTHONPATH has no package metadata: every built-in still loads, a
    plugin's name is still an error that lists the built-ins, and a close name gets a hint."""
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    from potstill.config import TaskConfig
    from potstill.engines import engine_class
    from potstill.tasks import get_task

    for group, table in plugins.BUILTIN.items():
        for name, target in table.items():
            cls = plugins.load_plugin(group, name)
            assert f"{cls.__module__}:{cls.__name__}" == target
    assert get_task(TaskConfig(type="freetext", instruction="summary")).name == "freetext"
    assert engine_class("ctranslate2").__name__ == "CT2Engine"
    with pytest.raises(PotstillError, match=r"^unknown teacher type 'opneai' \(available: anthropic, local, openai, "
                                            r"replay\); did you mean 'openai'\?$"):
        plugins.load_plugin("teachers", "opneai")


def test_a_third_party_entry_point_loads_and_cannot_shadow_a_builtin(monkeypatch):
    from importlib.metadata import EntryPoint

    mine = EntryPoint(name="mine", value="potstill.teachers.replay:ReplayTeacher", group="potstill.teachers")
    fake = EntryPoint(name="openai", value="potstill.teachers.replay:ReplayTeacher", group="potstill.teachers")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [mine, fake] if group == "potstill.teachers" else [])
    assert plugins.load_plugin("teachers", "mine").__name__ == "ReplayTeacher"
    assert plugins.load_plugin("teachers", "openai").__name__ == "OpenAITeacher"
    assert "mine" in plugins.names("teachers")


def test_a_broken_plugin_is_one_line_naming_it_and_its_cause(monkeypatch, tmp_path, capsys):
    """A plugin whose module imports a package that is not installed, or names a class its module
    lacks, is one error naming the plugin, its entry point and the cause; ``potstill preflight``
    reports it as the teacher check's failure, not a traceback."""
    from importlib.metadata import EntryPoint

    (tmp_path / "brokenplug.py").write_text("import potstill_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = EntryPoint(name="mine", value="brokenplug:Teacher", group="potstill.teachers")
    renamed = EntryPoint(name="fast", value="potstill.engines.transformers:NoSuchEngine", group="potstill.engines")
    monkeypatch.setattr(plugins, "entry_points", lambda group: {"potstill.teachers": [broken],
                                                                "potstill.engines": [renamed]}.get(group, []))
    with pytest.raises(PotstillError, match=r"^plugin 'mine' \(potstill.teachers: brokenplug:Teacher\) does not "
                                            r"load: ModuleNotFoundError: No module named "
                                            r"'potstill_missing_dependency_xyz'$"):
        plugins.load_plugin("teachers", "mine")
    with pytest.raises(PotstillError, match=r"^plugin 'fast' \(potstill.engines: "
                                            r"potstill.engines.transformers:NoSuchEngine\) does not load: "
                                            r"AttributeError: "):
        plugins.load_plugin("engines", "fast", what="engine")

    code, err = _generate_with(monkeypatch, tmp_path, capsys, "type: mine\n  model: x\n")
    assert code == 2 and len(err) == 1 and "plugin 'mine'" in err[0] and "Traceback" not in err[0], err


def _generate_with(monkeypatch, tmp_path, capsys, teacher: str) -> tuple[int, list[str]]:
    """``potstill generate`` through the CLI's main on one input with the ``teacher:`` section given."""
    import sys

    from potstill.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"input": "the match"}\n')
    (tmp_path / "c.yaml").write_text("task:\n  type: freetext\n  instruction: sum\ndata:\n  inputs: in.jsonl\n"
                                     f"teacher:\n  {teacher}")
    monkeypatch.setattr(sys, "argv", ["potstill", "generate", "-c", "c.yaml"])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_a_plugin_whose_constructor_fails_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    """A third-party teacher, task or engine that loads but raises when built (a missing option, a
    bad value) is one error naming the plugin, its entry point and the cause, without the key the
    teacher's environment holds; from the CLI, one red line and exit 2, not a traceback."""
    from importlib.metadata import EntryPoint

    from potstill.config import TaskConfig
    from potstill.engines import load_engine
    from potstill.tasks import get_task

    (tmp_path / "pickyplug.py").write_text(
        "import os\n"
        "class Teacher:\n"
        "    def __init__(self, cfg, task):\n"
        "        raise KeyError('option endpoint is required (key ' + os.environ['PICKY_KEY'] + ')')\n"
        "class Task:\n"
        "    def __init__(self, cfg):\n"
        "        raise ValueError('labels must be lowercase\\nsecond line')\n"
        "class Engine:\n"
        "    @classmethod\n"
        "    def load(cls, spec, device='auto', **options):\n"
        "        raise RuntimeError('no such checkpoint: ' + spec)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PICKY_KEY", "sk-picky0123456789abcdefghij")
    eps = {"potstill.teachers": [EntryPoint(name="picky", value="pickyplug:Teacher", group="potstill.teachers")],
           "potstill.tasks": [EntryPoint(name="picky", value="pickyplug:Task", group="potstill.tasks")],
           "potstill.engines": [EntryPoint(name="picky", value="pickyplug:Engine", group="potstill.engines")]}
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps.get(group, []))

    with pytest.raises(PotstillError, match=r"^plugin 'picky' \(potstill.tasks: pickyplug:Task\) failed: "
                                            r"ValueError: labels must be lowercase$"):
        get_task(TaskConfig(type="picky"))
    with pytest.raises(PotstillError, match=r"^plugin 'picky' \(potstill.engines: pickyplug:Engine\) failed: "
                                            r"RuntimeError: no such checkpoint: /models/x$"):
        load_engine("picky", "/models/x")

    code, err = _generate_with(monkeypatch, tmp_path, capsys, "type: picky\n  model: x\n  api_key_env: PICKY_KEY\n")
    assert code == 2 and len(err) == 1, err
    assert "plugin 'picky' (potstill.teachers: pickyplug:Teacher) failed: KeyError" in err[0], err
    assert "option endpoint is required" in err[0] and "sk-picky" not in err[0], err
