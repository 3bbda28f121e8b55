"""Request fields through the official openai client: which are checked, refused or accepted and
not applied, and what a refused one's error names."""

from __future__ import annotations

import openai
import pytest

from tests.serve.conftest import MSG, client, rows

# Each asks something of the answer that neither model is given (the field, a value that asks it).
REFUSED = [("logit_bias", {"6": -100}), ("min_tokens", 50), ("ignore_eos", True),
           ("include_stop_str_in_output", True), ("stop_token_ids", [2]), ("bad_words", ["the"]),
           ("allowed_token_ids", [5, 6]), ("chat_template", "{{ messages[0]['content'] }}"),
           ("chat_template_kwargs", {"enable_thinking": True}), ("add_generation_prompt", False),
           ("continue_final_message", True), ("echo", True)]


def test_fields_that_would_change_the_answer_are_400s_that_name_them(served):
    """Found by a review: ``logit_bias`` and vLLM's ``min_tokens``, ``ignore_eos``,
    ``include_stop_str_in_output``, ``chat_template``, ``continue_final_message`` and
    ``add_generation_prompt: false`` were unknown fields, answered with a 200 that ignored them (a
    token banned with logit_bias was in the answer), while ``n: 2`` was a 400. Each is a 400 naming
    it now, and a ledger row; their defaults and unknown fields that ask nothing are still served."""
    service, live = served
    c = client(live)
    before = len(rows(service))
    for field, value in REFUSED:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="potstill", messages=MSG, extra_body={field: value})
        assert (e.value.body["param"], e.value.body["type"]) == (field, "invalid_request_error"), e.value.body
        assert e.value.body["message"].startswith(f"{field}: not served here ("), e.value.body
    # /v1/completions shares the answer's fields (not chat's template ones).
    for field, value in REFUSED[:7]:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="potstill", prompt="the team won", extra_body={field: value})
        assert e.value.body["param"] == field, e.value.body
    assert [r["error"][:3] for r in rows(service)[before:]] == ["400"] * (len(REFUSED) + 7)
    asks_nothing = {"logit_bias": {}, "min_tokens": 0, "ignore_eos": False, "include_stop_str_in_output": False,
                    "stop_token_ids": [], "add_generation_prompt": True, "continue_final_message": False,
                    "echo": False, "chat_template_kwargs": {"enable_thinking": False}, "top_k": 5, "prediction": None}
    assert c.chat.completions.create(model="potstill", messages=MSG, extra_body=asks_nothing).choices


def test_sampling_fields_are_checked_as_openai_checks_them(served):
    """Found by a review: ``seed: "x"``, ``presence_penalty: 5``, ``temperature: "0.5"`` or ``true``,
    ``user: 5``, ``store: "yes"``... were answered with a 200 (strings coerced, the rest undeclared),
    where OpenAI's API answers a 400 naming the field, as this server did for ``n: "2"``. Each is a
    400 naming it now; valid values are still accepted (and not applied)."""
    service, live = served
    c = client(live)
    bad = [("seed", "x"), ("presence_penalty", 5), ("frequency_penalty", -3), ("logit_bias", {"x": 5}),
           ("logit_bias.5", {"5": 500}), ("user", 5), ("store", "yes"), ("metadata.k", {"k": {"x": 1}}),
           ("temperature", "0.5"), ("temperature", True), ("top_p", "0.1"), ("reasoning_effort", "bogus"),
           ("service_tier", 7)]
    for param, value in bad:
        field = param.split(".")[0]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="potstill", messages=MSG, extra_body={field: value})
        assert e.value.body["param"] == param, (field, value, e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="potstill", messages=MSG, stream=True, stream_options={"include_usage": "yes"})
    assert e.value.body["param"] == "stream_options.include_usage"
    for field, value in (("temperature", "1"), ("seed", "s")):
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="potstill", prompt="the team won", extra_body={field: value})
        assert e.value.body["param"] == field
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="potstill", input="the team won", extra_body={"temperature": "1"})
    assert e.value.body["param"] == "temperature"
    ok = c.chat.completions.create(model="potstill", messages=MSG, seed=7, user="u1", presence_penalty=1.5,
                                   frequency_penalty=-1, temperature=1, top_p=0.5, store=True, metadata={"a": "b"},
                                   reasoning_effort="low", service_tier="auto")
    assert ok.choices[0].message.content


def test_an_errors_param_is_the_field_not_a_branch_of_its_type(served):
    """Found by a review: for a field whose type is a union, param named pydantic's first branch
    ('stop.str', "tool_choice.literal['none','auto','required']") and the message was that
    branch's, whatever was sent: ``stop: [1]`` was told a string is required, and ``tool_choice:
    {"type": "function"}`` to be 'none', 'auto' or 'required', not of its missing function."""
    service, live = served
    c = client(live)
    tools = [{"type": "function", "function": {"name": "f"}}]
    cases = [({"stop": 5}, "stop", "stop: expected a string or an array, not a number"),
             ({"stop": [1]}, "stop.0", "stop.0: Input should be a valid string"),
             ({"tools": tools, "tool_choice": "sometimes"}, "tool_choice",
              "tool_choice: Input should be 'none', 'auto' or 'required'"),
             ({"tools": tools, "tool_choice": {"type": "function"}}, "tool_choice.function",
              "tool_choice.function: Field required"),
             ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content.0.text",
              "messages.0.content.0.text: Input should be a valid string"),
             ({"extra_body": {"guided_json": 5}}, "guided_json",
              "guided_json: expected an object or a string, not a number"),
             ({"stream_options": 5, "stream": True}, "stream_options", "stream_options: Input should be an object")]
    for kw, param, message in cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(**{"model": "potstill", "messages": MSG, **kw})
        assert (e.value.body["param"], e.value.body["message"]) == (param, message), e.value.body
