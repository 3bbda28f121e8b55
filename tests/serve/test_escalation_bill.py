"""A served escalation's ledger row is the teacher's bill: its cached input tokens (OpenAI's
``prompt_tokens_details.cached_tokens``, Anthropic's cache reads) and Anthropic's cache writes are
kept as generate keeps them, so `potstill cost` reads them; teachers on loopback, the official
openai client against the served app, the run's real SQLite ledger."""

from __future__ import annotations

import json
import sys

import pytest
from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

from tests.helpers.sse import openai_chunk
from tests.serve.conftest import claude_behind, client, rows, teacher_behind

# What the providers below bill every answer: 2,000 prompt tokens, 1,024 of them read from the cache.
USAGE = {"prompt_tokens": 2000, "completion_tokens": 3, "total_tokens": 2003,
         "prompt_tokens_details": {"cached_tokens": 1024}}


def caching_provider(asked: list[dict]) -> FastAPI:
    """An OpenAI chat API answering 'sports', whole or streamed, with ``USAGE``."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()):
        asked.append(body)
        if body.get("stream"):
            def chunks():
                yield openai_chunk(body["model"], {"role": "assistant", "content": "sports"})
                yield openai_chunk(body["model"], {}, finish="stop")
                yield openai_chunk(body["model"], usage=USAGE)
                yield "data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "usage": USAGE,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "sports"}}]}

    return app


def caching_claude() -> FastAPI:
    """A Messages API whose every answer read 2,000 tokens from the prompt cache and wrote 1,000 to it,
    400 of them for an hour, besides 300 uncached input tokens."""
    app = FastAPI()

    @app.post("/v1/messages")
    def create(body: dict = Body()) -> dict:
        usage = {"input_tokens": 300, "output_tokens": 5, "cache_read_input_tokens": 2000,
                 "cache_creation_input_tokens": 1000,
                 "cache_creation": {"ephemeral_5m_input_tokens": 600, "ephemeral_1h_input_tokens": 400}}
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "usage": usage,
                "content": [{"type": "text", "text": "sports"}], "stop_reason": "end_turn", "stop_sequence": None}

    return app


def _cost_lines(run, capsys, monkeypatch) -> list[str]:
    from potstill.cli import main

    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(run)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code in (0, None), out
    return out.splitlines()


@pytest.mark.parametrize("stream", [False, True])
def test_an_escalation_keeps_the_cached_input_tokens_it_was_billed(served, force, capsys, monkeypatch, stream):
    """The row held input and output tokens only: the 1,024 cached ones were logged as 0, and
    `potstill cost` said '(0 cached)' for every served escalation though its cost was priced with them."""
    service, live = served
    force("teacher")
    before = rows(service)[-1]["id"] if rows(service) else 0
    asked: list[dict] = []
    with teacher_behind(service, caching_provider(asked)):
        msg = [{"role": "user", "content": f"a cached prompt, streamed {stream}"}]
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client(live).chat.completions.create(
                model="potstill", messages=msg, stream=True) if c.choices)
        else:
            text = client(live).chat.completions.create(model="potstill", messages=msg).choices[0].message.content
    assert text == "sports" and [bool(b.get("stream")) for b in asked] == [stream]
    (row,) = [r for r in rows(service) if r["id"] > before]
    assert (row["role"], row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == \
           ("teacher", 2000, 1024, 3)
    lines = [ln for ln in _cost_lines(service.ledger.path.parent, capsys, monkeypatch)
             if ln.startswith("teacher tiny-teacher:")]
    cached = sum(r["cached_input_tokens"] for r in rows(service, role="teacher"))
    assert cached >= 1024 and len(lines) == 1 and f"({cached} cached)" in lines[0], lines


def test_an_anthropic_escalation_keeps_its_cache_reads_and_writes(served, force):
    """Cache reads were logged as 0 cached and the cache writes (billed at 1.25x and 2x the input
    price) were not kept at all; they are now, under the names generate's rows keep them by."""
    from potstill.ledger_rows import ServedCall

    service, live = served
    force("teacher")
    with claude_behind(service, caching_claude(), max_tokens=16):
        c = client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": "a claude"}])
        # claude-haiku-4-5: $1 input, $5 output per Mtok; reads at 0.1x, 5-minute writes 1.25x, 1-hour writes 2x
        expected = (300 * 1.0 + 2000 * 0.1 + 600 * 1.25 + 400 * 2.0 + 5 * 5.0) / 1e6
    assert c.choices[0].message.content == "sports"
    row = rows(service)[-1]
    resp = json.loads(row["response"])
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (3300, 2000, 5)
    assert (resp["cache_write_input_tokens"], resp["cache_write_1h_input_tokens"]) == (1000, 400)
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)  # the bill (the student's seconds apart)
    # Read back as a served row: the counts are fields, not part of the answer's extra.
    got = ServedCall.from_row(row)
    assert (got.cached_input_tokens, got.cache_write_input_tokens, got.cache_write_1h_input_tokens) == (2000, 1000, 400)
    assert "cache_write_input_tokens" not in got.extra


def test_the_students_seconds_on_an_escalated_request_are_the_students_spend_not_the_teachers(
        tmp_path, tiny_model, teacher_server, capsys, monkeypatch):
    """An escalated request's row held the student's seconds plus the teacher's bill under the
    teacher's model, so `potstill cost` put the student's compute on the teacher's line (above the
    provider's invoice) and showed the student at $0.0000 though it scored every request first.
    The teacher's line is now its bill; the student's seconds are the student's; `potstill requests`
    still says what each request cost in all."""
    import yaml

    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.log_view import find
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, tiny_model, teacher_server.base_url)
    cfg = yaml.safe_load((run / "potstill.yaml").read_text())
    cfg["student"] = {"usd_per_hour": 3600.0}  # $1 a second: its share shows at $0.0001 resolution
    (run / "potstill.yaml").write_text("# Written by potstill (a test's run)\n" + yaml.safe_dump(cfg))
    service = load_service(run, run_config(run, None), device="cpu")
    service.routing = Routing(confidence_threshold=float("inf"), ood_threshold=float("inf"))
    try:
        with LiveServer(build_app(service, SERVE_KEY)) as live, teacher_behind(service, caching_provider([])):
            for text in ("the first escalation", "the second escalation"):
                c = client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}])
                assert c.model_extra["potstill"]["answered_by"] == "teacher"
            bill = 2 * service.teacher.token_cost(2000, 3, 1024)  # what the provider billed for the two
        escalated = rows(service, role="teacher")
        student = json.loads(escalated[0]["response"])["student"]  # the served student's name
        assert len(escalated) == 2 and sum(r["cost_usd"] for r in escalated) == pytest.approx(bill, rel=1e-9)
        share = sum(r["student_cost_usd"] for r in escalated)
        assert share > 0
        # `potstill requests`: each request's whole cost, the teacher's bill and the student's seconds.
        listed = find(service.ledger, limit=None)
        assert [r["cost_usd"] for r in listed] == [r["cost_usd"] + r["student_cost_usd"] for r in escalated]
    finally:
        service.close()
    lines = _cost_lines(run, capsys, monkeypatch)
    assert [ln for ln in lines if ln.startswith("teacher tiny-teacher:")] == [
        f"teacher tiny-teacher: 2 calls (0 errors), 4000 input (2048 cached) + 6 output tokens, ${bill:.4f}"]
    assert f"student {student} (serve): 0 calls (0 errors), 0 input + 0 output tokens, ${share:.4f} " \
           f"(${share:.4f} of it on 2 requests it escalated to the teacher)" in lines, lines
    assert f"student: 0 calls, 0 input + 0 output tokens, ${share:.4f} (${share:.4f} of it on requests it " \
           "escalated)" in lines, lines


def test_a_stream_cut_before_its_finish_reason_keeps_what_its_usage_billed(served, force):
    """A streamed answer whose usage chunk came but no finish_reason was an exception: the tokens
    and cost its usage named were dropped and the failed row said 0 tokens and $0, though the
    provider billed them. The row now keeps them; the client still gets the failure."""
    import openai

    service, live = served
    force("teacher")
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()) -> StreamingResponse:
        def chunks():
            yield openai_chunk(body["model"], {"role": "assistant", "content": "sports"})
            yield openai_chunk(body["model"], usage=USAGE)  # and never a finish_reason
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    with teacher_behind(service, app):
        with pytest.raises(openai.APIError, match="ConnectionError"):
            for _ in client(live).chat.completions.create(
                    model="potstill", messages=[{"role": "user", "content": "a cut stream"}], stream=True):
                pass
        expected = service.teacher.token_cost(2000, 3, 1024)
    row = rows(service)[-1]
    assert (row["status"], row["role"]) == ("error", "teacher") and "no finish_reason" in row["error"]
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (2000, 1024, 3)
    assert expected > 0 and row["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_a_failed_escalation_keeps_the_students_seconds_on_it(served, force):
    """The student scored the request, was unsure, and the teacher then failed (a 502): the failed row
    held no student seconds (student_cost_usd 0), so the student's compute on it was lost from
    `potstill cost` and `potstill requests`, where an answered escalation's row keeps it. The failed
    row now keeps it, under the student that spent it."""
    import openai

    from potstill.ledger_rows import ServedCall
    from potstill.serve.log_view import find
    from potstill.teachers import get_teacher

    service, live = served
    force("teacher")
    before = rows(service)[-1]["id"] if rows(service) else 0
    saved = service.teacher  # a teacher whose server is gone: nothing listens on the discard port
    service.teacher = get_teacher(saved.cfg.model_copy(update={"base_url": "http://127.0.0.1:9/v1"}), service.task)
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": "unsure"}])
    finally:
        service.teacher.close()
        service.teacher = saved
    assert e.value.status_code == 502
    (row,) = [r for r in rows(service) if r["id"] > before]
    assert (row["status"], row["role"], row["cost_usd"]) == ("error", "teacher", 0.0)
    assert row["student_cost_usd"] > 0  # before: 0.0
    got = ServedCall.from_row(row)
    assert got.student == service.student_name and got.error_body == {"error": e.value.body}  # read back apart
    (listed,) = [r for r in find(service.ledger, limit=None) if r["row"] == row["id"]]
    assert listed["cost_usd"] == row["student_cost_usd"] and listed["student"] == service.student_name
    by_stage = service.ledger.spend_by_stage("student")
    (mine,) = [g for g in by_stage if (g["model"], g["stage"]) == (service.student_name, "serve")]
    assert mine["escalated_cost_usd"] >= row["student_cost_usd"]
    assert not [g for g in by_stage if g["model"] == "student"]  # not under a nameless student


def test_an_escalation_failing_mid_stream_keeps_the_students_seconds_on_it(tmp_path, tiny_model, teacher_server,
                                                                          monkeypatch):
    """The same where the teacher's stream breaks after its first text (the error event of a live stream)."""
    import threading

    import openai

    from tests.serve.test_live_stream import ASK, _broken_teacher, escalating

    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold = threading.Event()
        with teacher_behind(service, _broken_teacher(hold)):
            with pytest.raises(openai.APIError):
                for _ in client(live).chat.completions.create(model="potstill", messages=ASK, stream=True):
                    hold.set()
        row = rows(service)[-1]
        assert (row["status"], row["role"]) == ("error", "teacher") and row["student_cost_usd"] > 0
        assert json.loads(row["response"])["student"] == service.student_name
