"""Greedy decoding under a JSON Schema (``potstill.models.json_constraint``): the prefix automaton
on its own, and a tiny real Llama with a byte-level BPE tokenizer decoding under it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict

from potstill.models.json_constraint import JsonPrefix

INVOICE = {"type": "object", "properties": {
    "vendor": {"type": "string"}, "total": {"type": "number"}, "kind": {"enum": ["invoice", "receipt"]},
    "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}, "paid": {"type": "boolean"},
    "note": {"type": ["string", "null"]}}, "required": ["vendor", "total"], "additionalProperties": False}


def accepts(schema: dict, text: str) -> bool:
    p = JsonPrefix(schema)
    return p.feed(text) and p.can_end()


def walk(schema: Any, rng, alphabet: list[str], stop: float = 0.3, lean: float = 0.6, toward: str = ',"]}:',
         limit: int = 5000, give_up: bool = False) -> tuple[str, bool]:
    """One random walk under ``schema`` (a JSON Schema, or a fresh prefix reader of any guide's kind,
    such as a ``GrammarPrefix``): at each step a character of ``alphabet`` the prefix takes
    (with chance ``lean`` one of ``toward``, so that walks finish documents), asserting that some
    character or the end always does (no accepted prefix is a dead end); it ends with chance
    ``stop`` wherever the text is a whole document. ``limit``: the text's length it may not reach
    (``give_up``: where it stops instead). Returns the text and whether it is a whole document."""
    p, text = (schema if hasattr(schema, "feed") else JsonPrefix(schema)), ""
    while True:
        nxt = [c for c in alphabet if p.copy().feed(c)]
        assert nxt or p.can_end(), text
        if p.can_end() and (not nxt or rng.random() < stop) or give_up and len(text) > limit:
            return text, p.can_end()
        near = [x for x in nxt if x in toward] if rng.random() < lean else []
        c = rng.choice(near or nxt)
        assert p.feed(c)
        text += c
        assert give_up or len(text) < limit, text


@pytest.mark.parametrize("doc", [
    {"vendor": 'A"c\\me \u00e9 \u2603', "total": -12.5e3, "kind": "receipt", "items": [1, 20, 300], "paid": True,
     "note": None},
    {"total": 0, "vendor": ""},
    {"vendor": "x", "total": 3, "items": [], "note": "n/a"},
])
def test_every_prefix_of_a_valid_document_is_accepted(doc):
    jsonschema.validate(doc, INVOICE)
    for text in (json.dumps(doc), json.dumps(doc, indent=2), json.dumps(doc, ensure_ascii=False),
                 json.dumps(doc, separators=(",", ":"))):
        p = JsonPrefix(INVOICE)
        for i, c in enumerate(text):
            assert p.step(c), f"{text!r} refused at {i}: {text[: i + 1]!r}"
        assert p.can_end()


@pytest.mark.parametrize("text", [
    '{"other": 1}',  # a key the schema does not name (additionalProperties false)
    '{"vendor": "x"}',  # a required key missing at the close
    '{"vendor": 1',  # a number where a string goes
    '{"vendor": "x", "total": 1.5, "kind": "inv"}',  # not one of the enum's strings
    '{"vendor": "x", "total": 1, "items": [1, 2, 3, 4]}',  # past maxItems
    '{"vendor": "x", "total": 1, "items": [1.5]}',  # an integer with a fraction
    '{"vendor": "x", "total": 01}',  # JSON has no leading zeros
    '{"vendor": "x", "total": 1} x',  # anything after the document
    '{"vendor": "x", "vendor"',  # a key twice
    '{"vendor": "a\nb", "total": 1}',  # a raw control character in a string
    '{"vendor": "x", "total": 1' + " " * 17 + "}",  # a run of whitespace past MAX_WS
])
def test_what_the_schema_cannot_accept_is_refused(text):
    assert not accepts(INVOICE, text)


def test_pydantic_refs_and_a_schema_that_says_nothing():
    class Line(BaseModel):
        sku: str
        qty: int

    class Invoice(BaseModel):
        vendor: str
        lines: list[Line]

    schema = Invoice.model_json_schema()  # nested models as #/$defs refs
    assert accepts(schema, Invoice(vendor="v", lines=[Line(sku="a", qty=2)]).model_dump_json())
    assert not JsonPrefix(schema).feed('{"vendor": "v", "lines": [{"sku": "a", "qty": 2.5')
    assert accepts({}, '[1, {"a": null}, "x", true]') and accepts({"type": "integer"}, "42")
    assert not accepts({"type": "integer"}, "4.2")


def test_unions_take_the_branch_their_first_character_picks():
    """pydantic's Optional fields and unions are anyOf: the first character picks the branch (null,
    a nested model's object, an integer), so a wrong kind is refused at once, and each branch is
    held to its own schema afterwards; several branches of one kind are held to the kind alone."""
    from typing import Literal, Optional

    class Address(BaseModel):
        model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as strict formats are
        city: str
        zip: Optional[int] = None

    class Person(BaseModel):
        name: str
        age: Optional[int] = None
        home: Optional[Address] = None
        role: Literal["admin", "user"] | Literal["guest"] | None = None
        score: int | float | str = 0

    schema = Person.model_json_schema()
    assert "anyOf" in schema["properties"]["age"] and "anyOf" in schema["properties"]["home"]
    for doc in (Person(name="a"), Person(name="b", age=3, home=Address(city="c", zip=12), role="guest", score=1.5),
                Person(name="d", home=Address(city="e"), role="admin", score="x")):
        assert accepts(schema, doc.model_dump_json()), doc
        jsonschema.validate(json.loads(doc.model_dump_json()), schema)
    assert accepts(schema, '{"name": "x", "score": -2}')
    assert not JsonPrefix(schema).feed('{"name": "x", "age": "')  # neither an integer nor null
    assert not JsonPrefix(schema).feed('{"name": "x", "age": 1.')  # the integer branch has no fraction
    assert not JsonPrefix(schema).feed('{"name": "x", "home": {"town"')  # the Address branch's keys
    assert not JsonPrefix(schema).feed('{"name": "x", "home": {"city": "c", "zip": tr')
    assert not JsonPrefix(schema).feed('{"name": "x", "role": "s')  # the enums of both string branches
    assert accepts(schema, '{"name": "x", "role": "guest"}')
    assert not JsonPrefix(schema).feed('{"name": "x", "score": n')  # no null branch
    # A branch not followed (a ``not`` inside) leaves the value open: validation judges it.
    assert accepts({"anyOf": [{"not": {"type": "string"}}, {"type": "null"}]}, '"x"')


TOPIC = {"type": "object", "properties": {"topic": {"enum": ["sports", "tech", "politics"]}, "paid": {"type": "boolean"}},
         "required": ["topic", "paid"], "additionalProperties": False}
ASKS = [[{"role": "user", "content": t}] for t in
        ("The team scored a late goal.", "New phone software.", "The minister said the vote is in May.")]


def test_a_random_tiny_model_answers_json_that_fits_under_the_schema(bpe_lm):
    """Unconstrained, the random model's greedy answers are not JSON; under the schema each parses and
    validates, batched and one at a time alike, and its mean log-prob is the model's own for those tokens."""
    from potstill.models.generation import generate, token_logprobs
    from potstill.models.prompting import PromptFormat, encode_prompt

    fmt = PromptFormat(kind="chat", instruction="Answer in JSON.")
    free = generate(bpe_lm, fmt, ASKS, 48)
    assert not any(_valid(t) for t in free.texts)
    batched = generate(bpe_lm, fmt, ASKS, 200, batch_size=3, json_schema=TOPIC)
    single = generate(bpe_lm, fmt, ASKS, 200, batch_size=1, json_schema=TOPIC)
    for g in (batched, single):
        assert all(_valid(t) for t in g.texts), g.texts
    assert batched.texts == single.texts
    tok = bpe_lm.tokenizer
    for i, m in enumerate(ASKS):
        prompt = encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True)
        own = [lp for lp, _ in token_logprobs(bpe_lm, prompt, single.tokens[i])]
        assert single.mean_logprob[i] == pytest.approx(sum(own) / len(own), abs=1e-4)


def test_the_guides_own_decode_is_the_tokenizers(bpe_lm):
    """The guide decodes its windows through the ``tokenizers`` library directly (``native_decode``)
    only where that is transformers' decode: the same text for random windows of ids, special ones
    included; a tokenizer class with a decode of its own keeps it."""
    import copy
    import random

    from potstill.models.json_guide import JsonSchemaLogits, native_decode

    tok = bpe_lm.tokenizer
    native = native_decode(tok)
    assert native is not None
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 9))]
        assert native(ids, skip_special_tokens=False) == \
            tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    class OwnDecode(type(tok)):
        def decode(self, *args, **kwargs):
            return "own"

    mine = copy.copy(tok)
    mine.__class__ = OwnDecode
    assert native_decode(mine) is None and JsonSchemaLogits(mine, TOPIC, 0, [])._decode([1, 2]) == "own"


@pytest.mark.parametrize("graph_steps", [1, 8], ids=["step_by_step", "8_steps_a_call"])
def test_guided_decoding_on_static_caches_gives_the_processors_tokens(bpe_lm, graph_steps, monkeypatch):
    """On static caches (``static_decode.greedy`` with the guide: the step's argmax where it fits,
    else the guide's choice from the step's whole log-probabilities) guided answers are the
    ``model.generate`` processor's, token for token, with the same log-probs, alone and in a
    batch of 3 (filled to 4) holding an unguided row, which keeps its unguided answer. With
    steps recorded per cache (8 a call), each guided step runs through the cache's guided
    ``Steps`` (a CUDA graph on a GPU), one per cache."""
    from potstill.models import static_decode
    from potstill.models.generation import generate
    from potstill.models.prompting import PromptFormat
    from potstill.models.static_decode import StaticCaches

    replays = []
    plain_replay = static_decode.Steps.replay
    monkeypatch.setattr(static_decode.Steps, "replay", lambda self: (replays.append(self.guided), plain_replay(self))[1])
    fmt = PromptFormat(kind="chat", instruction="Answer in JSON.")
    static = StaticCaches.for_model(bpe_lm.model, graph_steps=graph_steps)
    schemas = [TOPIC, None, {"type": "object"}]
    for batch_size in (1, 3):
        ref = generate(bpe_lm, fmt, ASKS, 120, batch_size=batch_size, json_schema=schemas)
        got = generate(bpe_lm, fmt, ASKS, 120, batch_size=batch_size, json_schema=schemas, static=static)
        assert got.tokens == ref.tokens and got.texts == ref.texts
        assert got.mean_logprob == pytest.approx(ref.mean_logprob, abs=1e-5)
        assert _valid(got.texts[0]) and JsonPrefix({"type": "object"}).feed(got.texts[2])
        free = generate(bpe_lm, fmt, ASKS[1:2], 120, static=static)
        assert got.texts[1] == free.texts[0] and not _valid(free.texts[0])
    assert static._caches  # the batches decoded on static caches
    if graph_steps > 1:
        assert sorted(map(id, static._caches.values())) == sorted(static._guided)
        assert all(s.guided and s.k == 1 for s in static._guided.values())
        assert replays.count(True) >= 100 and False in replays  # guided steps, and the free answers' 8-step calls
    else:
        assert not static._guided and not replays


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_a_compiled_engine_on_a_gpu_guides_on_its_static_caches(tmp_path):
    """``compile`` on CUDA (float32): guided answers decode on the engine's static caches, through
    the compiled step, with the plain engine's guided texts, alone and in a batch of 3 (filled to 4)."""
    from potstill.engines import guide, load_engine
    from potstill.models.prompting import PromptFormat
    from tests.export.conftest import make_bpe_model

    path = str(make_bpe_model(tmp_path / "bpe"))
    plain = load_engine("transformers", path, device="cuda", dtype="float32")
    engine = load_engine("transformers", path, device="cuda", dtype="float32", compile=True)
    for e in (plain, engine):
        guide(e, TOPIC)
    fmt = PromptFormat(kind="chat", instruction="Answer in JSON.")
    for batch_size in (1, 3):
        ref = plain.generate(fmt, ASKS, 120, batch_size=batch_size)
        got = engine.generate(fmt, ASKS, 120, batch_size=batch_size)
        assert got.texts == ref.texts and all(_valid(t) for t in got.texts)
    assert sorted(engine.static._caches) == [(1, 256), (4, 256)]
    # Each cache's guided step is one CUDA graph, replayed for every guided token.
    assert len(engine.static._guided) == 2 and all(s.graph is not None for s in engine.static._guided.values())


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), TOPIC)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _prefixes_open(schema: dict, text: str) -> None:
    """Every prefix of ``text`` is accepted, and the whole of it can end."""
    p = JsonPrefix(schema)
    for i, c in enumerate(text):
        assert p.step(c), f"{text!r} refused at {i}: {text[: i + 1]!r}"
    assert p.can_end(), text


def test_a_union_of_models_follows_each_branch_until_the_text_picks_one():
    """Two object branches (pydantic's tagged and plain unions of models) are read side by side, each
    under its own schema, until the text leaves one of them: a tag, a key, a value's kind. A wrong
    tag or a key neither branch names is refused; an array of such unions keeps one reading per
    branch at most (equal readings merge), however long."""
    from typing import Annotated, Literal, Union

    from pydantic import Field

    class Cat(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["cat"]
        lives: int = Field(ge=0, le=9)

    class Dog(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["dog"]
        good: bool

    class Home(BaseModel):
        pet: Annotated[Union[Cat, Dog], Field(discriminator="kind")]
        pets: list[Union[Cat, Dog]] = []

    schema = Home.model_json_schema()
    assert "oneOf" in schema["properties"]["pet"]
    for doc in (Home(pet=Cat(kind="cat", lives=3)), Home(pet=Dog(kind="dog", good=True),
                                                          pets=[Cat(kind="cat", lives=9), Dog(kind="dog", good=False)])):
        for text in (doc.model_dump_json(), json.dumps(doc.model_dump(), indent=2)):
            jsonschema.validate(json.loads(text), schema)
            _prefixes_open(schema, text)
    _prefixes_open(schema, '{"pet": {"lives": 2, "kind": "cat"}}')  # the key order the tag does not lead
    for bad in ('{"pet": {"kind": "cow', '{"pet": {"kind": "dog", "lives"', '{"pet": {"kind": "cat", "lives": 12',
                '{"pet": {"good": true, "kind": "cat', '{"pet": {"name"', '{"pet": {"kind": "dog", "good": 1'):
        assert not JsonPrefix(schema).feed(bad), bad
    assert not accepts(schema, '{"pet": {"kind": "dog"}}')  # Dog's required key missing
    p = JsonPrefix(schema)
    assert p.feed('{"pet": {"kind": "dog", "good": true}, "pets": [')
    for i in range(60):
        assert p.feed(('{"kind": "cat", "lives": 1}' if i % 2 else '{"kind": "dog", "good": false}') + ", ")
        assert len(p.parses) == 1
    q = JsonPrefix({"type": "array", "items": {"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]}})
    assert q.feed("[" + ", ".join(['{"b": 1}'] * 40)) and len(q.parses) <= 2  # never-parted readings merge
    # One reading per branch that takes the first character, each held to its own schema to the end.
    nums = {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "number", "maximum": 0}]}
    assert accepts(nums, "12") and accepts(nums, "-0.5") and not accepts(nums, "5") and not JsonPrefix(nums).feed("12.")


def test_all_of_and_constraints_beside_a_ref_or_a_union_are_merged():
    """``allOf`` parts are merged (properties and required joined, types and enums intersected, the
    tighter bound kept), a ``$ref`` beside constraints is the allOf of both, and constraints beside
    an ``anyOf`` hold in each of its branches; parts that disagree otherwise leave the value open."""
    base = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0}}, "required": ["id"]}
    schema = {"$defs": {"Base": base}, "allOf": [
        {"$ref": "#/$defs/Base"},
        {"properties": {"name": {"type": "string"}, "id": {"maximum": 9}}, "required": ["name"]}],
        "additionalProperties": False}
    assert accepts(schema, '{"id": 3, "name": "x"}')
    for bad in ('{"id": 3}', '{"name": "x", "id": 10', '{"id": -', '{"other"', '{"name": 1'):
        assert not accepts(schema, bad), bad
    near = {"$defs": {"Base": base}, "properties": {"b": {"$ref": "#/$defs/Base", "description": "kept",
                                                          "required": ["id", "tag"]}}}
    assert accepts(near, '{"b": {"id": 1, "tag": 2}}') and not accepts(near, '{"b": {"id": 1}}')
    one_of = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
              "additionalProperties": False, "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}
    assert accepts(one_of, '{"a": 1}') and accepts(one_of, '{"b": "x"}')
    assert not accepts(one_of, "{}") and not JsonPrefix(one_of).feed('{"c"')
    assert not accepts({"allOf": [{"type": ["string", "integer"]}, {"type": "number"}]}, '"x"')
    assert accepts({"allOf": [{"type": ["string", "integer"]}, {"type": "number"}]}, "4")
    assert accepts({"allOf": [{"enum": ["a", "b"]}, {"enum": ["b", "c"]}]}, '"b"')
    assert not JsonPrefix({"allOf": [{"enum": ["a", "b"]}, {"enum": ["b", "c"]}]}).feed('"a')
    clash = {"allOf": [{"type": "string", "pattern": "^a"}, {"type": "string", "pattern": "^b"}]}
    assert accepts(clash, "[1]")  # two patterns do not merge: open, for validation to judge


def test_a_regular_expression_or_a_choice_guides_the_whole_answer(bpe_lm):
    """vLLM's guided_regex and guided_choice: the random tiny model's greedy answers, never of the
    form unguided, match the pattern whole (or are one of the choices), batched and alone alike, in
    one batch with a JSON row; the reader refuses at the first character that cannot lead to a
    match, and ends a spelled-out choice."""
    import regex

    from potstill.models.generation import generate
    from potstill.models.prompting import PromptFormat
    from potstill.models.regex_constraint import RegexPrefix, choice_pattern, regex_guide

    p = RegexPrefix(r"[0-9]{3}-[a-z]{2}")
    assert p.copy().feed("12") and not p.copy().feed("1a") and not p.can_end()
    assert p.feed("123-ab") and p.can_end() and p.done and not p.copy().feed("c")
    c = RegexPrefix(choice_pattern(["tech", "tea", "teas"]))
    assert c.copy().feed("te") and not c.copy().feed("ax") and not c.done
    assert c.feed("tea") and c.can_end() and not c.done  # "teas" is still open
    assert c.feed("s") and c.done
    assert RegexPrefix(choice_pattern(["a.b"])).feed("a.b") and not RegexPrefix(choice_pattern(["a.b"])).feed("axb")
    code, choices = r"[A-Z]{2}-[0-9]{2,4}", ["sports", "tech", "politics"]
    guides = [regex_guide(code), regex_guide(choice_pattern(choices)), TOPIC]
    fmt = PromptFormat(kind="chat", instruction="Answer.")
    free = generate(bpe_lm, fmt, ASKS, 24)
    assert not any(regex.fullmatch(code, t) or t in choices for t in free.texts)
    batched = generate(bpe_lm, fmt, ASKS, 200, batch_size=3, json_schema=guides)
    single = generate(bpe_lm, fmt, ASKS, 200, batch_size=1, json_schema=guides)
    assert batched.texts == single.texts
    assert regex.fullmatch(code, batched.texts[0]) and batched.texts[1] in choices, batched.texts
    assert _valid(batched.texts[2])


UNIQUE = {
    "literals": {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True},
    "bools": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
    "small ints": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 3}, "uniqueItems": True},
    "ints": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 6},
    "numbers": {"type": "array", "items": {"type": "number"}, "uniqueItems": True, "maxItems": 6},
    "short strings": {"type": "array", "items": {"type": "string", "pattern": "^[ab]$"}, "uniqueItems": True},
    "dates": {"type": "array", "items": {"type": "string", "format": "date"}, "uniqueItems": True, "maxItems": 3},
    "tuple": {"type": "array", "prefixItems": [{"const": 1}, {"enum": [1, 2]}], "uniqueItems": True, "minItems": 2},
}


@pytest.mark.parametrize("name", list(UNIQUE))
def test_unique_items_hold_and_no_walk_dead_ends(name):
    """``uniqueItems`` (pydantic's ``set[...]``): an item equal to an earlier one is refused where it
    would close (``["a", "a"``, ``[1, 1,``, ``[true, true``), a ``,`` where no other item remains
    (``["a", "b"``), and random walks over printable characters never reach a prefix that nothing
    continues; every document they finish validates. Before, duplicates passed and failed validation."""
    import random

    schema = UNIQUE[name]
    valid = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).is_valid
    dupes = {"literals": '["a", "a"', "bools": "[true, true", "small ints": "[1, 2, 1,", "ints": "[7, 7,",
             "numbers": "[0.5, 0.50,", "short strings": '["b", "b"', "dates": '["2024-02-29", "2024-02-29"',
             "tuple": "[1, 1,"}
    assert not JsonPrefix(schema).feed(dupes[name])
    alphabet = [chr(i) for i in range(32, 127)]
    rng = random.Random(0)
    done = 0
    for _ in range(25):
        text, whole = walk(schema, rng, alphabet, stop=0.15, lean=0.3, toward=',"]', limit=120, give_up=True)
        if whole:
            done += 1
            assert valid(json.loads(text)), (name, text)
    assert done >= 10, name


def test_random_walks_under_a_rich_pydantic_model_never_dead_end_and_validate():
    """A model with most of what pydantic writes (a UUID, a date, an optional datetime, a tagged union,
    nested models in a bounded list, a set of literals, bounded ints and floats, an int multiple, a
    Literal of ints, a union of scalars, a tuple, a dict with max_length, no extra keys), and the
    vLLM example's invoice schema: 40 random walks each over printable characters (leaning toward
    closing quotes, commas and brackets) never reach a prefix nothing continues, and every document
    they finish passes the task's validation (``format_checker``: a date a day of the calendar).
    Found by it: a dict's maxProperties went unheeded, a date could be April 31st or February 29th
    of 2023, a duration a bare "P"."""
    import datetime
    import random
    import uuid
    from typing import Annotated, Literal, Optional, Union

    import yaml
    from pydantic import Field

    from potstill.config import TaskConfig
    from potstill.models.json_schema_parts import format_checker
    from potstill.tasks import get_task

    strict = ConfigDict(extra="forbid")

    class Cat(BaseModel):
        model_config = strict
        kind: Literal["cat"]
        lives: int = Field(ge=1, le=9)

    class Dog(BaseModel):
        model_config = strict
        kind: Literal["dog"]
        good: bool

    class Item(BaseModel):
        model_config = strict
        name: str = Field(min_length=1, max_length=8)
        qty: int = Field(ge=0, le=100)
        price: float = Field(ge=0)
        tags: set[Literal["x", "y", "z"]] = set()

    class Doc(BaseModel):
        model_config = strict
        id: uuid.UUID
        when: datetime.date
        at: Optional[datetime.datetime] = None
        span: Optional[datetime.timedelta] = None
        pet: Annotated[Union[Cat, Dog], Field(discriminator="kind")]
        items: list[Item] = Field(max_length=2)
        score: Optional[float] = Field(default=None, ge=0, le=1)
        level: Literal[1, 2, 3]
        ratio: float = Field(gt=-1.5, lt=2.25)
        step: int = Field(multiple_of=5, ge=-20, le=20)
        maybe: Union[int, str, None]
        pair: tuple[bool, Optional[int]]
        counts: dict[str, int] = Field(default={}, max_length=2)

    preset = yaml.safe_load((Path(__file__).parents[1] / "examples" / "vllm-extraction.yaml").read_text())
    alphabet = [chr(i) for i in range(32, 127)]
    rng = random.Random(0)
    for schema in (Doc.model_json_schema(), get_task(TaskConfig.model_validate(preset["task"])).cfg.json_schema):
        valid = jsonschema.Draft202012Validator(schema, format_checker=format_checker()).is_valid
        for _ in range(40):
            text, _ = walk(schema, rng, alphabet)
            assert valid(json.loads(text)), text


WALKED = {
    "escaped enum strings and keys": {"type": "object", "properties": {
        "q": {"enum": ["a\"b", "c\\d", "é", "x y", ""]}, "k\"ey": {"type": "integer"}},
        "required": ["q", "k\"ey"], "additionalProperties": False},
    "alternation pattern": {"type": "array", "items": {"type": "string", "pattern": "^(ab|cd)+$", "maxLength": 6},
                            "minItems": 1, "maxItems": 3},
    "recursive ref": {"$defs": {"N": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/N"}, "maxItems": 2}},
        "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/N"},
    "oneOf objects": {"oneOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
        {"type": "object", "properties": {"b": {"type": "string", "maxLength": 2}}, "required": ["b"],
         "additionalProperties": False}]},
    "times, emails, hostnames": {"type": "array", "items": {"anyOf": [
        {"type": "string", "format": "time"}, {"type": "string", "format": "email"},
        {"type": "string", "format": "hostname"}]}, "maxItems": 2},
    "open interval, float multiples": {"type": "array", "items": {"anyOf": [
        {"type": "number", "exclusiveMinimum": 0.1, "exclusiveMaximum": 0.2},
        {"type": "number", "minimum": -1, "exclusiveMaximum": 1, "multipleOf": 0.25}]}, "maxItems": 3},
    "properties counted": {"type": "object", "additionalProperties": {"type": "boolean"}, "minProperties": 2,
                           "maxProperties": 3},
    "mixed unique enum": {"type": "array", "items": {"enum": [1, "1", None, True, 2.5, "two"]}, "uniqueItems": True},
}


@pytest.mark.parametrize("name", list(WALKED))
def test_random_walks_under_edge_schemas_never_dead_end_and_validate(name):
    """Escapes in enum strings and keys, a pattern of alternations, a recursive $ref, oneOf objects,
    formats in a union, open float intervals and float multiples, counted properties, a unique mixed
    enum: 15 random walks over printable characters (and é, U+2028) never reach a prefix nothing
    continues, and every document they finish passes the task's validation (the counted properties
    and the unique enum fail on the automaton of the morning of 2026-12-05)."""
    import random

    from potstill.models.json_schema_parts import validator

    schema = WALKED[name]
    check = validator(schema)
    alphabet = [chr(i) for i in range(32, 127)] + ["é", "\u2028"]
    rng = random.Random(1)
    for _ in range(15):
        text, _ = walk(schema, rng, alphabet, limit=3000)
        assert check.is_valid(json.loads(text)), text
