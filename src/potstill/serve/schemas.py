"""The OpenAI chat-completions wire format, as much of it as the server reads and writes.

OpenAI's sampling fields (``temperature``, ``top_p``, ``seed``, the penalties) are checked as OpenAI
checks them and not applied; a field that asks something specific of the answer which neither model
is given (a token banned with ``logit_bias``, vLLM's ``min_tokens`` or ``chat_template``...) is a 400
naming it where it asks anything (``REFUSED_WHERE_SET``); other unknown fields are accepted and
ignored, as vLLM does, so a client that talked to the teacher only changes its base_url. Responses
add a ``potstill`` object saying who answered and why; the official SDK keeps it in ``model_extra``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, ValidationInfo,
                      field_validator)

from potstill.ledger_rows import with_tool_fields
from potstill.responses_format import json_type as _json_type
from potstill.responses_format import utf8 as _utf8
from potstill.serve.formats import (VLLM_FIELDS, FormatError, check_chat_format, check_responses_format,
                                    check_vllm_format)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _utf8(v)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="An assistant's earlier calls, OpenAI's "
                                                    "{id, type: function, function: {name, arguments}}.")

    @field_validator("tool_calls", mode="before")
    @classmethod
    def _calls(cls, v: object) -> object:
        # Checked whole, as OpenAI checks them: the teacher gets them as sent and the student reads
        # them as text (tool_calls.as_text_turns), where another shape was a 500.
        if v is None:
            return v
        if not isinstance(v, list):
            raise ValueError(f"expected a list of tool calls, not {_json_type(v)}")
        for i, call in enumerate(v):
            problem = _call_problem(call)
            if problem:
                raise ValueError(f"item {i} {problem}: a tool call is {{id, type: function, function: {{name, "
                                 "arguments}}}}, the arguments a JSON string")
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: object) -> object:
        # Checked before the union is tried: its errors name a branch ("content.str") and not the part.
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"expected a string or a list of text parts, not {_json_type(v)}")
        for i, part in enumerate(v):
            if isinstance(part, dict) and part.get("type") == "text":
                continue
            what = (f"is {_json_type(part)}" if not isinstance(part, dict) else
                    f"is of type {part['type']!r}" if "type" in part else "has no type")
            raise ValueError(f"part {i} {what}: this server answers text, so content is a string or a list "
                             "of parts of type 'text'")
        return v

    @field_validator("content")
    @classmethod
    def _content(cls, v: str | list[TextPart] | None) -> str | list[TextPart] | None:
        return _utf8(v) if isinstance(v, str) else v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def whole(self) -> dict[str, Any]:
        """The message as the teacher gets it: its text, with its tool fields (``with_tool_fields``)."""
        return with_tool_fields({"role": self.role, "content": self.text()},
                                {**(self.model_extra or {}), "content": self.content, "tool_calls": self.tool_calls})


def client_chat(sent: list[Message]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """A chat request's messages as served: role and text, and whole (``Message.whole``). The run's
    instruction replaces a client's system prompt (the student was trained with it). The teacher gets
    the tool turns whole: an OpenAI teacher refuses a tool message that no assistant tool_calls (kept
    by id) precede; the student reads their text, as it was trained (``tool_calls.student_turns``):
    chat completions, ``/tokenize`` and count_tokens build its prompt from these two."""
    kept = [m for m in sent if m.role not in ("system", "developer")]
    return [{"role": m.role, "content": m.text()} for m in kept], [m.whole() for m in kept]


def _call_problem(call: object) -> str | None:
    """What is wrong with one of an assistant message's ``tool_calls`` as OpenAI reads it, or None."""
    if not isinstance(call, dict):
        return f"is {_json_type(call)}"
    if not isinstance(call.get("id"), str):
        return "has no string id"
    if call.get("type") != "function":
        return "is not of type 'function'"
    fn = call.get("function")
    if not isinstance(fn, dict):
        return "has no function object"
    if not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
        return "has no function.name and function.arguments strings"
    return None


class Function(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="As OpenAI and Anthropic both take it.")
    description: str | None = None
    parameters: dict | None = Field(None, description="A JSON schema of the arguments object; none: any object.")


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = Field(..., description="Function tools only: an Anthropic teacher has no other kind.")
    function: Function


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: Function


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = Field(None, strict=True)


#: OpenAI's ``metadata``: up to 16 pairs, keys up to 64 characters and values up to 512.
Metadata = dict[Annotated[str, StringConstraints(max_length=64)],
                Annotated[str, StringConstraints(max_length=512)]]

#: Fields (OpenAI's and vLLM's) that ask something specific of the answer which neither model is
#: given, and would change even a greedy answer: each is a 400 naming it where it asks anything, as
#: ``n`` above 1 is, so no client gets a 200 that ignored it (``logit_bias`` banning a token, say,
#: and the answer holding it). Their defaults, and empty lists and maps, ask nothing and pass.
#: Field: what is not served.
REFUSED_WHERE_SET = {
    "logit_bias": "token biases: neither model is given them",
    "min_tokens": "a minimum answer length",
    "ignore_eos": "generating past the end of the answer",
    "include_stop_str_in_output": "the stop string in the answer: the answer ends before it",
    "stop_token_ids": "stop token ids; send stop strings",
    "bad_words": "banned words",
    "allowed_token_ids": "a token allow-list",
    # chat's
    "chat_template": "a client's chat template: the student reads its own prompt format",
    "chat_template_kwargs": "chat template arguments: the student reads its own prompt format",
    "add_generation_prompt": "a chat without the assistant's turn: every answer is a new assistant message",
    "continue_final_message": "continuing the last message: every answer is a new assistant message",
    "echo": "the last message is not returned",
}


def _refuse_where_set(v: Any, info: ValidationInfo) -> Any:
    # add_generation_prompt asks something where false; the others where true, non-zero or non-empty.
    # chat_template_kwargs {"enable_thinking": false}, which Qwen3 clients send, asks for the answer
    # without a thinking block, which is how the student answers: it asks nothing.
    if info.field_name == "chat_template_kwargs" and isinstance(v, dict):
        v = {k: x for k, x in v.items() if not (k == "enable_thinking" and x is False)}
    if (v is False) if info.field_name == "add_generation_prompt" else bool(v):
        raise ValueError(f"not served here ({REFUSED_WHERE_SET[info.field_name]}); an answer would ignore it")
    return v


class GeneratedRequest(BaseModel):
    """What chat completions and text completions share: ``stop``, and a structured-output format,
    ``response_format`` or vLLM's fields."""

    model_config = ConfigDict(extra="allow")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; the answer ends before the first "
                                         "one it contains (finish_reason stop).")
    response_format: dict[str, Any] | None = Field(None, description="text, json_object or json_schema (what "
                                                   "client.chat.completions.parse sends): a student answer that is "
                                                   "not that JSON goes to the teacher, which gets the format.")
    # vLLM's structured outputs (extra_body), for clients written against a vLLM server.
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM's: a JSON Schema (or its JSON text), "
                                                     "served as response_format json_schema.")
    guided_regex: Any = Field(None, description="vLLM's: a regular expression the whole answer matches.")
    guided_choice: Any = Field(None, description="vLLM's: strings, one of which is the whole answer.")
    guided_grammar: Any = Field(None, description="vLLM's: a grammar that derives the whole answer, GBNF "
                                "(llama.cpp's, as xgrammar reads it; rule root) or Lark (rule start).")
    structured_outputs: Any = Field(None, description="vLLM's: {json: schema}, {json_object: true}, {regex}, "
                                    "{choice} or {grammar}, as the fields above; structural_tag refused.")
    # Sampling: checked strictly as OpenAI's API checks them (a string "0.5" is a 400, not 0.5) and
    # not applied: the student decodes greedily, as its thresholds were calibrated, and the teacher
    # as the run configures it.
    temperature: float | None = Field(None, ge=0, le=2, strict=True, description="Accepted and not applied.")
    top_p: float | None = Field(None, ge=0, le=1, strict=True, description="Accepted and not applied.")
    seed: int | None = Field(None, strict=True, description="Accepted and not applied.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=True, description="Accepted and not applied.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=True, description="Accepted and not applied.")
    user: str | None = Field(None, strict=True, description="Accepted and not applied.")
    # REFUSED_WHERE_SET: typed as OpenAI and vLLM type them, so a malformed one says what is wrong first.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100, strict=True)]] | None = Field(
        None, description="Token id -> bias in [-100, 100]: refused unless empty.")
    min_tokens: int | None = Field(None, ge=0, strict=True, description="vLLM's: refused above 0.")
    ignore_eos: bool | None = Field(None, strict=True, description="vLLM's: refused where true.")
    include_stop_str_in_output: bool | None = Field(None, strict=True, description="vLLM's: refused where true.")
    stop_token_ids: list[StrictInt] | None = Field(None, description="vLLM's: refused unless empty.")
    bad_words: list[StrictStr] | None = Field(None, description="vLLM's: refused unless empty.")
    allowed_token_ids: list[StrictInt] | None = Field(None, description="vLLM's: refused unless empty.")

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _token_ids(cls, v: object) -> object:
        bad = next((k for k in v if not re.fullmatch(r"[0-9]+", k)), None) if isinstance(v, dict) else None
        if bad is not None:
            raise ValueError(f"key {bad!r} is not a token id (a string of digits)")
        return v

    _refused = field_validator("logit_bias", "min_tokens", "ignore_eos", "include_stop_str_in_output",
                               "stop_token_ids", "bad_words", "allowed_token_ids")(_refuse_where_set)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in ([v] if isinstance(v, str) else v or [])):
            raise ValueError("a stop sequence must not be empty")
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def format_request(self) -> dict[str, Any] | None:
        """``response_format`` as served (``formats.check_chat_format``; None for text or none), or
        vLLM's structured-output fields in the same form (``formats.check_vllm_format``), or
        ``FormatError`` (also for both at once)."""
        vllm = check_vllm_format({k: getattr(self, k) for k in VLLM_FIELDS})
        if vllm is not None and self.response_format is not None:
            raise FormatError("response_format", "give response_format or vLLM's structured-output fields, not both")
        return vllm if self.response_format is None else check_chat_format(self.response_format)


class ChatRequest(GeneratedRequest):
    model: str = Field(..., description="A name GET /v1/models lists (the student's, an alias, the teacher's); "
                       "whichever it is, the router picks the student or the teacher.")
    messages: list[Message] = Field(..., min_length=1)
    # strict: a JSON value of another type is a 400 as on OpenAI's API, not coerced ("yes" streamed)
    stream: bool | None = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    n: int | None = Field(None, ge=1, le=1, strict=True, description="Only one choice per request is served.")
    tools: list[Tool] | None = Field(None, min_length=1, description="Function tools; a request that lets the "
                                     "model call one (tool_choice not 'none') is answered by the teacher.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(None, strict=True)
    logprobs: bool | None = Field(None, strict=True, description="Each returned token's log-probability "
                                  "(choices[0].logprobs.content), from whichever model answered.")
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True, description="With logprobs: also the most "
                                     "likely tokens at each position, up to 20 as on OpenAI's API.")
    # Refused where given (a 400 naming the field): taken as unknown fields, they were ignored, and the
    # student answered a forced function call, or a request for speech, with text.
    functions: Any = Field(None, description="Legacy function calling: refused; send tools.")
    function_call: Any = Field(None, description="Legacy function calling: refused; send tool_choice.")
    modalities: list[str] | None = Field(None, description="['text'] only: audio output is refused.")
    audio: Any = Field(None, description="Audio output settings: refused (this server answers text).")
    # OpenAI's, checked as it checks them (the values the openai SDK types) and not applied: no
    # completion is stored for OpenAI's stored-completions API, and the teacher's tier and effort
    # are the run's.
    store: bool | None = Field(None, strict=True, description="Accepted and not applied.")
    metadata: Metadata | None = Field(None, max_length=16, description="Accepted and not applied.")
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = Field(
        None, description="Accepted and not applied.")
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = Field(
        None, description="Accepted and not applied.")
    # vLLM's chat fields in REFUSED_WHERE_SET.
    chat_template: str | None = Field(None, strict=True, description="vLLM's: refused.")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM's: refused unless empty "
                                                         "or only enable_thinking: false.")
    add_generation_prompt: bool | None = Field(None, strict=True, description="vLLM's: refused where false.")
    continue_final_message: bool | None = Field(None, strict=True, description="vLLM's: refused where true.")
    echo: bool | None = Field(None, strict=True, description="vLLM's: refused where true.")

    _refused_chat = field_validator("chat_template", "chat_template_kwargs", "add_generation_prompt",
                                    "continue_final_message", "echo")(_refuse_where_set)

    @field_validator("functions", "function_call")
    @classmethod
    def _legacy_functions(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("legacy function calling is not served here; send tools (and tool_choice) instead")
        return v

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and "audio" in v:
            raise ValueError("audio output is not served here; this server answers text (modalities ['text'])")
        return v

    @field_validator("audio")
    @classmethod
    def _audio(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("audio output is not served here; this server answers text")
        return v

    def tool_problem(self) -> str | None:
        """Why ``tool_choice`` does not fit ``tools`` (OpenAI's API refuses both cases), or None."""
        if self.tool_choice is not None and not self.tools:
            return "tool_choice: only allowed when tools are given"
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in [t.function.name for t in self.tools or []]:
                return f"tool_choice: names the function {name!r}, which is not in tools"
        return None

    def tool_request(self) -> dict | None:
        """The tool fields for the teacher (``Teacher.with_tools``), or None where there are no tools.
        With tool_choice 'none' the model may call none: ``Service.served_tools`` routes it as a
        request without them (but in a tools task)."""
        if not self.tools:
            return None
        choice = self.tool_choice.model_dump(exclude_none=True) if isinstance(self.tool_choice, BaseModel) \
            else self.tool_choice
        return {"tools": [t.model_dump(exclude_none=True) for t in self.tools], "tool_choice": choice,
                "parallel_tool_calls": self.parallel_tool_calls}

    def logprob_request(self) -> int | None:
        """How many alternatives per token the client asked for (0: the chosen tokens' log-probs
        only), None where it asked for no log-probs."""
        return (self.top_logprobs or 0) if self.logprobs else None


class Route(BaseModel):
    answered_by: Literal["student", "teacher"]
    reason: Literal["confident", "low_confidence", "out_of_distribution", "invalid_output", "truncated",
                    "response_format", "too_long", "tools", "student_error"]
    confidence: float | None = Field(None, description="None where the student gave no answer (too_long, tools, "
                                     "student_error).")
    ood_distance: float | None = None
    student_output: str
    logprobs_unavailable: str | None = Field(None, description="Why choices[0].logprobs is null although asked.")
    response_format_problem: str | None = Field(None, description="Why the teacher's answer is not the JSON the "
                                                "request's format asks for (a teacher that cannot be constrained).")


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = Field(..., description="The arguments object as a JSON string.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(..., description="None where the answer is tool calls alone.")
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(None, description="The token's text as UTF-8 bytes.")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = Field(None, description="Asked with logprobs: true; null where the answering "
                                            "model gave none (potstill.logprobs_unavailable says why).")
    finish_reason: Literal["stop", "length", "tool_calls"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    potstill: Route


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    student: str
    teacher: str
    confidence_threshold: float | None
    ood_threshold: float | None


#: What a Responses request may ``include`` (OpenAI's list): only the log-probs are ever in this
#: server's answers; the rest are hosted tools', images' and reasoning's, accepted and empty.
RESPONSES_INCLUDE = Literal["message.output_text.logprobs", "file_search_call.results", "web_search_call.results",
                            "web_search_call.action.sources", "message.input_image.image_url",
                            "computer_call_output.output.image_url", "code_interpreter_call.outputs",
                            "reasoning.encrypted_content"]


class ResponsesRequest(BaseModel):
    """``POST /v1/responses`` (OpenAI's Responses API, ``client.responses.create``), for text and
    function tools: the same router as chat completions. ``input`` is a string (one user message)
    or a list of items (``potstill.serve.responses.chat_messages``)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="A name GET /v1/models lists; the router picks the student or the teacher.")
    input: str | list[Any] = Field(..., description="The user's text, or a list of message, function_call and "
                                   "function_call_output items.")
    instructions: str | None = Field(None, description="Accepted and not used: the student answers under the run's "
                                     "instruction, which it was trained with.")
    max_output_tokens: int | None = Field(None, ge=1, strict=True)
    stream: bool | None = Field(False, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    top_p: float | None = Field(None, ge=0, le=1, strict=True)
    previous_response_id: str | None = Field(None, description="A stored response this one continues: its "
                                             "input items and output come before this input.")
    store: bool | None = Field(True, strict=True, description="Keep the response, to continue it or read it back "
                               "(serve.store_responses).")
    metadata: Metadata | None = Field(None, max_length=16, description="Up to 16 pairs, kept with the response and "
                                      "given back.")
    tools: list[Any] | None = Field(None, description="Function tools; a request that lets the model call one "
                                    "(tool_choice not 'none') is answered by the teacher, as on chat completions.")
    tool_choice: Any = Field(None, description="none, auto, required, or {type: function, name}.")
    parallel_tool_calls: bool | None = Field(None, strict=True)
    text: dict[str, Any] | None = Field(None, description="format: text, json_object or json_schema (what "
                                        "client.responses.parse sends), served as chat's response_format.")
    include: list[RESPONSES_INCLUDE] | None = Field(None, description="message.output_text.logprobs: the answer's "
                                                    "tokens' log-probs; the others name what this server never "
                                                    "outputs (hosted tools, images, reasoning).")
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True, description="Alternatives per token with "
                                     "the log-probs.")

    def logprob_request(self) -> int | None:
        """As chat's: how many alternatives per token, None where no log-probs were asked (neither
        ``include`` ``message.output_text.logprobs`` nor ``top_logprobs``)."""
        asked = "message.output_text.logprobs" in (self.include or []) or self.top_logprobs is not None
        return (self.top_logprobs or 0) if asked else None

    def format_request(self) -> dict[str, Any] | None:
        """``text.format`` in chat's ``response_format`` form (None for text or none), or ``FormatError``."""
        fmt = (self.text or {}).get("format")
        return None if fmt is None else check_responses_format(fmt)
