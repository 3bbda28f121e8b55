"""Who may talk to the review server: requests to this machine's own address, from the browser that
opened the address ``potstill review`` printed, with bodies of a decision's size.

The page shows the run's data (inputs, teacher answers, gold) and stores decisions that the next
``curate`` trains on. A web page the reviewer visits meanwhile can point its own name at 127.0.0.1
(DNS rebinding) and then read and write here as a same-origin page would: the browser sends its
name in ``Host``, which is refused unless it is this server's. Another account on the machine can
call 127.0.0.1 directly: the printed address holds a random token (as Jupyter's does), which the
page keeps in a cookie, and every request without it is refused.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import parse_qs

from potstill.aio_body import TOO_LARGE, read_body

# A decision is a few hundred bytes; an edit holds one corrected answer.
MAX_BODY = 1 << 20
COOKIE = "potstill_review"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
# Bound to every interface: the Host is whatever name reaches the machine; the token still guards.
ANY_ADDRESS = {"0.0.0.0", "::", ""}


def allowed_hosts(host: str) -> set[str] | None:
    """The names a request's ``Host`` may give for a server bound to ``host``; None: any."""
    if host in ANY_ADDRESS:
        return None
    return LOOPBACK | {f"[{host}]" if ":" in host else host.lower()}


def _name(host: str) -> str:
    """``Host``'s name without its port: ``127.0.0.1:8765`` -> ``127.0.0.1``, ``[::1]:8765`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0].lower()


def _same(given: str, token: str) -> bool:
    """In constant time (the bytes: ``compare_digest`` refuses a str that is not ASCII)."""
    return secrets.compare_digest(given.encode("utf-8", "replace"), token.encode())


async def _refuse(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Pure ASGI middleware: a ``Host`` among ``hosts`` (None: any), the ``token`` (None: none asked)
    as ``?token=`` (then kept in a cookie) or that cookie, and a body of at most ``max_body`` bytes,
    read here and replayed downstream."""

    def __init__(self, app: Any, hosts: set[str] | None, token: str | None, max_body: int = MAX_BODY):
        self.app, self.hosts, self.token, self.max_body = app, hosts, token, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and _name(host) not in self.hosts:
            return await _refuse(send, 403, "this review server answers requests to its own address only (the "
                                            "Host header names another): open the address potstill review printed",
                                 "invalid_host")
        if self.token is not None:
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if given and _same(given, self.token):
                send = self._keeping_token(send)
            elif not _same(self._cookie(headers), self.token):
                return await _refuse(send, 401, "open the address potstill review printed: it holds this review's "
                                                "token", "invalid_token")
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = await read_body(headers, receive, self.max_body)
        if body is None:  # the client went away
            return
        if body is TOO_LARGE:
            return await _refuse(send, 413, f"request body over {self.max_body} bytes", "body_too_large")
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _cookie(self, headers: dict[bytes, bytes]) -> str:
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return ""

    def _keeping_token(self, send: Any) -> Any:
        """``send``, with the token set as the page's cookie (HttpOnly: no script reads it; SameSite
        Strict: no other site's page sends it)."""
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def sending(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), (b"set-cookie", cookie)]}
            await send(msg)

        return sending
