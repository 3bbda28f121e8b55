"""Structured outputs through the official openai client (``chat.completions.parse``,
``responses.parse``, ``response_format``): a student answer that is the JSON asked for is served,
one that is not goes to the teacher with the format in its API's terms, and a bad format is an
OpenAI-shaped 400.

The student here is a real tiny Llama whose weights were set by hand so that greedy decoding
answers every chat ``{ }``: its layers add nothing to the residual stream, so each position's
logits depend on its own token alone, and the LM head's rows map "assistant" (the prompt's last
token) to "{", "{" to "}" and "}" to the end of turn. An empty object fits ``json_object`` and an
empty schema, and fails a schema that requires a key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel, ConfigDict

from potstill.serve.routing import Routing
from tests.serve.conftest import (MSG, SERVE_KEY, TEACHER_KEY, claude_behind, client, rows, teacher_behind,
                                  write_run)
from tests.serve.test_tool_calls import anthropic_provider


class Topic(BaseModel):
    topic: str


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


TOPIC_FORMAT = {"type": "json_schema", "json_schema": {"name": "topic", "strict": True, "schema": {
    "type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"],
    "additionalProperties": False}}}


def braces_model(path: Path) -> Path:
    """The tiny Llama that answers ``{ }`` to every chat (module docstring)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head, emb = model.lm_head.weight, model.model.embed_tokens.weight
        head.mul_(0.01)
        for now, after in [("assistant", "{"), ("{", "}"), ("}", "<|im_end|>")]:
            # The final norm of the current token's embedding, scaled: its own dot product (~5 x 32)
            # outweighs any other row's (~5 x sqrt(32)).
            head[tok.convert_tokens_to_ids(after)] = 5 * model.model.norm(emb[tok.convert_tokens_to_ids(now)])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def json_served(tmp_path_factory, teacher_server):
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer

    os.environ["TEACHER_KEY"] = TEACHER_KEY
    os.environ["SERVE_KEY"] = SERVE_KEY
    root = tmp_path_factory.mktemp("formats")
    run = write_run(root, braces_model(root / "braces"), teacher_server.base_url,
                    task={"type": "freetext", "instruction": "answer in JSON", "max_output_tokens": 6})
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    # Every chat to the student, whatever its calibration: what decides here is the format.
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)
    with LiveServer(build_app(service, serve_key(cfg))) as live:
        yield service, live
    service.close()


def json_provider(seen: list, answer: str = '{"topic": "sports"}'):
    """OpenAI's chat completions on loopback, answering ``answer`` and keeping each body."""
    from fastapi import Body, FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> dict:
        seen.append(body)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}}

    return app


def test_a_student_answer_in_the_format_is_the_student_s(json_served):
    service, live = json_served
    seen: list = []
    cl = client(live)
    with teacher_behind(service, json_provider(seen)):
        plain = cl.chat.completions.create(model="potstill", messages=MSG)
        as_object = cl.chat.completions.create(model="potstill", messages=MSG, response_format={"type": "json_object"})
        parsed = cl.chat.completions.parse(model="potstill", messages=MSG, response_format=Empty)
        streamed = "".join(c.choices[0].delta.content or "" for c in cl.chat.completions.create(
            model="potstill", messages=MSG, response_format={"type": "json_object"}, stream=True) if c.choices)
    assert json.loads(plain.choices[0].message.content) == {}
    for r in (as_object, parsed):
        assert r.model_extra["potstill"]["answered_by"] == "student"
        assert r.choices[0].message.content == plain.choices[0].message.content
    assert parsed.choices[0].message.parsed == Empty()
    assert streamed == plain.choices[0].message.content
    assert seen == []  # the teacher was not asked


def test_an_answer_outside_the_schema_goes_to_the_teacher_with_the_format(json_served):
    service, live = json_served
    seen: list = []
    before = len(rows(service))
    with teacher_behind(service, json_provider(seen)):
        r = client(live).chat.completions.parse(model="potstill", messages=MSG, response_format=Topic)
    assert r.choices[0].message.parsed == Topic(topic="sports")
    route = r.model_extra["potstill"]
    assert (route["answered_by"], route["reason"]) == ("teacher", "response_format")
    assert json.loads(route["student_output"]) == {}  # what the student said, kept for the record
    [body] = seen
    # The client's format, as the SDK wrote it from the model, reached the teacher.
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Topic"
    assert fmt["json_schema"]["schema"]["required"] == ["topic"] and fmt["json_schema"]["strict"] is True
    [row] = rows(service)[before:]
    assert row["role"] == "teacher" and json.loads(row["response"])["reason"] == "response_format"
    assert json.loads(row["request"])["response_format"]["json_schema"]["name"] == "Topic"


def test_a_format_escalation_is_another_request_than_the_plain_one(json_served):
    """The format is part of what the teacher was asked: its answer is cached under another hash,
    so a plain request is never answered from a JSON one (nor the other way round)."""
    service, live = json_served
    seen: list = []
    with teacher_behind(service, json_provider(seen)):
        h_format = service.teacher_request(MSG, response_format=TOPIC_FORMAT)[0]
        h_plain = service.teacher_request(MSG)[0]
        h_object = service.teacher_request(MSG, response_format={"type": "json_object"})[0]
    assert len({h_format, h_plain, h_object}) == 3


def test_a_teacher_answer_outside_the_format_says_why(json_served):
    """A teacher that did not keep to the format (one that cannot be constrained, or a server that
    ignores the field): its answer is served, as nothing else could answer, and the route says why."""
    service, live = json_served
    with teacher_behind(service, json_provider([], answer="sports")):
        r = client(live).chat.completions.create(model="potstill", messages=MSG, response_format=TOPIC_FORMAT)
    assert r.choices[0].message.content == "sports"
    route = r.model_extra["potstill"]
    assert route["answered_by"] == "teacher" and route["response_format_problem"].startswith("not JSON")
    assert json.loads(rows(service)[-1]["response"])["response_format_problem"] == route["response_format_problem"]


def test_the_responses_api_takes_text_format(json_served):
    service, live = json_served
    seen: list = []
    cl = client(live)
    with teacher_behind(service, json_provider(seen)):
        r = cl.responses.parse(model="potstill", input=MSG[0]["content"], text_format=Topic)
        as_object = cl.responses.create(model="potstill", input=MSG[0]["content"],
                                        text={"format": {"type": "json_object"}})
    assert r.output_parsed == Topic(topic="sports")
    assert r.model_extra["potstill"]["reason"] == "response_format"
    assert r.text.format.type == "json_schema" and r.text.format.name == "Topic"
    [body] = seen  # in chat's form for the chat-completions teacher
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["topic"]
    assert as_object.model_extra["potstill"]["answered_by"] == "student" and json.loads(as_object.output_text) == {}
    assert as_object.text.format.type == "json_object"


def _streaming_json(hold, holding):
    """OpenAI's chat completions on loopback streaming '{"topic": "sports"}' in pieces (waiting for
    ``hold`` after the first) to a streamed request with a ``response_format``."""
    from fastapi import Body, FastAPI
    from fastapi.responses import StreamingResponse

    from tests.helpers.sse import openai_chunk

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> StreamingResponse:
        assert body.get("stream") is True and body["response_format"]["type"] == "json_schema"

        def chunks():
            def chunk(delta: dict, finish: str | None = None) -> str:
                return openai_chunk(body["model"], delta, finish)

            holding.set()  # before the first piece goes out: the rest waits for the test
            yield chunk({"role": "assistant", "content": '{"to'})
            assert hold.wait(timeout=20), "the test never let the stream go on"
            for piece in ('pic": "sp', 'orts"', "}"):
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield openai_chunk(body["model"], usage={"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26})
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_the_sdks_stream_helpers_parse_a_format_escalation_streamed_live(json_served):
    """``chat.completions.stream(response_format=Model)`` and ``responses.stream(text_format=Model)``,
    what SDK users call to parse structured outputs as they stream: the teacher's JSON arrives in
    pieces while the teacher is still writing, and the helpers parse the whole of it."""
    import threading

    service, live = json_served
    hold, holding = threading.Event(), threading.Event()
    with teacher_behind(service, _streaming_json(hold, holding)):
        deltas = []
        with client(live).chat.completions.stream(model="potstill", messages=MSG, response_format=Topic) as stream:
            for event in stream:
                if event.type == "content.delta":
                    if not deltas:
                        assert holding.is_set() and not hold.is_set()  # the teacher is still writing
                        hold.set()
                    deltas.append(event.delta)
            final = stream.get_final_completion()
        assert final.choices[0].message.parsed == Topic(topic="sports") and len(deltas) > 1
        hold.clear()
        texts = []
        # Another input: the same request again would be answered from the first one's row (not streamed).
        with client(live).responses.stream(model="potstill", input="the final went to extra time",
                                           text_format=Topic) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    if not texts:
                        assert not hold.is_set()
                        hold.set()
                    texts.append(event.delta)
            done = stream.get_final_response()
        assert done.output_parsed == Topic(topic="sports") and len(texts) > 1
    logged = [json.loads(r["response"]) for r in rows(service)[-2:]]
    assert [(json.loads(x["content"]), x["reason"]) for x in logged] == [({"topic": "sports"}, "response_format")] * 2


@pytest.mark.parametrize("fmt, param, words", [
    ({"type": "xml"}, "response_format.type", "'xml' is not one of"),
    ({"type": "json_schema"}, "response_format.json_schema", "required with type json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name",
     "required"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}},
     "response_format.json_schema.schema", "not a valid JSON Schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}, "response_format.json_schema.strict",
     "a boolean"),
])
def test_a_bad_format_is_an_openai_400(json_served, fmt, param, words):
    service, live = json_served
    before = len(rows(service))
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="potstill", messages=MSG, response_format=fmt)
    err = e.value.body
    assert err["param"] == param and words in err["message"] and err["type"] == "invalid_request_error"
    [row] = rows(service)[before:]  # logged, as every refused request is
    assert row["status"] == "error"


def test_a_bad_text_format_is_an_openai_400(json_served):
    _, live = json_served
    with pytest.raises(openai.BadRequestError) as e:
        client(live).responses.create(model="potstill", input="the match",
                                      text={"format": {"type": "json_schema", "schema": {"type": "object"}}})
    assert e.value.body["param"] == "text.format.name"


def test_a_classifier_escalates_a_json_request_with_a_budget_for_it(served):
    """A label is no JSON object: the request goes to the teacher, and with a budget for an object,
    not the label budget (teacher.max_tokens 4 here) that would cut it."""
    from potstill.serve.escalation import TOOL_MAX_TOKENS

    service, live = served
    seen: list = []
    with teacher_behind(service, json_provider(seen, '{"topic": "sports"}')):
        r = client(live).chat.completions.create(model="potstill", messages=MSG,
                                                 response_format={"type": "json_object"})
    assert r.model_extra["potstill"]["reason"] == "response_format"
    assert json.loads(r.choices[0].message.content) == {"topic": "sports"}
    assert seen[0]["max_tokens"] == TOOL_MAX_TOKENS and seen[0]["response_format"] == {"type": "json_object"}


def test_claude_gets_the_schema_as_output_config(json_served):
    service, live = json_served
    seen: list = []
    with claude_behind(service, anthropic_provider(seen), max_tokens=50):
        r = client(live).chat.completions.create(model="potstill", messages=MSG, response_format=TOPIC_FORMAT)
        # The Messages API has no plain JSON mode: a json_object request goes unconstrained.
        req = service.teacher_request(MSG)[1]
        assert service.teacher.with_response_format(req, {"type": "json_object"}) is None
    [body] = seen
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": TOPIC_FORMAT["json_schema"]["schema"]}}
    assert r.model_extra["potstill"]["answered_by"] == "teacher"
    # Its answer, the provider's "sports", is served with the reason it does not fit.
    assert r.model_extra["potstill"]["response_format_problem"].startswith("not JSON")


def test_answer_problem_reads_json_as_the_format_asks():
    from potstill.serve.formats import answer_problem

    assert answer_problem("anything", None) is None
    assert answer_problem(' {"a": 1} ', {"type": "json_object"}) is None
    assert answer_problem("[1]", {"type": "json_object"}) == "JSON, but not an object"
    assert answer_problem('{"a": 1', {"type": "json_object"}).startswith("not JSON")
    assert answer_problem("[1]", {"type": "json_schema", "json_schema": {"name": "any"}}) is None  # no schema: JSON
    assert answer_problem('{"topic": "x"}', TOPIC_FORMAT) is None
    assert "'topic' is a required property" in answer_problem("{}", TOPIC_FORMAT)
    assert answer_problem('{"topic": 3}', TOPIC_FORMAT).startswith("does not match the schema at /topic")
    assert "Additional properties" in answer_problem('{"topic": "x", "more": 1}', TOPIC_FORMAT)


def test_text_format_and_response_format_are_one_format_in_two_spellings():
    from potstill.serve.formats import check_chat_format, check_responses_format, responses_form

    flat = {"type": "json_schema", "name": "topic", "strict": True, "schema": TOPIC_FORMAT["json_schema"]["schema"]}
    assert check_responses_format(flat) == check_chat_format(TOPIC_FORMAT) == TOPIC_FORMAT
    assert responses_form(TOPIC_FORMAT) == flat
    assert check_chat_format({"type": "text"}) is None and responses_form(None) == {"type": "text"}
    assert check_responses_format({"type": "json_object"}) == {"type": "json_object"}


def test_a_format_escalation_is_not_distilled(json_served, tmp_path):
    """Asked for the client's JSON, the teacher's answer is not its answer to the task's request:
    redistill leaves it out (counted), and the same chat served without the format is still used."""
    from potstill.ledger import Ledger
    from potstill.redistill.traffic import read_traffic

    service, live = json_served
    chat = [{"role": "user", "content": "the minister said the party will vote"}]
    with teacher_behind(service, json_provider([])):
        client(live).chat.completions.create(model="potstill", messages=chat, response_format=TOPIC_FORMAT)
        client(live).chat.completions.create(model="potstill", messages=chat)
    with Ledger(tmp_path / "copy.sqlite") as ledger:  # the two rows alone
        for served_row in service.ledger.served()[-2:]:
            ledger.record_served(served_row)
        traffic = read_traffic(ledger, service.task, teacher_max_tokens=6)
    assert traffic.counts["escalated_response_format"] == 1 and traffic.escalated == []
    assert [r.messages for r in traffic.student] == [chat]  # the plain copy, which the student answered


def test_answer_problem_checks_a_formats_string_formats():
    """A client's schema with ``format: date`` (pydantic's date field) refuses an answer that is no
    date, as the task's validation does."""
    from potstill.serve.formats import answer_problem

    fmt = {"type": "json_schema", "json_schema": {"name": "d", "schema": {
        "type": "object", "properties": {"day": {"type": "string", "format": "date"}}}}}
    assert answer_problem('{"day": "2026-03-03"}', fmt) is None
    assert answer_problem('{"day": "3 March"}', fmt).startswith("does not match the schema at /day")
