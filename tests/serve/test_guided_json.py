"""``serve.guided_json``: a served extraction student decoding under its task's JSON Schema
(``potstill.models.json_constraint``), a tiny real Llama with a byte-level BPE tokenizer behind the
official openai client."""

from __future__ import annotations

import pytest

from tests.test_json_constraint import ASKS, TOPIC, _valid


def test_a_served_extraction_student_with_guided_json_answers_valid_json(tmp_path, teacher_server, monkeypatch):
    """serve.guided_json: the same random student served as is gives answers that fail the task's
    schema (escalated as invalid_output); guided, its answers parse and validate, through the
    official openai client. A task without a schema, or an engine that cannot, is one line."""
    import math

    import yaml

    from potstill.config import Config
    from potstill.errors import PotstillError
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.export.conftest import make_bpe_model
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, client, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    task = {"type": "extraction", "instruction": "Answer in JSON.", "json_schema": TOPIC, "max_output_tokens": 100}
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), teacher_server.base_url, task=task)
    answers = {}
    for guided in (False, True):
        cfg = run_config(run, None).model_copy(deep=True)
        cfg.serve.guided_json = guided
        service = load_service(run, cfg, device="cpu")
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # every chat to the student
        try:
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                answers[guided] = [client(live).chat.completions.create(model="potstill", messages=m) for m in ASKS]
        finally:
            service.close()
    assert all(r.model_extra["potstill"]["reason"] == "invalid_output" for r in answers[False]), [r.model_extra["potstill"] for r in answers[False]]
    assert all(r.model_extra["potstill"]["answered_by"] == "student" for r in answers[True])
    assert all(_valid(r.choices[0].message.content) for r in answers[True])
    raw = yaml.safe_load((run / "potstill.yaml").read_text())
    with pytest.raises(PotstillError, match="guided_json: the ctranslate2 engine cannot decode under a schema"):
        load_service(run, Config.model_validate({**raw, "serve": {**raw["serve"], "guided_json": True,
                                                                  "engine": "ctranslate2"}}), device="cpu")
    free = {**raw, "task": {"type": "freetext", "instruction": "x"}, "serve": {**raw["serve"], "guided_json": True}}
    with pytest.raises(PotstillError, match="only an extraction task has a JSON Schema to decode under"):
        load_service(run, Config.model_validate(free), device="cpu")


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
