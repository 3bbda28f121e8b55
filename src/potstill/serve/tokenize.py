"""vLLM's ``POST /tokenize`` and ``POST /detokenize`` for the server: the student's tokens, since
every request reaches the student first (whatever listed ``model`` it names). A chat is tokenised
as the student reads it: under the run's instruction (a client's system prompt replaced, as on
chat completions) in the student's own prompt format, its tool turns as text
(``tool_calls.student_turns``, as the student answers it); a ``prompt`` is one user message, as on
``/v1/completions``. ``max_model_len`` is the student's context: a chat whose prompt and answer
budget pass it goes to the teacher (reason ``too_long``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator

from potstill.models.prompting import encode_prompt
from potstill.responses_format import utf8
from potstill.serve.schemas import Message, client_chat
from potstill.tool_calls import student_turns


TOKENIZE = ("/tokenize", "/detokenize")


class TokenizeRequest(BaseModel):
    """vLLM's tokenize request: ``prompt`` (completions) or ``messages`` (chat)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="A name GET /v1/models lists (any: the student's tokens); "
                              "unset: the student.")
    prompt: str | None = Field(None, description="Text, as one user message (as /v1/completions reads a prompt).")
    messages: list[Message] | None = Field(None, description="A chat, as /v1/chat/completions reads it.")
    return_token_strs: bool = Field(False, strict=True, description="Each token's text too.")
    add_special_tokens: bool | None = Field(None, description="Accepted; the student's prompt format decides.")
    add_generation_prompt: bool | None = Field(None, description="Accepted; the student's prompt format decides.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:  # the tokenizer takes no lone surrogate (a 500 there)
        return v if v is None else utf8(v)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int] = Field(..., description="Token ids of the student's tokenizer.")


class DetokenizeResponse(BaseModel):
    prompt: str


async def student_prompt_ids(service: Any, messages: list[dict[str, str]],
                             whole: list[dict[str, Any]] | None = None) -> list[int]:
    """The student's prompt ids for a chat (role and text; ``whole``: the same with its tool fields),
    as it reads it when it answers (``student_turns``: tool turns as text): the run's instruction and
    its prompt format. Raises ``RefusedChat`` (the app's 400) where its chat template refuses the chat."""
    student = service.live.engine
    tok, fmt = student.engine.tokenizer, student.fmt
    read = student_turns(messages, whole)

    def ids() -> list[int]:
        return encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, read), first=True)

    return await asyncio.to_thread(ids)


def add_tokenize_routes(app: FastAPI, service: Any, bearer: list) -> None:
    from potstill.serve.app import ERRORS, APIError, _owner, _unknown_model

    def known(model: str | None) -> None:
        if model is not None and _owner(service, model) is None:
            raise _unknown_model(service, model)

    @app.post(TOKENIZE[0], response_model=TokenizeResponse, dependencies=bearer, responses=ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        """The student's prompt tokens for a chat or a prompt (vLLM's ``/tokenize``)."""
        known(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give one of prompt and messages", "prompt" if body.prompt is None else "messages")
        if (body.model_extra or {}).get("chat_template") is not None:
            raise APIError(400, "chat_template: the student reads its own prompt format", "chat_template")
        # As chat completions reads a chat: the run's instruction replaces a client's system prompt.
        messages, whole = client_chat(body.messages) if body.messages is not None else \
            ([{"role": "user", "content": body.prompt}], None)
        student = service.live.engine
        tokens = await student_prompt_ids(service, messages, whole)
        strs = student.engine.tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None
        return TokenizeResponse(count=len(tokens), max_model_len=student.context, tokens=tokens, token_strs=strs)

    @app.post(TOKENIZE[1], response_model=DetokenizeResponse, dependencies=bearer, responses=ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        """The text of the student's token ids (vLLM's ``/detokenize``)."""
        known(body.model)
        tok = service.live.engine.engine.tokenizer
        bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < len(tok)), None)
        if bad is not None:
            raise APIError(400, f"tokens.{bad}: {body.tokens[bad]} is not a token id of the student's tokenizer "
                           f"(0 to {len(tok) - 1})", f"tokens.{bad}")
        return DetokenizeResponse(prompt=tok.decode(body.tokens))
