import pytest

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.tasks import get_task


def test_classification_parse_and_validate():
    t = get_task(TaskConfig(type="classification", labels=["Sports", "tech"]))
    assert t.parse(" sports.\n") == "Sports"
    assert t.parse("Tech: because...") == "tech"
    assert t.parse("banana") is None
    assert t.validate(t.parse("banana")) == "answer outside the label set"
    assert t.validate("tech") is None


def test_extraction_validates_with_json_schema():
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name"], "additionalProperties": False}
    t = get_task(TaskConfig(type="extraction", json_schema=schema))
    assert t.validate(t.parse('```json\n{"name": "Ada", "age": 36}\n```')) is None
    assert t.validate(t.parse('{"name": "Ada", "age": "x"}')).startswith("schema violation at age")
    assert t.validate(t.parse("{name: Ada}")).startswith("invalid JSON")
    assert t.agree({"name": "Ada", "age": 1}, {"name": "Ada", "age": 2}) == 0.5
    with pytest.raises(PotstillError, match="not a valid JSON Schema"):
        get_task(TaskConfig(type="extraction", json_schema={"type": "nonsense"}))


def test_freetext_and_unknown_task():
    t = get_task(TaskConfig(type="freetext"))
    assert t.validate(t.parse("   ")) == "empty output"
    assert t.agree(t.parse("Hello  world"), t.parse("hello world")) == 1.0
    with pytest.raises(PotstillError, match="did you mean 'freetext'"):
        get_task(TaskConfig(type="freetxt"))
