"""Request fields through the official openai client: which are checked, refused or accepted and
not applied, and what a refused one's error names."""

from __future__ import annotations

import openai
import pytest

from tests.serve.conftest import MSG, client

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

