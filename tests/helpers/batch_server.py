"""A loopback batch API on 127.0.0.1 (FastAPI + uvicorn, its own process) for both providers.

OpenAI: ``POST /v1/files`` (multipart), ``GET /v1/files``, ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.
Anthropic: ``POST /v1/messages/batches``, ``GET /v1/messages/batches``,
``GET /v1/messages/batches/{id}``, ``GET /v1/messages/batches/{id}/results`` (a JSONL stream),
``POST /v1/messages/batches/{id}/cancel``.

A batch ends ``--latency`` seconds after it is created; each request is answered as the chat
loopback (``tests.generate.loopback``) would answer it live. Faults, chosen by a hash of the
``custom_id`` so they hit the same requests whatever the order, on a request's first
submission only (so a resubmission succeeds): ``--expire`` (a share that expires), ``--fail``
(a share that fails with a 500), ``--malformed`` (the first results file's first line is
cut in half), ``--lose-output`` (the first output file is gone: 404), ``--quota-after N``
(batch creations after the Nth get 429 ``insufficient_quota``), ``--fail-quota`` (the first
batch fails whole with ``token_limit_exceeded``). ``--upload-delay`` and ``--results-delay``
slow uploads/creations (after they are stored) and result streams, for the kill tests.

With ``--keywords '{"label": ["word", ...]}'`` it plays a fine-tuned classifier instead: the
answer is the first label one of whose words is in the user's text (a rule a tiny student can learn).
With ``--agent`` it plays an agent's teacher for a tools task: asked with tools, it calls the first
tool with ``{"unit": "c"}``, or replies ``AGENT_REPLY`` in words once the chat ends with that call's
result; asked without tools (playing a function, ``generate.tool_rounds``), it writes the result.

``GET /stats`` returns the counters the tests assert on: uploads, batch creations per provider,
how many times each ``custom_id`` was submitted in a created batch, and result downloads.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import hashlib
import json
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.generate.loopback import Loopback, _chat, _messages, _user_text


def _share(cid: str, salt: str) -> float:
    return int(hashlib.sha256((salt + cid).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _err(status: int, message: str, type_: str, code: str | None = None, retry: bool = True) -> JSONResponse:
    headers = {} if retry else {"x-should-retry": "false"}
    return JSONResponse({"type": "error", "error": {"message": message, "type": type_, "code": code}}, status, headers)


class State:
    def __init__(self, o: argparse.Namespace):
        self.o = o
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.uploads = 0
        self.created: Counter[str] = Counter()
        self.submissions: Counter[str] = Counter()
        self.downloads = 0
        self.cancels = 0
        self.malformed_done = False
        self.lost_done = False
        self.quota_failed = False

    def fault(self, cid: str) -> str | None:
        """What happens to this request in this batch: None (answered), expired or failed."""
        if self.submissions[cid] > 1:
            return None
        if _share(cid, "expire") < self.o.expire:
            return "expired"
        if _share(cid, "fail") < self.o.fail:
            return "failed"
        return None

    def new_batch(self, provider: str, requests: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        for r in requests:
            self.submissions[r["custom_id"]] += 1
        self.created[provider] += 1
        b = {"provider": provider, "id": ("batch_" if provider == "openai" else "msgbatch_") + uuid.uuid4().hex[:20],
             "created": time.time(), "requests": requests, "faults": {r["custom_id"]: self.fault(r["custom_id"]) for r in requests},
             "cancelled": False, **extra}
        self.batches[b["id"]] = b
        return b

    def ended(self, b: dict[str, Any]) -> bool:
        return b["cancelled"] or time.time() >= b["created"] + self.o.latency


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    out = {}
    for part in msg.get_payload():
        out[part.get_param("name", header="content-disposition")] = (part.get_filename(), part.get_payload(decode=True))
    return out


def build(o: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    s = State(o)

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if o.key and request.url.path.startswith("/v1/") and given != o.key:
            return _err(401, "invalid api key", "authentication_error", retry=False)
        return await call_next(request)

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return {"uploads": s.uploads, "created": dict(s.created), "submissions": dict(s.submissions),
                "downloads": s.downloads, "cancels": s.cancels, "files": len(s.files)}

    @app.post("/admin/quota")
    def set_quota(after: int | None = None) -> dict[str, Any]:
        o.quota_after = after  # the tests lift a quota to show that a rerun finishes the job
        return {"quota_after": after}

    @app.post("/admin/latency")
    def set_latency(seconds: float) -> dict[str, Any]:
        o.latency = seconds  # applies to every batch, ended or not: a long wait can be cut short
        return {"latency": seconds}

    # ------------------------------------------------------------------ OpenAI
    @app.post("/v1/files")
    async def upload(request: Request) -> Any:
        parts = _parse_multipart(request.headers["content-type"], await request.body())
        name, data = parts["file"]
        fid = "file-" + uuid.uuid4().hex[:24]
        s.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                        "filename": name, "purpose": parts["purpose"][1].decode(), "status": "processed", "data": data}
        s.uploads += 1
        await asyncio.sleep(o.upload_delay)  # stored, not yet answered: a kill here orphans the file
        return _file_obj(s.files[fid])

    @app.get("/v1/files")
    def list_files(purpose: str | None = None) -> dict[str, Any]:
        data = [_file_obj(f) for f in reversed(s.files.values()) if purpose in (None, f["purpose"])]
        return {"object": "list", "data": data, "has_more": False}

    @app.get("/v1/files/{fid}/content")
    async def content(fid: str) -> Any:
        f = s.files.get(fid)
        if f is None or f.get("lost"):
            return _err(404, f"No such File object: {fid}", "invalid_request_error", retry=False)
        s.downloads += 1
        return StreamingResponse(_slow(f["data"].decode().splitlines(keepends=True), o.results_delay),
                                 media_type="application/jsonl")

    @app.post("/v1/batches")
    async def create_openai(request: Request) -> Any:
        body = await request.json()
        f = s.files.get(body.get("input_file_id", ""))
        if f is None:
            return _err(404, f"No such File object: {body.get('input_file_id')}", "invalid_request_error", retry=False)
        if o.quota_after is not None and sum(s.created.values()) >= o.quota_after:
            return _err(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota", retry=False)
        reqs = [json.loads(ln) for ln in f["data"].decode().splitlines() if ln.strip()]
        b = s.new_batch("openai", reqs, input_file_id=f["id"], metadata=body.get("metadata") or {},
                        endpoint=body["endpoint"], window=body["completion_window"])
        if o.fail_quota and not s.quota_failed:
            s.quota_failed = True
            b["failed"] = "token_limit_exceeded"
        await asyncio.sleep(o.upload_delay)
        return _openai_batch(s, b)

    @app.get("/v1/batches")
    def list_openai(limit: int = 20) -> dict[str, Any]:
        data = [_openai_batch(s, b) for b in reversed(s.batches.values()) if b["provider"] == "openai"]
        return {"object": "list", "data": data, "has_more": False}

    @app.get("/v1/batches/{bid}")
    def get_openai(bid: str) -> Any:
        b = s.batches.get(bid)
        return _openai_batch(s, b) if b else _err(404, f"No batch {bid}", "invalid_request_error", retry=False)

    @app.post("/v1/batches/{bid}/cancel")
    def cancel_openai(bid: str) -> Any:
        s.batches[bid]["cancelled"] = True
        s.cancels += 1
        return _openai_batch(s, s.batches[bid])

    # ------------------------------------------------------------------ Anthropic
    @app.post("/v1/messages/batches")
    async def create_anthropic(request: Request) -> Any:
        body = await request.json()
        if o.quota_after is not None and sum(s.created.values()) >= o.quota_after:
            return _err(429, "Your credit balance is too low", "rate_limit_error", retry=False)
        b = s.new_batch("anthropic", body["requests"], base=str(request.base_url).rstrip("/"))
        await asyncio.sleep(o.upload_delay)
        return _anthropic_batch(s, b)

    @app.get("/v1/messages/batches")
    def list_anthropic(limit: int = 20) -> dict[str, Any]:
        data = [_anthropic_batch(s, b) for b in reversed(s.batches.values()) if b["provider"] == "anthropic"]
        return {"data": data, "has_more": False, "first_id": None, "last_id": None}

    @app.get("/v1/messages/batches/{bid}")
    def get_anthropic(bid: str) -> Any:
        b = s.batches.get(bid)
        return _anthropic_batch(s, b) if b else _err(404, f"No batch {bid}", "not_found_error", retry=False)

    @app.get("/v1/messages/batches/{bid}/results")
    def results_anthropic(bid: str) -> Any:
        b = s.batches[bid]
        if not s.ended(b):
            return _err(400, "batch is still processing", "invalid_request_error", retry=False)
        s.downloads += 1
        return StreamingResponse(_slow([ln for ln, _ in _lines(s, b)], o.results_delay), media_type="application/binary")

    @app.post("/v1/messages/batches/{bid}/cancel")
    def cancel_anthropic(bid: str) -> Any:
        s.batches[bid]["cancelled"] = True
        s.cancels += 1
        return _anthropic_batch(s, s.batches[bid])

    return app


async def _slow(lines: list[str], delay: float) -> Any:
    for i, ln in enumerate(lines):
        if delay and i % 50 == 0:
            await asyncio.sleep(delay)
        yield ln.encode()


def _file_obj(f: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in f.items() if k not in ("data", "lost")}


def _keyword_label(o: argparse.Namespace, messages: list[dict[str, Any]]) -> str | None:
    words = set(_user_text(messages).lower().split())
    return next((lab for lab, kws in json.loads(o.keywords).items() if words & set(kws)), None) if o.keywords else None


AGENT_REPLY = "Done, celsius it is."
AGENT_RESULT = '{"unit": "c", "ok": true}'


def agent_answer(provider: str, body: dict[str, Any]) -> dict[str, Any]:
    """``--agent``'s answer in the provider's form: a call, a reply after a result (unless a call is
    required), or a function's result; the live agent teacher of ``tests/tools`` answers with it too."""
    usage = {"prompt_tokens": 20, "completion_tokens": 9} if provider == "openai" else {"input_tokens": 20,
                                                                                         "output_tokens": 9}
    last = body["messages"][-1]
    after = last["role"] == "tool" and body.get("tool_choice") != "required" if provider == "openai" else (
        isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"])
        and (body.get("tool_choice") or {}).get("type") != "any")
    text = AGENT_RESULT if not body.get("tools") else AGENT_REPLY if after else None
    if provider == "openai":
        tool = body.get("tools") and body["tools"][0]["function"]["name"]
        message = {"role": "assistant", "content": text} if text is not None else {
            "role": "assistant", "content": None, "tool_calls": [{"id": "call_b0", "type": "function", "function": {
                "name": tool, "arguments": '{"unit": "c"}'}}]}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [{
            "index": 0, "message": message, "finish_reason": "stop" if text is not None else "tool_calls"}],
            "usage": {**usage, "total_tokens": 29}}
    content = [{"type": "text", "text": text}] if text is not None else [
        {"type": "tool_use", "id": "toolu_b0", "name": body["tools"][0]["name"], "input": {"unit": "c"}}]
    return {"id": "msg_b", "type": "message", "role": "assistant", "model": body["model"], "content": content,
            "stop_reason": "end_turn" if text is not None else "tool_use", "stop_sequence": None,
            "usage": {**usage, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}


def _answer(s: State, provider: str, body: dict[str, Any]) -> dict[str, Any]:
    """The live loopback's answer, or the keyword rule's label when the server plays a fine-tune."""
    if s.o.agent:
        return agent_answer(provider, body)
    obj = _chat(body) if provider == "openai" else _messages(body)
    label = _keyword_label(s.o, body["messages"])
    if label is not None:
        for part in obj["choices"] if provider == "openai" else [obj]:
            if provider == "openai":
                part["message"]["content"] = label
            else:
                part["content"][0]["text"] = label
    return obj


def _lines(s: State, b: dict[str, Any]) -> list[tuple[str, bool]]:
    """The batch's result lines, each with whether it was answered (OpenAI splits them in two files)."""
    out = []
    for r in b["requests"]:
        cid, fault = r["custom_id"], b["faults"][r["custom_id"]]
        if b["cancelled"] and fault is None and _share(cid, "cancel") < 0.5:
            fault = "cancelled"  # a cancelled batch ends with about half its requests not run
        if b["provider"] == "openai":
            if fault in ("expired", "cancelled"):
                obj = {"id": "r", "custom_id": cid, "response": None, "error": {
                    "code": f"batch_{fault}", "message": f"This request was not run: the batch {fault}."}}
            elif fault == "failed" and s.o.echo_key:  # a gateway that quotes the key it refused
                obj = {"id": "r", "custom_id": cid, "error": None, "response": {"status_code": 400, "request_id": "x", "body": {
                    "error": {"message": f"request refused for key {s.o.key}", "type": "invalid_request_error"}}}}
            elif fault == "failed":
                obj = {"id": "r", "custom_id": cid, "error": None, "response": {
                    "status_code": 500, "request_id": "x", "body": {"error": {"message": "boom", "type": "server_error"}}}}
            else:
                obj = {"id": "r", "custom_id": cid, "error": None,
                       "response": {"status_code": 200, "request_id": "x", "body": _answer(s, "openai", r["body"])}}
        else:
            if fault in ("expired", "cancelled"):
                res: dict[str, Any] = {"type": "expired" if fault == "expired" else "canceled"}
            elif fault == "failed" and s.o.echo_key:
                res = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": f"request refused for key {s.o.key}"}}}
            elif fault == "failed":
                res = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "boom"}}}
            else:
                res = {"type": "succeeded", "message": _answer(s, "anthropic", r["params"])}
            obj = {"custom_id": cid, "result": res}
        out.append((json.dumps(obj) + "\n", fault is None))
    if s.o.malformed and not s.malformed_done and out:
        s.malformed_done = True
        out[0] = (out[0][0][: len(out[0][0]) // 2] + "\n", out[0][1])
    return out


def _openai_files(s: State, b: dict[str, Any]) -> tuple[str | None, str | None]:
    if "output_file_id" not in b:
        lines = _lines(s, b)
        ok = [ln for ln, answered in lines if answered]
        bad = [ln for ln, answered in lines if not answered]
        ids = []
        for kind, part in (("output", ok), ("error", bad)):
            if not part:
                ids.append(None)
                continue
            fid = "file-" + uuid.uuid4().hex[:24]
            s.files[fid] = {"id": fid, "object": "file", "bytes": 0, "created_at": int(time.time()),
                            "filename": f"batch_{kind}.jsonl", "purpose": f"batch_{kind}", "status": "processed",
                            "data": "".join(part).encode()}
            if kind == "output" and s.o.lose_output and not s.lost_done:
                s.lost_done = True
                s.files[fid]["lost"] = True
            ids.append(fid)
        b["output_file_id"], b["error_file_id"] = ids
    return b["output_file_id"], b["error_file_id"]


def _fault_counts(b: dict[str, Any]) -> Counter:
    """How many requests of an ended batch were answered (None), failed, expired or cancelled."""
    out: Counter = Counter()
    for cid, fault in b["faults"].items():
        if b["cancelled"] and fault is None and _share(cid, "cancel") < 0.5:
            fault = "cancelled"
        out[fault] += 1
    return out


def _openai_batch(s: State, b: dict[str, Any]) -> dict[str, Any]:
    n = len(b["requests"])
    obj: dict[str, Any] = {"id": b["id"], "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
                           "completion_window": b["window"], "created_at": int(b["created"]), "metadata": b["metadata"],
                           "status": "in_progress", "request_counts": {"total": n, "completed": 0, "failed": 0}}
    if b.get("failed"):
        obj.update(status="failed", request_counts={"total": n, "completed": 0, "failed": 0}, errors={"object": "list", "data": [
            {"code": b["failed"], "message": "Enqueued token limit reached for this model."
            + (f" (key {s.o.key})" if s.o.echo_key else ""), "line": None, "param": None}]})
        return obj
    if not s.ended(b):
        return obj
    out_id, err_id = _openai_files(s, b)
    faults = _fault_counts(b)
    status = "cancelled" if b["cancelled"] else "expired" if faults["expired"] else "completed"
    obj.update(status=status, output_file_id=out_id, error_file_id=err_id,
               request_counts={"total": n, "completed": faults[None], "failed": faults["failed"]})
    return obj


def _anthropic_batch(s: State, b: dict[str, Any]) -> dict[str, Any]:
    n = len(b["requests"])
    ended = s.ended(b)
    counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if ended:
        faults = _fault_counts(b)
        counts = {"processing": 0, "succeeded": faults[None], "errored": faults["failed"],
                  "canceled": faults["cancelled"], "expired": faults["expired"]}
    return {"id": b["id"], "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts, "created_at": _iso(b["created"]), "expires_at": _iso(b["created"] + 86400),
            "ended_at": _iso(b["created"] + s.o.latency) if ended else None, "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{b['base']}/v1/messages/batches/{b['id']}/results" if ended else None}


class BatchLoopback(Loopback):
    """The batch server in its own process (started and stopped as ``Loopback``); ``stats()`` reads its counters."""

    module = "tests.helpers.batch_server"
    start_s = 30.0

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def set_latency(self, seconds: float) -> None:
        self._call("POST", f"/admin/latency?seconds={seconds}")

    def set_quota(self, after: int | None) -> None:
        self._call("POST", "/admin/quota" + ("" if after is None else f"?after={after}"))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", default="")
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--expire", type=float, default=0.0)
    p.add_argument("--fail", type=float, default=0.0)
    p.add_argument("--malformed", action="store_true")
    p.add_argument("--lose-output", action="store_true")
    p.add_argument("--quota-after", type=int, default=None)
    p.add_argument("--fail-quota", action="store_true")
    p.add_argument("--upload-delay", type=float, default=0.0)
    p.add_argument("--results-delay", type=float, default=0.0)
    p.add_argument("--keywords", default="")
    p.add_argument("--agent", action="store_true")
    p.add_argument("--echo-key", action="store_true")  # failures quote the key, as some gateways do
    return p.parse_args(argv)


if __name__ == "__main__":
    import socket

    import uvicorn

    opts = parse()
    # Bound here and printed (``Loopback.__enter__`` waits for it): --port=0 is any free port.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", opts.port))
    sock.listen(1024)  # connections wait in the backlog until uvicorn accepts them, not refused
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(build(opts), log_level="warning")).run(sockets=[sock])
