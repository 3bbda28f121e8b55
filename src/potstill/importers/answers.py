"""A logged answer's text and provenance, whichever API wrote it: a chat completion (and the legacy
completions' text), a Batch wrapper, an Anthropic message, a Responses API ``response``, a plain
string. ``NoText`` where the line holds no text to distil (a tool call, a refusal, a failed or
unfinished request): ``potstill import`` skips and counts it.
"""

from __future__ import annotations

import json
from typing import Any

from potstill.errors import PotstillError
from potstill.ledger_schema import REFUSED_STOPS
from potstill.records import content_text
from potstill.responses_format import output_text
from potstill.tasks.tools import reply_text
from potstill.tool_calls import call_text


class NoText(Exception):
    """A logged line with nothing a text student learns from (an answer that is a tool call or a refusal,
    a failed request, a request with images): the line is skipped and counted under ``why``, said
    "... with no text to distil" where the answer is what holds none (``distil``)."""

    def __init__(self, why: str, distil: bool = True) -> None:
        super().__init__(f"{why} with no text to distil" if distil else why)


# The content parts a text student cannot read: OpenAI chat's (image_url, input_audio, file), the
# Responses API's (input_image, input_file, input_audio) and Anthropic's (image, document).
MEDIA_PARTS = ("image_url", "input_audio", "file", "input_image", "input_file", "image", "document")


def check_media(messages: Any) -> None:
    """``NoText`` where a request's messages (or Responses input items) hold an image, audio or file
    part, a tool result's parts included: a text student never sees it, so the answer is no text-to-text
    example; a log of a multimodal app holds some on any day, and they were refused with the whole file."""
    todo = list(messages) if isinstance(messages, list) else []
    while todo:
        m = todo.pop()
        for key in ("content", "output"):  # a message's or tool result's parts; a function_call_output's
            parts = m.get(key) if isinstance(m, dict) else None
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict) and part.get("type") in MEDIA_PARTS:
                    raise NoText("its request holds image, audio or file parts, which a text student cannot read",
                                 distil=False)
                todo.append(part)


def kept_call(calls: list[dict[str, Any]] | None, keep: bool) -> str | None:
    """A logged answer's tool calls (OpenAI's form) as the text a tools task learns, where the import
    keeps calls (``keep``, ``--tool-calls``) and there are some; else None."""
    return call_text(calls) if calls and keep else None


def as_reply(text: str, keep: bool) -> str:
    """A logged answer's text as a tools task learns it (``keep``): ``tasks.tools.reply_text``, as a
    teacher's answer is read (a reply that is JSON data itself kept as ``{"content": TEXT}``)."""
    return reply_text(text) if keep else text


def message_calls(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A chat message's calls: its ``tool_calls``, or the legacy ``function_call`` as one; a
    ``tool_calls`` in another shape than OpenAI's (a list of ``{function: {name, arguments}}``) is
    one line naming it (it was a traceback)."""
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                for c in calls):
            raise PotstillError(f"{where}: tool_calls: expected a list of {{id, type, function: {{name, arguments}}}}, "
                                f"got {json.dumps(calls)[:80]}")
        return list(calls)
    return [{"function": message["function_call"]}] if isinstance(message.get("function_call"), dict) else []


def message_text(message: dict[str, Any]) -> str:
    """A chat answer's text: its content, or where an audio answer (gpt-4o-audio-preview, asked for
    ``modalities: ["text", "audio"]``) holds none, what it said (``audio.transcript``)."""
    text = content_text(message.get("content") or "")
    audio = message.get("audio")
    if not text and isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
        return audio["transcript"]
    return text


def no_text(message: dict[str, Any], finish: Any = None) -> str | None:
    """Why a logged answer message holds no text to learn, or None when it holds some. An answer
    that calls a tool is a call whatever words come with it ("Let me check."): not the answer; one
    that stopped as a refusal (``finish``) is a refusal whatever words come before it."""
    if message.get("tool_calls") or message.get("function_call"):
        return "its answer is a tool call"
    if finish in REFUSED_STOPS:
        return "its answer is a refusal"
    if message_text(message):
        return None
    if message.get("refusal"):
        return "its answer is a refusal"
    return None


def split_prefill(prompt: list[dict[str, Any]], resp: Any) -> tuple[list[dict[str, Any]], str]:
    """(the prompt, the prefill): an Anthropic request whose messages end with an assistant turn (``{``)
    has Claude go on from that text, so the answer is that text and the message's; the prompt ends at
    the turn before it. Other requests come back as they are, with no prefill."""
    if prompt and prompt[-1].get("role") == "assistant" and isinstance(resp, dict) and resp.get("type") == "message":
        return prompt[:-1], content_text(prompt[-1].get("content"))
    return prompt, ""


def failed(side: Any) -> bool:
    """Whether a logged response is an API error instead of an answer: the SDK's error body an app logs
    for a failed call (OpenAI's ``{"error": {...}}``, Anthropic's ``{"type": "error", "error": {...}}``)."""
    return isinstance(side, dict) and bool(side.get("error")) and not side.get("choices") and \
        side.get("type") in (None, "error")


def answer_of(side: Any, where: str, keep: bool, prefill: str = "") -> tuple[str, dict[str, Any]]:
    """The answer text and provenance fields from a completion, message or plain string
    (``NoText`` where the answer is a tool call or a refusal); ``prefill``: the text an Anthropic
    message goes on from (see ``split_prefill``)."""
    if isinstance(side, str):
        return side, {}
    if isinstance(side, dict) and "body" in side and isinstance(side["body"], dict):  # Batch API response wrapper
        if side.get("status_code", 200) != 200:  # a failed request (its body the error, or none)
            raise NoText("its request failed")
        side = side["body"]  # a chat completion, or a response of a batch sent to /v1/responses
    if isinstance(side, dict) and side.get("object") == "response":  # the Responses API's answer
        return response_answer(side, keep)
    if isinstance(side, dict):
        ch = side["choices"][0] if isinstance(side.get("choices"), list) and side["choices"] else None
        if isinstance(ch, dict) and "message" not in ch and isinstance(ch.get("text"), str):
            # The legacy /v1/completions answer (gpt-3.5-turbo-instruct, vLLM's completions): its text,
            # which the chat branch below read as a message of nothing, an empty answer.
            ch = {**ch, "message": {"role": "assistant", "content": ch["text"]}}
        if isinstance(ch, dict) and isinstance(ch.get("message", {}), dict):
            kept = kept_call(message_calls(ch.get("message", {}), where), keep)
            why = None if kept else no_text(ch.get("message", {}), ch.get("finish_reason"))
            if why:
                raise NoText(why)
            return kept or as_reply(message_text(ch.get("message", {})), keep), {
                "teacher": side.get("model"), "usage": side.get("usage"), "finish_reason": ch.get("finish_reason"),
                "response_id": side.get("id"),
                # A completion asked with n > 1: the first choice is the answer, the count kept and said.
                "choices": len(side["choices"]) if len(side["choices"]) > 1 else None}
        if side.get("type") == "message" and isinstance(side.get("content"), list):
            if side.get("stop_reason") in UNFINISHED_STOPS:  # its text is a preamble to a search still to run
                raise NoText(f"its response never completed (stop_reason {side['stop_reason']})")
            text = prefill + "".join(str(b.get("text", "")) for b in side["content"]
                                     if isinstance(b, dict) and b.get("type") == "text")
            text = kept_call([{"function": {"name": b.get("name"), "arguments": json.dumps(b.get("input"))}}
                               for b in side["content"] if isinstance(b, dict) and b.get("type") == "tool_use"],
                              keep) or as_reply(text, keep)
            if not keep and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in side["content"]):
                raise NoText("its answer is a tool call")
            if side.get("stop_reason") == "refusal":  # Claude 4 sends the words it wrote before it stopped
                raise NoText("its answer is a refusal")
            return text, {"teacher": side.get("model"), "usage": side.get("usage"),
                          "finish_reason": side.get("stop_reason"), "response_id": side.get("id")}
        for k in ("content", "output", "text"):
            if isinstance(side.get(k), str):
                return side[k], {}
    raise PotstillError(f"{where}: cannot find the response's text")


def response_answer(resp: dict[str, Any], keep: bool) -> tuple[str, dict[str, Any]]:
    """A Responses API ``response`` object's text and provenance (``NoText`` where it failed or its
    answer is function calls or a refusal alone)."""
    status = resp.get("status")
    if status == "failed" or resp.get("error"):
        raise NoText("its request failed")
    if status in UNFINISHED:  # whatever output it holds is a snapshot of an answer still being written, or never
        raise NoText(f"its response never completed (status {status})")
    details = resp.get("incomplete_details") if status == "incomplete" else None
    if isinstance(details, dict) and details.get("reason") == "content_filter":  # chat's finish_reason content_filter
        raise NoText("its answer is a refusal")
    text, calls = output_text(resp)
    if calls and not keep:
        raise NoText("its answer is a tool call")
    text = kept_call(calls, keep) or as_reply(text, keep)
    if not text:
        refused = any(isinstance(p, dict) and p.get("type") == "refusal" for item in resp.get("output") or []
                      if isinstance(item, dict) for p in item.get("content") or [])
        if refused:
            raise NoText("its answer is a refusal")
        if status == "incomplete":  # stopped before any text (its reasoning ran to max_output_tokens): no answer
            raise NoText("its response never completed (status incomplete)")
    # Stopped at max_output_tokens with text: a cut answer, as chat's length, which curate sets aside as truncated.
    finish = "length" if status == "incomplete" else "stop"
    return text, {"teacher": resp.get("model"), "usage": resp.get("usage"), "finish_reason": finish,
                  "response_id": resp.get("id")}


# The statuses of a response with no answer yet or ever: queued or still being written (a background
# response logged before it ended), or cancelled before it ended.
UNFINISHED = ("queued", "in_progress", "cancelled")


# The stop reasons of a message that is no whole answer yet: Anthropic pauses a long turn of server tools
# (web search) with pause_turn, the client to send it back for Claude to go on.
UNFINISHED_STOPS = ("pause_turn",)


# The keys by which ``answer_of`` knows a logged response (a chat completion, a Batch wrapper, an
# Anthropic message, a plain {"content": ...}).
RESPONSE_KEYS = {"choices", "body", "type", "content", "output", "text"}
