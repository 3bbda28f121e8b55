"""A free-text task whose answers follow a GBNF grammar (``task.grammar``): validation that says
where an answer leaves it, the local teacher and the student decoding under it, and the settings
that cannot take it refused in one line."""

from __future__ import annotations

import pytest

from potstill.config import Config, TaskConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.cli import run_main
from tests.test_grammar_constraint import SQL


def sql_task() -> object:
    return get_task(TaskConfig(type="freetext", instruction="Write the query.", grammar=SQL))


def test_answers_are_valid_where_the_grammar_derives_them_and_otherwise_say_where_they_leave_it():
    task = sql_task()
    for text in ("SELECT id FROM items", "  SELECT id, price FROM orders WHERE price > 20\n"):
        assert task.validate(task.parse(text)) is None, text
    assert task.validate(task.parse("SELECT id FROM items WHERE price = 5000")) == \
        "not derived by task.grammar: 'd FROM items WHERE price = 500' cannot go on with '0' (character 39)"
    assert task.validate(task.parse("SELECT id FROM")) == "not derived by task.grammar: it ends early, after " \
        "'SELECT id FROM'"
    assert task.validate(task.parse("select id")) == "not derived by task.grammar: the start cannot go on with " \
        "'s' (character 1)"
    assert task.validate(task.parse("")) == "not derived by task.grammar: empty output"
    assert task.parse("SELECT id\n FROM") == "SELECT id\n FROM"  # white space kept: it may be the grammar's
    assert task.agree("SELECT id  FROM items", "select id from items") == 1.0
    plain = get_task(TaskConfig(type="freetext"))
    assert plain.parse(" a \n b ") == "a b" and plain.validate("") == "empty output" and plain.validate("x") is None


def test_a_grammar_where_it_cannot_apply_is_one_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(PotstillError, match="task.grammar: a classification task answers one of task.labels"):
        get_task(TaskConfig(labels=["a", "b"], grammar=SQL))
    with pytest.raises(PotstillError, match="task.grammar: an extraction task's answers follow task.json_schema"):
        get_task(TaskConfig(type="extraction", json_schema={"type": "object"}, grammar=SQL))
    with pytest.raises(PotstillError, match="task.json_schema: a freetext task has no JSON Schema"):
        get_task(TaskConfig(type="freetext", json_schema={"type": "object"}))
    with pytest.raises(PotstillError, match="an openai teacher cannot constrain its answers to a grammar; set it to "
                                            "off; curate still drops answers task.grammar does not derive"):
        get_teacher(TeacherConfig(type="openai", model="gpt-4.1-mini", structured_outputs="on"), sql_task())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"input": "all items"}\n')
    (tmp_path / "c.yaml").write_text("task:\n  type: freetext\n  grammar: 'root ::= cols'\ndata:\n  inputs: in.jsonl\n")
    code, err = run_main(monkeypatch, capsys, "preflight", "-c", "c.yaml")
    assert code == 2 and len(err) == 1 and "task.grammar" in err[0] and \
        "not a grammar: rule 'cols' is used but never defined at line 1, column 10" in err[0], err


def test_a_local_teacher_and_the_student_decode_under_the_tasks_grammar(tmp_path):
    """A local teacher (a random tiny BPE Llama) with structured_outputs writes only answers the
    grammar derives, where without it none is; the request carries the grammar, so the two are
    cached apart. Evaluate's and serve's engines take the grammar as their guide under guided_json,
    and serve's without it still guides clients' formats alone."""
    from potstill.engines import section_engine
    from potstill.models.grammar_constraint import derives, grammar_guide
    from potstill.students import evaluation_engine
    from potstill.synthesize import Slot, prompt
    from tests.teachers.test_structured_outputs import answers_off_and_on

    model, got = answers_off_and_on(tmp_path, sql_task(), max_tokens=60)
    for mode, (_, request) in got.items():
        assert request.get("json_schema") == (grammar_guide(SQL) if mode == "on" else None)
    outs = {mode: records for mode, (records, _) in got.items()}
    assert not any(r.valid for r in outs["off"]) and all(r.invalid_reason for r in outs["off"])
    assert all(r.valid and derives(SQL, r.output) for r in outs["on"]), [r.output for r in outs["on"]]

    cfg = Config.model_validate({"task": {"type": "freetext", "instruction": "x", "grammar": SQL},
                                 "evaluate": {"guided_json": True}, "serve": {"guided_json": True}})
    assert evaluation_engine(cfg, str(model)).json_schema == grammar_guide(SQL)
    assert section_engine(cfg.serve, str(model), task=cfg.task, client_formats=True).json_schema == grammar_guide(SQL)
    free = Config.model_validate({"task": {"type": "freetext", "instruction": "x"}, "serve": {"guided_json": True}})
    assert section_engine(free.serve, str(model), task=free.task, client_formats=True).json_schema is None
    asked = prompt(cfg.task, Slot("all", 0, None, None, None, None, []))
    assert "Answers must follow this grammar (GBNF from its rule root, or Lark from start)" in asked[-1]["content"]
    assert 'cols ::= col (", " col){0,2}' in asked[-1]["content"]
