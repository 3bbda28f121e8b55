"""Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama) through the official SDK.

Requests go through ``potstill.teachers.api.engine`` (bounded concurrency, RPM/TPM limits that follow
the server's ``x-ratelimit-*`` headers, a budget cap); the SDK retries 429/5xx/timeouts/dropped
connections with exponential backoff and jitter and honours ``Retry-After``. With ``generate.n``
above 1 one request asks for n choices; top-k logprobs are kept per token, rounded. The key is read from the environment
variable named in ``teacher.api_key_env`` and never stored, logged or shown in an error.

OpenAI's reasoning models (o1, o3, o4-mini, the gpt-5 family except gpt-5-chat; any model under
``teacher.reasoning: true``, such as an Azure deployment of one) answer 400 to ``max_tokens`` ("use max_completion_tokens"), to any temperature but 1 and to logprobs. For them
the output budget goes as ``max_completion_tokens`` (it counts the hidden reasoning too) and no
temperature is sent; asking them for logprobs is one error before any call.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import replace
from typing import Any

from potstill.errors import PotstillError
from potstill.teachers.api import ApiTeacher
from potstill.teachers.base import Delta, OnDelta, Response, join_fragment, token_bytes
from potstill.teachers.reasoning import reasoning_model, reasoning_teacher  # noqa: F401 (reasoning_model: its old home)


def api_key(env_name: str, setting: str = "teacher.api_key_env") -> str:
    """The key from the named variable; servers that need none accept any string. ``setting``: the
    config field that names the variable (a judge's is ``evaluate.judge.teacher.api_key_env``)."""
    if not env_name:
        return "unused"
    key = os.environ.get(env_name)
    if not key:
        raise PotstillError(f"environment variable {env_name} is not set (it should hold the API key; see {setting})")
    problem = key_problem(key)
    if problem:
        raise PotstillError(f"environment variable {env_name} holds {problem}, which no HTTP header can carry "
                            "(the value is not shown); set it to the key alone")
    return key


def key_problem(key: str) -> str | None:
    """What keeps ``key`` out of an ``Authorization`` header, or None. httpx refuses a header value
    with a line break and cannot encode one outside ASCII, and the SDKs report either as a
    connection error on every call; spaces at the ends are the usual copy-paste slip. A key read
    from a .env file written on Windows ends in '\\r'."""
    if any(c in key for c in "\r\n"):
        return "a line break (a .env file with Windows line endings adds '\\r')"
    if key != key.strip():
        return "spaces or tabs before or after the key"
    bad = next((c for c in key if not " " <= c <= "~"), None)
    if bad is not None:
        return f"a character outside printable ASCII (U+{ord(bad):04X})"
    return None


def label_probs_from_logprobs(logprobs: list[dict[str, Any]], labels: list[str],
                              answer: str | None = None) -> dict[str, float] | None:
    """The teacher's distribution over labels from the top-k alternatives of its answer's tokens.

    A token counts for a label when the label starts with it (``"sp"`` -> ``sports``), compared as
    UTF-8 bytes (``teachers.base.token_bytes``): a byte-level tokenizer (cl100k, Llama 3, Qwen) writes
    the start of 否, of a Devanagari letter or of an emoji as a token holding only part of the
    character (OpenAI spells it ``bytes:\\xe5\\x90``, its ``bytes`` field holds ``e5 90``), and that
    token counts for the labels whose bytes begin so. A token whose bytes are unknown (vLLM and
    Ollama write part of a character as U+FFFD, losing them) counts for no label. A token that
    prefixes several labels (the first two bytes of 否, shared by 否定的 and 否認) does not decide
    between them: where it is the token the teacher wrote, its probability is shared as the next
    token's alternatives share it (looked at as far as the answer goes), otherwise evenly.
    Renormalised over the labels seen. None where no alternative names a label, or where ``answer``
    (the label the teacher answered) would get 0: a soft label contradicting the answer, which
    partial tokens the server wrote without their bytes make, would train away from it.
    """
    if not logprobs:
        return None
    probs = _label_dist(logprobs, 0, b"", labels)
    if probs is None or (answer in labels and not probs.get(answer)):
        return None
    return {lab: probs.get(lab, 0.0) for lab in labels}


def _fold(raw: bytes) -> bytes:
    """``raw`` as labels are matched: spaces at either end off, its whole characters case-folded and
    a part of a character at its end (a token split inside one) kept as bytes."""
    raw = raw.strip()  # ASCII spaces: no byte of a multi-byte character is one
    try:
        return raw.decode("utf-8").casefold().encode("utf-8")
    except UnicodeDecodeError as e:
        return raw[: e.start].decode("utf-8").casefold().encode("utf-8") + raw[e.start :]


def _label_dist(entries: list[dict[str, Any]], i: int, before: bytes, labels: list[str]) -> dict[str, float] | None:
    """The distribution over ``labels`` at token ``i``, the answer's bytes before it being ``before``."""
    mass = dict.fromkeys(labels, 0.0)
    written = token_bytes(entries[i])
    alts = entries[i].get("top") or []
    if all(token_bytes(a) != written for a in alts):
        alts = [*alts, entries[i]]  # the token the teacher wrote, outside its own top-k (sampled)
    for alt in alts:
        raw = token_bytes(alt)
        if "\ufffd".encode() in raw:  # bytes the server did not send
            continue
        key = _fold(before + raw)
        hits = [lab for lab in labels if _fold(lab.encode("utf-8")).startswith(key)]  # all, for spaces alone
        after = (_label_dist(entries, i + 1, before + raw, hits)
                 if len(hits) > 1 and raw == written and i + 1 < len(entries) else None)
        if not hits or not key and after is None:  # spaces alone name a label only by what follows them
            continue
        p = math.exp(float(alt["logprob"]))
        for lab in hits:
            mass[lab] += p * after.get(lab, 0.0) if after else p / len(hits)
    total = sum(mass.values())
    return {k: v / total for k, v in mass.items()} if total > 0 else None


class OpenAITeacher(ApiTeacher):
    type = "openai"
    base_url_env = "OPENAI_BASE_URL"
    supports_batch = True  # generate.engine batch (potstill.generate.batch_engine)
    supports_logprobs = True
    supports_tools = True
    streams = True

    def identity(self) -> dict[str, Any]:
        return {
            "type": "openai", "base_url": self.identity_url("https://api.openai.com/v1"), "model": self.cfg.model,
            "instruction": self.task.cfg.instruction,
        }

    @classmethod
    def logprobs_problem(cls, cfg: Any) -> str | None:
        if not reasoning_teacher(cfg):
            return None
        said = " (teacher.reasoning true)" if cfg.reasoning is True else ""
        return f"{cfg.model} is an OpenAI reasoning model{said}, which returns no logprobs"

    def __init__(self, cfg: Any, task: Any):
        super().__init__(cfg, task)
        self.reasoning = reasoning_teacher(cfg)
        self.stream_refused = False  # the server refused a streamed request: answers come whole
        why = self.logprobs_problem(cfg)
        if why and cfg.logprobs:
            raise PotstillError(f"teacher.logprobs {cfg.logprobs}: {why} (every request would be refused); set "
                                "teacher.logprobs 0")

    def request(self, record) -> dict[str, Any]:
        req: dict[str, Any] = {"model": self.cfg.model, "messages": self.task.messages(record)}
        if self.reasoning:  # samples at temperature 1 only; the budget includes its reasoning tokens
            req["max_completion_tokens"] = self.cfg.max_tokens
        else:
            req["temperature"] = self.cfg.temperature
            req["max_tokens"] = self.cfg.max_tokens
        if self.cfg.reasoning_effort:
            req["reasoning_effort"] = self.cfg.reasoning_effort
        if self.n > 1:
            req["n"] = self.n
        if self.cfg.logprobs:
            req["logprobs"] = True
            req["top_logprobs"] = self.cfg.logprobs
        return self.structured(self.task_tools(req))

    def tells_parallel(self) -> bool:
        # o1, o3, o3-mini, o4-mini answer 400 "Unsupported parameter: 'parallel_tool_calls'" (GPT-5 takes it);
        # a router's id of them too (OpenRouter's openai/o4-mini).
        return not re.match(r"^(ft:)?(openai/)?o\d", self.cfg.model)

    def with_tools(self, request: dict[str, Any], tools: list[dict[str, Any]], tool_choice: str | dict | None = None,
                   parallel_tool_calls: bool | None = None) -> dict[str, Any]:
        # The API's own fields: sent as the client wrote them, left out where it left them out.
        given = {"tool_choice": tool_choice, "parallel_tool_calls": parallel_tool_calls}
        return {**request, "tools": tools, **{k: v for k, v in given.items() if v is not None}}

    def with_response_format(self, request: dict[str, Any], response_format: dict[str, Any]) -> dict[str, Any] | None:
        # The API's own field: OpenAI, vLLM, llama.cpp's server and Ollama all constrain their decoding to it.
        # A regex, a choice or a grammar (vLLM's fields, served by potstill) is no response_format: asked unconstrained.
        if response_format["type"] not in ("json_object", "json_schema"):
            return None
        return {**request, "response_format": response_format}

    def label_probs(self, answer: dict[str, Any]) -> dict[str, float] | None:
        # task.labels is in no request unless the instruction lists them, so an answer cached under
        # another label set (a label renamed or added) is a cache hit: its soft label is derived
        # again from the stored top-k, never kept with the old label names.
        logprobs = answer.get("logprobs")
        if self.task.labels and logprobs:
            return self.soft_label(logprobs, answer.get("output"))
        return answer.get("label_probs")

    def soft_label(self, logprobs: list[dict[str, Any]] | None, output: str | None) -> dict[str, float] | None:
        """The soft label of an answer from its kept log-probs (``label_probs_from_logprobs``)."""
        if not (self.task.labels and logprobs):
            return None
        return label_probs_from_logprobs(logprobs, self.task.labels, self.task.parse(output or ""))

    def http_module(self) -> Any:
        # Recent openai releases build on httpx2 (their default client); a plain httpx client
        # still works there but through a slower path, so use the package the SDK itself uses.
        import openai

        if hasattr(openai, "DefaultAsyncHttpx2Client"):
            import httpx2

            return httpx2
        import httpx

        return httpx

    def make_client(self, http_client: Any) -> Any:
        from openai import AsyncOpenAI

        self._key = api_key(self.cfg.api_key_env, self.key_setting)
        return AsyncOpenAI(api_key=self._key, base_url=self.base_url, max_retries=self.cfg.max_retries,
                           timeout=self.cfg.timeout_s, http_client=http_client)

    def _response(self, completion: Any, latency: float) -> Response:
        choices = sorted(completion.choices or [], key=lambda c: c.index)
        usage = completion.usage
        n_in, n_out, cached = usage_tokens(usage)
        if not choices:  # a proxy's filtered or cancelled generation: a 200 with nothing in it, maybe billed
            return Response(output=None, error="the server answered with no choices (an empty completion)",
                            input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached, latency_s=latency,
                            cost_usd=self.token_cost(n_in, n_out, cached))
        choice = choices[0]
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = compact_logprobs(choice.logprobs.content)
        per_sample = None
        # Any choice's, not choice 0's alone: a refused or empty choice 0 beside answered ones would
        # drop the logprobs of the sample that wins the vote (consistency.sample_logprobs reads these).
        if len(choices) > 1 and any(c.logprobs is not None and c.logprobs.content for c in choices):
            per_sample = [compact_logprobs(c.logprobs.content) if c.logprobs is not None and c.logprobs.content
                          else None for c in choices]
        cost = self.token_cost(n_in, n_out, cached)
        refusals = [c.message.refusal for c in choices if getattr(c.message, "refusal", None)
                    and not c.message.content and not c.message.tool_calls]
        if refusals and len(refusals) == len(choices):
            # A refusal comes as a 200 with no content: an error row as Anthropic's refusal is (its
            # tokens billed, its words in the error), never the answer "" (generate would keep it,
            # serve would send it). Beside answered samples (n > 1) a refused one stays "", an invalid
            # sample that never wins the vote: an error row would have the rerun pay for all n again.
            return Response(output=None, input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached,
                            latency_s=latency, cost_usd=cost, error=f"refusal: {refusals[0]}"[:500],
                            error_code="refusal", reasoning_tokens=reasoning_tokens(usage))
        return Response(
            output=choice.message.content or "", label_probs=self.soft_label(logprobs, choice.message.content),
            logprobs=logprobs,
            samples=[c.message.content or "" for c in choices] if len(choices) > 1 else None,
            sample_logprobs=per_sample,
            input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached, latency_s=latency,
            reasoning_tokens=reasoning_tokens(usage),
            cost_usd=cost, stop_reason=choice.finish_reason if len(choices) == 1 else [c.finish_reason for c in choices],
            tool_calls=[c.model_dump(mode="json", exclude_none=True) for c in choice.message.tool_calls]
            if choice.message.tool_calls else None,
        )

    async def call(self, client: Any, request: dict[str, Any], on_delta: OnDelta | None = None) -> Response:
        t0 = time.perf_counter()
        if on_delta is not None and not self.stream_refused:
            import openai

            try:
                return await self._streamed(client, request, on_delta, t0)
            except openai.BadRequestError as e:
                if "stream" not in str(e).lower():
                    raise
                # A server that refuses streams or stream_options (an older vLLM, a proxy) answered
                # before writing anything: asked again whole, and never streamed again.
                self.stream_refused = True
                t0 = time.perf_counter()
        completion = await client.chat.completions.create(**request)
        return replace(self._response(completion, time.perf_counter() - t0),
                       provider_request_id=getattr(completion, "_request_id", None))

    async def _streamed(self, client: Any, request: dict[str, Any], on_delta: OnDelta, t0: float) -> Response:
        """The answer as server-sent chunks, each piece handed to ``on_delta`` as it comes (its text,
        its tokens' log-probabilities where asked, its tool calls' fragments), with its usage in the
        last chunk (``stream_options.include_usage``: OpenAI, vLLM, llama.cpp's server and Ollama send
        it). The Response is the unstreamed one's: text, log-probs, tool calls, tokens, cost, stop."""
        stream = await client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        if "text/event-stream" not in stream.response.headers.get("content-type", ""):
            # A server that ignores stream answered whole, in JSON: read as the unstreamed answer
            # (asking again would pay twice).
            from openai.types.chat import ChatCompletion

            try:
                body = await stream.response.aread()
            finally:
                await stream.close()
            return replace(self._response(ChatCompletion.model_validate_json(body), time.perf_counter() - t0),
                           provider_request_id=stream.response.headers.get("x-request-id"))
        parts: list[str] = []
        refusal: list[str] = []
        logprobs: list[dict[str, Any]] = []
        calls: dict[int, dict[str, Any]] = {}  # by index: id, name, the arguments so far
        finish, usage = None, None
        try:
            async for chunk in stream:
                usage = chunk.usage or usage
                for c in chunk.choices or []:
                    if c.index:
                        continue
                    text = c.delta.content or ""
                    lps = compact_logprobs(c.logprobs.content) if c.logprobs is not None and c.logprobs.content else None
                    fragments = [f.model_dump(mode="json", exclude_none=True) for f in c.delta.tool_calls or []]
                    for f in fragments:
                        join_fragment(calls, f)
                    parts.append(text)
                    logprobs.extend(lps or [])
                    if text or lps or fragments:
                        on_delta(Delta(text, lps, fragments or None))
                    if getattr(c.delta, "refusal", None):
                        refusal.append(c.delta.refusal)
                    finish = c.finish_reason or finish
        finally:
            await stream.close()
        n_in, n_out, cached = usage_tokens(usage)
        # What the answer cost and which request it was, in either outcome below.
        paid = dict(input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached,
                    reasoning_tokens=reasoning_tokens(usage), latency_s=time.perf_counter() - t0, cost_usd=self.token_cost(n_in, n_out, cached),
                    provider_request_id=stream.response.headers.get("x-request-id"))
        output = "".join(parts)
        if refusal and not output and not calls:  # as _response: a refusal is an error row, never the answer ""
            return Response(output=None, error=f"refusal: {''.join(refusal)}"[:500], error_code="refusal", **paid)
        if finish is None:
            cut = "the teacher's stream ended before its answer did (no finish_reason)"
            if usage is None:  # nothing says what the provider billed, if anything
                raise ConnectionError(cut)
            # Its usage came, so the provider billed the answer: an error row with what was paid (as a
            # refusal's), worded as ``send`` words the exception, so the ledger is the bill.
            return Response(output=None, error=f"ConnectionError: {cut}", **paid)
        tool_calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                      for _, c in sorted(calls.items())] or None
        return Response(output=output, logprobs=logprobs or None, label_probs=self.soft_label(logprobs, output),
                        tool_calls=tool_calls, stop_reason=finish, **paid)


def usage_tokens(usage: Any) -> tuple[int, int, int]:
    """A completion's (or a stream's last chunk's) usage as input, output and cached input tokens;
    zeros where the server sent none."""
    details = getattr(usage, "prompt_tokens_details", None)
    return (getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0,
            (getattr(details, "cached_tokens", 0) or 0) if details else 0)


def reasoning_tokens(usage: Any) -> int | None:
    """The hidden reasoning tokens in a usage's output tokens (``completion_tokens_details``), or None
    where the server says nothing of them."""
    details = getattr(usage, "completion_tokens_details", None)
    n = getattr(details, "reasoning_tokens", None) if details else None
    return n if isinstance(n, int) and n > 0 else None


def _kept(t: Any) -> dict[str, Any]:
    out = {"token": t.token, "logprob": round(float(t.logprob), 4)}
    raw = getattr(t, "bytes", None)
    # Only where the text does not spell the bytes (part of a character split across tokens, which
    # OpenAI escapes and vLLM reports as U+FFFD): training maps tokens by their bytes (train/batching.py).
    if raw is not None and bytes(raw) != t.token.encode("utf-8", "surrogatepass"):
        out["bytes"] = list(raw)
    return out


def compact_logprobs(content: Any) -> list[dict[str, Any]]:
    """Per output token: its text, logprob and top-k alternatives, logprobs rounded to 1e-4 nats,
    and ``bytes`` where the text does not spell them (``teachers.base.token_bytes``).

    Rounding to 4 decimals changes a probability by at most 0.005% (relative) and makes each
    number ~7 characters instead of ~20, which is most of a record's size at top-20.
    """
    return [{**_kept(t), "top": [_kept(a) for a in (t.top_logprobs or [])]} for t in content]
