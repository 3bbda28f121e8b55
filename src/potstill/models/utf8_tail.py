"""A character split across tokens, as guided decoding (``models.json_guide``) meets it: byte-level
BPE (GPT-2's, SmolLM2's, Llama 3's) and SentencePiece's byte fallback write a character outside a
vocabulary's own pieces as its UTF-8 bytes, one token or several a character ("東" is three bytes,
"☕" three, "🙂" four, and with a small vocabulary "é" two). A token may so end part-way through a
character: the guide keeps those bytes pending (``split``), feeds its prefix reader only whole
characters, and lets the token through only where some character those bytes begin (``span``)
may come next (each reader's ``opens(lo, hi)``).

``probes`` are the characters a reader that cannot answer ``opens`` exactly (a regular expression's
partial match takes a text, not a set of characters) tries instead: the pattern's own non-ASCII
characters in the span (a choice's, a class's ends), then the span's ends and 17 points between.
"""

from __future__ import annotations

import re
from functools import lru_cache

# A character's UTF-8 length by its first byte (0: a byte no character starts with); its lowest and
# highest code point by that length (lower ones are overlong; 0x10FFFF is Unicode's last).
_LOWEST = {2: 0x80, 3: 0x800, 4: 0x10000}
_HIGHEST = {2: 0x7FF, 3: 0xFFFF, 4: 0x10FFFF}
_ESCAPED = re.compile(r"\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})|\\x\{([0-9A-Fa-f]{1,6})\}|\\x([0-9A-Fa-f]{2})"
                      r"|\\N\{U\+([0-9A-Fa-f]{4,6})\}")


def _length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF \
        else 4 if 0xF0 <= lead <= 0xF4 else 0


def span(tail: bytes) -> tuple[int, int] | None:
    """The lowest and highest code point of the characters whose UTF-8 begins with ``tail`` (1 to 3
    bytes of a character, unfinished); None where no character does (a stray continuation byte, an
    overlong form, a surrogate, past U+10FFFF). Surrogates are cut off the span: "\\xed" takes
    U+D000 to U+D7FF."""
    n = _length(tail[0]) if tail else 0
    if not 1 <= len(tail) < n or any(b & 0xC0 != 0x80 for b in tail[1:]):
        return None
    lo = hi = tail[0] & (0xFF >> (n + 1))
    for k in range(1, n):
        b = tail[k] & 0x3F if k < len(tail) else None
        lo = lo << 6 | (0x00 if b is None else b)
        hi = hi << 6 | (0x3F if b is None else b)
    lo, hi = max(lo, _LOWEST[n]), min(hi, _HIGHEST[n])
    if lo < 0xD800 <= hi:
        hi = min(hi, 0xD7FF)
    elif 0xD800 <= lo <= 0xDFFF:
        lo = 0xE000
    return (lo, hi) if lo <= hi else None


def split(data: bytes) -> tuple[str, bytes] | None:
    """``data`` as its whole characters and the bytes of one it leaves unfinished (b"" if none);
    None where it is not UTF-8 (or its unfinished end begins no character)."""
    tail = b""
    for k in range(1, min(3, len(data)) + 1):  # an unfinished character is at most 3 bytes
        n = _length(data[-k])
        if n == 0 and data[-k] & 0xC0 == 0x80:
            continue  # a continuation byte: its character began further back
        if n > k:
            tail = data[-k:]
        break
    try:
        text = data[: len(data) - len(tail)].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return (text, tail) if not tail or span(tail) is not None else None


@lru_cache(maxsize=256)
def _hints(pattern: str) -> tuple[int, ...]:
    """The non-ASCII code points ``pattern`` spells, as themselves or as ``\\u``-style escapes."""
    cps = {ord(c) for c in pattern if ord(c) >= 0x80}
    for m in _ESCAPED.finditer(pattern):
        cps.add(int(next(g for g in m.groups() if g), 16))
    return tuple(sorted(c for c in cps if 0x80 <= c <= 0x10FFFF))


def probes(lo: int, hi: int, pattern: str = "") -> list[str]:
    """Characters from ``lo`` to ``hi`` to try one by one (module docstring): ``pattern``'s own first,
    then the span's ends and 17 points between, surrogates left out."""
    step = max(1, (hi - lo) // 17)
    cps = [c for c in _hints(pattern) if lo <= c <= hi] + [lo, hi, *range(lo + step, hi, step)][:19]
    return [chr(c) for c in dict.fromkeys(cps) if not 0xD800 <= c <= 0xDFFF]


def _byte_chars() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode`` read back: the character a byte-level BPE piece spells each byte with."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:  # a byte that is no printable character of its own: spelled from U+0100 on
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_CHARS = _byte_chars()
_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level(tok) -> bool:
    """Whether ``tok``'s pieces spell bytes, GPT-2's way: a fast tokenizer whose decoder is (or holds)
    ``ByteLevel``, or a slow one with a ``byte_decoder``."""
    decoder = getattr(getattr(tok, "backend_tokenizer", None), "decoder", None)
    try:
        state = decoder.__getstate__() if decoder is not None else b""
    except Exception:  # a decoder that cannot say what it is: taken as not byte-level
        state = b""
    state = state.decode() if isinstance(state, bytes) else str(state)
    return '"ByteLevel"' in state or isinstance(getattr(tok, "byte_decoder", None), dict)


def added_ids(tok) -> frozenset[int]:
    """The ids of ``tok``'s added tokens (special ones among them), whose pieces are their text."""
    return frozenset(int(i) for i in (getattr(tok, "added_tokens_decoder", None) or {}))


def piece_bytes(tok, t: int, level: bool, added: frozenset[int]) -> bytes | None:
    """Token ``t``'s bytes where its piece spells them: a byte fallback's ``<0xNN>``, any piece of a
    byte-level tokenizer (``level``) but an ``added`` one; an added token's text; None for any other."""
    piece = tok.convert_ids_to_tokens(t)
    if not isinstance(piece, str):
        return None
    m = _FALLBACK.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    if t in added:
        text = tok.decode([t], skip_special_tokens=False)
        return None if "\ufffd" in text else text.encode()
    if level and all(c in BYTE_CHARS for c in piece):
        return bytes(BYTE_CHARS[c] for c in piece)
    return None
