"""The HTTP face: an OpenAI-compatible FastAPI app over a ``Service``.

Every request to ``/v1/chat/completions`` (and to ``/v1/responses``, OpenAI's Responses API for
text) becomes exactly one ledger row, whatever happens (a ``/v1/completions`` request, one row per
prompt, answered or failed, ``serve.completions``):
answered (status ok, role = who answered), rejected (401/400/413: status error), or failed
(502 when the teacher fails, 429 when too many escalations wait for it, 499 when its client left
before the teacher was asked, 503 when the
server stopped before the answer to a client that left came, 500 otherwise). Every 4xx/5xx carries an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}``. Where a key is set, every path but /health
needs it; the Bearer key and other headers are never logged; the key is compared in constant time. ``POST /admin/reload`` (same key) swaps in a student
that ``potstill redistill`` promoted, without a restart (see ``Service.reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from potstill.errors import PotstillError
from potstill.models.prompting import RefusedChat
from potstill.progress import say
from potstill.records import json_problem
from potstill.serve.batches import add_batch_routes
from potstill.serve.message_batches import add_message_batch_routes
from potstill.serve.completions import COMPLETIONS, add_completions_route
from potstill.serve.formats import FormatError
from potstill.serve.gate import BAD_KEY, Gate, key_code, key_sent, logged_request
from potstill.serve.messages import MESSAGES, add_messages_route
from potstill.serve.messages import error_body as anthropic_error
from potstill.serve.responses import add_responses_route
from potstill.serve.tokenize import add_tokenize_routes
from potstill.serve.streaming import (LiveText, ServerStopped, first_piece, live_events, settle_pending, unsettled,
                                      whole_events)
from potstill.serve.tool_routing import served_tools, student_calls
from potstill.serve.schemas import (ChatCompletion, ChatRequest, ErrorBody, Health, ModelCard, ModelList,
                                    ResponsesRequest, client_chat)
from potstill.tool_calls import unanswered_result
from potstill.serve.escalation import TeacherError
from potstill.serve.teacher_queue import ClientGone, TeacherBusy
from potstill.serve.service import LogprobsUnavailable, Service

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
SERVED = (CHAT, RESPONSES, COMPLETIONS, MESSAGES)  # the paths whose every request is a ledger row
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 429, 500, 502)}
# One server-sent event (OpenAPI 3.1: the event-stream schema describes each event): its data is a
# chat.completion.chunk as JSON, or [DONE].
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
# OpenAI's API answers every client error (a bad key's 401 and an unknown model's 404 too) with type
# invalid_request_error; its code tells them apart (invalid_api_key, model_not_found). A 5xx is its
# server_error, a failed escalation's 502 too (code teacher_failed says whose failure it was). Its
# 429 for too many requests is type requests, code rate_limit_exceeded (a teacher too busy here).
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          499: "invalid_request_error", 429: "requests"}
# A teacher's refusals that are about the chat the client sent (over the teacher's context, too
# large, filtered): passed on as the client's 400. A 400 for the operator's settings (OpenAI's
# unsupported_parameter for max_tokens on a reasoning model, a wrong model name) and every other
# failure (401, 403, 404, 429, 5xx) stay the operator's: a 502, the details in the ledger.
_CLIENTS_FAULT_CODES = {"context_length_exceeded", "string_above_max_length", "content_filter",
                        "content_policy_violation", "invalid_prompt"}


def _clients_fault(status: int | None, code: str | None) -> bool:
    # A refusal (OpenAI's message.refusal, Anthropic's stop_reason refusal) comes in a 200; as a 502
    # the client's SDK would retry it, each retry a teacher call paid and refused again.
    return status == 413 or (status in (400, 422) and code in _CLIENTS_FAULT_CODES) or code == "refusal"


_SAFE_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")  # a provider's error code (context_length_exceeded), not free text


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def _error_body(path: str, status: int, message: str, param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    """The error body in the shape the path's API has: Anthropic's on the Messages API (the
    parameter named in its message), OpenAI's elsewhere."""
    if path.rstrip("/").startswith(MESSAGES):
        return anthropic_error(status, message)
    return error_body(status, message, param, code)


def _route_headers(who: str, reason: str, confidence: float | None, student: str) -> dict[str, str]:
    # X-Potstill-Student names the student that handled the request (it answered or escalated):
    # after a hot swap it is the promoted one. No confidence where the student never ran (too_long).
    conf = {} if confidence is None else {"X-Potstill-Confidence": f"{confidence:.6g}"}
    return {"X-Potstill-Answered-By": who, "X-Potstill-Reason": reason, **conf, "X-Potstill-Student": student}


def _live_headers(live_text: LiveText) -> dict[str, str]:
    """A live escalation's route headers, from its route (set before the teacher was asked), ``+cached``
    where another request's row pays for the call it streams (settled before its first text)."""
    r = live_text.route or {}
    reason = r["reason"] + ("+cached" if live_text.shared else "")
    return _route_headers(r["answered_by"], reason, r["confidence"], r["student"])


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def build_app(service: Service, api_key: str | None) -> FastAPI:
    s = service.cfg.serve
    registry = CollectorRegistry()
    requests = Counter("potstill_requests", "Chat requests by outcome.", ["answered_by", "reason", "status"], registry=registry)
    latency = Histogram("potstill_request_seconds", "End-to-end chat latency.", ["answered_by"], registry=registry,
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    held: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        held["batches"].resume()  # batches a stopped server left unfinished
        again, failed = await held["responses"]()  # background responses it left unanswered
        if again or failed:
            say(f"serve: {again} background response(s) a stopped server left unanswered are asked again"
                + (f", {failed} kept as failed (their request could not be asked again)" if failed else ""))
        yield
        # uvicorn has waited for every connection; the teacher's answers to clients that left a
        # stream are still coming (``settle_later``): logged before the ledger closes, for at most
        # one teacher timeout (a stop should not hang on a teacher that never answers).
        timeout_s = service.teacher.cfg.timeout_s
        if unsettled():
            say(f"serve: stopping; waiting up to {timeout_s:g} s for {unsettled()} teacher answer(s) to "
                "streams whose clients left, to log them")
        waited, cut = await settle_pending(timeout_s)
        if cut:
            say(f"serve: {cut} of {waited} teacher answer(s) did not come in time; logged as failed (server_stopped)")
        await held["batches"].stop()

    app = FastAPI(title="potstill serve", version="1", description="OpenAI-compatible student with teacher fallback.",
                  lifespan=lifespan)
    reject, log_error = _add_error_handlers(app, service, requests)
    bearer = [Depends(HTTPBearer(auto_error=False))]  # documents the scheme; Gate enforces it
    _add_info_routes(app, service, registry, bearer)
    _add_chat_route(app, service, requests, latency, bearer, log_error)
    held["responses"] = add_responses_route(app, service, requests, latency, bearer, log_error)
    add_tokenize_routes(app, service, bearer)
    add_messages_route(app, service, requests, latency, bearer, log_error)
    add_completions_route(app, service, requests, latency, bearer, log_error)
    _add_reload_route(app, service, api_key, bearer)
    held["batches"] = add_batch_routes(app, service, api_key, bearer)
    add_message_batch_routes(app, service, held["batches"], bearer)
    app.add_middleware(Gate, service=service, key=api_key, max_body=s.max_body_bytes, reject=reject,
                       max_file=s.max_file_bytes)
    return app


def _add_error_handlers(app: FastAPI, service: Service, requests: Counter):
    """OpenAI-style error bodies for every failure; a failed chat request is logged once to the ledger.

    Returns the rejecter the Gate middleware uses for what it refuses before routing, and the logger
    of a failed request's ledger row (a live stream's, which fails after its 200)."""

    def log_error(state: dict, status: int, body: dict[str, Any], role: str = "student", model: str | None = None,
                  detail: str | None = None, request_hash: str | None = None, billed: Any = None,
                  spent: dict[str, Any] | None = None) -> None:
        """``body``: the one the client got; ``detail``: what the operator reads in the row's error
        where the client was told less. The row's request is ``state["logged_request"]`` where set
        (one prompt of a completions request, as its answer's row has it), else the body as sent."""
        if state.get("logged"):
            return
        state["logged"] = True
        request = state.get("logged_request") or logged_request(state.get("raw_body"))
        service.log_failure(request, answered_by=role, model=model or service.student_name,
                            latency_s=time.perf_counter() - state.get("t0", time.perf_counter()),
                            body=body, error=f"{status}: {detail or body['error']['message']}"[:500],
                            teacher_hash=request_hash, billed=billed, request_id=state.get("request_id"),
                            endpoint=state.get("endpoint"), spent=spent)
        requests.labels("none", "rejected" if status < 500 else "failed", str(status)).inc()

    async def reject(scope: dict, send: Any, status: int, message: str, param: str | None,
                     code: str | None = None) -> None:
        body = _error_body(scope["path"], status, message, param, code)
        if scope["path"].rstrip("/") in SERVED:  # a chat request by any method is a served request: logged
            await asyncio.to_thread(log_error, scope.setdefault("state", {}), status, body)
        resp = JSONResponse(body, status_code=status)
        await resp(scope, _drain_receive, send)

    async def on_error(request: Request, status: int, message: str, param: str | None = None,
                       role: str = "student", model: str | None = None, code: str | None = None,
                       detail: str | None = None, request_hash: str | None = None, billed: Any = None,
                       headers: dict[str, str] | None = None, spent: dict[str, Any] | None = None) -> JSONResponse:
        body = _error_body(request.url.path, status, message, param, code)
        if request.url.path.rstrip("/") in SERVED:
            await asyncio.to_thread(log_error, request.scope.setdefault("state", {}), status, body, role, model,
                                    detail, request_hash, billed, spent)
        return JSONResponse(body, status_code=status, headers=headers)

    async def _failed(request: Request, e: Exception) -> JSONResponse:
        return await on_error(request, **failure_reply(service, e, request.url.path))

    for kind in (APIError, RefusedChat, LogprobsUnavailable, TeacherError, ClientGone, TeacherBusy):
        app.add_exception_handler(kind, _failed)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        if err.get("type") == "json_invalid":  # its loc is a byte offset, not a parameter
            raw = request.scope.get("state", {}).get("raw_body") or b""
            problem = json_problem(raw.decode("utf-8", "replace")) or err.get("ctx", {}).get("error", "")
            return await on_error(request, 400, f"the request body is not valid JSON: {problem}")
        if not [x for x in err.get("loc", ()) if x != "body"]:
            # the body as a whole: pydantic's words ('Field required') would name nothing
            return await on_error(request, 400, _body_problem(request))
        param, msg = validation_problem(e.errors(), e.body)
        return await on_error(request, 400, f"{param}: {msg}" if param else msg, param or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return await on_error(request, e.status_code, str(e.detail))

    app.add_exception_handler(Exception, _failed)  # anything else: a 500
    return reject, log_error


def failure_reply(service: Service, e: BaseException, path: str) -> dict[str, Any]:
    """What a client is told of ``e``, raised answering a request to ``path`` (``on_error``'s
    arguments): an ``APIError`` as it says, a chat the student's template refuses or log-probs it
    cannot give a 400, a failed escalation ``teacher_error_reply`` (with, for its row, the student's
    seconds on the request first: ``Service.answer``'s ``spent``), anything else a 500."""
    return {**_reply(service, e, path), "spent": getattr(e, "spent", None)}


def _reply(service: Service, e: BaseException, path: str) -> dict[str, Any]:
    if isinstance(e, APIError):
        return dict(status=e.status, message=e.message, param=e.param, code=e.code)
    if isinstance(e, RefusedChat):
        return dict(status=400, message=f"messages: the student's chat template refuses this chat: {e.why}"[:500],
                    param="messages")
    if isinstance(e, LogprobsUnavailable):
        param = "include" if path.rstrip("/") == RESPONSES else "logprobs"  # where each API asks
        return dict(status=400, message=f"{param}: {e}; serve the student with serve.engine transformers, "
                    "ctranslate2 or llamacpp", param=param)
    if isinstance(e, TeacherError):
        return teacher_error_reply(service, e)
    if isinstance(e, ClientGone):  # no client reads it either: the row says why the teacher was not asked
        return dict(status=499, message=str(e), code="client_closed_request", role="teacher",
                    model=service.teacher_name, request_hash=e.request_hash)
    if isinstance(e, TeacherBusy):
        # Retry-After in whole seconds, as HTTP has it, and in ms, which the openai SDK reads first:
        # it retries a 429 (twice by default) after that wait where it is at most 120 s.
        wait = {"retry-after": str(math.ceil(e.retry_after_s)), "retry-after-ms": str(round(e.retry_after_s * 1000))}
        return dict(status=429, message=str(e), code="rate_limit_exceeded", role="teacher",
                    model=service.teacher_name, request_hash=e.request_hash, headers=wait)
    if isinstance(e, ServerStopped):  # no client reads it: the row's status and error say what happened
        return dict(status=503, message=str(e), code="server_stopped", role="teacher", model=service.teacher_name)
    return dict(status=500, message=f"internal error ({type(e).__name__})")


def teacher_error_reply(service: Service, e: TeacherError) -> dict[str, Any]:
    """What a client is told of a failed escalation (``on_error``'s arguments): the client's 400
    where the teacher refused the chat itself, else a 502. The provider's own text stays in the
    ledger (``detail``): OpenAI's 401 shows the start and end of the operator's key, its 429 the
    organization id and quota; the client gets the kind only."""
    kind = str(e).split(":", 1)[0].strip()
    kind = kind if kind.isidentifier() else ""
    who = dict(role="teacher", model=service.teacher_name, request_hash=e.request_hash, billed=e.billed)
    if _clients_fault(e.status, e.code):
        # Over its context, a content filter: the provider's error code where it is one
        # (context_length_exceeded), never its text.
        code = e.code if e.code and _SAFE_CODE.fullmatch(e.code) else None
        what = " ".join([kind or "status", str(e.status)] if e.status else [kind or code or "refusal"])
        told = (f"the teacher refused this chat ({what}{', ' + code if code and code != what else ''}); "
                "the server's ledger holds the details")
        return dict(status=400, message=told, param="messages", code=code, detail=f"the teacher refused the chat: {e}",
                    **who)
    told = f"the teacher failed to answer ({kind})" if kind else "the teacher failed to answer"
    # The teacher was already retried (teacher.max_retries, honouring its Retry-After): an SDK
    # retrying the 502 too would repeat all of them, (1 + max_retries) x 3 teacher requests at the
    # openai SDK's default 2 retries. x-should-retry: false stops the openai and anthropic SDKs;
    # the provider's Retry-After (whole seconds, as HTTP has it) tells the client's own code how long.
    wait = {"retry-after": str(math.ceil(e.retry_after_s))} if e.retry_after_s is not None else {}
    return dict(status=502, message=told + "; the server's ledger holds the details", code="teacher_failed",
                detail=f"the teacher failed to answer: {e}", headers={"x-should-retry": "false", **wait}, **who)


def _body_problem(request: Request) -> str:
    """What is wrong with a chat request whose body is no JSON object as a whole. FastAPI reads a
    body as JSON only under a JSON content type: curl's -d sends a form's, and the JSON is unread."""
    raw = request.scope.get("state", {}).get("raw_body") or b""
    kind = request.headers.get("content-type")
    if not raw.strip():
        return "the request body is empty: send a JSON object with model and messages"
    if kind is None or "json" not in kind.split(";")[0].lower():
        return ("the request body must be JSON sent with Content-Type: application/json, "
                + (f"not {kind[:100]!r}" if kind else "and the request has no Content-Type"))
    try:
        what = _JSON_KINDS.get(type(json.loads(raw)), "a JSON value")
    except (ValueError, RecursionError):
        what = "no JSON"
    return f"the request body must be a JSON object, not {what}"


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def validation_problem(errors: list[dict[str, Any]], body: Any) -> tuple[str, str]:
    """The parameter and message of a request pydantic refused (``errors``, of ``body`` as sent),
    in the client's terms. pydantic names a union's branches in an error's location ('stop.str',
    "tool_choice.literal['none','auto','required']") and tries each, so its first error is the
    first branch's, whatever was sent: for ``stop: [1]`` it said a string was required. Here the
    location keeps the field names and indexes alone, the error is the one from the branch of the
    value's JSON type (an array's item, an object's missing field), and a value no branch takes
    is told what the field takes."""
    locs = [list(err.get("loc", ())) for err in errors]
    walked = [(err, *_walk(loc[1:] if loc[:1] == ["body"] else loc, body)) for err, loc in zip(errors, locs)]
    err, path, branches = walked[0]
    if branches:
        at, site = branches[0][0], path[:branches[0][0]]
        union = [w for w in walked if w[2] and w[2][0][0] == at and w[1][:at] == site]
        fits = next((w for w in union if all(_fits(tag, value) for _, tag, value in w[2])), None)
        if fits is None:
            takes = list(dict.fromkeys(_takes(w[2][0][1]) for w in union))
            return ".".join(site), f"expected {' or '.join(takes)}, not {_json_type(branches[0][2])}"
        err, path, _ = fits
    msg = str(err.get("msg", "invalid request")).removeprefix("Value error, ")  # pydantic's word for our checks
    # pydantic's words for a model given no object name its class or Python's objects
    return ".".join(path), re.sub(r"a valid dictionary or (instance of \w+|object to extract fields from)",
                                  "an object", msg)


# pydantic's names of a union's branches in an error's location, beside field names and indexes:
# a type ('str', 'list[str]', "literal['a','b']", 'dict[str,any]'), a model class ('NamedToolChoice')
# or a wrapper ('function-after[...]').
_SCALARS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "none": (type(None),)}


def _walk(loc: list, body: Any) -> tuple[list[str], list[tuple[int, str, Any]]]:
    """``loc`` as the client's path (field names and indexes), and the branches pydantic named on
    the way: (where in the path, the branch's name, the value sent there)."""
    path: list[str] = []
    branches: list[tuple[int, str, Any]] = []
    value = body
    for step in loc:
        if isinstance(value, dict) and step in value:  # a key sent: even one that reads like a branch's name
            value = value[step]
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        elif isinstance(step, str) and ("[" in step or "-" in step or step in _SCALARS or step[:1].isupper()):
            branches.append((len(path), step, value))
            continue
        else:  # a field not sent (Field required)
            value = None
        path.append(str(step))
    return path, branches


def _fits(branch: str, value: Any) -> bool:
    """Whether ``branch`` of a union is the one for ``value``'s JSON type."""
    if branch in _SCALARS:
        return isinstance(value, _SCALARS[branch]) and (branch == "bool" or not isinstance(value, bool))
    if branch.startswith("literal['"):  # of strings
        return isinstance(value, str)
    if branch.startswith("literal["):
        return not isinstance(value, (dict, list))
    if branch.startswith(("list[", "tuple[", "set[")):
        return isinstance(value, list)
    if branch.startswith("dict[") or branch[:1].isupper():
        return isinstance(value, dict)
    return True  # a wrapper: no type of its own


def _takes(branch: str) -> str:
    """What a union's ``branch`` takes, in JSON's words."""
    if branch.startswith("literal["):
        return "one of " + branch.removeprefix("literal[").removesuffix("]").replace(",", ", ")
    words = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "none": "null"}
    return words.get(branch) or ("an array" if branch.startswith(("list[", "tuple[", "set[")) else "an object")


def _json_type(value: Any) -> str:
    return "an object" if isinstance(value, dict) else _JSON_KINDS.get(type(value), "a JSON value")


def _served_names(service: Service) -> dict[str, str]:
    """Every name a client may send as ``model`` (all reach the same router), and its owner."""
    names = {service.student_name: "potstill", **{a: "potstill" for a in service.cfg.serve.model_aliases}}
    return {**names, service.teacher_name: names.get(service.teacher_name, "teacher")}


def _owner(service: Service, name: str) -> str | None:
    """Who owns a name a client sent, None when this server never answered to it. A student swapped
    out still answers to its versioned name (by the live student, as every name does): clients
    take that name from /v1/models (vLLM's idiom, ``models.list().data[0].id``) and keep it."""
    owner = _served_names(service).get(name)
    return owner if owner is not None or name not in {s["previous"] for s in service.swaps} else "potstill"


def _unknown_model(service: Service, name: str) -> APIError:
    return APIError(404, f"The model '{name[:100]}' does not exist here; this server answers to "
                    f"{', '.join(_served_names(service))} (GET /v1/models)", "model", "model_not_found")


def _add_info_routes(app: FastAPI, service: Service, registry: CollectorRegistry, bearer: list) -> None:
    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(student=service.student_name, teacher=service.teacher_name,
                      confidence_threshold=_finite_or_none(service.routing.confidence_threshold),
                      ood_threshold=_finite_or_none(service.routing.ood_threshold))

    @app.get("/metrics", response_class=Response, dependencies=bearer,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorBody}})
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, dependencies=bearer, responses=ERRORS)
    def models() -> dict[str, Any]:
        now = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": now, "owned_by": owner}
                                           for name, owner in _served_names(service).items()]}

    # :path, since a teacher's name may hold a slash (a hub id served by vLLM)
    @app.get("/v1/models/{model:path}", response_model=ModelCard, dependencies=bearer, responses=ERRORS)
    def model(model: str) -> dict[str, Any]:
        owner = _owner(service, model)
        if owner is None:
            raise _unknown_model(service, model)
        return {"id": model, "object": "model", "created": int(time.time()), "owned_by": owner}


async def _record(service: Service, state: dict, served: Any, request: dict[str, Any], requests: Counter,
                  latency: Histogram) -> dict[str, Any]:
    """An answered request's ledger row (``request`` as logged) and metrics; returns its route for the client."""
    elapsed = time.perf_counter() - state.get("t0", time.perf_counter())
    route = {"answered_by": served.answered_by, "reason": served.reason, "confidence": served.confidence,
             "ood_distance": served.ood_distance, "student_output": served.student_output,
             **({"logprobs_unavailable": served.logprobs_unavailable} if served.logprobs_unavailable else {}),
             **{k: served.extra[k] for k in ("response_format_problem",) if served.extra.get(k)}}
    state["logged"] = True
    served.request, served.latency_s = {**request, "request_id": state.get("request_id")}, elapsed
    await asyncio.to_thread(service.ledger.record_served, served)
    requests.labels(served.answered_by, served.reason, "200").inc()
    latency.labels(served.answered_by).observe(elapsed)
    return route


def _add_chat_route(app: FastAPI, service: Service, requests: Counter, latency: Histogram, bearer: list,
                    log_error: Any) -> None:
    s = service.cfg.serve

    @app.post(CHAT, response_model=ChatCompletion, dependencies=bearer,
              responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}})
    async def chat(body: ChatRequest, request: Request) -> Any:
        state = request.scope.setdefault("state", {})
        if _owner(service, body.model) is None:
            raise _unknown_model(service, body.model)
        if body.stream_options is not None and not body.stream:  # as OpenAI's API and vLLM refuse it
            raise APIError(400, "stream_options: only allowed when stream is true", "stream_options")
        if len(body.messages) > s.max_messages:
            raise APIError(400, f"messages: at most {s.max_messages} messages per request", "messages")
        problem = body.tool_problem()
        if problem:
            raise APIError(400, problem, "tool_choice")
        if body.top_logprobs is not None and not body.logprobs:  # as OpenAI's API refuses it
            raise APIError(400, "top_logprobs: only allowed when logprobs is true", "top_logprobs")
        logprobs = body.logprob_request()  # whether the student can: Service.answer, on the one that answers
        fmt = _format(body)
        tools = _servable_tools(service, body.tool_request())
        messages, teacher_messages = client_chat(body.messages)
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise APIError(400, "messages: needs a user message with text", "messages")
        # A tool message that answers no call is refused here, whoever would answer: the teacher's
        # refusal was a 502, which the client's SDK retries, each retry another teacher call.
        orphan = unanswered_result(teacher_messages)
        if orphan is not None:
            raise APIError(400, f"messages: a tool message must answer one of the tool_calls of the assistant "
                           f"message before it; tool_call_id {_shown(teacher_messages[orphan].get('tool_call_id'))} "
                           "answers none", "messages")
        live_text = LiveText(body.stops(), logprobs) if body.stream and service.streams() else None
        answering = service.answer(messages, body.max_completion_tokens or body.max_tokens, body.stops(),
                                   teacher_messages=teacher_messages if teacher_messages != messages else None,
                                   tools=tools, logprobs=logprobs, response_format=fmt, live_text=live_text)
        task, first = await first_piece(answering, live_text) if live_text is not None else (None, None)
        if first is not None:  # the teacher's first piece came before its whole answer: streamed as it is written
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = live_events(task, live_text, first, service.teacher_name, include_usage,
                                 lambda served: _record(service, state, served, body.model_dump(exclude_none=True),
                                                        requests, latency),
                                 lambda e: asyncio.to_thread(_stream_failure, service, state, e, log_error))
            return StreamingResponse(events, media_type="text/event-stream", headers=_live_headers(live_text))
        served = task.result() if task is not None else await answering
        route = await _record(service, state, served, body.model_dump(exclude_none=True), requests, latency)
        # OpenAI's choices[0].logprobs: null unless asked; asked and not given, null and the route says why.
        lps = {"content": served.logprobs, "refusal": None} if served.logprobs is not None else None
        usage = {"prompt_tokens": served.input_tokens, "completion_tokens": served.output_tokens,
                 "total_tokens": served.input_tokens + served.output_tokens}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        headers = _route_headers(served.answered_by, served.reason, served.confidence, served.student)
        calls = served.extra.get("tool_calls")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = whole_events(cid, created, served.model, served.content, usage, route, include_usage,
                                  served.finish_reason, calls, lps)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        # As OpenAI answers: content null where the answer is tool calls alone.
        message = {"role": "assistant", "content": served.content if served.content or not calls else None,
                   **({"tool_calls": calls} if calls else {})}
        completion = {"id": cid, "object": "chat.completion", "created": created, "model": served.model,
                      "choices": [{"index": 0, "message": message, "logprobs": lps,
                                   "finish_reason": served.finish_reason}],
                      "usage": usage, "potstill": route}
        return JSONResponse(completion, headers=headers)


def _stream_failure(service: Service, state: dict, e: BaseException, log_error: Any) -> dict[str, Any]:
    """A live stream's failure after its 200: logged as a failed request is, and the error body
    (OpenAI's form) its last event carries."""
    return logged_failure(state, failure_reply(service, e, state.get("endpoint") or CHAT), log_error)


def logged_failure(state: dict, reply: dict[str, Any], log_error: Any) -> dict[str, Any]:
    """A failed request's ledger row, from what its client is told (``on_error``'s arguments, as
    ``failure_reply`` gives them); returns the error body (OpenAI's form)."""
    body = error_body(reply["status"], reply["message"], reply.get("param"), reply.get("code"))
    log_error(state, reply["status"], body, **{k: reply[k] for k in ("role", "model", "detail", "request_hash",
                                                                     "billed", "spent") if k in reply})
    return body


def _shown(value: Any) -> str:
    """A client's id as an error message quotes it: bounded, whatever its type."""
    return repr(value)[:100]


def _servable_tools(service: Service, tools: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's tools (chat form) as served: where the teacher cannot call tools either, 'auto'
    is answered in text, as any model may answer it, and a forced call is a 400."""
    tools = served_tools(service.task, service.teacher, tools)
    if tools is None or service.teacher.supports_tools or student_calls(service.task, tools):
        return tools  # (a tools task's student calls the task's tools itself)
    choice = tools.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        raise APIError(400, f"tool_choice: this server cannot call tools (the student cannot, nor can its "
                       f"{service.teacher.type} teacher); send tool_choice 'auto' or 'none'", "tool_choice")
    return None


def _format(body: ChatRequest | ResponsesRequest) -> dict[str, Any] | None:
    """The request's structured-output format as served (``potstill.serve.formats``), or its 400."""
    try:
        return body.format_request()
    except FormatError as e:
        raise APIError(400, str(e), e.param) from None


def _add_reload_route(app: FastAPI, service: Service, api_key: str | None, bearer: list) -> None:
    @app.post("/admin/reload", dependencies=bearer, responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def reload(request: Request) -> Any:
        """Load RUN/student if a promotion changed it, calibrate it and swap it in without a restart.

        Needs the serve key (when one is set). The old student answers until the swap; the call
        returns once the new one is live: {swapped, student, previous, load_and_calibrate_s}."""
        if api_key is not None and not key_sent(dict(request.scope.get("headers") or []), api_key):
            auth = request.headers.get("authorization", "")
            return JSONResponse(error_body(401, BAD_KEY, code=key_code(auth)), status_code=401)
        try:
            info = await asyncio.to_thread(service.reload)
        except PotstillError as e:
            return JSONResponse(error_body(409, f"reload failed, still serving {service.student_name}: {e}"[:500],
                                           code="reload_failed"), status_code=409)
        return JSONResponse(info)


async def _drain_receive() -> dict:
    return {"type": "http.disconnect"}
