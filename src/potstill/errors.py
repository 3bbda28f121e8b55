"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class PotstillError(Exception):
    """A user-facing error: bad input, bad config, a missing key. Its message is the whole story."""


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret in ``text`` with ``***`` so keys never reach logs or exceptions."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
