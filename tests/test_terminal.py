"""``terminal.printable``: text from outside printed on a terminal shows its control characters
(as JSON escapes them) instead of sending them; what rich prints (say, tables) passes through it."""

import io
import json

from rich.markup import escape
from rich.table import Table

from potstill import progress
from potstill.terminal import printable

HOSTILE = "a\x1b[2Kb\x9bc\u202ed\re\x07f\x7f\x00g\tnewline\nend \u200f"


def test_every_control_character_but_newline_and_tab_is_escaped_as_json_does():
    shown = printable(HOSTILE)
    assert shown == "a\\u001b[2Kb\\u009bc\\u202ed\\u000de\\u0007f\\u007f\\u0000g\tnewline\nend \u200f"
    # Inside a JSON string (json.dumps with ensure_ascii=False leaves C1 and bidi as they are) the
    # escapes read back to the same text.
    assert json.loads(printable(json.dumps(HOSTILE, ensure_ascii=False))) == HOSTILE


def test_what_rich_prints_shows_control_characters(monkeypatch):
    """Rich drops CR and BEL but sent ESC, C1 and bidi overrides on: a record id or a label in a
    curate line or a report table moved the cursor or reordered the line."""
    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", progress._Console(file=buf, force_terminal=True, width=200))
    progress.say("[yellow]" + escape(f"curate: record {HOSTILE}") + "[/yellow]")
    t = Table()
    t.add_column("slice")
    t.add_row(escape(HOSTILE))
    progress.console.print(t)
    said = buf.getvalue()
    assert "\\u001b[2Kb\\u009bc\\u202ed" in said and not any(ch in said for ch in "\x9b\u202e\x00\x7f")
    assert "\x1b[2K" not in said  # rich's own colour codes stay: they are potstill's
