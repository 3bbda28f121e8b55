"""Server-sent events as the providers' APIs write them, for the test teachers on loopback: an
OpenAI chat-completion chunk, and an Anthropic Messages stream event."""

from __future__ import annotations

import json
from typing import Any


def openai_chunk(model: str, delta: dict[str, Any] | None = None, finish: str | None = None,
                 usage: dict[str, int] | None = None) -> str:
    """One ``chat.completion.chunk``: choice 0's ``delta`` and ``finish_reason``, or (``usage``) the
    last chunk ``stream_options.include_usage`` asks for, with no choices."""
    choices = [] if usage is not None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    obj = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices,
           **({"usage": usage} if usage is not None else {})}
    return f"data: {json.dumps(obj)}\n\n"


def claude_event(kind: str, data: dict[str, Any]) -> str:
    """One event of a Messages stream (``message_start``, ``content_block_delta``, ...)."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def claude_start(model: str, input_tokens: int = 30) -> str:
    """A Messages stream's ``message_start``: an empty assistant message and its input tokens."""
    return claude_event("message_start", {"message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})
