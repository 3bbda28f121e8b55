"""``teacher.structured_outputs``: an extraction task's JSON Schema asked of an API teacher as the
answer's format, through the official SDKs to real servers on 127.0.0.1, as generate sends it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer

KEY = "sk-structured-5d1c0e7a92b3"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
          "required": ["city", "year"], "additionalProperties": False}


def provider(asked: list[dict]) -> FastAPI:
    """Answers the JSON the schema asks for when the request carries a response_format, else the
    same object wrapped in words, as a chat model often does unconstrained."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        asked.append(body)
        content = '{"city": "Paris", "year": 1889}'
        if "response_format" not in body:
            content = f"Here is the JSON you asked for: {content}"
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}

    return app


def extraction():
    return get_task(TaskConfig(type="extraction", instruction="Extract the city and the year.", json_schema=SCHEMA))


@pytest.mark.parametrize("mode", ["off", "on", "strict"])
def test_an_openai_teacher_is_asked_for_the_task_s_schema(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("STRUCTURED_KEY", KEY)
    task = extraction()
    asked: list[dict] = []
    records = [Record(id="a", messages=[{"role": "user", "content": "The tower opened in Paris in 1889."}])]
    with LiveServer(provider(asked)) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                            api_key_env="STRUCTURED_KEY", max_tokens=64, max_retries=0,
                                            structured_outputs=mode), task)
        try:
            (rec,), _ = label_records(records, task, teacher, ledger, "generate", GenerateConfig())
        finally:
            teacher.close()
    [body] = asked
    if mode == "off":  # the request as it always was: answers cached before the field existed still match
        assert "response_format" not in body
        assert not rec.valid  # the words around the object fail the task's parse
    else:
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "extraction", "schema": SCHEMA, "strict": mode == "strict"}}
        assert rec.valid and json.loads(rec.output) == {"city": "Paris", "year": 1889}


def test_claude_is_asked_for_the_schema_as_output_config(monkeypatch):
    monkeypatch.setenv("STRUCTURED_KEY", KEY)
    teacher = get_teacher(TeacherConfig(type="anthropic", model="claude-haiku-4-5", api_key_env="STRUCTURED_KEY",
                                        structured_outputs="on"), extraction())
    try:
        req = teacher.request(Record(messages=[{"role": "user", "content": "Paris, 1889"}]))
    finally:
        teacher.close()
    assert req["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}


def test_a_teacher_or_task_that_cannot_take_it_is_one_line(tmp_path):
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text(json.dumps({"messages": [{"role": "user", "content": "Paris, 1889"},
                                                 {"role": "assistant", "content": '{"city": "Paris", "year": 1889}'}]})
                        + "\n")
    with pytest.raises(PotstillError, match="a replay teacher cannot constrain its answers to a schema; set it to off"):
        get_teacher(TeacherConfig(type="replay", replay_path=str(recorded), structured_outputs="on"), extraction())
    free = get_task(TaskConfig(type="freetext", instruction="Answer."))
    with pytest.raises(PotstillError, match=r"only an extraction task \(or free text with task.grammar, for a local "
                                            r"teacher\) has a JSON Schema to ask for"):
        get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", structured_outputs="strict"), free)


def test_on_and_off_read_as_yaml_writes_them(tmp_path):
    """YAML 1.1 reads a bare `on` as true: the preset's `structured_outputs: on` and the flag
    `--teacher.structured_outputs on` mean on, not a validation error."""
    import yaml

    from potstill.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "examples" / "vllm-extraction.yaml")
    assert cfg.teacher.structured_outputs == "on"
    assert TeacherConfig.model_validate(yaml.safe_load("structured_outputs: off")).structured_outputs == "off"
    assert TeacherConfig.model_validate({"structured_outputs": "strict"}).structured_outputs == "strict"


def answers_off_and_on(tmp_path, task, max_tokens: int):
    """A random tiny BPE Llama as a local teacher of ``task``, structured_outputs off then on, each
    answering ``ASKS`` through generate's path into one ledger: the model's path, and per mode the
    records and the request the teacher built for the first."""
    from tests.export.conftest import make_bpe_model
    from tests.test_json_constraint import ASKS

    model = make_bpe_model(tmp_path / "bpe")
    records = [Record(id=str(i), messages=m) for i, m in enumerate(ASKS)]
    got = {}
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        for mode in ("off", "on"):
            teacher = get_teacher(TeacherConfig(type="local", model=str(model), max_tokens=max_tokens,
                                                structured_outputs=mode), task)
            try:
                got[mode] = (label_records(records, task, teacher, ledger, "generate", GenerateConfig())[0],
                             teacher.request(records[0]))
            finally:
                teacher.close()
    return model, got


def test_a_local_teacher_decodes_under_the_schema(tmp_path):
    """A local extraction teacher (a random tiny BPE Llama) with structured_outputs decodes its greedy
    answers under the task's schema (models.json_constraint): each is valid JSON, where without it
    none is; the request carries the schema, so the two are cached apart."""
    from tests.test_json_constraint import TOPIC, _valid

    task = get_task(TaskConfig(type="extraction", instruction="Answer in JSON.", json_schema=TOPIC))
    _, got = answers_off_and_on(tmp_path, task, max_tokens=100)
    for mode, (_, request) in got.items():
        assert ("json_schema" in request) == (mode == "on")
    outs = {mode: records for mode, (records, _) in got.items()}
    assert not any(_valid(r.output or "") for r in outs["off"])
    assert all(_valid(r.output) and r.valid for r in outs["on"]), [r.output for r in outs["on"]]


@pytest.mark.parametrize("fmt", [{"type": "regex", "regex": "(yes|no)-[0-9]{2}"},
                                 {"type": "choice", "choice": ["alpha beta", "gamma", "{not json}"]},
                                 {"type": "grammar", "grammar": 'root ::= ("yes" | "no") "-" d d\nd ::= [0-9]'}],
                         ids=["regex", "choice", "grammar"])
def test_a_local_teacher_decodes_under_a_served_regex_choice_or_grammar(tmp_path, fmt):
    """A served client's vLLM ``guided_regex`` / ``guided_choice`` / ``guided_grammar`` escalated to a
    local teacher (a random tiny BPE Llama): the request it builds (``with_response_format``) carries
    the pattern or grammar as its guide and every greedy answer is then the whole match, batched and
    alone; without it, none is."""
    from potstill.serve.formats import answer_problem, format_schema
    from tests.export.conftest import make_bpe_model
    from tests.test_json_constraint import ASKS

    model = make_bpe_model(tmp_path / "bpe")
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    records = [Record(id=str(i), messages=m) for i, m in enumerate(ASKS)]
    for batch_size in (1, 3):
        teacher = get_teacher(TeacherConfig(type="local", model=str(model), max_tokens=40, batch_size=batch_size), task)
        try:
            outs: dict[str, dict[int, str]] = {"free": {}, "guided": {}}
            for way in outs:
                reqs = [teacher.request(r) for r in records]
                if way == "guided":
                    reqs = [teacher.with_response_format(q, fmt) for q in reqs]
                    assert all(q["json_schema"] == format_schema(fmt) for q in reqs)
                teacher.run(reqs, lambda i, resp, way=way: outs[way].__setitem__(i, resp.output))
        finally:
            teacher.close()
        assert all(answer_problem(t, fmt) for t in outs["free"].values()), outs["free"]
        assert len(outs["guided"]) == len(ASKS) and not any(answer_problem(t, fmt) for t in outs["guided"].values()), \
            outs["guided"]
