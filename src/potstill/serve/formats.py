"""A client's structured-output request: ``response_format`` (chat completions) or ``text.format``
(Responses), what it asks of an answer, and whether an answer gives it.

Every served answer is routed on its whole text before anything is sent (``Service.answer``), so a
student's answer that is not the JSON asked for goes to the teacher (route reason
``response_format``) instead of reaching a client whose ``client.chat.completions.parse`` would
raise on it. The teacher gets the format in its API's own terms where it takes one
(``Teacher.with_response_format``: an OpenAI-compatible server constrains its own decoding; Claude
takes a JSON schema as ``output_config.format``; a greedy local teacher decodes under it,
``models.json_constraint``); its answer is checked too, and where it fails the
route says why (``response_format_problem``), as nothing else could have answered.

Formats are kept in the chat-completions form throughout (``{"type": "json_object"}``,
``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``); a plain
``{"type": "text"}`` asks nothing and is the same as none. vLLM's structured-output fields
(``check_vllm_format``) add three of potstill's own: ``{"type": "regex", "regex": pattern}``,
``{"type": "choice", "choice": [...]}`` and ``{"type": "grammar", "grammar": gbnf}``, the whole
answer matched, which no API teacher takes (a greedy local teacher decodes under them).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Callable

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TYPES = ("text", "json_object", "json_schema")


class FormatError(ValueError):
    """A format the server refuses (a 400): ``param`` names the field, as OpenAI's errors do."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param}: {problem}")
        self.param = param


def check_chat_format(value: Any) -> dict[str, Any] | None:
    """A chat request's ``response_format`` as served (None for text), or FormatError saying what is
    wrong with it (as OpenAI's API refuses it: an unknown type, a json_schema without a name, or a
    schema that is no JSON Schema)."""
    return _check(value, "response_format", lambda v: v.get("json_schema"), "response_format.json_schema")


def check_responses_format(value: Any) -> dict[str, Any] | None:
    """A Responses request's ``text.format`` (``{type, name, schema, strict}`` flat) in the chat form
    (None for text), or FormatError as ``check_chat_format``."""
    return _check(value, "text.format", lambda v: {k: x for k, x in v.items() if k != "type"}, "text.format")


def _check(value: Any, where: str, spec_of: Callable[[dict], Any], spec_where: str) -> dict[str, Any] | None:
    """One format at ``where`` in the chat form; ``spec_of``: where its json_schema fields sit."""
    if not isinstance(value, dict):
        raise FormatError(where, "expected an object such as {\"type\": \"json_object\"}")
    kind = value.get("type")
    if kind not in TYPES:
        raise FormatError(f"{where}.type", f"{kind!r} is not one of {', '.join(TYPES)}")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = spec_of(value)
    if not isinstance(spec, dict):
        raise FormatError(spec_where, "required with type json_schema (an object with a name and a schema)")
    return {"type": "json_schema", "json_schema": _schema_spec(spec, spec_where)}


# vLLM's structured-output parameters, as its OpenAI-compatible server takes them beside the API's own
# (``extra_body`` in the openai client): the older ``guided_*`` fields and ``structured_outputs``.
VLLM_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
_VLLM_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def check_vllm_format(fields: dict[str, Any]) -> dict[str, Any] | None:
    """vLLM's structured-output request (``fields``: a request's ``VLLM_FIELDS`` that are set) in the
    chat form, or None where it asks nothing, or FormatError: ``guided_json`` / ``structured_outputs.json``
    (a JSON Schema, or its JSON text) is a ``json_schema`` format named ``guided_json``;
    ``structured_outputs.json_object`` is ``json_object``; a regular expression, a choice and a grammar
    (GBNF or Lark) are formats of their own (``regex``, ``choice``, ``grammar``); a structural tag is
    refused by name, since the student would otherwise answer unconstrained and the client never
    know; two constraints at once are refused, as vLLM refuses them."""
    asks: list[tuple[str, str, Any]] = []  # (param, kind, value)
    for name, value in fields.items():
        if value is None:
            continue
        if name == "structured_outputs":
            if not isinstance(value, dict):
                raise FormatError(name, "expected an object such as {\"json\": {...}}")
            asks += [(f"{name}.{k}", k, v) for k, v in value.items() if k in _VLLM_KINDS and v not in (None, False)]
        else:
            asks.append((name, name.removeprefix("guided_"), value))
    if not asks:
        return None
    if len(asks) > 1:
        raise FormatError(asks[1][0], f"one structured-output constraint per request; {asks[0][0]} is given too")
    param, kind, value = asks[0]
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "regex":
        from potstill.models.regex_constraint import pattern_problem

        problem = pattern_problem(value) if isinstance(value, str) else "expected a regular expression (a string)"
        if problem:
            raise FormatError(param, f"not a regular expression: {problem}")
        return {"type": "regex", "regex": value}
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise FormatError(param, "expected a list of non-empty strings")
        return {"type": "choice", "choice": list(value)}
    if kind == "grammar":
        from potstill.models.grammar_constraint import grammar_problem

        problem = grammar_problem(value) if isinstance(value, str) else "expected a GBNF or Lark grammar (a string)"
        if problem:
            raise FormatError(param, f"not a grammar: {problem}")
        return {"type": "grammar", "grammar": value}
    if kind != "json":
        raise FormatError(param, f"not served here: potstill's guided decoding follows JSON Schemas, regular "
                          f"expressions, choices and grammars; this {kind} would go unconstrained")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise FormatError(param, "expected a JSON Schema (an object, or its JSON text)") from None
    if not isinstance(value, dict):
        raise FormatError(param, "expected a JSON Schema (an object, or its JSON text)")
    return {"type": "json_schema", "json_schema": _schema_spec({"name": "guided_json", "schema": value}, param)}


def responses_form(fmt: dict[str, Any] | None) -> dict[str, Any]:
    """The Responses API's ``text.format`` of a chat-form format (as a response echoes it)."""
    if fmt is None:
        return {"type": "text"}
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", **fmt["json_schema"]}


def format_schema(fmt: dict[str, Any]) -> dict[str, Any]:
    """The guide a (chat-form) format holds an answer to, to decode under: a ``json_schema`` format's
    schema (none given: any JSON value), any object for ``json_object``; for vLLM's regex and choice
    formats, the pattern (``models.regex_constraint.regex_guide``); for a grammar, the grammar
    (``models.grammar_constraint.grammar_guide``)."""
    if fmt["type"] == "grammar":
        from potstill.models.grammar_constraint import grammar_guide

        return grammar_guide(fmt["grammar"])
    if fmt["type"] in ("regex", "choice"):
        from potstill.models.regex_constraint import choice_pattern, regex_guide

        return regex_guide(fmt["regex"] if fmt["type"] == "regex" else choice_pattern(fmt["choice"]))
    if fmt["type"] == "json_object":
        return {"type": "object"}
    return fmt["json_schema"].get("schema") or {}


def _schema_spec(spec: dict[str, Any], where: str) -> dict[str, Any]:
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise FormatError(f"{where}.name", "required, 1-64 letters, digits, '_' or '-'")
    schema = spec.get("schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise FormatError(f"{where}.schema", "expected a JSON Schema object")
        problem = _schema_error(json.dumps(schema, sort_keys=True))
        if problem:
            raise FormatError(f"{where}.schema", f"not a valid JSON Schema: {problem}")
    if spec.get("strict") is not None and not isinstance(spec.get("strict"), bool):
        raise FormatError(f"{where}.strict", "expected a boolean")
    return {k: spec[k] for k in ("name", "description", "schema", "strict") if spec.get(k) is not None}


@lru_cache(maxsize=256)
def _schema_error(schema_json: str) -> str | None:
    import jsonschema

    schema = json.loads(schema_json)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return e.message
    return None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    from potstill.models.json_schema_parts import validator

    return validator(json.loads(schema_json))


def answer_problem(text: str, fmt: dict[str, Any] | None) -> str | None:
    """Why ``text`` is not what ``fmt`` asks for (one line), None where it is (or nothing is asked).

    ``json_object``: the text parses as one JSON object. ``json_schema``: it parses as JSON and that
    value is valid under the schema (JSON Schema as written, by the draft its ``$schema`` names,
    else the latest; OpenAI's strict mode accepts a subset of the same language). ``regex``: the
    pattern matches the whole text; ``choice``: the text is one of the choices; ``grammar``: the
    grammar derives the whole text from its root."""
    if fmt is None:
        return None
    if fmt["type"] == "grammar":
        from potstill.models.grammar_constraint import derives

        return None if derives(fmt["grammar"], text) else "not derived by the grammar"
    if fmt["type"] == "choice":
        return None if text in fmt["choice"] else "not one of the choices"
    if fmt["type"] == "regex":
        import regex

        return None if regex.fullmatch(fmt["regex"], text) else "does not match the regular expression"
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not JSON ({e.msg} at character {e.pos})"
    if fmt["type"] == "json_object":
        return None if isinstance(value, dict) else "JSON, but not an object"
    schema = fmt["json_schema"].get("schema")
    if schema is None:
        return None
    import jsonschema

    err = jsonschema.exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    if err is None:
        return None
    at = "/".join(str(p) for p in err.absolute_path)
    return f"does not match the schema{f' at /{at}' if at else ''}: {err.message}"
