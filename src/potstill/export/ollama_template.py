"""An Ollama TEMPLATE (Go's text/template) for a chat template that is not ChatML, read off the Jinja
template's own renderings.

Ollama never runs Jinja. Without a TEMPLATE it looks the GGUF's chat template up among its own by
edit distance (a match under 100 characters) and otherwise sends ``{{ .Prompt }}``, the bare message,
so a student whose template it does not know exactly got prompts it never trained on. For the chats
a student serves (user and assistant turns, one system prompt) a chat template is fixed text around
each message, five pieces in all:

    first user turn:     HEAD  message                   (no system prompt)
                         SYS_OPEN  system  SYS_CLOSE  message
    user -> assistant:   ... USER_TO_ASSISTANT  message
    assistant -> user:   ... ASSISTANT_TO_USER  message
    after the last user: TAIL  (the generation prompt)

``translate`` reads the pieces off renderings of chats of marker messages and keeps them only if they
rebuild the template's own rendering of each of those chats. One user message (with or without the
system prompt: what a potstill task serves) must rebuild; conversations of several turns may not (a
template that moves the system prompt into the *last* user turn, as Mistral's does), which is said.
Gemma's template (the system prompt folded into the first user turn), Llama 3's (a system header with
a date line, written even without a system prompt) and Phi-3's translate whole.

A chat's tool turns are written as training read them (``tool_calls.as_text_turns``, whatever the
chat template makes of tools): an assistant turn of ``.ToolCalls`` as the JSON the student writes for
them, and each run of ``tool`` messages as one user turn of lines ``Result of NAME: RESULT`` (NAME
Ollama's ``.ToolName``, which its OpenAI endpoint finds by the call's id). Dropped, as they were, a
student served by Ollama never saw the results of the calls it had made.

What no TEMPLATE can do: a template that trims each message (Gemma's, Llama 3's) gets the message as
sent, so a message with leading or trailing white space is prompted with it; a date a template writes
(Llama 3.2's "Today Date") is the export's; a call's arguments are written as Go writes a map (keys
sorted, a nested object or list without spaces, ``<>&`` escaped), so only flat arguments whose keys
the teacher wrote in that order are the very text trained on; and Ollama joins consecutive messages
of one role (but ``tool``) into one, a blank line between (its ``collate``, before any template runs),
where training and ``potstill serve`` read them as turns of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MARK = "potstill{}mark"  # letters and digits only: no template escapes, trims or splits them


def calls_text(parallel: bool = False) -> str:
    """Go template text for the ``.ToolCalls`` of a message (dot), as ``tool_calls.call_text`` writes
    them: ``{"name": N, "arguments": {...}}``, a list of them where there are several (``parallel``:
    always). ``{`` is written by an action: ``{{{`` would open an action at the first two."""
    one = ('{{ "{" }}"name": {{ json .Function.Name }}, "arguments": {{ "{" }}{{ $s := "" }}'
           '{{ range $k, $v := .Function.Arguments }}{{ $s }}{{ json $k }}: {{ json $v }}{{ $s = ", " }}{{ end }}'
           '{{ "}" }}{{ "}" }}')
    calls = f'{{{{ $sep := "" }}}}{{{{ range .ToolCalls }}}}{{{{ $sep }}}}{one}{{{{ $sep = ", " }}}}{{{{ end }}}}'
    if parallel:
        return f"[{calls}]"
    return f'{{{{ $many := ne (len .ToolCalls) 1 }}}}{{{{ if $many }}}}[{{{{ end }}}}{calls}{{{{ if $many }}}}]{{{{ end }}}}'


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def go_string(text: str) -> str:
    """``text`` as a Go string literal, for an action (``{{ "..." }}``) that writes it as it is: the
    system prompt a TEMPLATE writes itself, so that a client's own system message cannot replace it
    (``.System``), as ``potstill serve`` drops a client's. ``"`` and ``\\`` escaped, and line ends,
    braces (a ``}}`` ends an action for a reader that does not parse strings) and every character that
    is not printable as escapes Go reads back: the Modelfile's parser has no escapes and drops such
    characters from a string of its own (SYSTEM), not from these."""
    def one(c: str) -> str:
        if c in _GO_ESCAPES:
            return _GO_ESCAPES[c]
        if c in "{}" or not (c.isprintable() or c == " "):
            return f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
        return c

    return '"' + "".join(one(c) for c in text) + '"'


def message_text(parallel: bool = False) -> str:
    """Go template text for a message's text as training read it (``tool_calls.as_text_turns``): a tool
    result's line, an assistant's calls (``calls_text``), or its content."""
    return ('{{ if eq .Role "tool" }}Result of {{ if .ToolName }}{{ .ToolName }}{{ else }}tool{{ end }}: '
            f'{{{{ .Content }}}}{{{{ else if .ToolCalls }}}}{calls_text(parallel)}{{{{ else }}}}{{{{ .Content }}}}{{{{ end }}}}')


class Untranslatable(Exception):
    """The chat template is not fixed text around each message; the reason is the message."""


@dataclass(frozen=True)
class Pieces:
    head: str
    sys_open: str
    sys_close: str
    user_to_assistant: str
    assistant_to_user: str
    tail: str

    def render(self, system: str, turns: list[str]) -> str:
        """The prompt these pieces give for alternating user/assistant ``turns`` (user first)."""
        out = [self.sys_open + system + self.sys_close if system else self.head]
        for i, text in enumerate(turns):
            if i:
                out.append(self.user_to_assistant if i % 2 else self.assistant_to_user)
            out.append(text)
        return "".join(out) + self.tail

    def go(self, system: str, parallel: bool = False) -> str:
        """The Go template Ollama executes: the same pieces around ``.Messages``, the system prompt
        ``system`` written by the template itself (``go_string``), not ``.System``: a client's system
        message, which Ollama puts there in place of the Modelfile's SYSTEM, is dropped, as ``potstill
        serve`` drops it. Ollama also keeps the system messages among ``.Messages``, hence only user,
        assistant and tool turns are written. A run of tool results is one user turn, a line each
        (``message_text``); ``.Tools`` is named so that Ollama takes a request with tools (it refuses
        one for a template that never reads them), and written nowhere: the student answers without
        them in its prompt, as it trained."""
        first = f"{self.sys_open}{{{{ {go_string(system)} }}}}{self.sys_close}" if system else self.head
        return ('{{ if .Tools }}{{ end }}{{ $prev := "" }}{{ range .Messages }}{{ if eq .Role "user" "assistant" "tool" }}'
                f'{{{{ if eq $prev "" }}}}{first}{{{{ else if and (eq .Role "tool") (eq $prev "tool") }}}}\n'
                f'{{{{ else if eq .Role "assistant" }}}}{self.user_to_assistant}'
                f"{{{{ else }}}}{self.assistant_to_user}{{{{ end }}}}"
                f"{message_text(parallel)}{{{{ $prev = .Role }}}}{{{{ end }}}}{{{{ end }}}}"
                f'{{{{ if eq $prev "user" "tool" }}}}{self.tail}{{{{ end }}}}')


@dataclass(frozen=True)
class Translated:
    template: str  # the Go template, for the Modelfile's TEMPLATE, the instruction written in it
    multi_turn: bool  # whether conversations of several turns rebuild too, not only one user message


def _render(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    try:
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a template's own raise_exception, or any error of its code
        why = " ".join(str(e).split())[:120]  # one line: the reason goes into a Modelfile comment
        raise Untranslatable(f"it does not render a chat of {', '.join(m['role'] for m in chat)}: {why}") from None


def _split(text: str, marks: list[str]) -> list[str]:
    """``text`` cut at each of ``marks``, in order, each appearing once: len(marks) + 1 pieces."""
    out, rest = [], text
    for m in marks:
        if text.count(m) != 1 or m not in rest:
            raise Untranslatable("it does not write each message once, as given, in order")
        before, rest = rest.split(m, 1)
        out.append(before)
    return out + [rest]


def _chat(system: str | None, turns: list[str]) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    return msgs + [{"role": "assistant" if i % 2 else "user", "content": t} for i, t in enumerate(turns)]


def _adds_bos(tokenizer: Any) -> bool:
    """Whether encoding adds the BOS token, as llama.cpp then does for the GGUF's prompts: Ollama's
    prompt text must not carry a second one."""
    bos = getattr(tokenizer, "bos_token_id", None)
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # noqa: BLE001 - no plain encoding: keep the template's text as it is
        return False
    return bos is not None and bool(ids) and ids[0] == bos


def translate(tokenizer: Any, instruction: str, parallel: bool = False) -> Translated:
    """The Go template for ``tokenizer``'s chat template (see the module's docstring); raises
    ``Untranslatable`` with the reason where its renderings are not fixed pieces around messages.
    ``parallel``: earlier tool calls are written as a list even where one (``calls_text``)."""
    s, u0, a1, u2, a3, u4 = (_MARK.format(i) for i in ("s", 0, 1, 2, 3, 4))
    head, tail = _split(_render(tokenizer, _chat(None, [u0])), [u0])
    sys_open, sys_close, tail_s = _split(_render(tokenizer, _chat(s, [u0])), [s, u0])
    if tail_s != tail:
        raise Untranslatable("its generation prompt depends on the system prompt")
    try:
        head3, ua, au, tail3 = _split(_render(tokenizer, _chat(None, [u0, a1, u2])), [u0, a1, u2])
    except Untranslatable:  # one user message still translates; a second one gets no separators
        head3, ua, au, tail3 = head, "", "", tail
    pieces = Pieces(head, sys_open, sys_close, ua, au, tail)
    try:
        multi = head3 == head and tail3 == tail and all(
            pieces.render(sys or "", turns) == _render(tokenizer, _chat(sys, turns))
            for sys in (None, s) for turns in ([u0, a1, u2], [u0, a1, u2, a3, u4]))
    except Untranslatable:
        multi = False
    if any("{{" in p or "}}" in p for p in (head, sys_open, sys_close, ua, au, tail)):
        raise Untranslatable("it writes '{{' or '}}', which a Go template reads as an action")
    system = instruction
    if instruction:  # as the template writes it: Llama 3's trims it
        rendered, end = _render(tokenizer, _chat(instruction, [u0])), sys_close + u0 + tail
        if rendered.startswith(sys_open) and rendered.endswith(end) and len(rendered) >= len(sys_open) + len(end):
            system = rendered[len(sys_open):len(rendered) - len(end)]
    bos = tokenizer.bos_token or ""
    if bos and _adds_bos(tokenizer) and head.startswith(bos) and sys_open.startswith(bos):
        pieces = Pieces(head[len(bos):], sys_open[len(bos):], sys_close, ua, au, tail)
    return Translated(pieces.go(system, parallel), multi)
