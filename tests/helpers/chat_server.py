"""A real OpenAI-compatible chat-completions server on 127.0.0.1, backed by a real tiny model.

It counts the requests it answers, so tests can prove a rerun sent none. Asked to ``stream``, it
sends a chunk per token (and the usage where ``stream_options.include_usage`` asks), waiting after
the first for ``hold`` where a test set one (so the test sees the text arrive before the answer ends).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, StreamingResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_turn_problem(messages: list[dict[str, Any]]) -> str | None:
    """OpenAI's 400 for tool turns it cannot pair: a tool message answers one of the tool_calls of
    the assistant message before it, by its tool_call_id."""
    calls: set[str] = set()
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            calls = {c.get("id") for c in m.get("tool_calls") or []}
        elif m.get("role") == "tool":
            if "tool_call_id" not in m:
                return f"Missing required parameter: 'messages[{i}].tool_call_id'."
            if m["tool_call_id"] not in calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'.")
        else:
            calls = set()
    return None


class ChatServer:
    def __init__(self, model_dir: str, api_key: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.api_key = api_key
        self.requests: Counter[str] = Counter()
        self.hold: threading.Event | None = None  # streams wait for it after their first token
        self.holding = threading.Event()  # set while a stream waits for hold
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)
        self.port = free_port()
        self._server: uvicorn.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat(self, body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
        if self.api_key and authorization != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
        refused = tool_turn_problem(body["messages"])
        if refused:
            return JSONResponse({"error": {"message": refused, "type": "invalid_request_error", "param": "messages",
                                           "code": None}}, status_code=400)
        with self.lock:
            self.requests[str(body["messages"])] += 1
            prompt = self.tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            # At most 8 tokens, to keep tests fast; past a client's larger max_tokens that cap stands for
            # the model ending its answer ("stop"): only the client's own limit is reported as "length".
            asked = int(body.get("max_tokens") or 8)
            budget = min(asked, 8)
            with torch.inference_mode():
                out = self.model.generate(ids, max_new_tokens=budget, do_sample=False,
                                          output_scores=True, return_dict_in_generate=True,
                                          pad_token_id=self.tok.pad_token_id)
        new = out.sequences[0, ids.shape[1]:].tolist()
        finish = "length" if len(new) >= asked and self.tok.eos_token_id not in new else "stop"
        if self.tok.eos_token_id in new:
            new = new[: new.index(self.tok.eos_token_id)]
        text = self.tok.decode(new, skip_special_tokens=True)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 1)
            content = []
            for step, tid in enumerate(new):
                lp = torch.log_softmax(out.scores[step][0].float(), -1)
                top = lp.topk(k)
                content.append({
                    "token": self.tok.decode([tid]), "logprob": float(lp[tid]), "bytes": None,
                    "top_logprobs": [{"token": self.tok.decode([int(i)]), "logprob": float(v), "bytes": None}
                                     for v, i in zip(top.values, top.indices)],
                })
            choice["logprobs"] = {"content": content}
        if body.get("stream"):
            usage = ({"prompt_tokens": ids.shape[1], "completion_tokens": len(new), "total_tokens": ids.shape[1] + len(new)}
                     if (body.get("stream_options") or {}).get("include_usage") else None)
            entries = choice.get("logprobs", {}).get("content")
            return StreamingResponse(self._chunks(body["model"], new, finish, usage, entries),
                                     media_type="text/event-stream")
        return {
            "id": f"chatcmpl-{sum(self.requests.values())}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "choices": [choice],
            "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new), "total_tokens": ids.shape[1] + len(new)},
        }

    def _chunks(self, model: str, new: list[int], finish: str, usage: dict | None, entries: list[dict] | None):
        """OpenAI's chunks: the role, each token's new text (with the log-probs of the tokens it
        completes, where ``entries`` holds them), the finish, the usage, [DONE]."""
        import json

        def event(delta: dict, finish_reason: str | None = None, upto: int = 0, **extra: Any) -> str:
            nonlocal done
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if entries is not None and upto > done:
                choice["logprobs"] = {"content": entries[done:upto], "refusal": None}
                done = upto
            obj = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                   "choices": [choice], **extra}
            return f"data: {json.dumps(obj)}\n\n"

        done = 0  # tokens whose log-probs went out
        yield event({"role": "assistant", "content": ""})
        text = ""
        for i in range(len(new)):
            now = self.tok.decode(new[: i + 1], skip_special_tokens=True)
            if now[len(text):] and now.startswith(text) and not now.endswith("\ufffd"):  # whole characters only
                first = self.hold is not None and not text
                if first:  # set before the text goes out: the rest cannot come before the test lets it
                    self.holding.set()
                yield event({"content": now[len(text):]}, upto=i + 1)
                if first:
                    assert self.hold.wait(timeout=20), "the test never let the stream go on"
                    self.holding.clear()
                text = now
        whole = self.tok.decode(new, skip_special_tokens=True)
        if whole != text or (entries and done < len(entries)):  # a last character held back, or a decode
            # that is not its prefixes'
            yield event({"content": whole[len(text):] if whole.startswith(text) else whole}, upto=len(new))
        yield event({}, finish)
        if usage is not None:
            yield f"data: {json.dumps({'id': 'chatcmpl-s', 'object': 'chat.completion.chunk', 'model': model, 'created': 0, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    def __enter__(self) -> "ChatServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)
