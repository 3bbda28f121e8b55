"""Text from outside (a served client's message, a record's id, a provider's error) made safe to
print on a terminal.

A terminal acts on the control characters it is sent: ESC and the C1 CSI (U+009B) start sequences
that move the cursor, erase lines, set the window title or a clipboard (OSC 52) and make links
(OSC 8); a carriage return or backspace writes over what is shown. A served client whose message
holds ``ESC[1A ESC[2K`` erased the rows above its own in ``potstill requests``. Bidi controls
(U+202E and its kin) reorder what follows them, so a name can show a count it does not hold.

``printable`` writes each such character as its ``\\uXXXX`` escape, as JSON spells it, so JSON lines
stay valid and read back to the same text, and the characters stay visible, as ``cat -v`` shows
them. Newlines and tabs stay: every caller prints lines, and a tab moves the cursor right only.
"""

from __future__ import annotations

import re

# C0 but tab and newline, DEL, C1 (unicodedata's "Cc"), and the bidi embeddings, overrides and
# isolates (U+202A-202E, U+2066-2069), whose effect runs on past the text that holds them. The marks
# (U+200E, U+200F), which right-to-left text holds as it is written, act on their neighbours only.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every terminal control character but newline and tab written as ``\\uXXXX``."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
