"""What Ollama makes of a Modelfile, for tests that have no Ollama: its Modelfile parser, the subset of
Go's text/template its chat templates use, and the prompt its chat endpoint renders.

Ports of ollama/ollama ``parser/parser.go`` (ParseFile, unquote), ``template/template.go`` (Execute
on a template that reads ``.Messages``, and ``collate``) and the system-message step of
``server/routes.go`` (ChatHandler); the template language follows Go's ``text/template``
documentation: ``{{- x -}}`` trims the white space beside it, ``if``/``else if``/``else``/``end``,
``range`` (dot is each element), variables declared with ``:=`` and set with ``=`` (their scope
ends at the ``end`` of the block they were declared in), ``$`` the data passed in, and the functions
``eq`` (two or more arguments: the first equal to any other), ``ne``, ``and``, ``or``, ``not``, ``len``,
and Ollama's ``json`` (Go's ``json.Marshal``); ``range $k, $v := MAP`` visits a map's keys sorted, as Go does.
Anything else raises, so a template that steps outside this subset fails its test instead of
rendering wrongly.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

# ---------------------------------------------------------------------------------------------
# Modelfile


def ollama_commands(modelfile: str) -> list[tuple[str, str]]:
    """(command, argument) pairs as Ollama reads a Modelfile: a port of ParseFile and unquote in
    ollama/ollama parser/parser.go. A value is the text up to the first line end at which it unquotes:
    ``\"\"\"...\"\"\"`` or ``"..."`` stripped of its quotes, with no escape sequences at all; runes that
    are not printable are dropped unless they are a space or line end inside an open quote."""

    def unquote(s: str) -> tuple[str, bool]:
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    def step(r: str, state: str) -> tuple[str, str]:
        space, newline = r in " \t", r in "\r\n"
        if state == "nil":
            return ("comment", "") if r == "#" else ("nil", "") if space or newline else ("name", r)
        if state == "name":
            assert r.isalpha() or space, f"invalid command at {r!r}"
            return ("name", r) if r.isalpha() else ("value", "")
        if state == "value":
            return ("nil", r) if space or newline else ("value", r)
        if state == "param":
            return ("param", r) if r.isalnum() or r == "_" else ("value", "")
        return ("nil", "") if newline else ("comment", "")

    commands, state, buf, name = [], "nil", "", ""
    for r in modelfile:
        nxt, r = step(r, state)
        if nxt != state:
            if state == "name":
                name = {"from": "model"}.get(buf.lower(), buf.lower())
                nxt = "param" if name == "parameter" else nxt
            elif state == "param":
                name = buf
            elif state == "value":
                s, ok = unquote(buf.strip())
                if not ok or r in " \t":
                    buf += r
                    continue
                commands.append((name, s))
            buf, state = "", nxt
        if r and r.isprintable():
            buf += r
    if state == "value":
        s, ok = unquote(buf.strip())
        assert ok, "unexpected EOF"
        commands.append((name, s))
    return commands


# ---------------------------------------------------------------------------------------------
# Go text/template (the subset chat templates use)

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|,|:=|=|\$?[A-Za-z_]*(?:\.[A-Za-z_][A-Za-z_0-9]*)+|\$[A-Za-z_0-9]*|\.|[A-Za-z_][A-Za-z_0-9]*|\d+)')


def _tokens(src: str) -> list[str]:
    out, pos = [], 0
    while pos < len(src):
        if not src[pos:].strip():
            break
        m = _TOKEN.match(src, pos)
        assert m and m.end() > pos, f"unsupported Go template syntax: {src[pos:]!r}"
        out.append(m.group(1))
        pos = m.end()
    return out


def _parse(template: str) -> list[Any]:
    """A list of nodes: ``("text", s)``, ``("out", pipe)``, ``("set", name, pipe, declare)``,
    ``("if", [(pipe, body)...], else_body)``, ``("range", pipe, body)``."""
    parts: list[Any] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if parts and parts[-1][0] == "trim_next":
            parts.pop()
            text = text.lstrip(" \t\r\n")
        parts.append(("text", text))
        parts.append(("action", _tokens(m.group(2))))
        if m.group(3):
            parts.append(("trim_next",))
        pos = m.end()
    text = template[pos:]
    if parts and parts[-1][0] == "trim_next":
        parts.pop()
        text = text.lstrip(" \t\r\n")
    parts.append(("text", text))

    def block(i: int, stop: tuple[str, ...]) -> tuple[list[Any], int, list[str] | None]:
        nodes: list[Any] = []
        while i < len(parts):
            p = parts[i]
            if p[0] == "text":
                if p[1]:
                    nodes.append(p)
                i += 1
                continue
            toks = p[1]
            if toks and toks[0] in stop:
                return nodes, i, toks
            if toks and toks[0] == "if":
                branches, els = [], []
                cond = toks[1:]
                while True:
                    body, i, end = block(i + 1, ("else", "end"))
                    branches.append((cond, body))
                    assert end is not None, "if without end"
                    if end[0] == "end":
                        break
                    if end[1:2] == ["if"]:
                        cond = end[2:]
                        continue
                    els, i, end = block(i + 1, ("end",))
                    assert end is not None, "else without end"
                    break
                nodes.append(("if", branches, els))
                i += 1
            elif toks and toks[0] == "range":
                names, pipe = [], toks[1:]
                if ":=" in toks:  # range $v := X, or range $k, $v := X
                    at = toks.index(":=")
                    names, pipe = [t for t in toks[1:at] if t != ","], toks[at + 1:]
                    assert 1 <= len(names) <= 2 and all(n.startswith("$") for n in names), f"range {toks}"
                body, i, end = block(i + 1, ("end",))
                assert end == ["end"], "range without end"
                nodes.append(("range", pipe, body, names))
                i += 1
            elif len(toks) >= 2 and toks[0].startswith("$") and toks[1] in (":=", "="):
                nodes.append(("set", toks[0], toks[2:], toks[1] == ":="))
                i += 1
            else:
                assert toks, "empty action"
                nodes.append(("out", toks))
                i += 1
        return nodes, i, None

    nodes, _, end = block(0, ())
    assert end is None
    return nodes


def _truth(v: Any) -> bool:
    return not (v is None or v is False or v == 0 or v == "" or (hasattr(v, "__len__") and len(v) == 0))


def _field(v: Any, name: str) -> Any:
    return v.get(name) if isinstance(v, dict) else getattr(v, name)


class _Scope:
    def __init__(self, root: Any) -> None:
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def get(self, name: str) -> Any:
        for f in reversed(self.frames):
            if name in f:
                return f[name]
        raise AssertionError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for f in reversed(self.frames):
            if name in f:
                f[name] = value
                return
        raise AssertionError(f"assignment to undeclared {name}")


def _eval(toks: list[str], dot: Any, scope: _Scope) -> Any:
    def operand(i: int) -> tuple[Any, int]:
        t = toks[i]
        if t == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[j], 0)
                j += 1
            return _eval(toks[i + 1:j - 1], dot, scope), j
        if t.startswith('"'):
            return ast.literal_eval(t), i + 1
        if t.isdigit():
            return int(t), i + 1
        if t in ("true", "false"):
            return t == "true", i + 1
        if t == ".":
            return dot, i + 1
        if t.startswith("$"):
            name, *path = t.split(".")
            v = scope.get(name)
        elif t.startswith("."):
            v, path = dot, t[1:].split(".")
        else:
            raise AssertionError(f"unsupported operand {t!r}")
        for p in path:
            v = _field(v, p)
        return v, i + 1

    funcs = {"eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
             "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
             "or": lambda *a: next((x for x in a if _truth(x)), a[-1]), "not": lambda a: not _truth(a),
             "len": len, "json": go_json}
    if toks[0] in funcs:
        args, i = [], 1
        while i < len(toks):
            v, i = operand(i)
            args.append(v)
        return funcs[toks[0]](*args)
    v, i = operand(0)
    assert i == len(toks), f"unsupported pipeline {toks}"
    return v


def _run(nodes: list[Any], dot: Any, scope: _Scope, out: list[str]) -> None:
    for n in nodes:
        kind = n[0]
        if kind == "text":
            out.append(n[1])
        elif kind == "out":
            v = _eval(n[1], dot, scope)
            out.append("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
        elif kind == "set":
            v = _eval(n[2], dot, scope)
            if n[3]:
                scope.frames[-1][n[1]] = v
            else:
                scope.assign(n[1], v)
        elif kind == "if":
            for cond, body in n[1]:
                if _truth(_eval(cond, dot, scope)):
                    chosen = body
                    break
            else:
                chosen = n[2]
            scope.frames.append({})
            _run(chosen, dot, scope, out)
            scope.frames.pop()
        elif kind == "range":
            seq = _eval(n[1], dot, scope) or []
            pairs = sorted(seq.items()) if isinstance(seq, dict) else list(enumerate(seq))
            for key, item in pairs:
                names = n[3]
                scope.frames.append(dict(zip(names, (item,) if len(names) == 1 else (key, item))))
                _run(n[2], item, scope, out)
                scope.frames.pop()


def go_json(v: Any) -> str:
    """Go's ``json.Marshal``: no spaces, map keys sorted, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped."""
    text = json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for c in "<>&\u2028\u2029":
        text = text.replace(c, f"\\u{ord(c):04x}")
    return text


def render_go(template: str, data: dict[str, Any]) -> str:
    """``template`` executed on ``data`` as Go's text/template would (the subset above)."""
    out: list[str] = []
    _run(_parse(template), data, _Scope(data), out)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Ollama's chat endpoint


def ollama_chat_prompt(template: str, system: str, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt text Ollama's /api/chat renders for ``messages`` with a Modelfile's TEMPLATE and
    SYSTEM: the SYSTEM goes first as a system message unless the chat starts with one (ChatHandler);
    ``collate`` merges consecutive messages of one role (but ``tool``) with a blank line and joins every
    system message into ``.System``, keeping them among ``.Messages`` too. Messages in OpenAI's form, as
    its OpenAI endpoint takes them (openai/openai.go, FromChatRequest): an assistant's ``tool_calls``
    become ``.ToolCalls`` (arguments parsed), a tool message's ``.ToolName`` its ``name`` or else the
    name of the call its ``tool_call_id`` answers."""
    assert ".Messages" in template, "a legacy .Prompt template renders per turn: not ported"
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    names = {c["id"]: c["function"]["name"] for m in msgs for c in m.get("tool_calls") or []}
    sys_parts: list[str] = []
    collated: list[dict[str, Any]] = []
    for m in msgs:
        content = m.get("content") or ""
        if m["role"] == "system":
            sys_parts.append(content)
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + content
        else:
            calls = [{"ID": c["id"], "Function": {"Name": c["function"]["name"],
                                                  "Arguments": json.loads(c["function"]["arguments"] or "{}")}}
                     for c in m.get("tool_calls") or []]
            tool = (m.get("name") or names.get(m.get("tool_call_id"), "")) if m["role"] == "tool" else ""
            collated.append({"Role": m["role"], "Content": content, "ToolCalls": calls, "ToolName": tool})
    return render_go(template, {"System": "\n\n".join(sys_parts), "Messages": collated, "Tools": tools,
                                "Response": ""})
