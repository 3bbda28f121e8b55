"""Plugin discovery: tasks, teachers and engines by name, built-ins and entry points alike.

A third-party package adds ``[project.entry-points."potstill.teachers"] mine = "pkg:MyTeacher"``
and ``teacher.type: mine`` works, exactly as ``openai`` or ``local`` do. The built-ins are listed
here too (``BUILTIN``, the same names as ``pyproject.toml``'s entry points; a test checks the two
agree), so they resolve without the package's metadata: from a source checkout on ``PYTHONPATH``,
or an install whose entry points were not refreshed after a built-in was added. A built-in name
always means the built-in.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from potstill.errors import PotstillError, redact

BUILTIN: dict[str, dict[str, str]] = {
    "tasks": {
        "classification": "potstill.tasks.classification:ClassificationTask",
        "extraction": "potstill.tasks.extraction:ExtractionTask",
        "freetext": "potstill.tasks.freetext:FreeTextTask",
        "tools": "potstill.tasks.tools:ToolsTask",
    },
    "teachers": {
        "openai": "potstill.teachers.openai_teacher:OpenAITeacher",
        "local": "potstill.teachers.local:LocalTeacher",
        "replay": "potstill.teachers.replay:ReplayTeacher",
        "anthropic": "potstill.teachers.anthropic_teacher:AnthropicTeacher",
    },
    "engines": {
        "transformers": "potstill.engines.transformers:TransformersEngine",
        "ctranslate2": "potstill.engines.ctranslate2:CT2Engine",
        "llamacpp": "potstill.engines.llamacpp:LlamaCppEngine",
    },
}


def available(group: str) -> dict[str, Any]:
    """The entry points registered for ``potstill.<group>``, by name (third-party plugins, and the
    built-ins when the package's metadata is installed)."""
    return {ep.name: ep for ep in entry_points(group=f"potstill.{group}")}


def names(group: str) -> list[str]:
    """Every name ``load_plugin(group, name)`` resolves: the built-ins and the entry points."""
    return sorted({*BUILTIN.get(group, {}), *available(group)})


def _load_builtin(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def load_plugin(group: str, name: str, what: str | None = None) -> Any:
    """The class ``name`` of ``group``; an unknown name is one error naming ``what`` (default: the
    group's "<task|teacher> type"), the names known and the closest."""
    builtin = BUILTIN.get(group, {})
    if name in builtin:
        return _load_builtin(builtin[name])
    eps = available(group)
    if name not in eps:
        known = names(group)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PotstillError(f"unknown {what or group[:-1] + ' type'} '{name}' (available: {', '.join(known)}){hint}")
    ep = eps[name]
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - the plugin's own import: a missing dependency, a renamed class
        raise PotstillError(f"plugin '{name}' (potstill.{group}: {ep.value}) does not load: {_first_line(e)}"[:400]) \
            from None


def _first_line(e: BaseException, secrets: list[str] | tuple[str, ...] = ()) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return redact(f"{type(e).__name__}: {first}", list(secrets))


def build(group: str, name: str, *args: Any, what: str | None = None, method: str | None = None,
          secrets: list[str] | tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``load_plugin(group, name)`` called with the arguments (or its ``method``, an engine's
    ``load``). A third-party plugin that raises there (a missing option, a bad value) is one error
    naming it, its entry point and the cause's first line, ``secrets`` blanked; a ``PotstillError``
    passes as it is, and a built-in's errors are potstill's own."""
    cls = load_plugin(group, name, what)
    make = getattr(cls, method) if method else cls
    if name in BUILTIN.get(group, {}):
        return make(*args, **kwargs)
    try:
        return make(*args, **kwargs)
    except PotstillError:
        raise
    except Exception as e:  # noqa: BLE001 - third-party code: whatever it raises is one line that names it
        value = available(group)[name].value
        raise PotstillError(f"plugin '{name}' (potstill.{group}: {value}) failed: {_first_line(e, secrets)}"[:400]) \
            from e
