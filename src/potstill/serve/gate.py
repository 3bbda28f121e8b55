"""The ASGI gate in front of the app: the key, the body size limit, the body read once and replayed,
and the checks of a raw body that no handler sees whole (JSON constants, lone UTF-16 surrogates);
with the request id every response carries and what the ledger keeps of a request."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from potstill.aio_body import TOO_LARGE, read_body
from potstill.responses_format import surrogate_at
from potstill.serve.tokenize import TOKENIZE

FILES = "/v1/files"
MESSAGE_BATCHES = "/v1/messages/batches"
BAD_KEY = "invalid or missing API key (send Authorization: Bearer <key>, or x-api-key: <key>)"


def key_code(auth: str) -> str | None:
    """OpenAI's code for a refused key: invalid_api_key for a wrong one, none where none was sent."""
    return "invalid_api_key" if auth else None


def key_sent(headers: dict[bytes, bytes], key: str) -> bool:
    """Whether a request's headers carry ``key``, compared in constant time: Anthropic's SDK sends
    its key as x-api-key, OpenAI's as a bearer token; either is the key."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    return hmac.compare_digest(auth.encode(), f"Bearer {key}".encode()) or hmac.compare_digest(
        headers.get(b"x-api-key", b""), key.encode())


# Set once the client of the request being answered has closed its connection before its response
# was whole (``Gate``): an escalation still waiting for a teacher slot is then not sent
# (``TeacherSide._asked``). A context variable, so each task the request starts reads its own.
CLIENT_GONE: ContextVar[asyncio.Event | None] = ContextVar("potstill_client_gone", default=None)

# The one path open without the key: a load balancer's probe, which says nothing about traffic.
OPEN = "/health"


class Gate:
    """Pure ASGI middleware: Bearer auth for every path but /health (/metrics, /docs and
    /openapi.json too, where a key is set), a body size limit for /v1/*, and the ledger row of every
    chat request rejected before its handler ran. The body is read once and replayed downstream."""

    def __init__(self, app: Any, service: Any, key: str | None, max_body: int, reject: Any,
                 max_file: int | None = None):
        self.app, self.service, self.key, self.max_body, self.reject = app, service, key, max_body, reject
        self.max_file = max_file or max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = request_id(headers.get(b"x-request-id"))
        scope.setdefault("state", {}).update(request_id=rid, endpoint=scope["path"].rstrip("/"))
        send = _with_request_id(send, rid)
        if scope["path"].rstrip("/") == OPEN:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        scope["state"]["t0"] = t0
        if self.key is not None and not key_sent(headers, self.key):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            return await self.reject(scope, send, 401, BAD_KEY, None, key_code(auth))
        if scope["method"] != "POST" or not (scope["path"].startswith("/v1/") or scope["path"] in TOKENIZE):
            return await self.app(scope, receive, send)
        # a Batch API input file, or Anthropic's batch of requests inline
        limit = self.max_file if scope["path"].rstrip("/") in (FILES, MESSAGE_BATCHES) else self.max_body
        body = await read_body(headers, receive, limit)
        if body is None:  # the client went away
            return
        if body is TOO_LARGE:
            return await self.reject(scope, send, 413, f"request body over {limit} bytes", None)
        scope["state"]["raw_body"] = body
        constant = _non_standard_constant(body)
        if constant:  # Python's parser takes NaN and Infinity; JSON (and OpenAI's API) does not
            return await self.reject(scope, send, 400, f"the request body is not valid JSON: {constant} is not a "
                                     "JSON value", None)
        lone = _lone_surrogate(body)
        if lone:  # in any field: no UTF-8 holds it, for the student's tokenizer, a hash, the ledger or the answer
            return await self.reject(scope, send, 400, f"{lone[0]}: {lone[1]}", lone[0])
        sent, answered, gone = False, False, asyncio.Event()

        async def listen() -> dict:
            # The one reader of ``receive`` once the body is read: a disconnect before the response is
            # whole is the client leaving (after it, a server says disconnect for every request).
            msg = await receive()
            while msg["type"] != "http.disconnect":
                msg = await receive()
            if not answered:
                gone.set()
            return msg

        listener = asyncio.ensure_future(listen())

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await asyncio.shield(listener)

        async def sending(message: dict) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        token = CLIENT_GONE.set(gone)
        try:
            await self.app(scope, replay, sending)
        finally:
            CLIENT_GONE.reset(token)
            listener.cancel()


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(given: bytes | None) -> str:
    """A response's ``x-request-id``: the client's own (letters, digits and ``._:-``, up to 128),
    so a client's trace id finds its ledger row, else a new ``req_`` one, as OpenAI's API gives."""
    text = given.decode("latin-1") if given else ""
    return text if _REQUEST_ID.fullmatch(text) else f"req_{uuid.uuid4().hex}"


def _with_request_id(send: Any, rid: str) -> Any:
    """``send`` with ``x-request-id: rid`` added to the response's headers."""
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]}
        await send(message)

    return sending


def _non_standard_constant(raw: bytes) -> str | None:
    """``NaN``, ``Infinity`` or ``-Infinity`` when ``raw`` uses one as a value, else None."""
    if b"NaN" not in raw and b"Infinity" not in raw:
        return None
    seen: list[str] = []
    try:
        json.loads(raw, parse_constant=lambda c: seen.append(c))
    except (ValueError, RecursionError):
        pass  # any other problem is the handler's to report
    return seen[0] if seen else None


def _lone_surrogate(raw: bytes) -> tuple[str, str] | None:
    """Where a JSON object ``raw`` holds a lone UTF-16 surrogate escape (``surrogate_at``), or None.
    Only an escape writes one: raw UTF-8 cannot."""
    if b"\\ud" not in raw.lower():
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # the handler's to report
    return surrogate_at(obj) if isinstance(obj, dict) else None


def logged_request(raw: bytes | None) -> dict[str, Any]:
    """What the ledger keeps of a request: its JSON when it parses, else a bounded excerpt."""
    if raw is None:
        return {}
    try:
        obj = json.loads(raw, parse_constant=str)  # NaN kept as the string "NaN": the row stays standard JSON
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python parses
        return {"unparsed_body": raw[:2000].decode("utf-8", "replace")}
    if b"\\ud" in raw.lower():  # a lone surrogate escape (the request is refused) cannot be stored as text
        obj = _storable(obj)
    return obj if isinstance(obj, dict) else {"body": obj}


def _storable(x: Any) -> Any:
    """``x`` with each lone UTF-16 surrogate in its strings replaced by '?'."""
    if isinstance(x, str):
        return x.encode("utf-8", "replace").decode("utf-8")
    if isinstance(x, list):
        return [_storable(v) for v in x]
    if isinstance(x, dict):
        return {_storable(k): _storable(v) for k, v in x.items()}
    return x
