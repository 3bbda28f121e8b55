"""`potstill watch` over a ledger where some requests were answered with tool calls and some rows
hold no user text: real ledger rows as `potstill serve` writes them, a tiny student on disk."""

from __future__ import annotations

from potstill.ledger import Ledger, ServedCall
from potstill.watch import watch_run
from tests.watch.test_watch_after_swap import _cfg, _run, _served

CALL = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]


def test_tool_call_answers_are_left_out_of_the_label_mix_and_counted(tmp_path, tiny_model):
    """Found by an audit: a tool-call escalation's empty content was read as a label, so every tool
    request counted as an invalid label in the label-mix check."""
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:40], current, False, 1000.0)
        for i, t in enumerate(texts[40:60]):
            ledger.record_served(ServedCall(
                request={"model": "potstill", "messages": [{"role": "user", "content": t}], "tools": []},
                answered_by="teacher", model="m", content="", reason="tools", student=current,
                extra={"tool_calls": CALL}, finish_reason="tool_calls", created_at=2000.0 + i))
    report = watch_run(run, _cfg(), device="cpu")
    labels = report["checks"]["labels"]
    assert labels["n_live"] == 40 and "(invalid)" not in labels["live"]
    assert report["traffic"]["n"] == 60 and report["traffic"]["tool_calls"] == 20
    assert not labels["flagged"]
    assert any("20 request(s) answered with tool calls" in n for n in report["notes"])


def test_the_window_holds_as_many_requests_as_asked_when_some_rows_have_no_user_text(tmp_path, tiny_model):
    """Found by an audit: watch.window was applied in SQL before the rows with no user text were
    dropped, so 10 such rows among the latest 60 left a window of 50."""
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:60], current, False, 1000.0)
        for i in range(10):
            ledger.record_served(ServedCall(request={"model": "potstill", "messages": [{"role": "user", "content": " "}]},
                                            answered_by="student", model="m", content="tech", student=current,
                                            created_at=2000.0 + i))
    report = watch_run(run, _cfg(), device="cpu")
    assert report["traffic"]["n"] == 60 and report["traffic"]["first"].startswith("1970-01-01T00:16:40")


def test_requests_sent_to_the_teacher_for_their_tools_are_not_counted_as_escalations(tmp_path, tiny_model):
    """A request offering tools goes to the teacher by design (reason tools), yet watch counted it in the
    escalation share that val calibrated on the student's routing: 20 tool requests among 60 made a 33%
    share against val's 5% and flagged an escalation surge (drift) the student had no part in."""
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:40], current, False, 1000.0)
        for i, t in enumerate(texts[40:60]):
            ledger.record_served(ServedCall(
                request={"model": "potstill", "messages": [{"role": "user", "content": t}]},
                answered_by="teacher", model="m", content="", reason="tools", student=current,
                extra={"tool_calls": CALL}, finish_reason="tool_calls", created_at=2000.0 + i))
    report = watch_run(run, _cfg(), device="cpu")
    esc = report["checks"]["escalation"]
    assert esc["n"] == 40 and esc["share"] == 0.0 and not esc["flagged"]
    assert report["traffic"]["tool_requests"] == 20
    assert any("20 request(s) offering tools" in n for n in report["notes"])


def test_format_escalations_are_left_out_of_the_label_mix_and_the_escalation_share(tmp_path, tiny_model):
    """A request whose response_format the student's label could not fit goes to the teacher by the
    format, not by the routing val calibrated, and its answer is JSON, not a label: counted apart.
    Counting them made 20 among 60 a 33% share and 20 invalid labels."""
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:40], current, False, 1000.0)
        for i, t in enumerate(texts[40:60]):
            ledger.record_served(ServedCall(
                request={"model": "potstill", "messages": [{"role": "user", "content": t}],
                         "response_format": {"type": "json_object"}},
                answered_by="teacher", model="m", content='{"topic": "tech"}',
                reason="response_format+cached" if i % 2 else "response_format", student=current,
                created_at=2000.0 + i))
    report = watch_run(run, _cfg(), device="cpu")
    labels, esc = report["checks"]["labels"], report["checks"]["escalation"]
    assert labels["n_live"] == 40 and "(invalid)" not in labels["live"] and not labels["flagged"]
    assert esc["n"] == 40 and esc["share"] == 0.0 and not esc["flagged"]
    assert report["traffic"]["response_format_escalations"] == 20 and report["traffic"]["tool_requests"] == 0
    assert any("20 request(s) sent to the teacher because the student's answer was not the JSON" in n
               for n in report["notes"])
