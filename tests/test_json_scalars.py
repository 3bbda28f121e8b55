"""Strings and numbers under a JSON Schema (``potstill.models.json_scalars``, read through
``json_constraint.JsonPrefix``): lengths, anchored patterns and formats, integer and number bounds,
multiples, enums and consts, each checked against ``jsonschema`` or the standard library."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import BaseModel

from potstill.models.json_constraint import JsonPrefix
from tests.test_json_constraint import accepts


def test_string_lengths_and_an_anchored_pattern():
    date = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
    assert accepts(date, '"2026-03-12"')
    assert not JsonPrefix(date).feed('"12 M')  # refused at the first character that cannot lead to a match
    assert not accepts(date, '"2026-03-1"')  # a prefix of a match, not a match: no close
    code = {"type": "string", "minLength": 2, "maxLength": 3}
    assert accepts(code, '"ab"') and accepts(code, '"abc"')
    assert not accepts(code, '"a"') and not JsonPrefix(code).feed('"abcd')
    assert accepts({"type": "string", "pattern": "b"}, '"abc"')  # unanchored: left to validation
    # Anchored at the start only, a pattern lets anything follow its match (JSON Schema searches):
    # it was held to the match alone, which refused "abzz" under "^ab".
    starts = {"type": "string", "pattern": "^ab"}
    assert accepts(starts, '"abzz"') and accepts(starts, '"ab"') and not JsonPrefix(starts).feed('"x')


def test_string_formats_are_held_to_their_patterns():
    """``format`` (as pydantic writes date, datetime, time and UUID fields, and OpenAI's strict mode
    lists them): a value is held to the format's pattern, refused at the first character that
    cannot lead to one, and the pattern of the field, where it has one, holds too."""
    import datetime as dt
    import uuid

    class Event(BaseModel):
        day: dt.date
        at: dt.datetime
        starts: dt.time
        id: uuid.UUID

    schema = Event.model_json_schema()
    doc = Event(day=dt.date(2026, 3, 12), at=dt.datetime(2026, 3, 12, 9, 30, tzinfo=dt.timezone.utc),
                starts=dt.time(9, 5, 1), id=uuid.UUID(int=7))
    assert accepts(schema, doc.model_dump_json())
    assert accepts(schema, '{"day": "2026-03-12", "at": "2026-03-12T09:30:00.5+01:00", "starts": "23:59:60Z", '
                           '"id": "123e4567-e89b-12d3-a456-426614174000"}')
    for bad in ('{"day": "12 M', '{"day": "2026-13', '{"day": "2026-03-12", "at": "2026-03-12X',
                '{"day": "2026-03-12", "at": "2026-03-12T25', '{"day": "2026-03-12", "at": "2026-03-12T09:30:00Z", '
                '"starts": "9', '{"day": "2026-03-12", "at": "2026-03-12T09:30:00Z", "starts": "09:05:01", "id": "g'):
        assert not JsonPrefix(schema).feed(bad), bad
    assert not accepts({"type": "string", "format": "date"}, '"2026-03-1"')  # a start of one, not one
    for fmt, good, bad in (("ipv4", "10.0.255.1", "256."), ("email", "a.b@c.org", "a@b@"), ("duration", "P1DT2H", "P1H")):
        one = {"type": "string", "format": fmt}
        assert accepts(one, f'"{good}"') and not JsonPrefix(one).feed(f'"{bad}')
    both = {"type": "string", "format": "date", "pattern": "^2026-"}
    assert accepts(both, '"2026-01-02"') and not JsonPrefix(both).feed('"2025')
    host = {"type": "string", "format": "hostname"}
    assert accepts(host, '"api.example-1.com"') and not JsonPrefix(host).feed('"-') and not JsonPrefix(host).feed('"a..')
    assert accepts({"type": "string", "format": "uri"}, '"anything at all"')  # not followed: an annotation


@pytest.mark.parametrize("low,high", [(1, 5), (0, 100), (-20, -3), (10, 10), (-5, 250), (None, 42), (7, None)])
def test_an_integers_bounds_hold_and_every_value_between_them_is_reachable(low, high):
    """``minimum`` / ``maximum`` (``Field(ge=1, le=5)``): every integer between the bounds is accepted
    character by character, every one just outside is refused before it closes, and no prefix
    accepted is a dead end (some digit, or the end, follows it)."""
    schema = {"type": "integer", **({"minimum": low} if low is not None else {}),
              **({"maximum": high} if high is not None else {})}
    lo, hi = (low if low is not None else high - 300), (high if high is not None else low + 300)
    for v in range(lo - 30, hi + 31):
        assert accepts(schema, str(v)) == (lo <= v <= hi if low is not None and high is not None else
                                           (v <= high if low is None else v >= low)), v
    for v in range(lo, hi + 1):  # every prefix of a value in range is still open
        for i in range(1, len(str(v))):
            p = JsonPrefix(schema)
            assert p.feed(str(v)[:i])
            assert p.can_end() or any(p.copy().feed(d) for d in "0123456789")
    exclusive = {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3}
    assert [v for v in range(-3, 6) if accepts(exclusive, str(v))] == [1, 2]
    assert accepts({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5}}},
                   '{"n": 3}')
    assert not JsonPrefix({"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}}).feed('{"n": 6}')


def test_no_accepted_prefix_is_a_dead_end():
    """Found by the benchmark: under a date pattern the guide took "\\\\u26f" (a \\\\u escape no
    character could complete to a digit), then no token fitted and the answer left the schema.
    Every prefix it accepts must still lead to a document."""
    date = {"type": "string", "pattern": r"^\\d{4}-\\d{2}-\\d{2}$"}
    assert not JsonPrefix(date).feed('"5\\\\u')
    assert not JsonPrefix(date).feed('"5\\\\n')
    assert not JsonPrefix({"type": "string", "maxLength": 1}).feed('"a\\\\')
    p = JsonPrefix({"type": "number"})
    assert p.feed("1" * 31) and not p.copy().feed(".") and p.copy().feed("1") and p.can_end()


@pytest.mark.parametrize("bounds", [{"minimum": 0, "maximum": 1}, {"minimum": -2.5, "maximum": 3.75},
                                    {"exclusiveMinimum": 0, "exclusiveMaximum": 1}, {"minimum": 0.25},
                                    {"exclusiveMaximum": -0.5}, {"minimum": 100, "maximum": 100.5}])
def test_a_numbers_bounds_hold_and_every_value_between_them_is_reachable(bounds):
    """``Field(ge=0, le=1)`` on a float (a confidence, a price): a number written without an exponent
    is accepted exactly where it lies between the bounds, refused at the first character that can
    only leave them, and no prefix accepted is a dead end."""
    from decimal import Decimal

    schema = {"type": "number", **bounds}
    values = sorted({Decimal(v) / 4 for v in range(-20, 21)} | {Decimal(v) for v in range(95, 106)}
                    | {Decimal("100.5"), Decimal("100.25"), Decimal("0.999"), Decimal("-0.5000001")})
    for v in values:
        text = format(v, "f")
        inside = jsonschema.Draft202012Validator(schema).is_valid(float(text))
        assert accepts(schema, text) == inside, (text, bounds)
        if inside:
            for i in range(1, len(text)):
                p = JsonPrefix(schema)
                assert p.feed(text[:i])
                assert p.can_end() or any(p.copy().feed(d) for d in "0123456789."), (text[:i], bounds)
    assert not JsonPrefix(schema).feed("1e")  # bounded: no exponent, so what is left stays an interval
    assert accepts({"type": "number"}, "1e-3")  # unbounded: as before


@pytest.mark.parametrize("schema", [{"type": "integer", "multipleOf": 5}, {"type": "integer", "multipleOf": 7, "minimum": 10,
                                                                         "maximum": 60},
                                    {"type": "integer", "multipleOf": 25, "minimum": -100, "exclusiveMaximum": 80}])
def test_an_integers_multiple_of_holds_with_its_bounds(schema):
    """``Field(multiple_of=5)``: exactly the multiples between the bounds are accepted, and no
    accepted prefix is a dead end (a digit, or the end, follows it)."""
    valid = jsonschema.Draft202012Validator(schema)
    for v in range(-160, 161):
        assert accepts(schema, str(v)) == valid.is_valid(v), (v, schema)
        if valid.is_valid(v):
            for i in range(1, len(str(v))):
                p = JsonPrefix(schema)
                assert p.feed(str(v)[:i]) and (p.can_end() or any(p.copy().feed(d) for d in "0123456789"))
    only_50 = {"type": "integer", "multipleOf": 25, "minimum": 30, "maximum": 60}
    assert not JsonPrefix(only_50).feed("4") and JsonPrefix(only_50).feed("5")  # 40-49 holds no multiple of 25


@pytest.mark.parametrize("schema", [{"const": 3}, {"type": "integer", "const": 3}, {"enum": [1, 10, -2, 2.5, 3.0]},
                                    {"type": "number", "enum": [0.1, 1e-07, 12]}, {"enum": [True, None, "a"]},
                                    {"const": False}, {"type": "integer", "enum": [1, 1.5]}])
def test_an_enums_or_consts_numbers_and_literals_hold(schema):
    """``Literal[3]``, ``Literal[1, 10, -2]``, an int tag of a tagged union, ``Literal[True]``: a
    number, true, false or null is accepted exactly where jsonschema takes it, among numbers from
    -30 to 30 (and a few fractions) written plainly, and the literals; the values allowed are
    reached character by character, with no accepted prefix a dead end. Before, any number and
    either boolean passed under an enum or a const."""
    valid = jsonschema.Draft202012Validator(schema).is_valid
    texts = [str(v) for v in range(-30, 31)] + ["2.5", "0.1", "0.0000001", "1.5", "3.5", "true", "false", "null"]
    for text in texts:
        if accepts(schema, text):
            assert valid(json.loads(text)), text
    allowed = [t for t in texts if valid(json.loads(t))]
    # Each allowed value has a spelling the guide accepts (3.0 is written 3, 1e-07 plainly).
    assert all(accepts(schema, t) for t in allowed), allowed
    for text in allowed:
        for i in range(1, len(text)):  # every prefix of one is still open
            p = JsonPrefix(schema)
            assert p.feed(text[:i]), text[:i]
            assert p.can_end() or any(p.copy().feed(c) for c in "0123456789.-truefalsn")
    wrapped = {"type": "object", "properties": {"v": schema}, "required": ["v"]}
    assert not JsonPrefix(wrapped).feed('{"v": 4') and not accepts(wrapped, '{"v": 7}')


def test_a_date_is_a_day_of_the_calendar():
    """``format: date`` (and a date-time's date): every YYYY-MM-DD of 11 years (leap and not, 0000,
    centuries) with months 00-13 and days 00-32 is accepted exactly where ``datetime.date`` takes
    it, so 2023-02-29 and 2024-04-31 are refused where the 9 would close them."""
    import datetime

    date = {"type": "string", "format": "date"}
    for y in ("0000", "0001", "0004", "0100", "0400", "1900", "1999", "2000", "2023", "2024", "9999"):
        for m in range(14):
            for d in range(33):
                text = f"{y}-{m:02d}-{d:02d}"
                try:
                    day = bool(datetime.date.fromisoformat(text))
                except ValueError:
                    day = False
                assert accepts(date, f'"{text}"') == day, text
    assert not JsonPrefix(date).feed('"2023-02-29') and JsonPrefix(date).feed('"2024-02-29')
    assert accepts({"type": "string", "format": "date-time"}, '"2024-02-29T12:00:00Z"')
    assert not accepts({"type": "string", "format": "date-time"}, '"2023-02-29T12:00:00Z"')


@pytest.mark.parametrize("schema", [{"type": "number", "multipleOf": 0.01, "minimum": 0},
                                    {"type": "number", "multipleOf": 0.25, "exclusiveMinimum": -1, "maximum": 1.5},
                                    {"type": "number", "multipleOf": 3}, {"type": "number", "multipleOf": 0.1}])
def test_a_numbers_multiple_of_holds_as_written_in_decimal(schema):
    """A float's ``multipleOf`` (``Field(multiple_of=0.01)`` on a price): a number written plainly is
    accepted exactly where it is a multiple as a decimal (and within the bounds), every prefix of one
    stays open, and the task's validation agrees; jsonschema's own check divides floats (0.07 /
    0.01 = 7.000000000000001), which potstill's validator (``json_schema_parts.validator``) does not."""
    from decimal import Decimal
    from fractions import Fraction

    from potstill.models.json_schema_parts import validator

    check = validator(schema)
    step = Fraction(repr(schema["multipleOf"])) if isinstance(schema["multipleOf"], float) else schema["multipleOf"]
    values = sorted({Decimal(v) / 200 for v in range(-300, 400)} | {Decimal(v) for v in range(-9, 13)})
    for v in values:
        text = format(v, "f")
        x = Fraction(text)
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -10**9))
        inside = x % step == 0 and (x >= lo if "minimum" in schema else x > lo) and x <= schema.get("maximum", 10**9)
        assert accepts(schema, text) == inside, text
        assert check.is_valid(float(text)) == inside, text
        if inside:
            for i in range(1, len(text)):
                p = JsonPrefix(schema)
                assert p.feed(text[:i]), text[:i]
                assert p.can_end() or any(p.copy().feed(c) for c in "0123456789."), text[:i]
    assert not JsonPrefix(schema).feed("1e")  # written plainly, so that what it can become is an interval


def test_the_tasks_validation_takes_decimal_multiples():
    """The extraction task (curate, evaluate, serve) and a client's json_schema judge multipleOf on the
    decimal written: 0.07 a multiple of 0.01 and 1.1 of 0.1 (jsonschema alone refuses both), 0.075 not."""
    from potstill.config import TaskConfig
    from potstill.serve.formats import answer_problem
    from potstill.tasks import get_task

    schema = {"type": "object", "properties": {"p": {"type": "number", "multipleOf": 0.01},
                                               "q": {"type": "number", "multipleOf": 0.1}}}
    assert not jsonschema.Draft202012Validator(schema).is_valid({"p": 0.07, "q": 1.1})
    task = get_task(TaskConfig(type="extraction", instruction="Extract.", json_schema=schema))
    assert task.validate(task.parse('{"p": 0.07, "q": 1.1}')) is None
    assert task.validate(task.parse('{"p": 0.075}')) is not None
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert answer_problem('{"p": 0.07, "q": 1.1}', fmt) is None and answer_problem('{"q": 1.15}', fmt) is not None


def test_an_ipv6_address_is_written_in_hex_groups():
    """``format: ipv6`` (pydantic's IPv6Address): 3,000 random addresses, compressed, exploded and in
    capitals, are accepted; random walks over hex digits and colons end only on what ``ipaddress``
    takes, with no prefix nothing continues; a second "::" or a fifth hex digit is refused."""
    import ipaddress
    import random

    schema = {"type": "string", "format": "ipv6"}
    rng = random.Random(0)
    for _ in range(3000):
        groups = [rng.choice([0, 0, 0, rng.getrandbits(16)]) for _ in range(8)]
        a = ipaddress.IPv6Address(int("".join(f"{g:04x}" for g in groups), 16))
        for text in (a.compressed, a.exploded, a.compressed.upper()):
            assert accepts(schema, f'"{text}"'), text
    for _ in range(300):
        p, text = JsonPrefix(schema), '"'
        assert p.feed(text)
        while True:
            nxt = [c for c in '0123456789abcdefABCDEF:."g' if p.copy().feed(c)]
            assert nxt, text
            if '"' in nxt and (nxt == ['"'] or rng.random() < 0.1):
                break
            c = rng.choice([x for x in nxt if x != '"'])
            assert p.feed(c)
            text += c
        ipaddress.IPv6Address(text[1:])  # ValueError: not an address
    assert not JsonPrefix(schema).feed('"1::2::') and not JsonPrefix(schema).feed('"12345')
