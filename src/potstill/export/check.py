"""Check a file in OpenAI's chat fine-tuning format, the one ``openai-jsonl`` writes.

``check_openai_jsonl(path)`` returns one ``file:line: problem`` string per problem (empty: the file
is fine). The exporter runs ``line_problems`` on each row before it writes; ``potstill export-check
FILE`` runs it on any file, and on each ``*.jsonl`` of a folder (``files_to_check``).
The rules are the ones a fine-tuning upload refuses or silently trains badly on: each line one
JSON object with ``messages``, a list of ``{role, content}`` with role system/user/assistant/tool and
non-empty content (a string, or a list of text and image parts, no text part without text), at least
one user message, and an assistant message last (the target). An assistant turn of ``tool_calls`` may have no content; a
``tool`` message names the call it answers (``tool_call_id``); a message's ``weight``, where
given, is 0 or 1 (whether the assistant turn is trained on). The legacy function calling, which
OpenAI's format still takes (and Azure's fine-tuning requires), passes too: an assistant turn of
``function_call`` without content, a ``function`` message with its ``name``. Each of an assistant
turn's ``tool_calls`` is ``{id, type: function, function: {name, arguments}}``, its arguments a JSON
object written as a string; a line's ``tools``, where given, are function tools, and the calls name
one of them. Every string must be
text UTF-8 can encode (no lone surrogate). The exporter refuses a row for exactly these problems
(and its task's own validation), so a file ``export`` writes passes the check and one it would
refuse does not.
"""

from __future__ import annotations

import json
from pathlib import Path

from potstill.errors import PotstillError

ROLES = ("system", "user", "assistant", "tool", "function")  # function: legacy function calling, still taken
PARTS = ("text", "image_url")  # the content parts a chat fine-tuning file may hold
MAX_PROBLEMS = 100  # a file broken on every line says so in the first hundred


def line_problems(line: str) -> list[str]:
    """The problems of one line of the file (empty: the line is fine)."""
    try:
        row = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        return [f"not valid JSON ({e.msg} at column {e.colno})"]
    except ValueError as e:
        return [f"not valid JSON ({e})"]
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    problems = []
    declared = _tool_names(row, problems)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"messages[{i}] is not an object")
            continue
        if m.get("role") not in ROLES:
            problems.append(f"messages[{i}].role {m.get('role')!r} is not one of {', '.join(ROLES)}")
        content = m.get("content")
        weight = m.get("weight", 1)
        if type(weight) is not int or weight not in (0, 1):  # its schema: an integer, 0 or 1 (JSON true is none)
            problems.append(f"messages[{i}].weight {json.dumps(weight)} is not 0 or 1")
        if m.get("role") == "tool" and not isinstance(m.get("tool_call_id"), str):
            problems.append(f"messages[{i}] (tool): no tool_call_id naming the call it answers")
        if m.get("role") == "function" and not isinstance(m.get("name"), str):
            problems.append(f"messages[{i}] (function): no name naming the function it answers")
        if m.get("tool_calls") is not None:
            problems += _call_problems(m["tool_calls"], f"messages[{i}]", declared)
            if isinstance(m["tool_calls"], list) and len(m["tool_calls"]) > 1 and row.get("parallel_tool_calls") is False:
                problems.append(f"messages[{i}]: {len(m['tool_calls'])} tool calls on a line with parallel_tool_calls false")
        if content is None and m.get("role") == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            continue
        if content is None and m.get("role") == "function":  # its schema: content required but nullable
            continue
        if isinstance(content, list):
            bad = next((j for j, p in enumerate(content) if not (isinstance(p, dict) and p.get("type") in PARTS)), None)
            if bad is not None or not content:
                problems.append(f"messages[{i}].content: " + (f"part {bad} is not a part of type {' or '.join(PARTS)}"
                                                               if bad is not None else "an empty list of parts"))
                continue
            # A text part with no text ([{"type": "text", "text": ""}]) joined to "" and passed as an
            # image-only message; OpenAI's fine-tuning refuses the file for it.
            blank = next((j for j, p in enumerate(content) if p["type"] == "text"
                          and not (isinstance(p.get("text"), str) and p["text"].strip())), None)
            if blank is not None:
                problems.append(f"messages[{i}].content: part {blank} is a text part with no text")
                continue
            content = "".join(p["text"] for p in content if p["type"] == "text") or "(an image)"
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content must be a string or a list of parts, got {type(content).__name__}")
        elif not content.strip():
            what = "empty completion" if m.get("role") == "assistant" else "empty content"
            problems.append(f"messages[{i}] ({m.get('role')}): {what}")
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if "user" not in roles:
        problems.append("no user message")
    if not roles or roles[-1] != "assistant":
        problems.append("the last message must be the assistant's (the completion to train on)")
    return problems + _not_text(row)


def _tool_names(row: dict, problems: list[str]) -> set[str] | None:
    """The function names a line's ``tools`` declare (None: it declares none), its problems added."""
    if "parallel_tool_calls" in row and not isinstance(row["parallel_tool_calls"], bool):
        problems.append("parallel_tool_calls must be true or false")
    tools = row.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        problems.append("'tools' must be a list of function tools")
        return None
    names = set()
    for j, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            problems.append(f"tools[{j}] is not a function tool ({{type: function, function: {{name, parameters}}}})")
            return None  # the calls are not judged against a list that is itself wrong
        names.add(fn["name"])
    return names


def _call_problems(calls: object, where: str, declared: set[str] | None) -> list[str]:
    """What is wrong with an assistant turn's ``tool_calls``: each a function call with an id, a name
    (one of the line's ``tools`` where it declares any) and its arguments a JSON object as a string."""
    if not isinstance(calls, list) or not calls:
        return [f"{where}.tool_calls must be a non-empty list"]
    problems = []
    for j, c in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(c, dict) or c.get("type") != "function" or not isinstance(c.get("id"), str) \
                or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            problems.append(f"{at} is not a function call ({{id, type: function, function: {{name, arguments}}}})")
            continue
        if declared is not None and fn["name"] not in declared:
            problems.append(f"{at} calls {fn['name']!r}, which the line's tools do not declare")
        try:
            args = json.loads(fn.get("arguments")) if isinstance(fn.get("arguments"), str) else None
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            problems.append(f"{at}.function.arguments must be a JSON object written as a string")
    return problems


def _not_text(value: object, where: str = "") -> list[str]:
    """A lone surrogate (JSON's "\\ud83d" alone: an emoji cut in half at a token limit) reads back from
    JSON as a string but is no text: UTF-8 cannot encode it, nor can a fine-tuning upload take it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return [f"{where or 'a string'}: a lone surrogate U+{ord(value[e.start]):04X} (half a character) after "
                    f"{value[max(0, e.start - 30):e.start]!r}, which UTF-8 cannot encode; fix the text"]
        return []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _not_text(key, f"{where or 'the line'} (a key)") if isinstance(key, str) else []
        found = found or _not_text(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found:
            return found  # the first one: the line is refused for it, and the fix is the same for others
    return []


def _no_constant(name: str) -> None:
    """Python's json reads NaN, Infinity and -Infinity; JSON has no such values."""
    raise ValueError(f"{name} is not a JSON value")


def files_to_check(path: str | Path) -> list[Path]:
    """The files ``export-check PATH`` checks: PATH itself, or each ``*.jsonl`` directly in a folder.

    A folder is what ``export --format openai-jsonl`` names (``RUN/export/openai-jsonl``: train.jsonl,
    val.jsonl). A run directory is refused: its ``*.jsonl`` are potstill records, which would fail on
    every line for a reason that is no fault of theirs.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    hint = "give a fine-tuning JSONL file, or the folder `potstill export --format openai-jsonl` writes (RUN/export/openai-jsonl)"
    if (path / "manifest.json").is_file():
        raise PotstillError(f"{path}: a potstill run directory (its *.jsonl are potstill records, not OpenAI "
                            f"fine-tuning rows); {hint}")
    files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
    if not files:
        raise PotstillError(f"{path}: no *.jsonl file in this folder; {hint}")
    return files


def check_openai_jsonl(path: str | Path) -> list[str]:
    """Problems of an OpenAI fine-tuning JSONL file as ``file:line: problem`` strings."""
    path = Path(path)
    if path.is_dir():
        raise PotstillError(f"{path}: a directory, not a JSONL file; potstill.export.check.files_to_check lists "
                            "the files of a folder to check")
    if not path.is_file():
        raise PotstillError(f"{path}: file not found")
    problems: list[str] = []
    n = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # a UTF-16 export from Windows, say: no line of it is JSON
                n += 1
                problems.append(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "save the file as UTF-8")
                if len(problems) >= MAX_PROBLEMS:
                    problems.append(f"{path}: stopped after {MAX_PROBLEMS} problems")
                    return problems
                continue
            if not line.strip():
                problems.append(f"{path}:{lineno}: blank line")
                continue
            n += 1
            problems += [f"{path}:{lineno}: {p}" for p in line_problems(line)]
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"{path}: stopped after {MAX_PROBLEMS} problems")
                return problems
    if n == 0:
        problems.append(f"{path}: no examples")
    return problems
