"""Tool calling as a task (``task.type: tools``): the function tools a student learns to call, the
JSON Schema of one call as the student writes it, and the teacher's calls in that form.

A call is written ``{"name": NAME, "arguments": {...}}``: the text the student is trained on and
generates, which serve turns back into OpenAI ``tool_calls``. With ``task.parallel_tool_calls`` an
answer is a list of one or more such calls. This module imports nothing of potstill's, so the config
can derive ``task.json_schema`` from ``task.tools`` while it loads.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

# OpenAI's rule for a function's name.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


def tools_problem(tools: Any) -> str | None:
    """Why ``tools`` is not a list of OpenAI function tools with distinct names, or None."""
    if not isinstance(tools, list) or not tools:
        return "a tools task needs task.tools: a list of OpenAI function tools ({type: function, function: {name, parameters}})"
    import jsonschema

    names: set[str] = set()
    for i, t in enumerate(tools):
        where = f"task.tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            return f"{where}: expected {{type: function, function: {{name, description, parameters}}}}"
        if set(t) - {"type", "function"}:
            return f"{where}: unknown key(s) {sorted(set(t) - {'type', 'function'})}"
        fn = t["function"]
        if set(fn) - _FUNCTION_KEYS:
            return f"{where}.function: unknown key(s) {sorted(set(fn) - _FUNCTION_KEYS)}"
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return f"{where}.function.name: {name!r} is not a function name (letters, digits, _ and -, at most 64)"
        if name in names:
            return f"{where}.function.name: {name!r} is declared twice"
        names.add(name)
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict) or params.get("type") != "object":
                return f"{where}.function.parameters: must be a JSON Schema of type object"
            try:
                jsonschema.validators.validator_for(params).check_schema(params)
            except jsonschema.SchemaError as e:
                return f"{where}.function.parameters: not a valid JSON Schema: {e.message}"
    return None


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    """The functions' names, in order."""
    return [t["function"]["name"] for t in tools or []]


def tools_schema(tools: list[dict[str, Any]], parallel: bool = False) -> dict[str, Any]:
    """The JSON Schema of one call of one of ``tools``: ``{name, arguments}``, the arguments under
    that function's parameters (any object where it declares none); ``parallel``: of a list of one
    or more such calls."""
    branches = [{"type": "object",
                 "properties": {"name": {"const": t["function"]["name"]},
                                "arguments": t["function"].get("parameters") or {"type": "object"}},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    one = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def call_text(tool_calls: list[dict[str, Any]], parallel: bool = False) -> str:
    """A teacher's ``tool_calls`` (OpenAI's form) as the text the student learns: each call as
    ``{name, arguments}`` (its arguments parsed; left as the string where they are not JSON, which
    the schema then refuses). ``parallel``: a list of them; else one call alone, and several as a
    list (which a one-call task's schema refuses)."""
    calls = []
    for c in tool_calls:
        fn = c.get("function") or {}
        args = fn.get("arguments")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass
        calls.append({"name": fn.get("name"), "arguments": args})
    return json.dumps(calls[0] if len(calls) == 1 and not parallel else calls, ensure_ascii=False)


def calls_of(parsed: Any) -> list[dict[str, Any]]:
    """The calls of a parsed answer: one call ``{name, arguments}``, or each of a list of them
    (a parallel tools task's answer); none for anything else."""
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list) and all(isinstance(c, dict) for c in parsed):
        return parsed
    return []


def as_tool_calls(parsed: Any) -> list[dict[str, Any]]:
    """A student's parsed answer (one call ``{name, arguments}``, or a list of them) as OpenAI's
    ``tool_calls`` (arguments a JSON string)."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls_of(parsed)]


def shown_tools(instruction: str, tools: list[dict[str, Any]], parallel: bool = False) -> str:
    """``instruction`` with the functions and the form of an answer spelt out: how a model that has
    not learnt the tools (the pilot's untrained student) is asked to call them."""
    form = '[{"name": ..., "arguments": {...}}, ...] of the calls' if parallel else '{"name": ..., "arguments": {...}} of the call'
    return ((instruction.strip() + "\n\n") if instruction.strip() else "") + \
        f"Answer with only the JSON {form} to make, to these functions:\n" + \
        json.dumps([t["function"] for t in tools], ensure_ascii=False)


def same_tools(asked: list[dict[str, Any]], declared: list[dict[str, Any]]) -> bool:
    """Whether a request's tools are the task's: the same names with the same parameters (their
    descriptions may differ; a student answers by what it learnt, not by reading them)."""
    def key(tools: list[dict[str, Any]]) -> dict[str, str]:
        return {t["function"]["name"]: json.dumps(t["function"].get("parameters") or {"type": "object"},
                                                  sort_keys=True) for t in tools}

    try:
        return key(asked) == key(declared)
    except (KeyError, TypeError):
        return False
