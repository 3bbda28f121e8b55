"""``POST /v1/responses`` through the official openai client's ``responses.create``: the same
router and ledger as chat completions, streaming too, and OpenAI-shaped 400s (function tools:
``test_responses_tools.py``)."""

from __future__ import annotations

import json

import openai
import pytest

from potstill.ledger import ServedCall
from tests.serve.conftest import MSG, client, rows


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_a_response_is_the_chat_completion_s_answer_and_is_logged(served, force, who):
    service, live = served
    force(who)
    cl = client(live)
    chat = cl.chat.completions.create(model="potstill", messages=MSG)
    before = len(rows(service))
    raw = cl.responses.with_raw_response.create(model="potstill", input=MSG[0]["content"])
    r = raw.parse()
    assert r.output_text == chat.choices[0].message.content
    # An answer cut at its token budget is OpenAI's "incomplete" response, as it is chat's finish_reason length.
    cut = chat.choices[0].finish_reason == "length"
    assert (r.status, r.incomplete_details and r.incomplete_details.reason) == \
        (("incomplete", "max_output_tokens") if cut else ("completed", None))
    assert raw.headers["x-potstill-answered-by"] == who == r.model_extra["potstill"]["answered_by"]
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens > 0
    [row] = rows(service)[before:]
    assert row["status"] == "ok" and row["role"] == who
    logged = ServedCall.from_row(row)
    # The row reads as a chat request's does: watch, redistill and import take its messages.
    assert logged.messages == MSG and json.loads(row["request"])["endpoint"] == "/v1/responses"
    from potstill.importers import import_served

    [rec] = [r for r in import_served(service.ledger.path) if r.meta["ledger_id"] == row["id"]]
    assert (rec.messages, rec.output) == (MSG, r.output_text)


def test_a_message_list_with_text_parts_and_instructions(served, force):
    _, live = served
    force("student")
    cl = client(live)
    want = cl.chat.completions.create(model="potstill", messages=MSG).choices[0].message.content
    r = cl.responses.create(model="potstill", instructions="ignored: the run's instruction stands", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "the team won "},
                                     {"type": "input_text", "text": "the match"}]}])
    assert r.output_text == want


def test_streaming_events_carry_the_same_text(served, force):
    _, live = served
    force("student")
    cl = client(live)
    want = cl.responses.create(model="potstill", input=MSG[0]["content"]).output_text
    events = list(cl.responses.create(model="potstill", input=MSG[0]["content"], stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == want
    assert events[-1].response.output_text == want
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("kwargs, param, says", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input.0.content.0", "input.0.content.0: a part of type 'input_image'"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input.0",
     "input.0: an item of type 'reasoning'"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input",
     "needs a user message with text"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id",
     "Previous response with id 'resp_1' not found"),
    ({"input": [{"role": "system", "content": "only a system turn"}]}, "input", "needs a user message with text"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation", "use previous_response_id"),
    ({"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt", "not served here"),
])
def test_what_it_cannot_answer_is_an_openai_400_and_logged(served, kwargs, param, says):
    service, live = served
    before = len(rows(service))
    with pytest.raises(openai.BadRequestError) as e:
        client(live).responses.create(model="potstill", **kwargs)
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == param
    assert says in e.value.body["message"]
    [row] = rows(service)[before:]
    assert row["status"] == "error" and row["error"].startswith("400: ")


def test_an_unknown_model_is_a_404(served):
    _, live = served
    with pytest.raises(openai.NotFoundError) as e:
        client(live).responses.create(model="gpt-9", input="hi")
    assert e.value.body["code"] == "model_not_found"


def test_max_output_tokens_cuts_the_answer_as_max_tokens_does(tmp_path, tiny_model, teacher_server, monkeypatch):
    import math

    from potstill.serve.routing import Routing
    from tests.serve.conftest import served_free_text

    msgs = [{"role": "user", "content": "the team won the match in the last minute"}]
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student
        cl = client(live)
        chat = cl.chat.completions.create(model="potstill", messages=msgs, max_completion_tokens=2)
        r = cl.responses.create(model="potstill", input=msgs, max_output_tokens=2)
        assert chat.choices[0].finish_reason == "length" and r.output_text == chat.choices[0].message.content
        assert (r.status, r.incomplete_details.reason, r.usage.output_tokens) == ("incomplete", "max_output_tokens", 2)
        assert rows(service)[-1]["stop_reason"] == "length"


def test_log_probs_as_the_responses_api_gives_them(tmp_path, tiny_model, teacher_server, monkeypatch):
    """``include=["message.output_text.logprobs"]`` and ``top_logprobs``: the output_text's
    ``logprobs``, the chat completion's for the same answer, the student's (whole and streamed) or
    the teacher's (streamed as it writes them); an ``include`` OpenAI does not know is a 400."""
    import math

    from potstill.serve.routing import Routing
    from tests.serve.conftest import served_free_text
    from tests.serve.test_live_stream import held

    text = "the team won the match in the last minute"

    def entries(lps):
        return [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs]) for t in lps]

    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        cl = client(live)
        service.cfg.serve.reuse_escalations = False  # each escalation asked anew: the teacher's streams live
        for to in (-math.inf, math.inf):  # the student answers, then the teacher
            service.routing = Routing(confidence_threshold=to, ood_threshold=math.inf)
            chat = cl.chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}],
                                              logprobs=True, top_logprobs=2)
            want = entries(chat.choices[0].logprobs.content)
            assert want and all(len(top) == 2 for _, _, top in want)
            r = cl.responses.create(model="potstill", input=text, include=["message.output_text.logprobs"],
                                    top_logprobs=2)
            assert entries(r.output[0].content[0].logprobs) == want and r.top_logprobs == 2
            events = []
            with held(teacher_server) as hold:  # the teacher waits after its first token until a delta came
                for ev in cl.responses.create(model="potstill", input=text, top_logprobs=2, stream=True):
                    events.append(ev)
                    if ev.type == "response.output_text.delta":
                        hold.set()
            deltas = [e for e in events if e.type == "response.output_text.delta"]
            assert [x for d in deltas for x in entries(d.logprobs)] == want
            done = [e for e in events if e.type == "response.output_text.done"][0]
            assert entries(done.logprobs) == want and entries(events[-1].response.output[0].content[0].logprobs) == want
            assert events[-1].response.model_extra["potstill"]["answered_by"] == ("student" if to < 0 else "teacher")
            if to > 0:  # the teacher's text and log-probs as it writes them, not in one delta
                assert len(deltas) > 1
            assert not cl.responses.create(model="potstill", input=text).output[0].content[0].logprobs
        with pytest.raises(openai.BadRequestError) as e:
            cl.responses.create(model="potstill", input=text, include=["message.output_text.everything"])
        assert e.value.body["param"] == "include.0"
