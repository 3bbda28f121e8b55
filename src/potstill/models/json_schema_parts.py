"""What a JSON Schema allows one value, read the way ``models.json_constraint``'s automaton needs:
local ``$ref``s followed, an ``allOf`` (or a ``$ref`` beside constraints) merged into one schema, the
branches of an ``anyOf`` / ``oneOf`` (each with the constraints beside it), the kinds of value a
schema takes, string ``format``s as anchored patterns, and a number's bounds.

Merged schemas and branch lists are cached per schema object (``Root``), so the automaton's frames
can tell two readings apart by the identity of the schema they follow.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# Keywords that describe a value without constraining it (``discriminator``: OpenAPI's, as pydantic
# writes beside a tagged union's branches, which the parses below tell apart on their own).
ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
               "discriminator", "$schema", "$id", "$defs", "definitions", "$anchor"}


class Root:
    """The document's schema (for local ``$ref``s) and the ``allOf``s merged so far, by identity."""

    def __init__(self, doc: Any):
        self.doc = doc if isinstance(doc, dict) else {}
        self.merged: dict[int, tuple[dict, dict]] = {}  # id(schema) -> (schema, merged): the schema kept alive
        self.branches: dict[int, tuple[dict, list[dict] | None]] = {}  # id(schema) -> (schema, its branches)


def resolve(schema: Any, root: Root, depth: int = 0) -> dict:
    """``schema`` with local ``$ref``s followed (``#/$defs/Name``, ``#/definitions/Name``; a ``$ref``
    beside constraints of its own is the ``allOf`` of the two) and an ``allOf`` merged (``_all_of``;
    one that does not merge is left open: ``{}``)."""
    for _ in range(32):
        if not isinstance(schema, dict):
            return {}
        ref = schema.get("$ref")
        parts = schema.get("allOf")
        if ref is not None:
            rest = {k: v for k, v in schema.items() if k != "$ref" and k not in ANNOTATIONS}
            if rest:
                return _merged(schema, [{"$ref": ref}, rest], root, depth)
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return {}  # a remote ref: unconstrained here, validated at the end
            target: Any = root.doc
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
            schema = target
        elif parts is not None:
            if not isinstance(parts, list):
                return {}
            return _merged(schema, [*parts, {k: v for k, v in schema.items() if k != "allOf"}], root, depth)
        else:
            return schema
    return {}


def _merged(schema: dict, parts: list, root: Root, depth: int) -> dict:
    """``parts`` (each resolved) merged into one schema by ``_all_of``, cached per ``schema``; ``{}``
    (open) where they do not merge, or nest deeper than 8."""
    got = root.merged.get(id(schema))
    if got is None or got[0] is not schema:
        one = _all_of([resolve(x, root, depth + 1) for x in parts]) if depth < 8 else None
        got = root.merged[id(schema)] = (schema, one if one is not None else {})
    return got[1]


_TIGHTER = {"minimum": max, "exclusiveMinimum": max, "minLength": max, "minItems": max,
            "maximum": min, "exclusiveMaximum": min, "maxLength": min, "maxItems": min}


def _types(t: Any) -> set[str] | None:
    return {t} if isinstance(t, str) else {x for x in t if isinstance(x, str)} if isinstance(t, list) else None


def _all_of(parts: list[dict]) -> dict | None:
    """One schema holding each of ``parts`` (an ``allOf``, or a ``$ref`` beside constraints): properties
    joined (a key in two parts takes the ``allOf`` of its two schemas), ``required`` joined, types and
    enums intersected, the tighter of two bounds; None where two parts disagree otherwise (two
    patterns, two branch lists, ...). An ``additionalProperties`` one part sets is applied to all the
    parts' properties, which is looser than the schema where the other part names keys of its own."""
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            if k in ANNOTATIONS:
                continue
            if k not in out:
                out[k] = dict(v) if k == "properties" and isinstance(v, dict) else v
            elif out[k] == v:
                continue
            elif k == "properties" and isinstance(v, dict) and isinstance(out[k], dict):
                for name, sub in v.items():
                    out[k][name] = {"allOf": [out[k][name], sub]} if name in out[k] else sub
            elif k == "required" and isinstance(v, list) and isinstance(out[k], list):
                out[k] = out[k] + [x for x in v if x not in out[k]]
            elif k == "type" and _types(v) is not None and _types(out[k]) is not None:
                a, b = _types(out[k]), _types(v)
                both = (a & b) | {"integer" for x, y in ((a, b), (b, a)) if "integer" in x and "number" in y}
                if not both:
                    return None
                out[k] = sorted(both)
            elif k in ("enum", "const") or k in _TIGHTER:
                if k in _TIGHTER and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (v, out[k])):
                    out[k] = _TIGHTER[k](out[k], v)
                elif k == "enum" and isinstance(v, list) and isinstance(out[k], list):
                    out[k] = [x for x in out[k] if x in v]
                else:
                    return None
            else:
                return None
    if "enum" in out and "const" in out:
        if out["const"] not in out["enum"]:
            return None
        del out["enum"]
    return out


def branches(schema: dict, root: Root, depth: int = 0) -> list[dict] | None:
    """The alternatives of an ``anyOf`` / ``oneOf``, each merged with the constraints beside it
    (nested ones flattened, ``$ref``s followed, ``allOf``s merged; cached per schema), or None where
    ``schema`` has neither, or one of them cannot be followed (``not``, ``if``, constraints that do
    not merge): the whole value is then left open."""
    got = root.branches.get(id(schema))
    if got is not None and got[0] is schema:
        return got[1]
    out: list[dict] | None = None
    key = "anyOf" if "anyOf" in schema else "oneOf" if "oneOf" in schema else None
    alts = schema.get(key) if key else None
    if isinstance(alts, list) and alts and depth <= 8 and not any(k in schema for k in ("not", "if")):
        rest = {k: v for k, v in schema.items() if k != key and k not in ANNOTATIONS}
        out = []
        for a in alts:
            a = resolve(a, root)
            a = _all_of([rest, a]) if rest else a
            inner = None if a is None else branches(a, root, depth + 1)
            if a is None or inner is None and any(k in a for k in ("anyOf", "oneOf", "not", "if")):
                out = None
                break
            out.extend(inner if inner is not None else [a])
    root.branches[id(schema)] = (schema, out)
    return out


def first_kind(c: str) -> str | None:
    """The kind of value a first character starts (``number`` for a digit or minus)."""
    return {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}.get(c) \
        or ("number" if c == "-" or c.isascii() and c.isdigit() else None)


def takes(schema: dict, kind: str | None) -> bool:
    """Whether a value of ``kind`` may stand under ``schema`` (a number where an integer may)."""
    kinds = kinds_of(schema)
    return kind is not None and (kind in kinds or kind == "number" and "integer" in kinds)


def kinds_of(schema: dict) -> set[str]:
    """The JSON kinds a value under ``schema`` may take (all where the schema does not say)."""
    if any(k in schema for k in ("anyOf", "oneOf", "allOf", "not", "if")):
        return set(_TYPES)  # (an anyOf's or oneOf's value has been given its branch by _Value)
    t = schema.get("type")
    if isinstance(t, str):
        kinds = {t}
    elif isinstance(t, list):
        kinds = {x for x in t if isinstance(x, str)}
    elif "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        kinds = {_kind(v) for v in values if _kind(v)}
    elif "properties" in schema or "required" in schema or "additionalProperties" in schema:
        kinds = {"object"}
    elif "items" in schema or "prefixItems" in schema:
        kinds = {"array"}
    else:
        kinds = set(_TYPES)
    return kinds or set(_TYPES)


def _kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "boolean"
    if v is None:
        return "null"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return None


_PATTERNS: dict[str, Any] = {}
# A day of the calendar, as ``datetime.date.fromisoformat`` takes it: years 0001-9999, each month's
# own days, February 29th in leap years only (a year is known before its days, so a regular
# expression can tell).
_YEAR = r"([1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])"
_LEAP = r"(\d\d(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = (rf"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)"
         rf"|02-(0[1-9]|1\d|2[0-8]))|{_LEAP}-02-29)")
_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)?"
_BYTE = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# IPv6 in hex groups, "::" at most once (no embedded IPv4, no zone: the guide writes a subset of what
# ``ipaddress`` takes).
_H = r"[0-9a-fA-F]{1,4}"
_IPV6 = "|".join([rf"({_H}:){{7}}{_H}", rf"({_H}:){{1,7}}:", rf"({_H}:){{1,6}}:{_H}",
                  *(rf"({_H}:){{1,{7 - k}}}(:{_H}){{1,{k}}}" for k in range(2, 7)), rf":((:{_H}){{1,7}}|:)"])
# String formats as anchored patterns (those OpenAI's strict mode lists, and what pydantic
# writes for date, datetime, time, UUID and EmailStr fields). The UTC offset of a time is optional,
# as pydantic reads it; the email pattern is loose (no quoted local parts); a hostname may be longer
# than 253 characters (partial matching takes no lookahead), which ``format_checker`` refuses.
FORMATS = {"date": f"^{_DATE}$", "time": f"^{_TIME}$", "date-time": f"^{_DATE}[Tt ]{_TIME}$",
           "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
           "ipv4": rf"^({_BYTE}\.){{3}}{_BYTE}$", "email": r"^[^@\s\\\"]+@[^@\s\\\"]+\.[^@\s\\\".]+$",
           # At least one part, and one after a T (no lookahead: partial matching must see the end).
           "duration": r"^P((\d+Y(\d+M)?(\d+W)?(\d+D)?|\d+M(\d+W)?(\d+D)?|\d+W(\d+D)?|\d+D)"
                       r"(T(\d+H(\d+M)?(\d+S)?|\d+M(\d+S)?|\d+S))?|T(\d+H(\d+M)?(\d+S)?|\d+M(\d+S)?|\d+S))$",
           "hostname": rf"^{_LABEL}(\.{_LABEL})*$", "ipv6": f"^({_IPV6})$"}
_CHECKER: Any = None


def format_checker() -> Any:
    """A ``jsonschema.FormatChecker`` that asserts the ``format``s the guide holds a string to, as
    it holds them (``FORMATS``), and no looser: a date (of a date-time too) must be a day of the
    calendar, a hostname fit in 253 characters; ``ipv6`` by the standard library (which also takes
    an embedded IPv4 address or a zone, forms the guide does not write). Other formats stay
    annotations, as ``jsonschema`` treats them by default.
    The same for every install (``jsonschema``'s own checkers depend on optional packages)."""
    global _CHECKER
    if _CHECKER is None:
        import datetime
        import ipaddress
        import re

        import jsonschema

        checker = jsonschema.FormatChecker(formats=())
        for name, pattern in FORMATS.items():
            def check(value: Any, rx: Any = re.compile(pattern), name: str = name) -> bool:
                if not isinstance(value, str):
                    return True
                if not rx.fullmatch(value):
                    return False
                if name in ("date", "date-time"):
                    datetime.date.fromisoformat(value[:10])  # ValueError: not a day of the calendar
                return not (name == "duration" and (value == "P" or value.endswith("T"))
                            or name == "hostname" and len(value) > 253)

            checker.checks(name, raises=ValueError)(check)
        checker.checks("ipv6", raises=ValueError)(lambda v: not isinstance(v, str) or bool(ipaddress.IPv6Address(v)))
        _CHECKER = checker
    return _CHECKER


_VALIDATORS: dict[Any, Any] = {}


def validator(schema: dict) -> Any:
    """The ``jsonschema`` validator answers are checked with: the schema's own draft, the formats
    asserted (``format_checker``), and ``multipleOf`` taken on numbers as written in decimal, as the
    guide holds it: jsonschema divides floats, so 0.07 was no multiple of 0.01 there
    (0.07 / 0.01 = 7.000000000000001), nor 1.1 of 0.1."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    if base not in _VALIDATORS:
        _VALIDATORS[base] = jsonschema.validators.extend(base, {"multipleOf": _multiple_of})
    return _VALIDATORS[base](schema, format_checker=format_checker())


def exact(x: Any) -> Fraction | None:
    """A JSON number as the decimal it was written as (a float's shortest repr), None if not finite."""
    if isinstance(x, float):
        return Fraction(repr(x)) if math.isfinite(x) else None
    return Fraction(x)


def _multiple_of(checker: Any, step: Any, instance: Any, schema: dict) -> Any:
    import jsonschema

    if not checker.is_type(instance, "number") or not checker.is_type(step, "number"):
        return
    x, m = exact(instance), exact(step)
    if x is None or m is None or m <= 0 or x % m:
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {step!r}")


def anchored(pattern: str) -> Any:
    """``pattern`` compiled by the ``regex`` module (transformers' own dependency), whose partial
    matching says whether a prefix can still match; None where it is missing or cannot compile it."""
    if pattern not in _PATTERNS:
        try:
            import regex

            _PATTERNS[pattern] = regex.compile(pattern)
        except Exception:  # an ECMA-262 construct Python's regex does not take: left to validation
            _PATTERNS[pattern] = None
    return _PATTERNS[pattern]


def string_choices(schema: dict) -> list[str] | None:
    """The strings an ``enum`` / ``const`` allows, or None for any string."""
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        strings = [v for v in values if isinstance(v, str)]
        return strings if isinstance(values, list) else None
    return None


def number_choices(schema: dict, integer: bool) -> frozenset[str] | None:
    """How a number an ``enum`` / ``const`` allows is written (None: any number): an integral value
    as an integer (``3`` for 3 and 3.0, which JSON Schema holds equal), another as its shortest
    decimal without an exponent (``0.1``, ``0.0000001``); none but integral ones for an integer."""
    if "enum" not in schema and "const" not in schema:
        return None
    values = schema["enum"] if "enum" in schema else [schema["const"]]
    if not isinstance(values, list):
        return None
    out = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if float(v).is_integer():
            out.add(str(int(v)))
        elif not integer:
            out.add(format(Decimal(repr(float(v))), "f"))
    return frozenset(out)


def allows(schema: dict, value: Any) -> bool:
    """Whether an ``enum`` / ``const`` lets the value be ``value`` (true, false or null; the same
    object, so that 1 is not true); yes where the schema has neither."""
    if "enum" not in schema and "const" not in schema:
        return True
    values = schema["enum"] if "enum" in schema else [schema["const"]]
    return not isinstance(values, list) or any(v is value for v in values)


def int_bounds(schema: dict) -> tuple[float, float] | None:
    """An integer's ``minimum`` / ``maximum`` (exclusive ones moved in by one) as (low, high), None
    where it has neither."""
    def num(key: str) -> float | None:
        v = schema.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    above, below = num("exclusiveMinimum"), num("exclusiveMaximum")
    lows = [x for x in (num("minimum"), None if above is None else math.floor(above) + 1) if x is not None]
    highs = [x for x in (num("maximum"), None if below is None else math.ceil(below) - 1) if x is not None]
    if not lows and not highs:
        return None
    return (math.ceil(max(lows)) if lows else -math.inf, math.floor(min(highs)) if highs else math.inf)


def num_bounds(schema: dict) -> tuple | None:
    """A number's ``minimum`` / ``maximum`` (exclusive ones too) as (low, low_open, high, high_open),
    exact fractions (infinite where absent); None where it has neither."""
    def num(key: str) -> Fraction | None:
        v = schema.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return Fraction(repr(v)) if isinstance(v, float) else Fraction(v)

    lo: Any = -math.inf
    hi: Any = math.inf
    lo_open = hi_open = False
    for v, shut in ((num("minimum"), False), (num("exclusiveMinimum"), True)):
        if v is not None and (v > lo or v == lo and shut):
            lo, lo_open = v, shut
    for v, shut in ((num("maximum"), False), (num("exclusiveMaximum"), True)):
        if v is not None and (v < hi or v == hi and shut):
            hi, hi_open = v, shut
    return None if lo == -math.inf and hi == math.inf else (lo, lo_open, hi, hi_open)


def in_bounds(bounds: tuple, a: Any, a_open: bool, b: Any, b_open: bool, step: Fraction | None = None) -> bool:
    """Whether some number from ``a`` to ``b`` (each end open where flagged) lies within ``bounds``
    (and is a multiple of ``step``, where given)."""
    lo, lo_open, hi, hi_open = bounds
    low, low_open = (a, a_open) if a > lo else (lo, lo_open) if lo > a else (a, a_open or lo_open)
    high, high_open = (b, b_open) if b < hi else (hi, hi_open) if hi < b else (b, b_open or hi_open)
    if step is None or math.inf in (-low, high):
        return low < high or low == high and not low_open and not high_open
    v = math.ceil(Fraction(low) / step) * step  # the first multiple at or above low
    if low_open and v == low:
        v += step
    return v < high or v == high and not high_open
