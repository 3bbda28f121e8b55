"""Anthropic's Messages API through the official ``anthropic`` SDK.

The task's instruction becomes the ``system`` parameter (the Messages API takes no system turn);
usage maps to the ledger as input tokens (``input_tokens`` plus cache reads and writes), cached
input tokens (``cache_read_input_tokens``, billed at the cached price) and output tokens; cache
writes (``cache_creation_input_tokens``, billed at 1.25x input, of which those kept an hour,
``cache_creation.ephemeral_1h_input_tokens``, at 2x) are kept in the response for pricing. The stop
reason is kept: ``end_turn`` and ``stop_sequence`` are answers, ``max_tokens`` is an answer
that was cut (kept, flagged), ``refusal`` is an error row. The API has no ``n`` and no logprobs:
``generate.n`` samples are n requests, and asking for logprobs is refused up front.
The SDK retries 429/5xx/529/timeouts/dropped connections with backoff and jitter.
A chat with OpenAI tool turns is sent in the Messages API's terms (``_tool_turns``): an assistant's
``tool_calls`` become ``tool_use`` blocks, ``tool`` messages ``tool_result`` blocks of a user turn.
A client's function tools (``with_tools``) become tools with an ``input_schema`` and its
``tool_choice`` the API's (auto, required -> any, a named function -> tool); an answer's
``tool_use`` blocks come back as OpenAI ``tool_calls`` (arguments as a JSON string).
``teacher.thinking_budget`` turns on extended thinking (``thinking: {type: enabled, budget_tokens}``,
no temperature); ``thinking`` and ``redacted_thinking`` blocks never become part of an answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

from potstill.errors import PotstillError, redact
from potstill.records import INSTRUCTION_ROLES, content_text
from potstill.teachers.api import ApiTeacher
from potstill.teachers.base import Delta, OnDelta, Response
from potstill.teachers.openai_teacher import api_key


def _create_params(client: Any) -> set[str]:
    import inspect

    return set(inspect.signature(client.messages.create).parameters)


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as a ``tool_use`` block: its arguments (a JSON string) parsed to the
    object ``input`` must be; arguments that are not a JSON object are kept whole under ``arguments``."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        parsed = None
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"),
            "input": parsed if isinstance(parsed, dict) else {"arguments": args}}


def _tool_turns(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat turns as Messages API turns. The API takes roles user and assistant only, and
    wants each assistant ``tool_use`` answered by a ``tool_result`` at the start of the next turn:
    so the tool messages after a tool call become one user turn of tool_result blocks, and a user
    message right after them joins that turn as text after the results (the API's order)."""
    out: list[dict[str, Any]] = []

    def results_turn() -> list[dict[str, Any]] | None:  # the blocks of a user turn of tool results, if last
        last = out[-1] if out else {}
        blocks = last.get("content")
        ok = last.get("role") == "user" and isinstance(blocks, list) and blocks and blocks[0].get("type") == "tool_result"
        return blocks if ok else None

    for m in msgs:
        role, text = m.get("role"), content_text(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            blocks = [{"type": "text", "text": text}] if text else []  # the API refuses an empty text block
            out.append({"role": "assistant", "content": blocks + [_tool_use(c) for c in m["tool_calls"]]})
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id"), **({"content": text} if text else {})}
            blocks = results_turn()
            if blocks is not None and blocks[-1].get("type") == "tool_result":
                blocks.append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif role == "user" and (blocks := results_turn()) is not None:
            if text:
                blocks.append({"type": "text", "text": text})
        else:
            out.append({"role": role, "content": m["content"]})
    return out


def _declared_tools(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for a chat holding tool blocks: the API refuses tool_use and
    tool_result blocks in a request that defines no tools, and the chat carries only the calls'
    names (the client's definitions stay with it). Each called tool is declared with an open input
    schema, and ``tool_choice: none`` keeps the teacher answering in text, the answer distilled."""
    names = dict.fromkeys(b["name"] for m in turns if isinstance(m.get("content"), list)
                          for b in m["content"] if b.get("type") == "tool_use" and b.get("name"))
    if not names:  # tool results alone (their call cut from the chat): one placeholder declaration
        names = {"tool": None}
    return {"tools": [{"name": n, "description": "A tool this conversation called earlier.",
                       "input_schema": {"type": "object"}} for n in names],
            "tool_choice": {"type": "none"}}


def _input_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as a Messages API tool: its parameters schema is the ``input_schema``
    (an object schema, as the API requires; a function without parameters takes any object)."""
    fn = tool["function"]
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    return {"name": fn["name"], **({"description": fn["description"]} if fn.get("description") else {}),
            "input_schema": schema if "type" in schema else {"type": "object", **schema}}


def _tool_choice(choice: str | dict | None, parallel: bool | None) -> dict[str, Any]:
    """OpenAI's ``tool_choice`` in the Messages API's terms; OpenAI's default with tools is auto."""
    if isinstance(choice, dict):
        out: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    else:
        out = {"type": {"required": "any", "none": "none"}.get(choice or "auto", "auto")}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _tool_calls(message: Any) -> list[dict[str, Any]] | None:
    """A Messages answer's ``tool_use`` blocks as OpenAI tool calls, or None where it has none."""
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
             for b in message.content if getattr(b, "type", "") == "tool_use"]
    return calls or None


# A Messages usage's input-side counts, taken from the stream's events (the 1-hour split of the cache
# writes, cache_creation, as the SDK kept it).
_INPUT_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


async def _streamed(client: Any, req: dict[str, Any], on_delta: OnDelta) -> tuple[Any, list[str]]:
    """A Messages answer streamed, each piece handed to ``on_delta`` as it comes: text, and each
    ``tool_use`` block as an OpenAI tool call (its id and name where it begins, then its input's
    JSON as the API writes it; ``{}`` for a call with no input). The SDK's stream helper gathers
    the events into the Message ``create`` would have returned; with it, each call's arguments as
    they were streamed."""
    arguments: dict[int, str] = {}  # by content block: the tool_use blocks' JSON so far
    calls: dict[int, int] = {}  # content block -> its tool call's index

    def fragment(block: int, call_id: str | None = None, **function: str) -> Delta:
        call: dict[str, Any] = {"index": calls[block], "function": function}
        if call_id is not None:  # where the call begins
            call.update(id=call_id, type="function")
        return Delta(tool_calls=[call])

    # The input side of the usage as the events gave it. message_delta's counts are cumulative and
    # final: an endpoint that totals usage at the end of the stream sends 0 or an estimate in
    # message_start and the count only there (Anthropic sends both). The SDK releases that read only
    # output_tokens there (0.40, the oldest potstill accepts) kept message_start's: input priced as free.
    usage: dict[str, int] = {}
    # message_start's count of the prompt (its input tokens, cache reads and writes, as the ledger sums
    # them), handed on with the first piece: serve's own message_start carries it (``Delta.input_tokens``).
    start: list[int] = []

    def note(counts: Any) -> None:
        for name in _INPUT_USAGE:
            value = getattr(counts, name, None)  # an older SDK's message_delta keeps it as an extra field
            if isinstance(value, int):
                usage[name] = value

    def hand_on(delta: Delta) -> None:
        on_delta(replace(delta, input_tokens=start.pop()) if start else delta)

    async with client.messages.stream(**req) as stream:
        async for event in stream:
            kind = getattr(event, "type", "")
            if kind == "message_start":
                note(getattr(event.message, "usage", None))
                if "input_tokens" in usage:
                    start[:] = [sum(usage.get(name, 0) for name in _INPUT_USAGE)]
            elif kind == "message_delta":
                note(getattr(event, "usage", None))
            elif kind == "content_block_start" and getattr(event.content_block, "type", "") == "tool_use":
                calls[event.index] = len(calls)
                arguments[event.index] = ""
                hand_on(fragment(event.index, event.content_block.id, name=event.content_block.name, arguments=""))
            elif kind == "content_block_delta":
                d = event.delta
                if d.type == "text_delta" and d.text:
                    hand_on(Delta(text=d.text))
                elif d.type == "input_json_delta" and d.partial_json and event.index in calls:
                    arguments[event.index] += d.partial_json
                    hand_on(fragment(event.index, arguments=d.partial_json))
            elif kind == "content_block_stop" and event.index in calls and not arguments[event.index]:
                arguments[event.index] = "{}"  # a call with no input: json.dumps({}), as unstreamed
                hand_on(fragment(event.index, arguments="{}"))
        msg = await stream.get_final_message()
        for name, value in usage.items():
            setattr(msg.usage, name, value)
        if getattr(msg, "_request_id", None) is None:
            msg._request_id = stream.response.headers.get("request-id")
    return msg, [arguments[b] for b in sorted(calls, key=calls.get)]


class AnthropicTeacher(ApiTeacher):
    type = "anthropic"
    base_url_env = "ANTHROPIC_BASE_URL"
    supports_batch = True  # generate.engine batch (potstill.generate.batch_engine)
    supports_tools = True
    streams = True
    logprobs_refusal = "the Anthropic Messages API returns no log-probabilities"
    supports_thinking = True

    def __init__(self, cfg: Any, task: Any):
        super().__init__(cfg, task)
        # Refused, not dropped: it was sent nowhere, and the run looked like a reasoning one (preflight
        # projected all of max_tokens) while Claude answered without thinking.
        if cfg.reasoning_effort:
            raise PotstillError(f"teacher.reasoning_effort {cfg.reasoning_effort}: the Anthropic Messages API takes no "
                                "effort; set teacher.thinking_budget (tokens of extended thinking, at least 1024, "
                                "below teacher.max_tokens) instead, or unset it")
        budget = cfg.thinking_budget
        if budget and cfg.max_tokens <= budget:  # the API's 400 for every request, said once here
            raise PotstillError(f"teacher.max_tokens {cfg.max_tokens} must exceed teacher.thinking_budget {budget}: "
                                "Claude's thinking counts in max_tokens; raise it to the budget plus the answer's tokens")

    def identity(self) -> dict[str, Any]:
        return {"type": "anthropic", "base_url": self.identity_url("https://api.anthropic.com"),
                "model": self.cfg.model, "instruction": self.task.cfg.instruction}

    def request(self, record) -> dict[str, Any]:
        msgs = self.task.messages(record)
        # A developer message is OpenAI's newer name for a system one; the Messages API has user and
        # assistant turns only, the instruction in ``system``.
        system = "\n\n".join(content_text(m["content"]) for m in msgs if m.get("role") in INSTRUCTION_ROLES)
        turns = [m for m in msgs if m.get("role") not in INSTRUCTION_ROLES]
        tools = any(m.get("role") == "tool" or m.get("tool_calls") for m in turns)
        req: dict[str, Any] = {
            "model": self.cfg.model, "max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature,
            # A chat without tool turns as it always was: its request (and so its ledger hash) is unchanged.
            "messages": _tool_turns(turns) if tools else [{"role": m["role"], "content": m["content"]} for m in turns],
        }
        if tools:
            req.update(_declared_tools(req["messages"]))
        if self.cfg.thinking_budget:  # thinking samples at temperature 1 only: none is sent
            req["thinking"] = {"type": "enabled", "budget_tokens": self.cfg.thinking_budget}
            del req["temperature"]
        if system:
            req["system"] = system
        if self.n > 1:
            req["n"] = self.n  # not sent: ``call`` turns it into n requests
        return self.structured(self.task_tools(req))

    def with_tools(self, request: dict[str, Any], tools: list[dict[str, Any]], tool_choice: str | dict | None = None,
                   parallel_tool_calls: bool | None = None) -> dict[str, Any]:
        declared = [_input_tool(t) for t in tools]
        names = {t["name"] for t in declared}
        # Tools the chat called earlier that the client no longer lists stay declared (``_declared_tools``):
        # the API refuses tool_use blocks naming an undeclared tool.
        earlier = [t for t in request.get("tools", []) if t["name"] not in names]
        return {**request, "tools": declared + earlier, "tool_choice": _tool_choice(tool_choice, parallel_tool_calls)}

    def with_response_format(self, request: dict[str, Any], response_format: dict[str, Any]) -> dict[str, Any] | None:
        # Claude's structured outputs take a JSON schema (output_config.format); the Messages API has no
        # plain JSON mode, so json_object, or a json_schema without a schema, goes unconstrained.
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is None:
            return None
        config = {**request.get("output_config", {}), "format": {"type": "json_schema", "schema": schema}}
        return {**request, "output_config": config}

    def http_module(self) -> Any:
        # anthropic>=1.x builds on httpx2 and refuses httpx clients; older releases use httpx.
        try:
            import httpx2

            from anthropic import _base_client

            if "httpx2" in getattr(_base_client, "__dict__", {}) or hasattr(_base_client, "_reject_httpx_object"):
                return httpx2
        except ImportError:
            pass
        import httpx

        return httpx

    def make_client(self, http_client: Any) -> Any:
        from anthropic import AsyncAnthropic

        env = self.cfg.api_key_env if self.cfg.api_key_env != "OPENAI_API_KEY" else "ANTHROPIC_API_KEY"
        self._key = api_key(env, self.key_setting)
        return AsyncAnthropic(api_key=self._key, base_url=self.base_url, max_retries=self.cfg.max_retries,
                              timeout=self.cfg.timeout_s, http_client=http_client)

    def error_code(self, e: Exception) -> str | None:
        """OpenAI's code for Anthropic's refusal of a chat over the model's context: the Messages
        API sends a 400 'prompt is too long: N tokens > M maximum' with no code of its own."""
        body = getattr(e, "body", None)
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        if getattr(e, "status_code", None) == 400 and isinstance(message, str) and message.startswith("prompt is too long"):
            return "context_length_exceeded"
        return super().error_code(e)

    def http_requests(self, request: dict[str, Any]) -> int:
        return int(request.get("n", 1))  # generate.n samples are n Messages requests

    async def call(self, client: Any, request: dict[str, Any], on_delta: OnDelta | None = None) -> Response:
        req = dict(request)
        n = int(req.pop("n", 1))
        # Fields this SDK release has no argument for (recent ones dropped ``temperature``) go in the body as-is.
        known = _create_params(client)
        extra = {k: req.pop(k) for k in list(req) if k not in known}
        if extra:
            req["extra_body"] = extra
        if on_delta is not None and n == 1:
            t0 = time.perf_counter()
            msg, arguments = await _streamed(client, req, on_delta)
            r = self._response([msg], time.perf_counter() - t0)
            for call, args in zip(r.tool_calls or [], arguments):
                call["function"]["arguments"] = args  # as the client got them, not as json.dumps writes them
            return r
        # The engine holds min(n, teacher.concurrency) of its slots for them: no more go out at once.
        slots = asyncio.Semaphore(self.cfg.concurrency)

        async def sample() -> Any:
            async with slots:
                return await client.messages.create(**req)

        t0 = time.perf_counter()
        got = await asyncio.gather(*(sample() for _ in range(n)), return_exceptions=True)
        failed = [g for g in got if isinstance(g, BaseException)]
        if not failed:
            return self._response(got, time.perf_counter() - t0)
        answered = [g for g in got if not isinstance(g, BaseException)]
        if not answered or any(not isinstance(e, Exception) for e in failed):
            raise failed[0]
        # The samples answered beside a failed one are billed all the same: an error row that holds
        # their tokens (and so their cost) keeps the ledger equal to the bill, and their texts, so a
        # rerun asks only for the missing ones (generate: Ledger.partial, consistency.rest_request).
        paid = self._response(answered, time.perf_counter() - t0)
        error = redact(f"{type(failed[0]).__name__}: {failed[0]}", self.secrets())[:500]
        kept = {}
        if paid.ok:  # not beside a refusal: that answer is an error whatever the others say
            kept = dict(samples=paid.samples or [paid.output],
                        sample_tokens=paid.sample_tokens or [[paid.input_tokens, paid.output_tokens]],
                        stop_reason=paid.stop_reason if isinstance(paid.stop_reason, list) else [paid.stop_reason])
        return Response(output=None, **kept, input_tokens=paid.input_tokens, output_tokens=paid.output_tokens,
                        cached_input_tokens=paid.cached_input_tokens,
                        cache_write_input_tokens=paid.cache_write_input_tokens,
                        cache_write_1h_input_tokens=paid.cache_write_1h_input_tokens, latency_s=paid.latency_s,
                        cost_usd=paid.cost_usd,
                        error=f"{len(failed)} of {n} samples failed: {error}")

    def _response(self, msgs: list[Any], latency: float) -> Response:
        """One Response from the n Messages answering one request (the batch engine parses results with it)."""
        n = len(msgs)
        texts, n_in, n_out, cached, written, hour, stops, each = [], 0, 0, 0, 0, 0, [], []
        for m in msgs:
            texts.append("".join(getattr(b, "text", "") for b in m.content if getattr(b, "type", "") == "text"))
            u = m.usage
            read = getattr(u, "cache_read_input_tokens", 0) or 0
            write = getattr(u, "cache_creation_input_tokens", 0) or 0
            # The writes kept an hour (2x input, not 1.25x); usage without the split: all 5-minute ones.
            hour += min(write, getattr(getattr(u, "cache_creation", None), "ephemeral_1h_input_tokens", 0) or 0)
            n_in += (u.input_tokens or 0) + read + write
            cached += read
            written += write
            n_out += u.output_tokens or 0
            each.append([(u.input_tokens or 0) + read + write, u.output_tokens or 0])
            stops.append(m.stop_reason)
        tokens = dict(input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached,
                      cache_write_input_tokens=written, cache_write_1h_input_tokens=hour, latency_s=latency,
                      cost_usd=self.token_cost(n_in, n_out, cached, written, hour))
        # One request's id (the provider's request-id header); n samples are n requests: none.
        rid = getattr(msgs[0], "_request_id", None) if n == 1 else None
        if "refusal" in stops:
            return Response(output=None, error="stop_reason refusal", error_code="refusal", provider_request_id=rid,
                            **tokens)
        return Response(output=texts[0], samples=texts if n > 1 else None, sample_tokens=each if n > 1 else None,
                        stop_reason=stops[0] if n == 1 else stops, tool_calls=_tool_calls(msgs[0]),
                        provider_request_id=rid, **tokens)
