"""A request body read whole under a size limit, for the ASGI gates in front of the served API
(``serve.gate``) and the review page (``review.guard``): a declared length over the limit is
refused before any byte is read, and a chunked body as soon as it passes the limit, so a client
never makes the server hold more than ``limit`` bytes of it."""

from __future__ import annotations

from typing import Any

# What ``read_body`` returns for a body over its limit (declared or sent).
TOO_LARGE = object()


async def read_body(headers: dict[bytes, bytes], receive: Any, limit: int) -> bytes | object | None:
    """The body, ``TOO_LARGE`` past ``limit`` bytes, or None where the client went away first."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return TOO_LARGE
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return TOO_LARGE
        if not msg.get("more_body"):
            return b"".join(chunks)
