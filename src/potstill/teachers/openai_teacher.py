"""Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama) through the official SDK.

Requests run concurrently (``teacher.concurrency``); the SDK retries 429/5xx/timeouts with
exponential backoff and jitter and honours ``Retry-After``. The key is read from the environment
variable named in ``teacher.api_key_env`` and never stored, logged or shown in an error.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from potstill.config import TeacherConfig
from potstill.errors import PotstillError, redact
from potstill.tasks import Task
from potstill.teachers.base import OnResult, Response, Teacher


def api_key(env_name: str) -> str:
    """The key from the named variable; servers that need none accept any string."""
    if not env_name:
        return "unused"
    key = os.environ.get(env_name)
    if not key:
        raise PotstillError(f"environment variable {env_name} is not set (it should hold the teacher's API key; see teacher.api_key_env)")
    return key


def label_probs_from_top_logprobs(top: list[dict[str, Any]], labels: list[str]) -> dict[str, float] | None:
    """The teacher's distribution over labels from its first token's top-k alternatives.

    A token counts for a label when the label starts with it (``"sp"`` -> ``sports``); a token
    that prefixes several labels is shared among them evenly. Renormalised over the labels seen.
    """
    mass = dict.fromkeys(labels, 0.0)
    for alt in top:
        t = str(alt.get("token", "")).strip().lower()
        if not t:
            continue
        hits = [lab for lab in labels if lab.lower().startswith(t)]
        for lab in hits:
            mass[lab] += math.exp(float(alt["logprob"])) / len(hits)
    total = sum(mass.values())
    return {k: v / total for k, v in mass.items()} if total > 0 else None


class OpenAITeacher(Teacher):
    type = "openai"

    def __init__(self, cfg: TeacherConfig, task: Task):
        super().__init__(cfg, task)
        if not cfg.model:
            raise PotstillError("teacher.model is required for an openai teacher")
        self._key: str | None = None

    def identity(self) -> dict[str, Any]:
        return {
            "type": "openai", "base_url": self.cfg.base_url or "https://api.openai.com/v1", "model": self.cfg.model,
            "instruction": self.task.cfg.instruction,
        }

    def request(self, record) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": self.task.messages(record),
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.logprobs:
            req["logprobs"] = True
            req["top_logprobs"] = self.cfg.logprobs
        return req

    def _client(self):
        from openai import AsyncOpenAI

        self._key = api_key(self.cfg.api_key_env)
        return AsyncOpenAI(
            api_key=self._key, base_url=self.cfg.base_url, max_retries=self.cfg.max_retries, timeout=self.cfg.timeout_s
        )

    def _response(self, completion: Any, latency: float) -> Response:
        choice = completion.choices[0]
        usage = completion.usage
        n_in = getattr(usage, "prompt_tokens", 0) or 0
        n_out = getattr(usage, "completion_tokens", 0) or 0
        details = getattr(usage, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
        logprobs = None
        label_probs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [
                {"token": t.token, "logprob": t.logprob,
                 "top": [{"token": a.token, "logprob": a.logprob} for a in (t.top_logprobs or [])]}
                for t in choice.logprobs.content
            ]
            if self.task.labels:
                label_probs = label_probs_from_top_logprobs(logprobs[0]["top"], self.task.labels)
        return Response(
            output=choice.message.content or "", label_probs=label_probs, logprobs=logprobs,
            input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached, latency_s=latency,
            cost_usd=self.token_cost(n_in, n_out),
        )

    async def _run(self, requests: list[dict[str, Any]], on_result: OnResult) -> None:
        client = self._client()
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(i: int, req: dict[str, Any]) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    completion = await client.chat.completions.create(**req)
                    resp = self._response(completion, time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - every failure becomes an error row, retried next run
                    msg = redact(f"{type(e).__name__}: {e}", [self._key or ""])
                    resp = Response(output=None, latency_s=time.perf_counter() - t0, error=msg[:500])
            on_result(i, resp)

        try:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        finally:
            await client.close()

    def run(self, requests: list[dict[str, Any]], on_result: OnResult) -> None:
        if requests:
            asyncio.run(self._run(requests, on_result))
