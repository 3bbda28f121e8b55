"""The one exception type the CLI turns into a single clear line and a non-zero exit, and the
helpers that keep keys out of every message and file."""

import errno
import os
import re
import sys


class PotstillError(Exception):
    """A user-facing error: bad input, bad config, a missing key. Its message is the whole story."""


def undecoded_name(path: str) -> str | None:
    """Why ``path`` cannot be passed on as text, or None. Bytes of a file name that Python could not
    decode in this locale are kept as surrogates, which the tokenizer library (it saves and loads by a
    UTF-8 path) refuses, late: LC_ALL=C with Python's UTF-8 mode off and a run directory named `lç`
    got through generate and curate, then train ended in a UnicodeEncodeError traceback."""
    if not any("\udc80" <= c <= "\udcff" for c in path):
        return None
    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
    encoding = sys.getfilesystemencoding()
    if encoding.lower().replace("-", "") == "utf8":
        return f"{shown}: the name is not UTF-8, so it cannot be passed on as text (the tokenizer library saves " \
               "and loads by it): rename it"
    return (f"{shown}: a name that is not ASCII, which Python reads as {encoding} here (the C locale with its UTF-8 "
            "mode off), so it cannot be passed on as text (the tokenizer library saves and loads by it): set "
            "PYTHONUTF8=1 (or a UTF-8 locale, LC_ALL=C.UTF-8), or name it in ASCII")


def no_room(e: BaseException) -> str | None:
    """What to do about a write that found no room (a full disk, a quota, a limit on a file's size),
    said as the user acts on it; None for any other error."""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space there"
    if code == errno.EFBIG:
        return "lift the limit on a file's size (`ulimit -f`) or write to another file system"
    return None


# Below this length a secret (a proxy password like 'ab') is also a piece of ordinary words, so it
# is blanked only where it stands alone, not inside 'table' or 'unused'; a real API key (OpenAI's
# and Anthropic's run to 40+ characters) is blanked wherever it appears.
SHORT_SECRET = 8


# A text cut short in the middle (pydantic 2.14 shows a long input_value as its first 24 and last
# 23 characters around '...') can hold a secret's head or tail alone, which no whole-string replace
# finds: a piece of a secret this long or longer that touches an ellipsis is blanked too. Three
# characters of a key, all a shorter piece shows, leave the rest of it (tens of characters) unknown.
FRAGMENT = 4
_ELLIPSIS = re.compile(r"\.\.\.|\u2026")


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret in ``text`` with ``***`` so keys never reach logs or exceptions. Redact
    before cutting a text short: a cut secret is only found where an ellipsis marks the cut."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= SHORT_SECRET:
            text = _without_pieces(text.replace(secret, "***"), secret)
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def _without_pieces(text: str, secret: str) -> str:
    """``text`` with each head of ``secret`` that ends at an ellipsis, and each tail that starts right
    after one, blanked (``FRAGMENT`` characters or more)."""
    out, pos = [], 0
    for m in _ELLIPSIS.finditer(text):
        start, end = m.span()
        if start < pos:  # inside a tail just blanked
            continue
        sizes = range(len(secret) - 1, FRAGMENT - 1, -1)  # the longest piece first
        head = next((k for k in sizes if text.endswith(secret[:k], pos, start)), 0)
        tail = next((k for k in sizes if text.startswith(secret[-k:], end)), 0)
        out += [text[pos:start - head], "***" * bool(head), m.group(), "***" * bool(tail)]
        pos = end + tail
    return "".join(out) + text[pos:]


# Keys that are valid variable names all the same: a provider's prefix and a long random tail
# (sk_live_..., hf_..., gsk_..., ghp_..., github_pat_..., r8_...), AWS access key ids (AKIA + 16), Google's AIza + 35.
_KEY_SHAPES = re.compile(r"(?:(?:sk|pk|rk|hf|gsk|ghp|gho|ghu|ghs|ghr|github_pat|r8|xai|key)_\w*[A-Za-z0-9]{16,}\w*"
                         r"|(?:AKIA|ASIA)[A-Z0-9]{16}|AIza\w{35})")


def looks_like_key(value: str) -> bool:
    """A value that is more likely a secret than a variable's name: a known key shape, or a run of 16+
    characters between underscores mixing letters and digits (hex or base62, as a `vllm serve
    --api-key` made with `openssl rand -hex 16`); names are words (OPENAI_API_KEY, TEAM7_TOKEN). A
    random 16-character base62 run has no digit with probability (52/62)^16, about 6%; at 32, 0.4%."""
    if _KEY_SHAPES.fullmatch(value):
        return True
    return any(len(run) >= 16 and re.search(r"[0-9]", run) and re.search(r"[A-Za-z]", run)
               for run in value.split("_"))


# A URL's user:password@ and its query string can carry a key (a proxy's Basic auth, its
# ``?api-key=``): what potstill logs, prints or saves gets the URL without them. The user info runs
# to the authority's last '@', where httpx and urlsplit split it: a password may hold a raw '@', or
# a "'" (RFC 3986 allows it unencoded), and httpx sends either as it stands.
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_URL = re.compile(rf"({_SCHEME.pattern})(?:[^\s/?#]*@)?([^\s?#'\"]*)(?:\?[^\s#'\"]*)?")


def without_credentials(text: str) -> str:
    """``text`` with every URL in it stripped of user info and query string. In free text a URL ends
    at whitespace; for a URL that is a whole value (a config field), ``url_without_credentials``."""
    return _URL.sub(r"\1\2", text)


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``url`` as (scheme://, its user info or None, the rest), split as httpx splits it: the
    authority ends at the first '/', '?' or '#' after '://', its user info at the last '@' in it
    (so a password may hold an '@', a quote, even a space). Not a URL: ("", None, url)."""
    m = _SCHEME.match(url)
    if not m:
        return "", None, url
    rest = url[m.end():]
    authority = re.match(r"[^/?#]*", rest).group()
    userinfo, at, host = authority.rpartition("@")
    return m.group(), (userinfo if at else None), host + rest[len(authority):]


def url_without_credentials(url: str) -> str:
    """One URL (a field's whole value) without its user info and query string; a URL with neither
    comes back unchanged, character for character (a teacher's cache identity holds it). A value
    that is not one URL is treated as text."""
    scheme, _, rest = _split_userinfo(url)
    body, hash_, fragment = rest.partition("#")
    return without_credentials(scheme + body.partition("?")[0] + hash_ + fragment if scheme else url)


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries, as they can come back in an error: its password (as written
    and decoded) and the ``Basic`` token httpx sends for its ``user:password@`` (an echoed header
    shows that token, which decodes to the password). Found in a URL no parser takes too (an
    unclosed IPv6 bracket), whose error may repeat it."""
    import base64
    from urllib.parse import unquote

    _, userinfo, _ = _split_userinfo(url or "")
    user, colon, password = (userinfo or "").partition(":")
    if not colon:
        return []
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return [token, password, unquote(password)]


def one_line(what: str, e: BaseException) -> PotstillError:
    """``what``, then the error's type and first line, in at most 300 characters: an unexpected error
    said in one line instead of a traceback."""
    first = str(e).splitlines()[0] if str(e) else ""
    return PotstillError(f"{what}: {type(e).__name__}: {first}"[:300])


def cannot_load(what: str, e: BaseException) -> PotstillError:
    """One line for a model that fails to load (weights cut short, a config that no longer fits
    them): ``what`` (its path, "the champion PATH"), the error's type and first line."""
    return one_line(f"cannot load {what}", e)


def compile_failed(section: str, e: BaseException) -> PotstillError:
    """One line for a failure of ``torch.compile`` under ``<section>.compile`` (inductor's own
    messages run to pages): its type and first line, and the setting that turns it off."""
    first = str(e).splitlines()[0] if str(e) else ""
    return PotstillError(f"{section}.compile: torch.compile failed ({type(e).__name__}: {first})"[:300]
                         + f"; set {section}.compile: false")
