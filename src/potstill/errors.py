"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class PotstillError(Exception):
    """A user-facing error: bad input, bad config, a missing key. Its message is the whole story."""


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret in ``text`` with ``***`` so keys never reach logs or exceptions."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def compile_failed(section: str, e: BaseException) -> PotstillError:
    """One line for a failure of ``torch.compile`` under ``<section>.compile`` (inductor's own
    messages run to pages): its type and first line, and the setting that turns it off."""
    first = str(e).splitlines()[0] if str(e) else ""
    return PotstillError(f"{section}.compile: torch.compile failed ({type(e).__name__}: {first})"[:300]
                         + f"; set {section}.compile: false")
