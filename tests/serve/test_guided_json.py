"""``serve.guided_json``: a served extraction student decoding under its task's JSON Schema
(``potstill.models.json_constraint``), a tiny real Llama with a byte-level BPE tokenizer behind the
official openai client."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from potstill.models.json_constraint import JsonPrefix
from tests.test_json_constraint import ASKS, TOPIC, _valid


@contextlib.contextmanager
def served(run: Path, guided: bool) -> Iterator[Any]:
    """The official openai client of a live server on ``run``'s student with ``serve.guided_json``
    as given, every chat routed to the student."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import client

    cfg = run_config(run, None).model_copy(deep=True)
    cfg.serve.guided_json = guided
    service = load_service(run, cfg, device="cpu")
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            yield client(live)
    finally:
        service.close()


def test_a_served_extraction_student_with_guided_json_answers_valid_json(tmp_path, teacher_server, monkeypatch):
    """serve.guided_json: the same random student served as is gives answers that fail the task's
    schema (escalated as invalid_output); guided, its answers parse and validate, through the
    official openai client. A classifier (a label is scored, never decoded), or an engine that
    cannot, is one line."""
    import yaml

    from potstill.config import Config
    from potstill.errors import PotstillError
    from potstill.serve.service import load_service
    from tests.export.conftest import make_bpe_model
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    task = {"type": "extraction", "instruction": "Answer in JSON.", "json_schema": TOPIC, "max_output_tokens": 100}
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), teacher_server.base_url, task=task)
    answers = {}
    # A client's own schema, which the task's (TOPIC: "paid" required, no other key) refuses.
    theirs = {"type": "object", "properties": {"topic": {"enum": ["sports", "tech"]}, "urgent": {"type": "boolean"}},
              "required": ["topic", "urgent"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "theirs", "schema": theirs, "strict": True}}
    for guided in (False, True):
        with served(run, guided) as c:
            answers[guided] = [c.chat.completions.create(model="potstill", messages=m) for m in ASKS]
            if guided:
                own = [c.chat.completions.create(model="potstill", messages=m, response_format=fmt) for m in ASKS]
    assert all(r.model_extra["potstill"]["reason"] == "invalid_output" for r in answers[False]), [r.model_extra["potstill"] for r in answers[False]]
    assert all(r.model_extra["potstill"]["answered_by"] == "student" for r in answers[True])
    assert all(_valid(r.choices[0].message.content) for r in answers[True])
    # Decoded under the client's schema, an answer is judged by it, not by the task's.
    for r in own:
        assert r.model_extra["potstill"]["answered_by"] == "student", r.model_extra["potstill"]
        jsonschema.validate(json.loads(r.choices[0].message.content), theirs)
        assert not _valid(r.choices[0].message.content)
    raw = yaml.safe_load((run / "potstill.yaml").read_text())
    with pytest.raises(PotstillError, match="guided_json: the ctranslate2 engine cannot decode under a schema"):
        load_service(run, Config.model_validate({**raw, "serve": {**raw["serve"], "guided_json": True,
                                                                  "engine": "ctranslate2"}}), device="cpu")
    labels = {**raw, "task": {"type": "classification", "labels": ["a", "b"], "instruction": "x"},
              "serve": {**raw["serve"], "guided_json": True}}
    with pytest.raises(PotstillError, match=r"only an extraction task \(or free text with task.grammar, or served to "
                                            r"clients' response_format\) has a JSON Schema to decode under"):
        load_service(run, Config.model_validate(labels), device="cpu")


def test_evaluate_and_pilot_guide_their_students_as_serve_does(tmp_path):
    from potstill.config import Config
    from potstill.students import evaluation_engine
    from tests.export.conftest import make_bpe_model

    model = make_bpe_model(tmp_path / "bpe")
    cfg = Config.model_validate({"task": {"type": "extraction", "instruction": "x", "json_schema": TOPIC},
                                 "evaluate": {"guided_json": True}})
    assert evaluation_engine(cfg, str(model)).json_schema == TOPIC
    cfg.evaluate.guided_json = False
    assert evaluation_engine(cfg, str(model)).json_schema is None


def test_a_clients_response_format_guides_the_served_student(tmp_path, teacher_server, monkeypatch):
    """Under serve.guided_json a request's response_format guides the student's decoding, as vLLM's
    does: a free-text task's random tiny student, whose own answers are never JSON, answers
    ``chat.completions.parse(response_format=Model)`` with a pydantic model (an Optional field:
    anyOf) itself through the official openai client, which parses it into the model, and starts
    an object for ``json_object`` (whole where its budget allows); without guided_json the same requests go to the teacher (reason
    response_format), and a request without a format gets the same answer either way."""
    from typing import Literal, Optional

    from openai.lib._parsing._completions import type_to_response_format_param
    from pydantic import BaseModel

    from tests.export.conftest import make_bpe_model
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    class Ticket(BaseModel):
        topic: Literal["sports", "tech", "politics"]
        urgent: bool
        team: Optional[Literal["red", "blue"]]

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), teacher_server.base_url,
                    task={"type": "freetext", "instruction": "Answer.", "max_output_tokens": 160})
    fmt = type_to_response_format_param(Ticket)
    got = {}
    for guided in (False, True):
        with served(run, guided) as c:
            got[guided] = {
                "schema": [c.chat.completions.create(model="potstill", messages=m, response_format=fmt)
                           for m in ASKS],
                "object": [c.chat.completions.create(model="potstill", messages=m,
                                                     response_format={"type": "json_object"}) for m in ASKS[:2]],
                "plain": [c.chat.completions.create(model="potstill", messages=m) for m in ASKS[:2]],
            }
            if guided:
                parsed = [c.chat.completions.parse(model="potstill", messages=m, response_format=Ticket)
                          for m in ASKS]
                via_responses = c.responses.parse(model="potstill", input=ASKS[0], text_format=Ticket)
                vllm_style = [c.chat.completions.create(model="potstill", messages=m,
                                                        extra_body={"guided_json": fmt["json_schema"]["schema"]})
                              for m in ASKS[:2]]
    free, guided = got[False], got[True]
    assert all(r.model_extra["potstill"]["reason"] == "response_format" for r in free["schema"] + free["object"])
    for r in guided["schema"] + guided["plain"]:
        assert r.model_extra["potstill"]["answered_by"] == "student", r.model_extra["potstill"]
    for r in guided["schema"]:
        Ticket.model_validate_json(r.choices[0].message.content)
    # Any object: this random student writes keys of its own until its budget, unless guidance ends it
    # first; every answer is at least a start of one, which unguided none is.
    for r in guided["object"]:
        assert JsonPrefix({"type": "object"}).feed(r.model_extra["potstill"]["student_output"])
    for r in free["object"]:
        assert not JsonPrefix({"type": "object"}).feed(r.model_extra["potstill"]["student_output"])
    # A request without a format is answered as before: the same text with guidance on or off.
    texts = {k: [r.choices[0].message.content for r in got[k]["plain"]] for k in got}
    assert texts[True] == texts[False]
    assert all(isinstance(p.choices[0].message.parsed, Ticket) for p in parsed)
    assert isinstance(via_responses.output_parsed, Ticket)  # the Responses API's text.format alike
    assert via_responses.model_extra["potstill"]["answered_by"] == "student"
    # vLLM's own spellings (extra_body), as a client written against a vLLM server sends them, are
    # the same format: the same answers as response_format's.
    assert [r.choices[0].message.content for r in vllm_style] == [r.choices[0].message.content
                                                                 for r in guided["schema"][:2]]
    assert all(r.model_extra["potstill"]["answered_by"] == "student" for r in vllm_style)


def test_one_batch_decodes_each_chat_under_its_own_schema(tmp_path):
    """Requests batched together keep their own formats: a row under a schema, a row under any
    object and an unguided row in one batch; the unguided row is the text it gets in a batch where
    nothing is guided. A server's warm-up decodes under a schema too. An engine that cannot decode
    under a schema says so."""
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task
    from tests.export.conftest import make_bpe_model

    task = get_task(load_config(overrides={"task": {"type": "freetext", "instruction": "x",
                                                    "max_output_tokens": 160}}).task)
    served = ServedStudent(load_engine("transformers", str(make_bpe_model(tmp_path / "bpe")), device="cpu"), task)
    assert served.guides
    chats = ASKS[:3]
    mixed = served.answer(chats, [TOPIC, {"type": "object"}, None])
    assert _valid(mixed[0].output)
    assert JsonPrefix({"type": "object"}).feed(mixed[1].output)  # any object: a start of one (see above)
    assert mixed[2].output == served.answer(chats)[2].output
    assert not any(_valid(a.output) for a in served.answer(chats))  # unguided, none of them is the JSON
    # Warming a server under guided_json also decodes each warm batch under a schema (its own step to compile).
    calls: list = []
    real = served.answer
    served.answer = lambda m, schemas=None: calls.append(schemas) or real(m, schemas)
    served.warm(chats, 2, guided=True)
    del served.answer
    assert [c is not None for c in calls] == [False, True] * (len(calls) // 2) and calls

    class Old:  # a plugin engine whose generate takes no json_schemas
        name, tokenizer = "old", served.engine.tokenizer

        def generate(self, fmt, messages, max_new_tokens, batch_size=16, progress=None, temperature=0.0,
                     stop=(), seed=0):
            raise AssertionError("not reached")

    old = ServedStudent.__new__(ServedStudent)
    old.__dict__.update(served.__dict__, engine=Old(), _guides=False)
    assert not old.guides
    with pytest.raises(ValueError, match="the old engine cannot decode under a JSON schema"):
        old.answer(chats[:1], [TOPIC])


def test_vllm_structured_output_fields_are_served_or_refused_by_name(tmp_path, teacher_server, monkeypatch):
    """guided_json / structured_outputs.json (a schema or its JSON text) is response_format's
    json_schema and structured_outputs.json_object its json_object; guided_regex, guided_choice and
    guided_grammar (and their structured_outputs forms) guide the student's whole answer, or,
    without guided_json, send an answer that does not match to the teacher, asked unconstrained (no
    API takes them) and its answer checked; a structural tag or a grammar that cannot guide is a 400
    naming the field, never an answer that silently ignores it; two constraints at once, or one
    beside response_format, are a 400 too."""
    import json

    import openai
    import regex

    from potstill.models.grammar_constraint import derives

    from tests.export.conftest import make_bpe_model
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), teacher_server.base_url,
                    task={"type": "freetext", "instruction": "Answer.", "max_output_tokens": 160})
    code, choices = r"[A-Z]{2}-[0-9]{2,4}", ["sports", "tech", "politics"]
    gbnf = 'root ::= ("yes" | "no") ", " num\nnum ::= [1-9] [0-9]{0,2}'
    patterned: dict[bool, list] = {}
    for guided in (True, False):
        with served(run, guided) as c:
            def ask(**extra: Any) -> Any:
                return c.chat.completions.create(model="potstill", messages=ASKS[0], extra_body=extra)

            patterned[guided] = [ask(guided_regex=code), ask(guided_choice=choices), ask(guided_grammar=gbnf),
                                 ask(structured_outputs={"regex": code}), ask(structured_outputs={"choice": choices}),
                                 ask(structured_outputs={"grammar": gbnf})]
            if not guided:
                continue
            fmt = {"type": "json_schema", "json_schema": {"name": "guided_json", "schema": TOPIC}}
            want = c.chat.completions.create(model="potstill", messages=ASKS[0], response_format=fmt)
            for extra in ({"guided_json": TOPIC}, {"guided_json": json.dumps(TOPIC)}, {"structured_outputs": {"json": TOPIC}}):
                r = ask(**extra)
                assert r.choices[0].message.content == want.choices[0].message.content, extra
                assert r.model_extra["potstill"]["answered_by"] == "student" and _valid(r.choices[0].message.content)
            any_object = ask(structured_outputs={"json_object": True}).model_extra["potstill"]["student_output"]
            assert JsonPrefix({"type": "object"}).feed(any_object)  # a start of one at least (see above)
            for extra, param in (({"guided_grammar": "root ::= x"}, "guided_grammar"),
                                 ({"structured_outputs": {"grammar": "root: x"}}, "structured_outputs.grammar"),
                                 ({"guided_grammar": ["root ::= x"]}, "guided_grammar"),
                                 ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag"),
                                 ({"guided_json": TOPIC, "guided_regex": "x"}, "guided_regex"),
                                 ({"guided_json": "{not json"}, "guided_json"),
                                 ({"guided_json": {"type": 7}}, "guided_json.schema"),
                                 ({"guided_regex": "(unclosed"}, "guided_regex"),
                                 ({"guided_choice": []}, "guided_choice"), ({"guided_choice": "a"}, "guided_choice")):
                with pytest.raises(openai.BadRequestError) as e:
                    ask(**extra)
                assert e.value.status_code == 400 and e.value.body["param"] == param, (extra, e.value.body)
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="potstill", messages=ASKS[0], response_format=fmt,
                                          extra_body={"guided_json": TOPIC})
            assert e.value.body["param"] == "response_format" and "not both" in e.value.body["message"]
    for r in patterned[True]:
        assert r.model_extra["potstill"]["answered_by"] == "student", r.model_extra["potstill"]
    texts = [r.choices[0].message.content for r in patterned[True]]
    assert regex.fullmatch(code, texts[0]) and texts[1] in choices and derives(gbnf, texts[2]), texts
    assert texts[3:] == texts[:3], texts
    for r in patterned[False]:  # unguided, the random student's answer matches neither: the teacher's turn
        route = r.model_extra["potstill"]
        assert route["answered_by"] == "teacher" and route["reason"] in ("response_format", "response_format+cached"), route
        assert route["response_format_problem"] in ("does not match the regular expression", "not one of the choices",
                                                    "not derived by the grammar")


def test_a_regex_choice_or_grammar_is_no_response_format_for_an_api_teacher():
    from potstill.config import TaskConfig, TeacherConfig
    from potstill.tasks import get_task
    from potstill.teachers.openai_teacher import OpenAITeacher

    teacher = OpenAITeacher(TeacherConfig(type="openai", model="gpt-4.1-mini"),
                            get_task(TaskConfig(type="freetext", instruction="x")))
    assert teacher.with_response_format({}, {"type": "regex", "regex": "a+"}) is None
    assert teacher.with_response_format({}, {"type": "choice", "choice": ["a"]}) is None
    assert teacher.with_response_format({}, {"type": "grammar", "grammar": 'root ::= "a"'}) is None
    assert teacher.with_response_format({}, {"type": "json_object"}) == {"response_format": {"type": "json_object"}}


def test_a_served_grammar_task_answers_from_the_student_under_its_grammar(tmp_path, teacher_server, monkeypatch):
    """serve.guided_json on a free-text task with task.grammar: a plain chat (no format asked) is
    answered by the random student with a query the grammar derives; served without it, the same
    student's answer is not one, so it goes to the teacher (the task's validation)."""
    from potstill.models.grammar_constraint import derives
    from tests.export.conftest import make_bpe_model
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run
    from tests.test_grammar_constraint import SQL

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), teacher_server.base_url,
                    task={"type": "freetext", "instruction": "Write the query.", "max_output_tokens": 80,
                          "grammar": SQL})
    got = {}
    for guided in (True, False):
        with served(run, guided) as c:
            got[guided] = c.chat.completions.create(model="potstill", messages=ASKS[0])
    route = got[True].model_extra["potstill"]
    assert route["answered_by"] == "student" and derives(SQL, got[True].choices[0].message.content), route
    route = got[False].model_extra["potstill"]
    assert route["answered_by"] == "teacher" and not derives(SQL, route["student_output"]), route
