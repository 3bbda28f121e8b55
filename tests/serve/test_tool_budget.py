"""A tool request in a classification run: the teacher gets a budget for tool calls (the client's
max_tokens, else TOOL_MAX_TOKENS), not the label budget the run's teacher.max_tokens holds; and a
tool request refused before routing is logged under the hash it gets when answered."""

from __future__ import annotations

from potstill.serve.escalation import TOOL_MAX_TOKENS
from tests.serve.conftest import MSG, claude_behind, client, teacher_behind
from tests.serve.test_tool_calls import TOOLS, anthropic_provider, openai_provider


def test_a_tool_request_in_a_classification_run_is_not_cut_at_the_label_budget(served, force):
    """Found by an audit: the client's max_tokens was dropped for label tasks, so a tool request went
    to the teacher with teacher.max_tokens (4 here) and its calls' arguments were cut."""
    service, live = served
    assert service.task.labels and service.teacher.cfg.max_tokens == 4
    seen: list = []
    with teacher_behind(service, openai_provider(seen)):
        client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
        client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS, max_tokens=300)
        force("teacher")  # a label answer still gets the teacher's own label request
        client(live).chat.completions.create(model="potstill", messages=MSG, max_tokens=300)
    assert [b["max_tokens"] for b in seen] == [TOOL_MAX_TOKENS, 300, 4]
    seen.clear()
    with claude_behind(service, anthropic_provider(seen), max_tokens=4):
        client(live).chat.completions.create(model="potstill", messages=MSG, tools=TOOLS)
    assert seen[0]["max_tokens"] == TOOL_MAX_TOKENS


def test_a_tool_request_refused_before_routing_is_logged_under_its_answered_hash(served, force):
    """Found by an audit: a refused tool request was hashed without its tools, so its row's hash
    differed from the one the same request gets when answered."""
    import openai
    import pytest

    from tests.serve.conftest import rows

    service, live = served
    msgs = [{"role": "user", "content": "the phone and the software"}]
    with teacher_behind(service, openai_provider([])):
        with pytest.raises(openai.BadRequestError):  # stream_options without stream: refused before routing
            client(live).chat.completions.create(model="potstill", messages=msgs, tools=TOOLS, max_tokens=50,
                                                 stream_options={"include_usage": True})
        refused = rows(service)[-1]
        client(live).chat.completions.create(model="potstill", messages=msgs, tools=TOOLS, max_tokens=50)
        answered = rows(service)[-1]
    assert (refused["status"], answered["status"]) == ("error", "ok") and answered["stop_reason"] == "tool_calls"
    assert refused["request_hash"] == answered["request_hash"]
