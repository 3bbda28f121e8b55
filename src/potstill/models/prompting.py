"""Prompts for local models: chat templates for instruct models, plain text for base models.

Both formats tokenise as ``prompt ids + completion ids`` with the completion tokenised on its
own, so the first completion token a trainer learns is exactly the token a scorer reads.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from potstill.errors import PotstillError
from potstill.records import content_text
from potstill.tool_calls import as_text_turns, has_tool_turns


class RefusedChat(PotstillError, ValueError):
    """A model's chat template refuses a chat (Gemma's and Mistral's raise on two user turns in a
    row, which OpenAI's API takes); ``why``: the template's words. Serve answers such a chat with a
    400; a stage that reads records names the record (``refused_record``)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the chat template refuses this chat: {why}")
        self.why = why


def refused_words(e: RefusedChat) -> str:
    """Why a record whose chat the student's chat template refuses is no record to learn or measure on:
    the template's words and what to do (``refused_record``; curate's reason for setting one aside)."""
    return (f"the student's chat template refuses its chat ({e.why}); serve answers such a chat with a 400, so "
            "the student can neither learn nor be measured on it: join its consecutive turns of one role (or "
            "drop the record), or pick a student whose chat template takes it")


def refused_record(record_id: Any, e: RefusedChat) -> str:
    """The line a stage refuses a record with whose chat the student's chat template refuses: the
    record, the template's words and what to do."""
    return f"record {record_id}: {refused_words(e)}"


@dataclass
class PromptFormat:
    """How a model sees a task.

    ``chat``: the tokenizer's chat template; the completion starts right after the generation
    prompt (no leading space) and ends with the template's end-of-turn token.
    ``completion``: ``prefix + text + "\\n" + answer_prefix``; the completion is `` label\\n``.
    """

    kind: str = "chat"
    instruction: str = ""
    answer_prefix: str = "Answer:"
    shots: list[tuple[str, str]] | None = None
    #: Earlier tool calls in a chat read as a list even where one (a parallel tools task's answers).
    calls_as_list: bool = False

    def key(self) -> tuple:
        """Everything that shapes the prompt's fixed start, hashable (caches of it key on this)."""
        return (self.kind, self.instruction, self.answer_prefix, tuple(self.shots or ()))

    def prefix(self) -> str:
        """The part shared by every prompt (instruction and shots): computed once, KV-cached."""
        if self.kind == "chat":
            return ""
        parts = [self.instruction.strip() + "\n\n"] if self.instruction else []
        for text, answer in self.shots or []:
            parts.append(f"{text}\n{self.answer_prefix} {answer}\n\n")
        return "".join(parts)

    def query(self, tokenizer: Any, messages: list[dict[str, Any]]) -> str:
        """The per-input part of the prompt. A chat's tool turns are read as text (``as_text_turns``),
        one form for every template, the one a tools task's student writes its calls in. Raises
        ``RefusedChat`` where the chat template refuses the chat."""
        if has_tool_turns(messages):
            messages = as_text_turns(messages, self.calls_as_list)
        if self.kind == "chat":
            if getattr(tokenizer, "chat_template", None) is None:
                raise PotstillError("this model's tokenizer has no chat template; use prompt_format: completion")
            chat = [{"role": "system", "content": self.instruction}] if self.instruction else []
            for text, answer in self.shots or []:
                chat += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
            # Text parts joined: most templates print a list of parts as Python's repr of it.
            flat = [{**m, "content": content_text(m["content"])} if isinstance(m.get("content"), list) else m
                    for m in messages]
            try:
                return tokenizer.apply_chat_template([*chat, *flat], tokenize=False, add_generation_prompt=True)
            except TemplateError as e:  # the template's raise_exception: one line, not Jinja's traceback
                why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise RefusedChat(why) from None
        text = "\n".join(content_text(m.get("content")) for m in messages if m.get("role") == "user")
        return f"{text}\n{self.answer_prefix}"

    def completion(self, tokenizer: Any, answer: str) -> str:
        """The trained target after the prompt. It ends with the token generation stops at: the chat
        template's turn end, or in a plain-text prompt EOS (a newline taught no end: a student without
        a chat template wrote on to its token budget, 'sports match team team team ...'); a tokenizer
        without EOS gets the newline."""
        if self.kind == "chat":
            return f"{answer}{end_of_turn(tokenizer)}"
        return f" {answer}{getattr(tokenizer, 'eos_token', None) or chr(10)}"

    def label_text(self, label: str) -> str:
        return label if self.kind == "chat" else f" {label}"


_TURN_END: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_MARK = "\u2063potstill-answer\u2063"


def end_of_turn(tokenizer: Any) -> str:
    """The special token that closes an assistant turn in the tokenizer's chat template, read off the
    template itself (a two-turn conversation rendered, the special token right after the answer):
    ``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for Llama 3, ``<|end|>``
    for Phi-3. Several of these are not the tokenizer's EOS (Gemma's is ``<eos>``), so a completion
    ended with EOS would teach a turn end the served template never shows, and generation stopped
    only at EOS would run on into the next turn. EOS where the template shows none."""
    try:
        return _TURN_END[tokenizer]
    except (KeyError, TypeError):
        pass
    end = tokenizer.eos_token or ""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": _MARK}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template that will not render this pair keeps EOS
            text = ""
        tail = text.split(_MARK, 1)[1] if _MARK in text else ""
        found = [t for t in special_tokens(tokenizer) if tail.lstrip(" ").startswith(t)]
        if found:
            end = max(found, key=len)
    try:
        _TURN_END[tokenizer] = end
    except TypeError:
        pass
    return end


def special_tokens(tokenizer: Any) -> list[str]:
    """The texts of ``tokenizer``'s special tokens (EOS, pad, a chat template's turn marks such as
    ``<|im_end|>``): wherever one stands in a text that every stage tokenises (a prompt, an answer
    trained on), it becomes that control token, not its characters, as vLLM and TRL tokenise it too."""
    specials = set(getattr(tokenizer, "all_special_tokens", None) or ())
    specials |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()
                 if getattr(t, "special", False)}
    return sorted(t for t in specials if t)


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token that ends a generation: EOS, the pad token (what a finished row is padded with),
    the chat template's end of turn (``end_of_turn``) and the model's own generation config's EOS
    ids (Llama 3 and Gemma list several)."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    turn = end_of_turn(tokenizer)
    if turn and turn != tokenizer.eos_token:
        i = tokenizer.convert_tokens_to_ids(turn)
        if i != getattr(tokenizer, "unk_token_id", None):  # unk: not a token of this vocabulary
            ids.add(i)
    cfg = getattr(generation_config, "eos_token_id", None)
    ids |= set(cfg) if isinstance(cfg, (list, tuple)) else {cfg}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


# Prompts a caller has tokenised and handed on (``hand_over``): tokenizer -> {(vocabulary size,
# special, text): ids}, the most recent 256 texts and 4 M characters at most. Serve checks each
# prompt against the student's context, then its engine encodes the same text on the batcher's
# thread, where tokenising a 1 MB prompt again (~0.5 s) held every request batched with it.
class _Handed(OrderedDict):
    chars = 0


_HANDED: "weakref.WeakKeyDictionary[Any, _Handed]" = weakref.WeakKeyDictionary()
_HANDED_LOCK = threading.Lock()
_HANDED_TEXTS, _HANDED_CHARS = 256, 4_000_000


def _handed_key(tokenizer: Any, fmt: PromptFormat, text: str, first: bool) -> tuple:
    return (len(tokenizer), first and fmt.kind != "chat", text)  # an added token changes the ids


def encode_prompt(tokenizer: Any, fmt: PromptFormat, text: str, first: bool) -> list[int]:
    """Token ids of a prompt piece. Chat templates carry their own BOS; a plain prompt gets the
    tokenizer's special tokens only at the very start (``first``). Ids handed over for the same
    text (``hand_over``) are taken instead of tokenising again."""
    if _HANDED:
        try:
            handed = _HANDED.get(tokenizer)
            key = _handed_key(tokenizer, fmt, text, first) if handed else None
        except TypeError:  # a tokenizer without a size, or that takes no weak reference
            handed = None
        if handed:
            with _HANDED_LOCK:
                ids = handed.get(key)
            if ids is not None:
                return list(ids)  # a copy: callers may cut or extend theirs
    return tokenizer(text, add_special_tokens=first and fmt.kind != "chat")["input_ids"]


def hand_over(tokenizer: Any, fmt: PromptFormat, text: str, first: bool, ids: list[int]) -> None:
    """Keep ``ids`` (``encode_prompt(tokenizer, fmt, text, first)``) for the next ``encode_prompt``
    of the same text, which another part of the program is about to make."""
    if len(text) > _HANDED_CHARS:
        return
    try:
        key = _handed_key(tokenizer, fmt, text, first)
        with _HANDED_LOCK:
            handed = _HANDED.setdefault(tokenizer, _Handed())
            if key not in handed:
                handed.chars += len(text)
            handed[key] = list(ids)
            handed.move_to_end(key)
            while len(handed) > _HANDED_TEXTS or handed.chars > _HANDED_CHARS:
                handed.chars -= len(handed.popitem(last=False)[0][2])
    except TypeError:  # a tokenizer without a size, or that takes no weak reference: not handed over
        return


# tokenizer -> {(vocabulary size, label texts): first token ids}. ``predict`` asks on every call,
# where serve asks once per model: tokenising the quickstart's five labels took 0.12 ms (2 us
# remembered) beside a batch-1 call of about 10 ms, which evaluate's latency then counted.
_LABEL_IDS: "weakref.WeakKeyDictionary[Any, dict[tuple, list[int]]]" = weakref.WeakKeyDictionary()


def label_token_ids(tokenizer: Any, fmt: PromptFormat, labels: list[str]) -> list[int]:
    """First token of each label as it appears in a completion; they must be distinct. Remembered
    per tokenizer (and its vocabulary size, which an added token changes)."""
    try:
        key = (len(tokenizer), tuple(fmt.label_text(label) for label in labels))
        known = _LABEL_IDS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer without a size, or that takes no weak reference: not remembered
        return _label_token_ids(tokenizer, fmt, labels)
    if key in known:
        return list(known[key])
    ids = _label_token_ids(tokenizer, fmt, labels)
    known[key] = list(ids)
    return ids


def _label_token_ids(tokenizer: Any, fmt: PromptFormat, labels: list[str]) -> list[int]:
    ids = []
    for label in labels:
        toks = tokenizer(fmt.label_text(label), add_special_tokens=False)["input_ids"]
        if not toks:
            raise PotstillError(f"label '{label}' tokenises to nothing")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        clash = [lab for lab, i in zip(labels, ids) if ids.count(i) > 1]
        raise PotstillError(
            f"labels {clash} share their first token for this tokenizer; rename them so each starts differently"
        )
    return ids
