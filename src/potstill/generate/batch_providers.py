"""The two provider batch APIs behind one small adapter: OpenAI's Batch API and Anthropic's Message Batches.

Both go through the official SDKs (sync clients: a batch engine waits on the provider, not on
sockets). Each request carries ``custom_id`` = its ledger request hash, so a results line
finds its request whatever order it comes back in. An adapter knows how to send a batch, find
one it sent before a crash (``find_file`` / ``find_batch``), read its status, stream its result
lines and turn one line into a ``Response`` or an item error; the engine
(``potstill.generate.batch_engine``) owns the ledger and the retry policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from potstill.errors import PotstillError
from potstill.teachers.base import Response
from potstill.teachers.openai_teacher import api_key

MB = 1024 * 1024


@dataclass
class BatchStatus:
    """What one status check of a batch says, in the provider-neutral terms the engine uses."""

    state: str  # the provider's own word (validating, in_progress, ended, expired, ...)
    ended: bool  # nothing more will change: its results can be read
    done: int = 0
    failed: int = 0
    expired: int = 0
    total: int = 0
    sources: list[str] = field(default_factory=list)  # where the result lines are (file ids or the batch id)
    problem: str | None = None  # the whole batch was refused (bad file, quota): nothing in it was billed
    quota: bool = False


@dataclass
class Item:
    """One results line: an answer, or an error that is final or worth one more try."""

    custom_id: str
    response: Response | None = None
    error: str | None = None
    retry: bool = False  # expired, cancelled or a server-side failure: resubmit alone


def _status_of(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None)


def is_quota(exc: Exception) -> bool:
    """A 429 at submission (spend or enqueued-token limit): more retries only repeat it."""
    return _status_of(exc) == 429 or any(w in str(exc) for w in ("insufficient_quota", "token_limit_exceeded"))


def is_not_found(exc: Exception) -> bool:
    return _status_of(exc) == 404


class OpenAIBatches:
    """``/v1/chat/completions`` requests as a JSONL file, one batch per file, 24 h window."""

    name = "openai"
    uses_files = True
    # The Batch API's limits per input file.
    max_requests = 50_000
    max_bytes = 200 * MB

    def __init__(self, teacher: Any):
        from openai import OpenAI

        self.teacher = teacher
        cfg = teacher.cfg
        teacher._key = api_key(cfg.api_key_env, teacher.key_setting)
        # Uploads and result files can be hundreds of MB: give them more time than one chat call.
        self.client = OpenAI(api_key=teacher._key, base_url=teacher.base_url, max_retries=cfg.max_retries,
                             timeout=max(cfg.timeout_s, 600.0))

    def line(self, h: str, request: dict[str, Any]) -> bytes:
        body = {"custom_id": h, "method": "POST", "url": "/v1/chat/completions", "body": request}
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()

    def find_file(self, key: str) -> str | None:
        for f in self.client.files.list(purpose="batch"):
            if f.filename == f"{key}.jsonl":
                return f.id
        return None

    def upload(self, key: str, data: bytes) -> str:
        return self.client.files.create(file=(f"{key}.jsonl", data, "application/jsonl"), purpose="batch").id

    def find_batch(self, key: str, row: dict[str, Any], claimed: set[str]) -> str | None:
        for b in self.client.batches.list(limit=100):  # newest first
            if (b.metadata or {}).get("potstill_key") == key and b.id not in claimed:
                return b.id
            if b.created_at < row["created_at"] - 3600:
                return None
        return None

    def create(self, key: str, file_id: str | None, lines: list[bytes]) -> str:
        return self.client.batches.create(input_file_id=file_id or "", endpoint="/v1/chat/completions",
                                          completion_window="24h", metadata={"potstill_key": key}).id

    def status(self, batch_id: str) -> BatchStatus:
        b = self.client.batches.retrieve(batch_id)
        c = b.request_counts
        done, failed, total = (c.completed, c.failed, c.total) if c else (0, 0, 0)
        st = BatchStatus(state=b.status, ended=b.status in ("completed", "expired", "failed", "cancelled"),
                         done=done, failed=failed, total=total,
                         expired=max(0, total - done - failed) if b.status in ("expired", "cancelled") else 0,
                         sources=[f for f in (b.output_file_id, b.error_file_id) if f])
        if b.status == "failed":
            errs = (b.errors.data if b.errors and b.errors.data else [])
            st.problem = "; ".join(f"{e.code}: {e.message}" for e in errs[:2]) or "failed with no reason given"
            st.quota = any(e.code in ("token_limit_exceeded", "insufficient_quota") for e in errs)
        return st

    def lines(self, source: str) -> Iterator[str]:
        with self.client.files.with_streaming_response.content(source) as r:
            yield from r.iter_lines()

    def parse(self, line: str) -> Item:
        from openai.types.chat import ChatCompletion

        obj = json.loads(line)
        cid = obj["custom_id"]
        resp, err = obj.get("response") or {}, obj.get("error") or {}
        code = resp.get("status_code")
        if code == 200 and not err:
            return Item(cid, response=self.teacher._response(ChatCompletion.model_validate(resp["body"]), 0.0))
        body_err = (resp.get("body") or {}).get("error") or {}
        kind = err.get("code") or body_err.get("code") or body_err.get("type") or f"HTTP {code}"
        msg = err.get("message") or body_err.get("message") or ""
        retry = kind in ("batch_expired", "batch_cancelled") or (code is not None and (code >= 500 or code == 429))
        return Item(cid, error=f"{kind}: {msg}"[:300], retry=retry)


class AnthropicBatches:
    """Message Batches: the requests go in the create call itself (no file), results as a JSONL stream."""

    name = "anthropic"
    uses_files = False
    max_requests = 100_000
    max_bytes = 256 * MB
    #: How far a batch's creation time may sit before our row's (clock skew) and still be ours.
    skew_s = 120.0

    def __init__(self, teacher: Any):
        from anthropic import Anthropic

        self.teacher = teacher
        cfg = teacher.cfg
        env = cfg.api_key_env if cfg.api_key_env != "OPENAI_API_KEY" else "ANTHROPIC_API_KEY"
        teacher._key = api_key(env, teacher.key_setting)
        self.client = Anthropic(api_key=teacher._key, base_url=teacher.base_url, max_retries=cfg.max_retries,
                                timeout=max(cfg.timeout_s, 600.0))

    def line(self, h: str, request: dict[str, Any]) -> bytes:
        return (json.dumps({"custom_id": h, "params": request}, separators=(",", ":")) + "\n").encode()

    def find_file(self, key: str) -> str | None:
        return None

    def upload(self, key: str, data: bytes) -> str:
        raise NotImplementedError  # no files: requests go in the create call

    def find_batch(self, key: str, row: dict[str, Any], claimed: set[str]) -> str | None:
        # Message Batches carry no metadata, so ours is an unclaimed batch of the same size created
        # after our row was committed (the row is written before the create call): the earliest,
        # as another project on the same key may have sent one since. The engine still checks its
        # results for our custom_ids before taking them (``BatchRun._disown``).
        found = None
        for b in self.client.messages.batches.list(limit=100):  # newest first
            if b.created_at.timestamp() < row["created_at"] - self.skew_s:
                break
            c = b.request_counts
            size = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if b.id not in claimed and size == row["requests"]:
                found = b.id
        return found

    def create(self, key: str, file_id: str | None, lines: list[bytes]) -> str:
        return self.client.messages.batches.create(requests=[json.loads(x) for x in lines]).id

    def status(self, batch_id: str) -> BatchStatus:
        b = self.client.messages.batches.retrieve(batch_id)
        c = b.request_counts
        return BatchStatus(state=b.processing_status, ended=b.processing_status == "ended", done=c.succeeded,
                           failed=c.errored, expired=c.expired + c.canceled,
                           total=c.processing + c.succeeded + c.errored + c.canceled + c.expired,
                           sources=[batch_id] if b.processing_status == "ended" and b.results_url else [])

    def lines(self, source: str) -> Iterator[str]:
        with self.client.messages.batches.with_streaming_response.results(source) as r:
            yield from r.iter_lines()

    def parse(self, line: str) -> Item:
        from anthropic.types import Message

        obj = json.loads(line)
        cid = obj["custom_id"]
        res = obj["result"]
        kind = res["type"]
        if kind == "succeeded":
            return Item(cid, response=self.teacher._response([Message.model_validate(res["message"])], 0.0))
        if kind in ("expired", "canceled"):
            return Item(cid, error=kind, retry=True)
        err = res.get("error") or {}
        err = err.get("error", err)  # the error object comes wrapped in {"type": "error", "error": {...}}
        etype = err.get("type", "error")
        final = etype in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error")
        return Item(cid, error=f"{etype}: {err.get('message', '')}"[:300], retry=not final)


def samples_problem(teacher_type: str, n: int) -> str | None:
    """Why the batch API of ``teacher_type`` cannot take ``generate.n`` samples, or None."""
    if teacher_type == "anthropic" and n > 1:  # a batch request is one Messages request: one sample
        return (f"generate.n {n} with generate.engine batch: Anthropic batches take one sample per request; "
                "use generate.n 1, or generate.engine async (n requests per input)")
    return None


def provider_for(teacher: Any) -> OpenAIBatches | AnthropicBatches:
    if teacher.type == "openai":
        return OpenAIBatches(teacher)
    if teacher.type == "anthropic":
        return AnthropicBatches(teacher)
    raise PotstillError(f"generate.engine batch needs an openai or anthropic teacher, not {teacher.type!r}")
