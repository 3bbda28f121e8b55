"""Text put into report.html: HTML-escaped, less the control characters an HTML page may not hold."""

from __future__ import annotations

from html import escape as _escape

# The C0 controls but tab, line feed and carriage return, DEL and the C1 controls: in a page's text
# the HTML standard calls each a parse error (NUL its own), browsers drop or replace them, and one NUL
# made grep call a report holding an input's NUL byte a binary file. Left out, as nothing shows them.
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)])


def escape(s: str, quote: bool = True) -> str:
    """``html.escape`` of ``s`` without its control characters (``_CONTROLS``)."""
    return _escape(s.translate(_CONTROLS), quote)
