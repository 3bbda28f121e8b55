"""Plugin discovery: tasks and teachers register through entry points, built-ins included.

A third-party package adds ``[project.entry-points."potstill.teachers"] mine = "pkg:MyTeacher"``
and ``teacher.type: mine`` works, exactly as ``openai`` or ``local`` do.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any

from potstill.errors import PotstillError


def available(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=f"potstill.{group}")}


def load_plugin(group: str, name: str) -> Any:
    eps = available(group)
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PotstillError(f"unknown {group[:-1]} type '{name}' (available: {', '.join(sorted(eps))}){hint}")
    return eps[name].load()
