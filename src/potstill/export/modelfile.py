"""An Ollama Modelfile for a GGUF student: its chat template, the task instruction, greedy decoding.

Ollama renders prompts with Go templates, not Jinja, so the student's chat template is translated:
ChatML (``<|im_start|>role\\n...<|im_end|>``, SmolLM2's and Qwen's format) by ``chatml_template``,
any other (Gemma, Llama 3, Phi-3, ...) by ``ollama_template.translate``, which reads the template's
pieces off its own renderings. One it cannot translate gets no TEMPLATE, a comment in the Modelfile
and a warning saying why: Ollama then uses a template of its own that it finds close to the GGUF's,
or none (the bare message). A student without a chat template was trained on PromptFormat's plain
completion prompt, which its GGUF does not carry, so the Modelfile spells that prompt out
(``completion_template``).

The system prompt is the task instruction, as the student saw it in training, written by the
TEMPLATE itself (``ollama_template.go_string``) rather than read from ``.System``: Ollama puts a
client's own system message there in place of the Modelfile's SYSTEM, so a client that sends one (the
openai SDK's users usually do) replaced the instruction the student was trained with; ``potstill
serve`` drops a client's system message, and so does the TEMPLATE (Ollama also keeps the system
messages among ``.Messages``, so the loop writes only user, assistant and tool turns). Without an
instruction it is the system turn the chat template writes by itself, if any (SmolLM2's). Only a
Modelfile with no TEMPLATE (a chat template it cannot translate) carries the instruction as SYSTEM,
for the template Ollama picks, which a client's system message then replaces.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.markup import escape

from potstill.errors import PotstillError
from potstill.export.ollama_template import Untranslatable, go_string, message_text, translate
from potstill.models.prompting import PromptFormat, end_of_turn
from potstill.progress import say

def chatml_template(system: str = "", parallel: bool = False) -> str:
    """What the Jinja template renders for ChatML, in Go-template syntax: the system turn of ``system``
    (none where empty; a client's system or developer message is not read), the user, assistant and
    tool turns, then the generation prompt. A run of tool results is one user turn, a line each, and calls are their JSON
    (``ollama_template.message_text``: as training read them); ``.Tools`` is named only so that Ollama
    takes a request with tools. `{{-` trims only the whitespace *before* it, so the newline after each
    <|im_end|> (the system turn's, and inside a `range` body) is kept."""
    head = f"<|im_start|>system\n{{{{ {go_string(system)} }}}}<|im_end|>\n" if system else ""
    return "{{- if .Tools }}{{ end }}" + head + """{{ $prev := "" }}
{{- range .Messages }}{{- if eq .Role "user" "assistant" "tool" }}
{{- if and (eq .Role "tool") (eq $prev "tool") }}
{{ else }}{{ if eq $prev "tool" }}<|im_end|>
{{ end }}<|im_start|>{{ if eq .Role "tool" }}user{{ else }}{{ .Role }}{{ end }}
{{ end }}""" + message_text(parallel) + """{{ if ne .Role "tool" }}<|im_end|>
{{ end }}{{ $prev = .Role }}{{ end }}{{- end }}
{{- if eq $prev "tool" }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def completion_template(instruction: str) -> str:
    """PromptFormat's completion prompt (a student with no chat template): the instruction (written
    by the template, as ``chatml_template`` writes it) and a blank line, the input (Ollama's
    ``.Prompt``), then the answer prefix; it learned to answer " label\\n"."""
    head = f"{{{{ {go_string(instruction)} }}}}\n\n" if instruction else ""
    return head + "{{ .Prompt }}\n" + PromptFormat(kind="completion").answer_prefix


def is_chatml(chat_template: str | None) -> bool:
    return bool(chat_template) and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template


def default_system(tokenizer: Any) -> str:
    """The system turn a ChatML template writes for a chat that has none (SmolLM2's "You are a
    helpful AI assistant named SmolLM, ...", Qwen2.5's "You are Qwen, ..."), else ''. A student trained
    without an instruction learned its prompts with that turn; Ollama's TEMPLATE writes it only as SYSTEM."""
    mark = "\u2063potstill-user\u2063"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that will not render keeps no default
        return ""
    head, end = "<|im_start|>system\n", "<|im_end|>"
    before = text.split(mark, 1)[0]
    if head not in before or end not in before.split(head, 1)[1]:
        return ""
    return before.split(head, 1)[1].split(end, 1)[0]


def _quote(text: str, what: str) -> str:
    """A Modelfile string: the text as it is between triple quotes. Ollama's parser (parser/parser.go,
    ``unquote``) knows no escape sequences, so a JSON-escaped string reached the model with its
    backslashes (and \\uXXXX for every non-ASCII letter); a value ends at the first line end where it
    unquotes, so ``\"\"\"`` at the end of a line inside the text is the one thing no string can hold."""
    if any(c in "\r\n" and text[:i].endswith('"""') for i, c in enumerate(text)):
        raise PotstillError(f'export: {what} has """ at the end of a line, which an Ollama Modelfile string '
                            f"cannot hold (its parser has no escapes); reword it")
    return f'"""{text}"""'


def ollama_drops(text: str) -> list[tuple[int, str]]:
    """The characters of a Modelfile string that Ollama's parser drops, with their offsets: it keeps
    only the runes Go's ``strconv.IsPrint`` accepts (letters, marks, numbers, punctuation, symbols,
    the ASCII space), and the tabs and line ends inside an open quote. Zero-width and no-break
    spaces, soft hyphens, other controls go, and no escape brings them back."""
    return [(i, c) for i, c in enumerate(text) if not c.isprintable() and c not in " \t\r\n"]


def _warn_dropped(text: str, what: str) -> None:
    dropped = ollama_drops(text)
    if not dropped:
        return
    shown = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')} at {i}" for i, c in dropped[:5])
    more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    say(f"[yellow]export: {what} holds {len(dropped)} character(s) Ollama's Modelfile parser drops ({shown}{more}): "
        f"the system prompt Ollama serves differs from the one the student trained on; remove them from "
        f"{what} and retrain to match[/yellow]")


def _stop(text: str) -> str:
    """A stop string as Ollama reads it: ``"<|im_end|>"``; one with a line break between triple quotes
    (JSON's ``"\\n"`` reached Ollama as a backslash and an n, a stop no answer ever writes)."""
    if "\n" in text or "\r" in text or text.startswith('""'):
        return _quote(text, "a stop string")
    return f'"{text}"'


def render_modelfile(gguf_path: str, tokenizer: Any, instruction: str, num_predict: int,
                     one_line: bool = False, warn: bool = True, adapter: str | None = None,
                     parallel: bool = False) -> str:
    """The Modelfile text for ``FROM gguf_path`` (a path relative to the Modelfile).

    ``one_line``: the task's answers never hold a newline (a label, compact JSON), so a student
    without a chat template stops at one too (it is trained to end with EOS since 2026-12-07, with a
    newline before: such a student stops there). ``warn``: say what Ollama
    will read otherwise than written (one Modelfile per GGUF type says it once). ``adapter``: a GGUF
    LoRA adapter Ollama applies on the ``FROM`` model (its ``ADAPTER`` command). ``parallel``: a parallel
    tools task, whose student read earlier calls as a list even where one (``PromptFormat.calls_as_list``)."""
    template = getattr(tokenizer, "chat_template", None)
    lines = [f"FROM {gguf_path}", *([f"ADAPTER {adapter}"] if adapter else []), ""]
    stops = []
    system = ""  # SYSTEM: only where no TEMPLATE writes the instruction itself
    if is_chatml(template):
        lines += [f"TEMPLATE {_quote(chatml_template(instruction or default_system(tokenizer), parallel), 'the template')}",
                  ""]
        stops = ["<|im_end|>", "<|im_start|>"]
    elif not template:
        # The instruction as PromptFormat.prefix puts it.
        lines += [f"TEMPLATE {_quote(completion_template(instruction.strip()), 'the template')}", ""]
        stops = ["\n"] if one_line else []
    else:
        try:
            translated = translate(tokenizer, instruction, parallel)
        except Untranslatable as e:
            lines += [f"# No TEMPLATE: potstill could not translate the student's chat template ({e}).", ""]
            system = instruction
            if warn:
                say(f"[yellow]export: the chat template could not be translated into an Ollama TEMPLATE ({escape(str(e))}); "
                    "the Modelfile has none, so Ollama uses a template of its own it finds close to the GGUF's, or "
                    "sends the bare message: the prompt differs from training unless you write a TEMPLATE[/yellow]")
        else:
            lines += [f"TEMPLATE {_quote(translated.template, 'the template')}", ""]
            if warn and not translated.multi_turn:
                say("[yellow]export: the Modelfile's TEMPLATE renders one user message as the chat template does, "
                    "not a conversation of several turns (the chat template places the system prompt or the "
                    "turns otherwise)[/yellow]")
    # The turn end the student learned to write after an answer (``<end_of_turn>`` for Gemma), which
    # is not always its EOS: every potstill generation stops there, and so must Ollama's.
    ends = [end_of_turn(tokenizer)] if template else []
    for end in [*ends, tokenizer.eos_token]:
        if end and end not in stops:
            stops.append(end)
    if system:
        lines += [f"SYSTEM {_quote(system, 'task.instruction')}", ""]
        if warn:
            _warn_dropped(system, "task.instruction")
    # Greedy, like potstill's own evaluation, and no longer than the task's longest answer.
    lines += ["PARAMETER temperature 0", f"PARAMETER num_predict {int(num_predict)}"]
    lines += [f"PARAMETER stop {_stop(s)}" for s in stops]
    return "\n".join(lines) + "\n"
