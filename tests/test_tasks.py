import json

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
    for fence in ("```", "```JSON", "```Json"):  # ```JSON was "invalid JSON: Expecting value at column 1"
        assert t.parse(f'{fence}\n{{"name": "Ada"}}\n```') == {"name": "Ada"}, fence
    assert t.validate(t.parse('Here:\n```json\n{"name": "Ada"}\n```')).startswith("invalid JSON")  # whole answer only
    assert t.agree({"name": "Ada", "age": 1}, {"name": "Ada", "age": 2}) == 0.5
    with pytest.raises(PotstillError, match="not a valid JSON Schema"):
        get_task(TaskConfig(type="extraction", json_schema={"type": "nonsense"}))


def test_freetext_and_unknown_task():
    t = get_task(TaskConfig(type="freetext"))
    assert t.validate(t.parse("   ")) == "empty output"
    assert t.agree(t.parse("Hello  world"), t.parse("hello world")) == 1.0
    with pytest.raises(PotstillError, match="did you mean 'freetext'"):
        get_task(TaskConfig(type="freetxt"))


def test_extraction_target_keeps_the_teachers_key_order_unless_asked(tiny_model):
    """The student learns the target text: sorted keys taught it to reorder the teacher's JSON."""
    from potstill.models.loading import load_lm
    from potstill.records import Record
    from potstill.students import student_format
    from potstill.train.batching import build_examples

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"},
                                               "tags": {"type": "array", "items": {"type": "object", "properties": {
                                                   "k": {}, "v": {}}}}}}
    # What train tokenizes, with the default config (words the tiny tokenizer knows): the teacher's order.
    lm = load_lm(str(tiny_model))
    task = get_task(TaskConfig(type="extraction", json_schema=schema))
    rec = Record(messages=[{"role": "user", "content": "Ada, Zurich"}],
                 output='{"topic": "tech", "name": "person", "city": "bank"}')
    (ex,) = build_examples(lm, student_format(lm, task), task, [rec], 256)
    words = lm.tokenizer.decode(ex.ids[ex.n_prompt:]).split()
    assert words.index("topic") < words.index("name") < words.index("city")

    rec = rec.model_copy(update={"output": '{"zip": "8001", "name": "Ada", "tags": [{"v": 1, "k": "x"}], "city": "Zurich"}'})
    targets = {}
    for order in ("teacher", "schema", "sorted"):
        t = get_task(TaskConfig(type="extraction", json_schema=schema, json_key_order=order))
        targets[order] = t.target(rec)
    assert targets["teacher"] == '{"zip": "8001", "name": "Ada", "tags": [{"v": 1, "k": "x"}], "city": "Zurich"}'
    assert targets["schema"] == '{"name": "Ada", "city": "Zurich", "tags": [{"k": "x", "v": 1}], "zip": "8001"}'
    assert targets["sorted"] == '{"city": "Zurich", "name": "Ada", "tags": [{"k": "x", "v": 1}], "zip": "8001"}'


def test_an_extraction_gold_label_may_be_a_json_object_or_the_json_string(tmp_path):
    """Labelled extraction data names its gold as the object itself or as a JSON string: both are the
    same gold when read, and a real example given either way trains on the same compact JSON."""
    import json

    from potstill.config import Config
    from potstill.curate import curate
    from potstill.records import Record, read_records

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    gold = {"name": "Ada", "age": 36}
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"id": "obj", "input": "Ada is 36.", "label": gold}) + "\n"
                    + json.dumps({"id": "str", "input": "Our new hire, born in 1989, is called Ada.", "label": json.dumps(gold)}) + "\n")
    records = read_records(path)
    task = get_task(TaskConfig(type="extraction", json_schema=schema))
    assert [task.gold(r) for r in records] == [gold, gold]
    texts = ["Bob signed the lease in May.", "The invoice lists three chairs.", "Zoe moved to Lisbon last year."]
    teacher = [Record(id=f"t{i}", messages=[{"role": "user", "content": t}], output='{"name": "X"}')
               for i, t in enumerate(texts)]
    c = curate(Config(task={"type": "extraction", "json_schema": schema}, curate={"val": 0, "test": 0, "real_ratio": 1}),
               teacher, real=records)
    real = sorted((r for r in c.train if r.meta.get("source") == "real"), key=lambda r: r.id)
    assert [r.id for r in real] == ["obj", "str"] and {task.target(r) for r in real} == {'{"name": "Ada", "age": 36}'}


def test_a_star_rating_gold_label_written_as_a_number_is_that_label(tmp_path):
    """`labels: [1, 2, 3, 4, 5]` in potstill.yaml is the labels '1'..'5' (YAML numbers, read as text);
    labelled data writes the same gold as a JSON number, and it is the same label, not a refused line."""
    from potstill.config import load_config
    from potstill.records import read_numbered

    cfg_path = tmp_path / "potstill.yaml"
    cfg_path.write_text("task:\n  labels: [1, 2, 3, 4, 5]\n")
    task = get_task(load_config(cfg_path).task)
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"input": "Loved it.", "label": 5}\n{"input": "Meh.", "label": "3"}\n')
    numbered = read_numbered(path)
    task.check_gold(numbered, path, 0.05)
    assert [task.gold(r) for _, r in numbered] == ["5", "3"]


def test_a_whole_number_gold_written_as_a_float_is_that_label_and_the_callers_dict_is_left_alone(tmp_path):
    """A JSON writer that types a column as float (pandas, with a missing value in it) writes the star
    rating 5 as 5.0: it was refused while 5 was the label '5'. A fraction is still no label. And the
    coercion changed the caller's own dict when ``slice`` was one string."""
    from potstill.config import load_config
    from potstill.errors import PotstillError
    from potstill.records import _coerce, read_numbered

    cfg_path = tmp_path / "potstill.yaml"
    cfg_path.write_text("task:\n  labels: [1, 2, 3, 4, 5]\n")
    task = get_task(load_config(cfg_path).task)
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"input": "Loved it.", "label": 5.0}\n{"input": "Meh.", "label": 3}\n')
    numbered = read_numbered(path)
    task.check_gold(numbered, path, 0.05)
    assert [task.gold(r) for _, r in numbered] == ["5", "3"]
    path.write_text('{"input": "Loved it.", "label": 4.5}\n')
    with pytest.raises(PotstillError, match=r"reviews.jsonl:1: label: "):
        read_numbered(path)

    given = {"messages": [{"role": "user", "content": "x"}], "slice": "night", "label": 2.0}
    kept = json.loads(json.dumps(given))
    assert _coerce(given)["slice"] == ["night"] and given == kept


def test_an_extraction_reference_written_as_a_json_string_is_the_same_gold_as_the_object():
    """`Task.gold` returned a `reference` as written, while a `label` is parsed: an extraction reference
    given as JSON text never equalled the student's parsed object, so that gold always scored wrong."""
    from potstill.records import Record

    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    task = get_task(TaskConfig(type="extraction", json_schema=schema))
    rec = lambda ref: Record(messages=[{"role": "user", "content": "Ada."}], reference=ref)  # noqa: E731
    assert task.gold(rec('{"name": "Ada"}')) == task.gold(rec({"name": "Ada"})) == {"name": "Ada"}
    assert task.agree(task.parse('{"name": "Ada"}'), task.gold(rec('{"name": "Ada"}'))) == 1.0


def test_labels_written_as_whole_floats_in_yaml_are_the_labels_gold_data_names():
    """`labels: [1.0, 2.0]` in potstill.yaml became the labels '1.0', '2.0', while a gold label 1.0 (or 1)
    reads as '1': no gold matched the label set. A whole float is its whole number, as gold's is."""
    from potstill.config import load_config
    from potstill.records import Record, _coerce

    cfg = load_config(overrides={"task": {"labels": [1.0, 2.0, 2.5, "neutral"]}})
    assert cfg.task.labels == ["1", "2", "2.5", "neutral"]
    task = get_task(cfg.task)
    assert task.gold(Record.model_validate(_coerce({"input": "ok", "label": 1.0}))) == "1"


def test_extraction_asserts_the_formats_the_guide_holds():
    """``format`` is checked as guided decoding holds it (date, date-time, time, uuid, ipv4, email,
    duration, hostname; ipv6 too): a teacher's "March 3" for a date field is a schema violation,
    as is a day the calendar lacks, the same on every install; other formats stay annotations."""
    schema = {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, "at": {"type": "string", "format": "date-time"},
        "mail": {"type": "string", "format": "email"}, "host": {"type": "string", "format": "hostname"},
        "ip": {"type": "string", "format": "ipv6"}, "span": {"type": "string", "format": "duration"},
        "site": {"type": "string", "format": "uri"}}}
    t = get_task(TaskConfig(type="extraction", json_schema=schema))
    good = {"day": "2026-03-03", "at": "2026-03-03T09:30:00Z", "mail": "a@b.org", "host": "api.example.com",
            "ip": "::1", "span": "P1DT2H", "site": "not a uri, unchecked"}
    assert t.validate(good) is None
    for key, bad in (("day", "March 3"), ("day", "2026-02-30"), ("at", "2026-03-03"), ("mail", "nobody"),
                     ("host", "-bad-.com"), ("ip", "1.2.3.4"), ("span", "P"), ("span", "P1DT")):
        got = t.validate({**good, key: bad})
        assert got is not None and got.startswith(f"schema violation at {key}") and "is not a" in got, (key, bad, got)


def test_answers_compare_in_composed_unicode_and_keep_the_text_as_written():
    """An accent typed as its own combining mark (NFD) was dropped by classification's normal form:
    an NFD "Négatif" was outside the label set, and an NFD "résumé" read as the label "resume";
    extraction and free text called "café" in NFC and NFD different answers. They compare composed
    (NFC) now; what is stored and trained on stays as written."""
    import unicodedata

    from potstill.evaluate.metrics import chrf, exact_match, field_prf
    from potstill.records import Record

    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    t = get_task(TaskConfig(type="classification", labels=["négatif", "positif"]))
    assert t.parse(nfd("Négatif")) == "négatif" and t.validate(t.parse(nfd("Négatif"))) is None
    assert get_task(TaskConfig(type="classification", labels=["résumé", "resume"])).parse(nfd("résumé")) == "résumé"

    e = get_task(TaskConfig(type="extraction", json_schema={"type": "object"}))
    a, b = e.parse('{"ville": "café", "où": 1}'), e.parse(nfd('{"ville": "café", "où": 1}'))
    assert e.agree(a, b) == 1.0 and exact_match([a], [b]) == 1.0 and field_prf([a], [b])["f1"] == 1.0
    rec = Record(messages=[{"role": "user", "content": "x"}], output=nfd('{"ville": "café"}'))
    assert e.target(rec) == nfd('{"ville": "café"}')  # the teacher's text, not recomposed

    f = get_task(TaskConfig(type="freetext"))
    assert f.agree(f.parse("Café  ouvert"), f.parse(nfd("café ouvert"))) == 1.0
    assert f.parse(nfd("café")) == nfd("café") and chrf(nfd("café ouvert"), "café ouvert") == 1.0


def test_the_json_schema_check_compares_composed_unicode():
    """The README says JSON strings compare composed (NFC), but the schema check ran on the answer as
    written: an NFD "été" was 'not one of ['Straße', 'été']' and an NFD key "Café" left the required
    "Café" missing, so curate set them aside showing two strings that look the same. Both sides are
    composed now: the answer, and a schema written in NFD (an enum typed on a Mac); a tool's
    arguments are checked against its parameters the same way."""
    import unicodedata

    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    schema = {"type": "object", "properties": {"名前": {"type": "string"}, "Café": {"enum": ["Straße", "été"]},
                                               "pays": {"const": "Réunion"}},
              "required": ["名前", "Café"], "additionalProperties": False}
    answers = ['{"名前": "山田", "Café": "été", "pays": "Réunion"}',
               json.dumps({"名前": "山田", "Café": nfd("été"), "pays": nfd("Réunion")}, ensure_ascii=False),
               json.dumps({"名前": "山田", nfd("Café"): "été"}, ensure_ascii=False)]
    for written in (schema, json.loads(nfd(json.dumps(schema, ensure_ascii=False)))):
        e = get_task(TaskConfig(type="extraction", json_schema=written))
        for a in answers:
            assert e.validate(e.parse(a)) is None, (a, e.validate(e.parse(a)))
        assert e.validate(e.parse('{"名前": "山田", "Café": "ete"}')).startswith("schema violation at Café")
    params = {"type": "object", "properties": {"ville": {"enum": ["Orléans", "Nîmes"]}}, "required": ["ville"],
              "additionalProperties": False}
    t = get_task(TaskConfig(type="tools", tools=[{"type": "function", "function": {"name": "meteo",
                                                                                 "parameters": params}}]))
    call = json.dumps({"name": "meteo", "arguments": {nfd("ville"): nfd("Orléans")}}, ensure_ascii=False)
    assert t.validate(t.parse(call)) is None


def test_labels_match_case_folded_width_folded_and_without_emoji_variation_selectors():
    """Labels were matched under lower(), not case folding, and an emoji's variation selector or a
    full-width letter named no label: "STRASSE" was no answer for "Straße", "❤" (no U+FE0F) none for
    "❤️" and a Japanese IME's "Ｊａ" none for "ja", so curate dropped them as answers outside the label
    set; and labels equal under that folding were both accepted. They match folded (NFKC_Casefold,
    variation selectors dropped) now, and labels that fold to one are refused, as case-only ones were."""
    def named(labels: list[str], answers: list[str]) -> list[str | None]:
        t = get_task(TaskConfig(type="classification", labels=labels))
        return [t.parse(a) for a in answers]

    assert named(["Straße", "Weg"], ["STRASSE", "Strasse.", "weg"]) == ["Straße", "Straße", "Weg"]
    assert named(["👍", "👎", "❤️"], ["❤", "❤️ (love)", "👍\ufe0f", "👎\ufe0e"]) == ["❤️", "❤️", "👍", "👎"]
    assert named(["ja", "nein"], ["Ｊａ", "ＮＥＩＮ", "ｊａ！"]) == ["ja", "nein", "ja"]
    assert named(["ﾎﾟｼﾞﾃｨﾌﾞ", "ネガティブ"], ["ポジティブ", "ﾈｶﾞﾃｨﾌﾞ"]) == ["ﾎﾟｼﾞﾃｨﾌﾞ", "ネガティブ"]
    assert named(["+", "-"], ["＋", "－"]) == ["+", "-"]
    for labels in (["Straße", "STRASSE"], ["ja", "Ｊａ"], ["❤", "❤️"], ["+", "＋"]):
        with pytest.raises(PotstillError, match="differ only in case, width"):
            get_task(TaskConfig(type="classification", labels=labels))


def test_gold_outside_labels_holding_a_comma_names_the_label_set_unambiguously(tmp_path):
    """``(billing issue, crash, bug, other)`` read as four labels; each is quoted."""
    from potstill.records import Record

    task = get_task(TaskConfig(type="classification", labels=["billing issue", "crash, bug", "other"]))
    numbered = [(1, Record(messages=[{"role": "user", "content": "it froze"}], label="crash"))]
    with pytest.raises(PotstillError) as err:
        task.check_gold(numbered, "in.jsonl", 0.0)
    assert 'not in task.labels ("billing issue", "crash, bug", "other")' in str(err.value), str(err.value)
