"""What API adapters (openai, anthropic, a third party's HTTP teacher) share: the async engine.

An adapter subclasses ``ApiTeacher`` and implements ``make_client`` (its SDK over a given httpx
client) and ``call`` (one request, raising on failure). Batches then run on the engine
(``potstill.teachers.api.engine``: concurrency, RPM/TPM limits that follow the server's headers,
a budget cap, retry counting), and single requests on one long-lived ``ApiSession``.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from potstill.config import GenerateConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, RunStats, Teacher


class ApiTeacher(Teacher):
    """A teacher behind an HTTP API: batches on the async engine, single requests on one session."""

    supports_samples = True
    remote = True

    def __init__(self, cfg: TeacherConfig, task: Task):
        super().__init__(cfg, task)
        if not cfg.model:
            raise PotstillError(f"teacher.model is required for an {self.type} teacher")
        if cfg.logprobs and not self.supports_logprobs:
            raise PotstillError(f"teacher.logprobs: {self.logprobs_refusal}; set it to 0")
        self._key: str | None = None
        self._session: Any = None
        self._session_lock = threading.Lock()

    #: Why ``teacher.logprobs`` is refused when ``supports_logprobs`` is False.
    logprobs_refusal = "this API returns no log-probabilities"

    def make_client(self, http_client: Any) -> Any:
        """The SDK's async client over ``http_client`` (reads the key here, never earlier)."""
        raise NotImplementedError

    async def call(self, client: Any, request: dict[str, Any]) -> Response:
        """One request (with its n samples); raises on failure after the SDK's retries."""
        raise NotImplementedError

    def estimate_tokens(self, request: dict[str, Any]) -> int:
        """Tokens a request may use, for the TPM bucket and the budget: ~4 characters a token."""
        chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
        return chars // 4 + 4 + int(request.get("max_tokens", 0)) * int(request.get("n", 1))

    def secrets(self) -> list[str]:
        """Strings never to show in an error (the key)."""
        return [self._key or ""]

    def http_module(self) -> Any:
        """The httpx-compatible package the SDK takes clients from (httpx; newer SDKs: httpx2)."""
        import httpx

        return httpx

    def run(self, requests: list[dict[str, Any]], on_result: OnResult, stats: RunStats | None = None,
            gcfg: GenerateConfig | None = None) -> None:
        from potstill.teachers.api.engine import run_requests

        if requests:
            asyncio.run(run_requests(self, enumerate(requests), on_result, gcfg or GenerateConfig(prices={}),
                                     stats if stats is not None else RunStats()))

    def submit(self, request: dict[str, Any]) -> "Future[Response]":
        from potstill.teachers.api.engine import ApiSession

        with self._session_lock:
            if self._session is None:
                self._session = ApiSession(self)
        return self._session.submit(request)

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        super().close()
