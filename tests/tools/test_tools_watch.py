"""`potstill watch` on a tools task: the label-mix check is the mix of functions called (the served
calls' tool_calls, or the call as text) against train.jsonl's, so traffic that calls one function
where training called two is flagged, the same mix is not, and calls for other tools (reason tools)
are left out. Real ledger rows as `potstill serve` writes them, a tiny student on disk."""

from __future__ import annotations

import json

from potstill.config import Config
from potstill.ledger import Ledger, ServedCall
from potstill.watch import watch_run
from tests.tools.test_tools_serve import TOOLS
from tests.watch.test_watch_after_swap import _run

CALLS = [{"name": "set_unit", "arguments": {"unit": "c"}}, {"name": "ping", "arguments": {}}]


def tool_call(call: dict) -> list[dict]:
    return [{"id": "call_1", "type": "function", "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]


def test_the_call_mix_is_watched_as_a_label_mix(tmp_path, tiny_model):
    run, texts, student = _run(tmp_path, tiny_model, lambda i: json.dumps(CALLS[i % 2]))
    cfg = Config(task={"type": "tools", "instruction": "call", "tools": TOOLS},
                 watch={"window": 60, "min_requests": 30, "reference_size": 40, "permutations": 299})

    def serve(pick, t0: float, as_text: bool = False) -> None:
        with Ledger(run / "calls.sqlite") as ledger:
            for i, t in enumerate(texts[:60]):
                call = pick(i)
                ledger.record_served(ServedCall(
                    request={"model": "potstill", "messages": [{"role": "user", "content": t}], "tools": TOOLS},
                    answered_by="student", model="m", content=json.dumps(call) if as_text else "",
                    extra={} if as_text else {"tool_calls": tool_call(call)}, reason="confident", student=student,
                    finish_reason="stop" if as_text else "tool_calls", created_at=t0 + i))

    serve(lambda i: CALLS[i % 2], 1000.0)
    labels = watch_run(run, cfg, device="cpu")["checks"]["labels"]
    assert labels["n_live"] == 60 and sorted(labels["live"]) == ["ping", "set_unit"] and not labels["flagged"]
    serve(lambda i: CALLS[0], 2000.0, as_text=True)  # one function only, the calls as their text
    labels = watch_run(run, cfg, device="cpu")["checks"]["labels"]
    assert labels["flagged"] and not labels["live"].get("ping") and labels["live"]["set_unit"]
    # Requests for other tools went to the teacher by design: their calls are not the task's mix.
    with Ledger(run / "calls.sqlite") as ledger:
        for i, t in enumerate(texts[:30]):
            ledger.record_served(ServedCall(
                request={"model": "potstill", "messages": [{"role": "user", "content": t}], "tools": []},
                answered_by="teacher", model="m", content="", reason="tools", student=student,
                extra={"tool_calls": tool_call({"name": "lookup", "arguments": {}})}, finish_reason="tool_calls",
                created_at=3000.0 + i))
    labels = watch_run(run, cfg, device="cpu")["checks"]["labels"]
    assert labels["n_live"] == 30 and "(invalid)" not in labels["live"]
