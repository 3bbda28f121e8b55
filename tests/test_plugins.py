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
