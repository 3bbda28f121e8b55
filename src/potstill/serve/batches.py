"""OpenAI's Files and Batch APIs on ``potstill serve``: ``/v1/files`` and ``/v1/batches``.

A bulk job written for OpenAI's Batch API (``client.files.create(file=..., purpose="batch")``,
``client.batches.create(input_file_id=..., endpoint="/v1/chat/completions", completion_window="24h")``,
``client.batches.retrieve`` until it is ``completed``, ``client.files.content(output_file_id)``)
runs against the student unchanged. Each line is answered by the endpoint it names, called in
process through the app itself: the same routing (the student, or the teacher as fallback),
validation, error bodies and ledger row as a live request, its ``x-request-id`` ``<batch id>-<line>``.
Up to ``serve.batch_concurrency`` lines are in flight at once, so the student's batcher fills its
forward passes. A line that fails (a 4xx or 5xx) goes to the error file with its status and error
body, as OpenAI's do; a malformed input file fails the batch, each problem named with its line,
before any line runs.

Files and batches are kept in the run's ledger (``serve_files``, ``serve_batches``), their content
beside it in ``serve_files/``. Each answer is appended to the batch's progress file as it comes,
so a batch the server was running when it stopped resumes at the next start with the lines not yet
answered: none is lost and none answered (an escalation paid) twice, but for those in flight at the
moment it stopped. ``cancel`` stops sending lines; the lines answered by then make its output file,
as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from potstill.atomic import atomic_write, write_text
from potstill.progress import say
from potstill.serve.teacher_queue import WAIT_BOUNDED

FILES, BATCHES = "serve_files", "serve_batches"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
MAX_LINES = 50_000  # OpenAI's limit per batch
OPEN = ("validating", "in_progress", "finalizing", "cancelling")  # a batch still to be run or finished
MESSAGE_BATCH = "msgbatch_"  # the id prefix of Anthropic's Message Batches (``message_batches``), run here too
SAVE_EVERY_S = 1.0  # how often a running batch's counts are written to the ledger


def _now() -> int:
    return int(time.time())


def json_body(request: Request) -> Any:
    """A batch request's JSON body as the server's gate read it (``state.raw_body``); a 400 where it
    is not JSON (both batch APIs)."""
    from potstill.serve.app import APIError

    try:
        return json.loads(request.scope.get("state", {}).get("raw_body") or b"{}")
    except ValueError:
        raise APIError(400, "the request body is not valid JSON") from None


class Batches:
    """The kept files and batches of one served run, and the tasks running its batches."""

    def __init__(self, service: Any, key: str | None, concurrency: int):
        self.service, self.key, self.concurrency = service, key, concurrency
        self.ledger = service.ledger
        self.dir = Path(self.ledger.path).parent / "serve_files"
        self.app: FastAPI | None = None
        self.tasks: dict[str, asyncio.Task] = {}
        self._cancelled: set[str] = set()  # asked to cancel: no more of its lines are sent
        self._checked: dict[str, float] = {}  # when each running batch's status was last read (_cancelling)

    def update(self, batch_id: str, **fields: Any) -> dict[str, Any]:
        """Set ``fields`` of a kept batch (``request_counts`` and the like) and keep it; the batch back."""
        # One write transaction (Ledger.update_object): a cancel is never overwritten by a count.
        return self.ledger.update_object(BATCHES, batch_id, lambda b: b.update(fields))

    # ------------------------------------------------------------------ files
    def path(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.jsonl"

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Keep ``data`` as a new file (written whole, then named in the ledger); its File object."""
        self.dir.mkdir(parents=True, exist_ok=True)
        obj = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(data), "created_at": _now(),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        with atomic_write(self.path(obj["id"])) as f:
            f.buffer.write(data)  # the bytes as uploaded, through the text file's own stream
        self.ledger.put_object(FILES, obj)
        return obj

    def in_use(self, file_id: str) -> str | None:
        """The id of an unfinished batch that reads ``file_id``, or None."""
        return next((b["id"] for b in self.ledger.list_objects(BATCHES)
                     if b["status"] in OPEN and b["input_file_id"] == file_id), None)

    # ------------------------------------------------------------------ batches
    def create(self, input_file_id: str | None, endpoint: str, metadata: dict[str, str] | None,
               lines: list[dict[str, Any]] | None = None, prefix: str = "batch_") -> dict[str, Any]:
        """A new batch of the kept file ``input_file_id``, or of ``lines`` (Anthropic's Message Batches send
        their requests inline: kept beside the files as the batch's own input), started at once."""
        created = _now()
        bid = f"{prefix}{uuid.uuid4().hex[:24]}"
        if lines is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text(self._inline_path(bid), "".join(json.dumps(x) + "\n" for x in lines))
        obj = {"id": bid, "object": "batch", "endpoint": endpoint, "errors": None,
               "input_file_id": input_file_id, "completion_window": "24h", "status": "validating",
               "output_file_id": None, "error_file_id": None, "created_at": created, "in_progress_at": None,
               "expires_at": created + 24 * 3600, "finalizing_at": None, "completed_at": None, "failed_at": None,
               "expired_at": None, "cancelling_at": None, "cancelled_at": None,
               # Anthropic's requests come inline, each counted as processing from the batch's creation;
               # OpenAI's file is counted once validated (total 0 while validating, as OpenAI's API says).
               "request_counts": {"total": len(lines or []), "completed": 0, "failed": 0}, "metadata": metadata,
               "usage": _usage(0, 0), "potstill": {"answered_by": {}}}
        self.ledger.put_object(BATCHES, obj)
        self.ledger.claim(obj["id"])  # a new batch: this server runs it
        self.start(obj["id"])
        return obj

    def start(self, batch_id: str, cancelling: bool = False) -> None:
        if cancelling:
            self._cancelled.add(batch_id)
        self.tasks[batch_id] = asyncio.get_running_loop().create_task(self._run(batch_id))

    def resume(self) -> None:
        """Start again every batch a stopped server left unfinished; one a live server on this run is
        still running is left to it (``Ledger.claim``), or both would answer its lines."""
        for b in self.ledger.list_objects(BATCHES):
            if b["status"] in OPEN and b["id"] not in self.tasks:
                owner = self.ledger.claim(b["id"])
                if owner is not None:
                    where = f"pid {owner}" if owner > 0 else "another host"
                    say(f"serve: batch {b['id']} is being run by another server ({where}); left to it")
                    continue
                say(f"serve: resuming batch {b['id']} ({b['status']}, {b['request_counts']['completed']} + "
                    f"{b['request_counts']['failed']} of {b['request_counts']['total']} lines answered)")
                self.start(b["id"], cancelling=b["status"] == "cancelling")

    async def stop(self) -> None:
        tasks = list(self.tasks.values())  # each task leaves the dict as it ends
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        def cancelling(b: dict[str, Any]) -> None:
            if b["status"] in ("validating", "in_progress"):
                b.update(status="cancelling", cancelling_at=_now())
                self._cancelled.add(batch_id)

        return self.ledger.update_object(BATCHES, batch_id, cancelling)

    def _cancelling(self, batch_id: str) -> bool:
        """Whether to stop sending the batch's lines: cancelled here, or (read from the ledger at most
        once per SAVE_EVERY_S) through another server on the same run."""
        if batch_id not in self._cancelled and time.monotonic() - self._checked.get(batch_id, 0.0) >= SAVE_EVERY_S:
            self._checked[batch_id] = time.monotonic()
            b = self.ledger.get_object(BATCHES, batch_id)
            if b is not None and b["status"] == "cancelling":
                self._cancelled.add(batch_id)
        return batch_id in self._cancelled

    async def _run(self, batch_id: str) -> None:
        b = self.ledger.get_object(BATCHES, batch_id)
        try:
            lines, problems = await asyncio.to_thread(self._read_input, b)
            if problems:
                self.update(batch_id, status="failed", failed_at=_now(), errors={"object": "list", "data": problems[:100]})
                return
            def running(b: dict[str, Any]) -> None:
                if b["status"] == "validating":
                    b.update(status="in_progress", in_progress_at=_now())
                b["request_counts"]["total"] = len(lines)

            self.ledger.update_object(BATCHES, batch_id, running)
            await self._answer_all(batch_id, lines)
            await asyncio.to_thread(self._finish, batch_id, lines)
        except asyncio.CancelledError:  # the server stops: the batch stays open, resumed at the next start
            raise
        except Exception as e:  # noqa: BLE001 - the batch fails with its reason; the server goes on
            self.update(batch_id, status="failed", failed_at=_now(), errors={"object": "list", "data": [
                {"code": "server_error", "message": f"the batch failed: {type(e).__name__}: {e}"[:500],
                 "param": None, "line": None}]})
        finally:
            self.tasks.pop(batch_id, None)

    def _inline_path(self, batch_id: str) -> Path:
        return self.dir / f"{batch_id}.requests.jsonl"

    def _read_input(self, b: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The input file's requests, and its problems as OpenAI's batch errors (each with its line)."""
        problems: list[dict[str, Any]] = []

        def problem(code: str, message: str, line: int | None, param: str | None = None) -> None:
            problems.append({"code": code, "message": message, "param": param, "line": line})

        path = self.path(b["input_file_id"]) if b["input_file_id"] else self._inline_path(b["id"])
        if not path.is_file():
            problem("missing_file", f"the input file {b['input_file_id']} was deleted", None, "input_file_id")
            return [], problems
        lines, seen = [], set()
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if len(lines) >= MAX_LINES:
                    problem("too_many_requests", f"over {MAX_LINES} requests in one batch", n)
                    break
                try:
                    line = json.loads(raw)
                except ValueError as e:
                    problem("invalid_json_line", f"line {n} is not valid JSON ({e})", n)
                    continue
                if not isinstance(line, dict):
                    problem("invalid_json_line", f"line {n} is not a JSON object", n)
                    continue
                cid = line.get("custom_id")
                if not isinstance(cid, str) or not cid:
                    problem("missing_required_parameter", "custom_id: a string naming the request", n, "custom_id")
                elif cid in seen:
                    problem("duplicate_custom_id", f"custom_id {cid[:100]!r} is on an earlier line too", n, "custom_id")
                seen.add(cid)
                if line.get("method") != "POST":
                    problem("invalid_method", "method: must be POST", n, "method")
                if line.get("url") != b["endpoint"]:
                    problem("mismatched_url", f"url: {str(line.get('url'))[:100]!r} is not the batch's endpoint "
                            f"{b['endpoint']}", n, "url")
                if not isinstance(line.get("body"), dict):
                    problem("missing_required_parameter", "body: the request's JSON object", n, "body")
                lines.append(line)
        if not lines and not problems:
            problem("empty_file", "the input file holds no requests", None, "input_file_id")
        return lines, problems

    def _progress_path(self, batch_id: str) -> Path:
        return self.dir / f"{batch_id}.progress.jsonl"

    def _progress(self, batch_id: str) -> dict[int, dict[str, Any]]:
        """The lines answered so far (a line cut short by a crash is left out: asked again)."""
        done = {}
        path = self._progress_path(batch_id)
        if path.exists():
            for raw in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(raw)
                    done[int(row["index"])] = row
                except (ValueError, KeyError, TypeError):
                    continue
        return done

    async def _answer_all(self, batch_id: str, lines: list[dict[str, Any]]) -> None:
        done = await asyncio.to_thread(self._progress, batch_id)
        counts = {"total": len(lines), "completed": sum(r["ok"] for r in done.values()),
                  "failed": sum(not r["ok"] for r in done.values())}
        tokens = [sum(r.get("tokens", [0, 0])[i] for r in done.values()) for i in (0, 1)]
        routes: dict[str, int] = {}
        for r in done.values():
            if r.get("answered_by"):
                routes[r["answered_by"]] = routes.get(r["answered_by"], 0) + 1
        todo = iter([i for i in range(len(lines)) if i not in done])
        saved = time.monotonic()

        def save() -> None:
            self.update(batch_id, request_counts=dict(counts), usage=_usage(*tokens),
                        potstill={"answered_by": dict(routes)})

        progress = self._progress_path(batch_id).open("a", encoding="utf-8")
        headers = {"authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://potstill-batch",
                                         timeout=None) as http:
                async def worker() -> None:
                    nonlocal saved
                    WAIT_BOUNDED.set(False)  # a line waits for a teacher slot: a 429 would fail it for good
                    for i in todo:
                        if self._cancelling(batch_id):
                            return
                        row = await _answer(http, headers, f"{batch_id}-{i}", lines[i])
                        row["index"] = i
                        progress.write(json.dumps(row) + "\n")
                        progress.flush()
                        counts["completed" if row["ok"] else "failed"] += 1
                        tokens[0] += row["tokens"][0]
                        tokens[1] += row["tokens"][1]
                        if row.get("answered_by"):
                            routes[row["answered_by"]] = routes.get(row["answered_by"], 0) + 1
                        if time.monotonic() - saved > SAVE_EVERY_S:
                            saved = time.monotonic()
                            await asyncio.to_thread(save)

                await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            progress.close()
            await asyncio.to_thread(save)

    def _finish(self, batch_id: str, lines: list[dict[str, Any]]) -> None:
        """The output and error files from the progress file, in input order; the batch done (or cancelled)."""
        cancelled = self.ledger.get_object(BATCHES, batch_id)["status"] == "cancelling"
        if not cancelled:
            self.update(batch_id, status="finalizing", finalizing_at=_now())
        done = self._progress(batch_id)
        out = err = None
        if batch_id.startswith(MESSAGE_BATCH):  # Anthropic's results: every request in input order, canceled if never sent
            results = [_message_result(lines[i]["custom_id"], done.get(i)) for i in range(len(lines))]
            write_text(self._results_path(batch_id), "".join(json.dumps(r) + "\n" for r in results))
        else:  # OpenAI's output and error files
            ok = [json.dumps(done[i]["line"]) + "\n" for i in sorted(done) if done[i]["ok"]]
            bad = [json.dumps(done[i]["line"]) + "\n" for i in sorted(done) if not done[i]["ok"]]
            out = self.add_file("".join(ok).encode(), f"{batch_id}_output.jsonl", "batch_output") if ok else None
            err = self.add_file("".join(bad).encode(), f"{batch_id}_error.jsonl", "batch_output") if bad else None
        ends = {"status": "cancelled", "cancelled_at": _now()} if cancelled else {"status": "completed",
                                                                                 "completed_at": _now()}
        self.update(batch_id, output_file_id=out and out["id"], error_file_id=err and err["id"], **ends)
        self._progress_path(batch_id).unlink(missing_ok=True)

    def _results_path(self, batch_id: str) -> Path:
        return self.dir / f"{batch_id}.results.jsonl"


async def _answer(http: Any, headers: dict[str, str], rid: str, line: dict[str, Any]) -> dict[str, Any]:
    """One line through its endpoint: its output line (OpenAI's form), whether it succeeded, its tokens
    and who answered it."""
    body = line["body"]
    if body.get("stream"):
        status, data = 400, _error(400, "stream: a batch answers each request whole; leave stream out", "stream")
        rid_back = rid
    else:
        r = await http.post(line["url"], json=body, headers={**headers, "x-request-id": rid})
        status, rid_back = r.status_code, r.headers.get("x-request-id", rid)
        try:
            data = r.json()
        except ValueError:
            data = _error(status, r.text[:500] or "no body")
    usage = data.get("usage") or {} if isinstance(data, dict) else {}
    tokens = [int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0),
              int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)]
    route = data.get("potstill") if isinstance(data, dict) else None
    out = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"],
           "response": {"status_code": status, "request_id": rid_back, "body": data}, "error": None}
    return {"ok": 200 <= status < 300, "line": out, "tokens": tokens,
            "answered_by": route.get("answered_by") if isinstance(route, dict) else None}


def _message_result(custom_id: str, row: dict[str, Any] | None) -> dict[str, Any]:
    """A request's line of an Anthropic batch's results: succeeded (its message), errored, or canceled."""
    if row is None:
        return {"custom_id": custom_id, "result": {"type": "canceled"}}
    response = row["line"]["response"]
    if row["ok"]:
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": response["body"]}}
    return {"custom_id": custom_id, "result": {"type": "errored", "error": response["body"]}}


def _usage(inp: int, out: int) -> dict[str, Any]:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    from potstill.serve.app import error_body

    return error_body(status, message, param, code)


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the items after the one named ``after``, at most ``limit``."""
    if after is not None:
        ids = [x["id"] for x in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def add_batch_routes(app: FastAPI, service: Any, key: str | None, bearer: list) -> Batches:
    """``/v1/files`` and ``/v1/batches`` (see the module) on ``app``; the ``Batches`` that runs them,
    whose ``resume`` and ``stop`` the app's lifespan calls."""
    from potstill.serve.app import APIError

    s = service.cfg.serve
    batches = Batches(service, key, s.batch_concurrency)
    batches.app = app

    def file_or_404(file_id: str) -> dict[str, Any]:
        obj = service.ledger.get_object(FILES, file_id)
        if obj is None:
            raise APIError(404, f"No such File object: {file_id[:100]}", "id", "file_not_found")
        return obj

    def batch_or_404(batch_id: str) -> dict[str, Any]:
        obj = service.ledger.get_object(BATCHES, batch_id) if not batch_id.startswith(MESSAGE_BATCH) else None
        if obj is None:
            raise APIError(404, f"No such Batch object: {batch_id[:100]}", "id", "batch_not_found")
        return obj

    @app.post("/v1/files", dependencies=bearer)
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)) -> Any:
        if purpose != "batch":
            raise APIError(400, f"purpose: this server keeps files for its Batch API only ('batch'), not "
                           f"{purpose[:50]!r}", "purpose")
        data = await file.read()
        return JSONResponse(await asyncio.to_thread(batches.add_file, data, file.filename or "upload.jsonl", purpose))

    @app.get("/v1/files", dependencies=bearer)
    async def list_files(purpose: str | None = None, after: str | None = None, limit: int = 10_000,
                         order: str = "desc") -> Any:
        items = await asyncio.to_thread(service.ledger.list_objects, FILES)
        items = [f for f in items if purpose is None or f["purpose"] == purpose]
        return _page(items if order == "desc" else items[::-1], after, max(1, min(limit, 10_000)))

    @app.get("/v1/files/{file_id}", dependencies=bearer)
    async def get_file(file_id: str) -> Any:
        return await asyncio.to_thread(file_or_404, file_id)

    @app.get("/v1/files/{file_id}/content", dependencies=bearer)
    async def file_content(file_id: str) -> Any:
        await asyncio.to_thread(file_or_404, file_id)
        data = await asyncio.to_thread(batches.path(file_id).read_bytes)
        return Response(data, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", dependencies=bearer)
    async def delete_file(file_id: str) -> Any:
        await asyncio.to_thread(file_or_404, file_id)
        user = await asyncio.to_thread(batches.in_use, file_id)
        if user is not None:
            raise APIError(409, f"the file is the input of batch {user}, which is not finished: cancel it first",
                           "file_id", "file_in_use")
        await asyncio.to_thread(service.ledger.delete_object, FILES, file_id)
        batches.path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.post("/v1/batches", dependencies=bearer)
    async def create_batch(request: Request) -> Any:
        body = json_body(request)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        endpoint, window, meta = body.get("endpoint"), body.get("completion_window"), body.get("metadata")
        if endpoint not in ENDPOINTS:
            raise APIError(400, f"endpoint: this server answers batches of {', '.join(ENDPOINTS)}, not "
                           f"{str(endpoint)[:100]!r}", "endpoint")
        if window != "24h":
            raise APIError(400, f"completion_window: must be '24h', not {str(window)[:20]!r}", "completion_window")
        if meta is not None and not (isinstance(meta, dict) and len(meta) <= 16 and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in meta.items())):
            raise APIError(400, "metadata: up to 16 string keys (64 characters) and string values (512)", "metadata")
        fid = body.get("input_file_id")
        found = await asyncio.to_thread(service.ledger.get_object, FILES, fid) if isinstance(fid, str) else None
        if found is None or found["purpose"] != "batch":
            raise APIError(400, f"input_file_id: no file {str(fid)[:100]!r} uploaded with purpose 'batch'",
                           "input_file_id")
        return batches.create(fid, endpoint, meta)  # in the event loop: it starts the batch's task

    @app.get("/v1/batches", dependencies=bearer)
    async def list_batches(after: str | None = None, limit: int = 20) -> Any:
        items = await asyncio.to_thread(service.ledger.list_objects, BATCHES)
        items = [b for b in items if not b["id"].startswith(MESSAGE_BATCH)]
        return _page(items, after, max(1, min(limit, 100)))

    @app.get("/v1/batches/{batch_id}", dependencies=bearer)
    async def get_batch(batch_id: str) -> Any:
        return await asyncio.to_thread(batch_or_404, batch_id)

    @app.post("/v1/batches/{batch_id}/cancel", dependencies=bearer)
    async def cancel_batch(batch_id: str) -> Any:
        b = await asyncio.to_thread(batch_or_404, batch_id)
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            raise APIError(409, f"the batch is {b['status']}: nothing to cancel", "batch_id", "batch_not_cancellable")
        return await asyncio.to_thread(batches.cancel, batch_id)

    return batches
