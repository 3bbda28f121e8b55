"""Anthropic's Message Batches API on ``potstill serve``: ``/v1/messages/batches``.

``client.messages.batches.create(requests=[{"custom_id": ..., "params": {...}}])``, ``retrieve`` until
``processing_status`` is ``ended``, ``client.messages.batches.results(id)``: each request is answered
by ``/v1/messages`` as a live one is (routing, validation, errors, ledger row), run, kept and resumed by
the same ``Batches`` as OpenAI's Batch API (``batches``), in Anthropic's shapes: a ``message_batch``
with ``request_counts`` of processing / succeeded / errored / canceled / expired, RFC 3339 times, and
results of type ``succeeded`` (the message), ``errored`` (Anthropic's error body) or ``canceled``
(a request a cancel kept from being sent). ``cancel`` and ``delete`` (an ended batch) too.
"""

from __future__ import annotations

import asyncio
import datetime
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from potstill.serve.batches import BATCHES, MESSAGE_BATCH, Batches, json_body

MAX_REQUESTS = 100_000  # Anthropic's limit per batch
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_ENDED = ("completed", "failed", "cancelled", "expired")


def _time(t: int | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat().replace(
        "+00:00", "Z")


def view(b: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A kept batch (``batches``' record) as Anthropic's MessageBatch object."""
    counts = b["request_counts"]
    done = counts["completed"] + counts["failed"]
    ended = b["status"] in _ENDED
    status = "ended" if ended else "canceling" if b["status"] == "cancelling" else "in_progress"
    never_sent = counts["total"] - done if ended else 0
    return {"id": b["id"], "type": "message_batch", "processing_status": status,
            "request_counts": {"processing": 0 if ended else counts["total"] - done, "succeeded": counts["completed"],
                               "errored": counts["failed"] + (never_sent if b["status"] == "failed" else 0),
                               "canceled": never_sent if b["status"] == "cancelled" else 0, "expired": 0},
            "ended_at": _time(b.get("completed_at") or b.get("cancelled_at") or b.get("failed_at")),
            "created_at": _time(b["created_at"]), "expires_at": _time(b["expires_at"]),
            "archived_at": None, "cancel_initiated_at": _time(b.get("cancelling_at")),
            "results_url": f"{base_url}/v1/messages/batches/{b['id']}/results" if ended else None,
            "potstill": b.get("potstill")}


def add_message_batch_routes(app: FastAPI, service: Any, batches: Batches, bearer: list) -> None:
    from potstill.serve.app import APIError

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def batch_or_404(batch_id: str) -> dict[str, Any]:
        obj = service.ledger.get_object(BATCHES, batch_id) if batch_id.startswith(MESSAGE_BATCH) else None
        if obj is None:
            raise APIError(404, f"message batch {batch_id[:100]!r} not found", "message_batch_id", "not_found")
        return obj

    @app.post("/v1/messages/batches", dependencies=bearer)
    async def create(request: Request) -> Any:
        body = json_body(request)
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            raise APIError(400, "requests: a list of {custom_id, params}, at least one", "requests")
        if len(reqs) > MAX_REQUESTS:
            raise APIError(400, f"requests: at most {MAX_REQUESTS} in one batch", "requests")
        seen: set[str] = set()
        lines = []
        for i, r in enumerate(reqs):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.fullmatch(cid):
                raise APIError(400, f"requests.{i}.custom_id: 1 to 64 letters, digits, '_' or '-'", "custom_id")
            if cid in seen:
                raise APIError(400, f"requests.{i}.custom_id: {cid!r} is used by an earlier request", "custom_id")
            seen.add(cid)
            if not isinstance(r.get("params"), dict):
                raise APIError(400, f"requests.{i}.params: the Messages API request, an object", "params")
            lines.append({"custom_id": cid, "method": "POST", "url": "/v1/messages", "body": r["params"]})
        b = batches.create(None, "/v1/messages", None, lines=lines, prefix=MESSAGE_BATCH)
        return view(b, base(request))

    @app.get("/v1/messages/batches", dependencies=bearer)
    async def list_batches(request: Request, limit: int = 20, after_id: str | None = None,
                           before_id: str | None = None) -> Any:
        items = [b for b in await asyncio.to_thread(service.ledger.list_objects, BATCHES)
                 if b["id"].startswith(MESSAGE_BATCH)]
        ids = [b["id"] for b in items]
        if after_id in ids:
            items = items[ids.index(after_id) + 1:]
        elif before_id in ids:
            items = items[:ids.index(before_id)]
        limit = max(1, min(limit, 1000))
        page = [view(b, base(request)) for b in items[:limit]]
        return {"data": page, "has_more": len(items) > limit, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None}

    @app.get("/v1/messages/batches/{batch_id}", dependencies=bearer)
    async def retrieve(batch_id: str, request: Request) -> Any:
        return view(await asyncio.to_thread(batch_or_404, batch_id), base(request))

    @app.get("/v1/messages/batches/{batch_id}/results", dependencies=bearer)
    async def results(batch_id: str) -> Any:
        b = await asyncio.to_thread(batch_or_404, batch_id)
        path = batches._results_path(batch_id)
        if b["status"] not in _ENDED or not path.exists():
            raise APIError(400, f"message batch {batch_id} has not ended: its results are not ready", "message_batch_id")
        data = await asyncio.to_thread(path.read_bytes)
        return Response(data, media_type="application/x-jsonl")

    @app.post("/v1/messages/batches/{batch_id}/cancel", dependencies=bearer)
    async def cancel(batch_id: str, request: Request) -> Any:
        await asyncio.to_thread(batch_or_404, batch_id)
        return view(await asyncio.to_thread(batches.cancel, batch_id), base(request))

    @app.delete("/v1/messages/batches/{batch_id}", dependencies=bearer)
    async def delete(batch_id: str) -> Any:
        b = await asyncio.to_thread(batch_or_404, batch_id)
        if b["status"] not in _ENDED:
            raise APIError(400, f"message batch {batch_id} is still processing: cancel it and wait for it to end",
                           "message_batch_id")
        await asyncio.to_thread(service.ledger.delete_object, BATCHES, batch_id)
        for p in (batches._results_path(batch_id), batches._inline_path(batch_id)):
            p.unlink(missing_ok=True)
        return {"id": batch_id, "type": "message_batch_deleted"}
