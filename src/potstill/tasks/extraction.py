"""JSON extraction: the output must parse as JSON and satisfy the task's JSON Schema."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.models.json_schema_parts import validator
from potstill.tasks.base import Task, nfc

# A bare fence or one tagged json in any case (```JSON as some teachers write it) around the whole answer.
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S | re.I)


class _Invalid:
    """A parse failure, carrying its reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


def _json_number(x: Any) -> Any:
    """``x`` with each integral float an int and each string composed (``nfc``), recursively (bools left
    alone: bool is an int in Python)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        return int(x)
    if isinstance(x, str):
        return nfc(x)
    if isinstance(x, dict):
        return {nfc(k) if isinstance(k, str) else k: _json_number(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_number(v) for v in x]
    return x


def composed(x: Any) -> Any:
    """A parsed JSON value (an answer, a schema) with every string and object key composed (``nfc``),
    recursively: what the schema check compares, as ``json_text`` compares answers."""
    if isinstance(x, str):
        return nfc(x)
    if isinstance(x, dict):
        return {composed(k): composed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [composed(v) for v in x]
    return x


def json_text(x: Any) -> str:
    """Canonical JSON text of a parsed value, equal for equal JSON values: keys sorted, 2.0 written as 2
    (one JSON number), strings composed ("café" in NFC or NFD is one string), and true never equal to 1
    (Python's True == 1 is). For comparing only; TypeError for a non-JSON value."""
    return json.dumps(_json_number(x), sort_keys=True, ensure_ascii=False)


def field_agreement(a: dict, b: dict) -> float:
    """The share of fields (union; names composed, as ``json_text`` compares them) with equal values; a
    field one side lacks differs, null or not on the other (as exact match and field precision count it)."""
    a, b = ({nfc(k): v for k, v in d.items()} for d in (a, b))
    keys = set(a) | set(b)
    return sum(k in a and k in b and json_same(a[k], b[k]) for k in keys) / len(keys) if keys else 1.0


def json_same(a: Any, b: Any) -> bool:
    """Whether two parsed values are the same JSON value (see ``json_text``); a parse failure equals nothing."""
    try:
        return json_text(a) == json_text(b)
    except TypeError:
        return False


def schema_order(value: Any, schema: Any) -> Any:
    """``value`` with each object's keys in its schema's ``properties`` order (keys the schema
    does not name keep their order, after those it does); arrays follow ``items``."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: schema_order(value[k], props.get(k)) for k in keys}
    if isinstance(value, list):
        return [schema_order(v, schema.get("items")) for v in value]
    return value


def parse_json(output: str) -> Any:
    """An answer's JSON (inside a code fence too), or ``_Invalid`` saying why it is none."""
    text = output.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _Invalid(f"invalid JSON: {e.msg} at column {e.colno}")


class ExtractionTask(Task):
    name = "extraction"

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if cfg.grammar is not None:
            raise PotstillError("task.grammar: an extraction task's answers follow task.json_schema; a grammar is for "
                                "free text (task.type freetext)")
        if cfg.json_schema is None:
            raise PotstillError("task.json_schema is required for an extraction task")
        try:
            cls = jsonschema.validators.validator_for(cfg.json_schema)
            cls.check_schema(cfg.json_schema)
        except jsonschema.SchemaError as e:
            raise PotstillError(f"task.json_schema is not a valid JSON Schema: {e.message}") from None
        # Composed, as the answer it checks: "Café" typed with a combining accent is the schema's "Café",
        # in a key, an enum, a const or a name ``required`` lists.
        self.validator = validator(composed(cfg.json_schema))

    def target(self, record) -> str:
        """The teacher's JSON, compact; keys in the teacher's order unless task.json_key_order says
        otherwise (a student taught sorted keys answers with keys the client did not expect)."""
        parsed = self.parse(record.output or "")
        order = self.cfg.json_key_order
        if order == "schema":
            parsed = schema_order(parsed, self.cfg.json_schema)
        return json.dumps(parsed, ensure_ascii=False, sort_keys=order == "sorted")

    def parse(self, output: str) -> Any:
        return parse_json(output)

    def validate(self, parsed: Any) -> str | None:
        if isinstance(parsed, _Invalid):
            return parsed.reason
        err = jsonschema.exceptions.best_match(self.validator.iter_errors(composed(parsed)))
        if err is None:
            return None
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        return f"schema violation at {path}: {err.message}"

    def agree(self, a: Any, b: Any) -> float:
        """Field-level agreement: the share of top-level fields (union) with equal values."""
        if isinstance(a, _Invalid) or isinstance(b, _Invalid):
            return 0.0
        if isinstance(a, dict) and isinstance(b, dict):
            return field_agreement(a, b)
        return float(json_same(a, b))
