"""The one exception type the CLI turns into a single clear line and a non-zero exit, and the
helpers that keep keys out of every message and file."""

import re


class PotstillError(Exception):
    """A user-facing error: bad input, bad config, a missing key. Its message is the whole story."""


# Below this length a secret (a proxy password like 'ab') is also a piece of ordinary words, so it
# is blanked only where it stands alone, not inside 'table' or 'unused'; a real API key (OpenAI's
# and Anthropic's run to 40+ characters) is blanked wherever it appears.
SHORT_SECRET = 8


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret in ``text`` with ``***`` so keys never reach logs or exceptions."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= SHORT_SECRET:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


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
# ``?api-key=``): what potstill logs, prints or saves gets the URL without them.
_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s/@?#'\"]*@)?([^\s?#'\"]*)(?:\?[^\s#'\"]*)?")


def without_credentials(text: str) -> str:
    """``text`` with every URL in it stripped of user info and query string."""
    return _URL.sub(r"\1\2", text)


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries, as they can come back in an error: its password (as written
    and decoded) and the ``Basic`` token httpx sends for its ``user:password@`` (an echoed header
    shows that token, which decodes to the password)."""
    import base64
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url or "")
    except ValueError:
        return []
    if parts.password is None:
        return []
    user, password = unquote(parts.username or ""), unquote(parts.password)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [token, parts.password, password]


def compile_failed(section: str, e: BaseException) -> PotstillError:
    """One line for a failure of ``torch.compile`` under ``<section>.compile`` (inductor's own
    messages run to pages): its type and first line, and the setting that turns it off."""
    first = str(e).splitlines()[0] if str(e) else ""
    return PotstillError(f"{section}.compile: torch.compile failed ({type(e).__name__}: {first})"[:300]
                         + f"; set {section}.compile: false")
