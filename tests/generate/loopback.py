"""A loopback teacher server on 127.0.0.1 that speaks the OpenAI chat-completions API and the
Anthropic Messages API, answers deterministically from the input (no model), and injects faults.

Faults, drawn per HTTP attempt from a seeded RNG: 429 with ``Retry-After``/``retry-after-ms``,
500, slow answers, and dropped responses (headers and half a body, then the connection is cut
after the answer was computed). With every rate at zero it is the zero-latency server of the
throughput benchmark: a raw asyncio HTTP/1.1 keep-alive loop, so it costs little CPU per request.
``--capacity-rps R --slots S`` models a server of finite capacity: S requests in service at once,
each taking S/R seconds, so it sustains R answers per second; 429s are answered at once (with
``--retry-after-s`` set, with that ``Retry-After`` alone, as many APIs send it).

It runs in its own process (``python -m tests.generate.loopback``); ``Loopback`` starts it and
reads its counters from ``GET /stats``: ``answered`` counts complete 200 answers, per request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

LABELS = ["sports", "tech", "politics", "business", "film"]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def answer_for(text: str, k: int = 0) -> str:
    """The deterministic answer; sample k disagrees with sample 0 when (h + k) % 3 == 2."""
    h = _h(text)
    i = h % len(LABELS)
    if k and (h + k) % 3 == 2:
        i = (i + 1) % len(LABELS)
    return LABELS[i]


def _user_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")


class State:
    def __init__(self, opts: argparse.Namespace):
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.answered: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.efforts: Counter[str] = Counter()  # reasoning_effort values received
        self.arrivals: list[float] = []
        self.slow_now = 0  # requests inside their slow answer right now
        self.slow_peak = 0  # the most at once: with --pslow 1, the most requests in flight the server saw
        self.window: list[float] = []  # arrival times inside the server's own RPM window
        self.slots = asyncio.Semaphore(opts.slots) if opts.capacity_rps else None


def _chat(body: dict[str, Any], reasoning_tokens: int = 0) -> dict[str, Any]:
    text = _user_text(body["messages"])
    n = int(body.get("n") or 1)
    # A reasoning model (--reasoning-tokens R) thinks R hidden tokens before its one-token answer, all
    # counted in max_completion_tokens: under R + 1 the answer is "" stopped at length, as OpenAI's is.
    thinks = reasoning_tokens if "max_completion_tokens" in body else 0
    spent = thinks and int(body["max_completion_tokens"]) < thinks + 1
    choices = []
    for k in range(n):
        ans = "" if spent else answer_for(text, k)
        choice: dict[str, Any] = {"index": k, "message": {"role": "assistant", "content": ans},
                                  "finish_reason": "length" if spent else "stop"}
        if body.get("logprobs"):
            top_k = int(body.get("top_logprobs") or 1)
            # The answer's token gets 70% of the mass, the other labels share the rest by rank.
            alts = [ans] + [lab for lab in LABELS if lab != ans]
            probs = [0.7] + [0.3 * 2 ** -(j + 1) for j in range(len(alts) - 1)]
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in zip(alts, probs)][:top_k]
            choice["logprobs"] = {"content": [{"token": ans, "logprob": math.log(0.7), "bytes": None, "top_logprobs": top}]}
        choices.append(choice)
    n_in = len(json.dumps(body["messages"])) // 4 + 1
    thought = min(thinks, int(body.get("max_completion_tokens") or 0)) * n
    n_out = thought + (0 if spent else n)
    usage: dict[str, Any] = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
    if thinks:
        usage["completion_tokens_details"] = {"reasoning_tokens": thought}
    return {"id": "chatcmpl-" + hashlib.md5(text.encode()).hexdigest()[:12], "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "m"), "choices": choices, "usage": usage}


# OpenAI's reasoning models (o1, o3, o4-mini, the gpt-5 family but gpt-5-chat) answer 400 to
# max_tokens, to a temperature other than 1 and to logprobs, with these bodies.
REASONING = re.compile(r"^(ft:)?(o\d|gpt-5(?!-chat))")


def _reasoning_refusal(body: dict[str, Any], alias: str = "") -> dict[str, Any] | None:
    """OpenAI's 400 for a reasoning model's request, the model named by its id or by ``alias`` (a
    regex: an Azure deployment or a proxy's name for one, --reasoner)."""
    model = str(body.get("model", ""))
    if re.search(r"-pro$|codex", model):  # served on the Responses API only
        return {"message": "This model is only supported in v1/responses and not in v1/chat/completions.",
                "type": "invalid_request_error", "param": "model", "code": None, "status": 404}
    if not (REASONING.match(model) or alias and re.fullmatch(alias, model)):
        if body.get("reasoning_effort"):  # a chat model
            return {"message": "Unrecognized request argument supplied: reasoning_effort",
                    "type": "invalid_request_error", "param": "reasoning_effort", "code": None}
        return None
    if "max_tokens" in body:
        return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens",
                "code": "unsupported_parameter"}
    if "temperature" in body and body["temperature"] != 1:
        return {"message": f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                "model. Only the default (1) value is supported.", "type": "invalid_request_error",
                "param": "temperature", "code": "unsupported_value"}
    if body.get("logprobs"):
        return {"message": "This model does not support logprobs.", "type": "invalid_request_error",
                "param": "logprobs", "code": "unsupported_parameter"}
    return None


def _thinking_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's 400s for extended thinking: a temperature other than 1, a max_tokens not above the budget."""
    budget = int((body.get("thinking") or {}).get("budget_tokens") or 0)
    if not budget:
        return None
    if body.get("temperature", 1) != 1:
        return {"type": "invalid_request_error", "message": "`temperature` may only be set to 1 when thinking is "
                "enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                "extended-thinking#important-considerations-when-using-extended-thinking"}
    if int(body.get("max_tokens", 0)) <= budget:
        return {"type": "invalid_request_error", "message": "`max_tokens` must be greater than "
                "`thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/"
                "build-with-claude/extended-thinking#max-tokens-and-context-window-size"}
    return None


def _messages(body: dict[str, Any]) -> dict[str, Any]:
    text = _user_text(body["messages"])
    ans = answer_for(text)
    cut = int(body.get("max_tokens", 1)) < 2
    n_in = len(json.dumps(body["messages"]) + str(body.get("system", ""))) // 4 + 1
    content: list[dict[str, Any]] = [{"type": "text", "text": ans}]
    thought = 0
    if body.get("thinking"):  # Claude thinks first: a summary of it, and a part encrypted, before the text
        thought = 40
        content[:0] = [{"type": "thinking", "thinking": "The user wants a topic; weighing it.", "signature": "c2ln"},
                       {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"}]
    return {"id": "msg_" + hashlib.md5(text.encode()).hexdigest()[:12], "type": "message", "role": "assistant",
            "model": body.get("model", "m"), "content": content,
            "stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": n_in, "output_tokens": 1 + thought, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 0}}


def _response(status: int, obj: Any, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(obj).encode()
    head = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def handle(state: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    o = state.o
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            try:
                body_bytes = await reader.readexactly(int(hdrs.get("content-length", "0")))
            except asyncio.IncompleteReadError:
                return  # the client died mid-request (a SIGKILL test)
            if method == "GET" and path == "/stats":
                writer.write(_response(200, {"answered": dict(state.answered), "faults": dict(state.faults),
                                             "reasoning_effort": dict(state.efforts), "slow_peak": state.slow_peak,
                                             "arrivals": state.arrivals if o.keep_arrivals else []}))
                await writer.drain()
                continue
            body = json.loads(body_bytes or b"{}")
            anthropic = path.endswith("/messages")
            if o.key:
                given = hdrs.get("authorization", "").removeprefix("Bearer ")
                if anthropic and "x-api-key" in hdrs:  # older anthropic SDKs send x-api-key, newer a bearer token
                    given = hdrs["x-api-key"]
                if given != o.key:
                    state.faults["401"] += 1
                    # Each refusal names its request, as a gateway's may (LiteLLM's, Azure's): no two error texts are equal.
                    writer.write(_response(401, {"error": {"message": f"invalid api key (request req_{state.faults['401']:06d})",
                                                           "type": "authentication_error"}}))
                    await writer.drain()
                    continue
            if o.no_credit:  # OpenAI's answer to every request of an account out of credit
                state.faults["429-quota"] += 1
                writer.write(_response(429, {"error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}))
                await writer.drain()
                continue
            refusal = _thinking_refusal(body) if anthropic else _reasoning_refusal(body, o.reasoner)
            if refusal:
                state.faults["400-" + refusal.get("param", "thinking")] += 1
                status = refusal.pop("status", 400)
                writer.write(_response(status, {"type": "error", "error": refusal} if anthropic else {"error": refusal}))
                await writer.drain()
                continue
            if body.get("reasoning_effort"):
                state.efforts[str(body["reasoning_effort"])] += 1
            if body.get("thinking"):
                state.efforts[f"thinking {body['thinking']['budget_tokens']}"] += 1
            now = time.monotonic()
            if o.keep_arrivals:
                state.arrivals.append(now)
            extra: dict[str, str] = {}
            if o.limit_rpm:
                # The server's own RPM: a sliding one-minute window, stated in x-ratelimit-* headers.
                state.window = [t for t in state.window if now - t < 60]
                if len(state.window) >= o.limit_rpm:
                    state.faults["429-limit"] += 1
                    reset = 60 - (now - state.window[0])
                    writer.write(_response(429, {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                                           {"retry-after": f"{reset:.3f}", "x-ratelimit-limit-requests": str(o.limit_rpm),
                                            "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": f"{reset:.3f}s"}))
                    await writer.drain()
                    continue
                state.window.append(now)
                extra = {"x-ratelimit-limit-requests": str(o.limit_rpm),
                         "x-ratelimit-remaining-requests": str(o.limit_rpm - len(state.window)),
                         "x-ratelimit-reset-requests": f"{60 - (now - state.window[0]):.3f}s"}
            r = state.rng.random()
            if r < o.p429:
                state.faults["429"] += 1
                wait = {"retry-after": f"{o.retry_after_s:g}"} if o.retry_after_s else {
                    "retry-after-ms": str(state.rng.randint(5, 50)), "retry-after": "1"}
                writer.write(_response(429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, wait))
                await writer.drain()
                continue
            if state.slots is not None:
                async with state.slots:  # a finite server: S in service, each S/R seconds
                    await asyncio.sleep(o.slots / o.capacity_rps)
            r -= o.p429
            if r < o.p500:
                state.faults["500"] += 1
                writer.write(_response(500, {"error": {"message": "boom", "type": "server_error"}}))
                await writer.drain()
                continue
            r -= o.p500
            if r < o.pslow:
                state.faults["slow"] += 1
                state.slow_now += 1
                state.slow_peak = max(state.slow_peak, state.slow_now)
                try:
                    await asyncio.sleep(o.slow_s)
                finally:
                    state.slow_now -= 1
                r = math.inf  # one fault per attempt: a slow answer then comes whole
            r -= o.pslow
            obj = _messages(body) if anthropic else _chat(body, o.reasoning_tokens)
            key = _user_text(body["messages"])
            if r < o.pdrop:
                state.faults["dropped"] += 1
                data = _response(200, obj)
                writer.write(data[: len(data) - 10])  # headers and most of the body, then the line goes dead
                await writer.drain()
                writer.close()
                return
            writer.write(_response(200, obj, extra))
            await writer.drain()
            state.answered[key] += 1
    except ConnectionError:
        return
    finally:
        writer.close()


async def serve(opts: argparse.Namespace) -> None:
    state = State(opts)
    server = await asyncio.start_server(lambda r, w: handle(state, r, w), "127.0.0.1", opts.port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)  # the port bound: Loopback waits for it
    async with server:
        await server.serve_forever()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", default="")
    for name in ("p429", "p500", "pslow", "pdrop"):
        p.add_argument(f"--{name}", type=float, default=0.0)
    p.add_argument("--slow-s", type=float, default=0.3)
    p.add_argument("--limit-rpm", type=int, default=0)
    p.add_argument("--capacity-rps", type=float, default=0.0)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--retry-after-s", type=float, default=0.0)
    p.add_argument("--keep-arrivals", action="store_true")
    p.add_argument("--no-credit", action="store_true")  # every request: 429 insufficient_quota
    p.add_argument("--reasoner", default="")  # a model name that is a reasoning model too (an alias's regex)
    p.add_argument("--reasoning-tokens", type=int, default=0)  # hidden tokens a reasoning model spends first
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """Start the server in its own process; ``stats()`` reads its counters.

    The server binds the port itself (``--port=0``: any free one) and prints it once bound: a port
    picked here and handed over could be taken by another test worker's server in between, and the
    readiness probe then reached that one (a test talked to a stranger that went away)."""

    module = "tests.generate.loopback"  # the server ``python -m`` runs
    start_s = 20.0

    def __init__(self, **opts: Any):
        self.port = 0
        self.args = ["--port=0"]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                self.args.append(flag)
            elif v not in (None, False):
                self.args.append(f"{flag}={v}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.root_url}/stats", timeout=10) as r:
            return json.loads(r.read())

    def __enter__(self) -> "Loopback":
        import select
        import threading

        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=root, env=env,
                                     stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_s)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.isdigit():
            self.proc.kill()
            raise RuntimeError(f"{self.module} did not start (exit {self.proc.poll()})")
        self.port = int(line)
        # Whatever else it prints goes on being read, so a full pipe never blocks it.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def committed_answers(db: Path) -> int:
    """``ok`` rows in a ledger that a killed-and-restarted generation may be writing (0 before it exists).

    The crash test and the crash benchmark poll it to pick the moment of the next SIGKILL."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM calls WHERE status='ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


if __name__ == "__main__":
    asyncio.run(serve(parse()))
