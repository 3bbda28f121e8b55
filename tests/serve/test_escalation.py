"""An escalated request against the official openai client: the real teacher answers, a ledger
answer is reused, a failing or refusing teacher is the client's 502 or 400 without the provider's
words, and tool turns reach an OpenAI or Anthropic teacher in its own form; every request checked
in the SQLite ledger."""

from __future__ import annotations

import json

import openai
import pytest

from potstill.teachers import get_teacher
from tests.serve.conftest import MSG, client, rows, teacher_behind


def test_student_and_teacher_paths(served, teacher_server, force):
    service, live = served
    force("student")
    c = client(live).chat.completions.create(model="potstill", messages=MSG)
    assert c.model_extra["potstill"]["answered_by"] == "student"
    assert c.choices[0].message.content in service.task.labels
    assert c.model.startswith("potstill-student")
    sent = sum(teacher_server.requests.values())
    force("teacher")
    c = client(live).chat.completions.create(model="potstill", messages=MSG)
    assert c.model_extra["potstill"] == {**c.model_extra["potstill"], "answered_by": "teacher", "reason": "low_confidence"}
    assert c.model == "tiny-teacher"
    assert sum(teacher_server.requests.values()) == sent + 1  # the real teacher answered
    row = rows(service)[-1]
    assert row["role"] == "teacher" and row["cost_usd"] > 0 and row["input_tokens"] > 0


def test_teacher_failure_is_a_502_and_logged(served, force):
    service, live = served
    force("teacher")
    # The service keeps one teacher client for its life: swap in a teacher whose server is gone
    # (nothing listens on the discard port).
    saved = service.teacher
    service.teacher = get_teacher(saved.cfg.model_copy(update={"base_url": "http://127.0.0.1:9/v1"}), service.task)
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(live).chat.completions.create(model="potstill", messages=MSG)
    finally:
        service.teacher.close()
        service.teacher = saved
    # Found by an audit: the type was 'upstream_error', which OpenAI's API never sends; a 5xx is its
    # 'server_error', and the code says the teacher failed.
    assert e.value.status_code == 502 and (e.value.type, e.value.code) == ("server_error", "teacher_failed")
    row = rows(service)[-1]
    assert row["status"] == "error" and row["role"] == "teacher" and row["error"].startswith("502")
    assert json.loads(row["response"])["error"] == e.value.body


def test_escalation_reuses_an_identical_teacher_answer_from_the_ledger(served, teacher_server, force):
    """Issue 16.5: an escalated request that generate already paid for is answered from the ledger."""
    from potstill.generate import label_records
    from potstill.records import Record

    service, live = served
    cached_msg = [{"role": "user", "content": "the striker scored twice in the cup final"}]
    fresh_msg = [{"role": "user", "content": "the chancellor raised the interest rate"}]
    # generate (the real path: the same teacher, its hash, one ledger row) answers one input first
    (rec,), stats = label_records([Record(messages=cached_msg)], service.task, service.teacher, service.ledger,
                                  stage="generate")
    assert stats.calls == 1 and rec.output is not None
    force("teacher")
    sent = sum(teacher_server.requests.values())
    raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=cached_msg)
    c = raw.parse()
    assert raw.headers["x-potstill-answered-by"] == "teacher"
    assert raw.headers["x-potstill-reason"] == "low_confidence+cached"
    assert c.choices[0].message.content == rec.output
    assert sum(teacher_server.requests.values()) == sent  # no teacher call
    row = rows(service)[-1]
    assert row["role"] == "teacher" and json.loads(row["response"])["teacher_cached"] is True
    assert row["request_hash"] == rec.meta["request_hash"]  # one request hash for serve and generate
    # a request the ledger has no answer for still goes to the teacher
    raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=fresh_msg)
    assert raw.headers["x-potstill-reason"] == "low_confidence"
    assert sum(teacher_server.requests.values()) == sent + 1


def test_a_teacher_failure_does_not_hand_the_providers_message_to_the_client(served, force):
    """Found by an audit: the 502 of a failed escalation carried the teacher provider's own error
    text to whoever called the server: OpenAI's 401 shows the start and end of the operator's key,
    its 429 the organization id and quota. The client now gets the failure's kind; the ledger row
    (the operator's) keeps the provider's message."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    upstream = {
        401: "Incorrect API key provided: sk-tea************95e. You can find your API key at "
             "https://platform.openai.com/account/api-keys.",
        429: "Rate limit reached for gpt-4o in organization org-Zx81QwErTy on tokens per min (TPM): Limit 30000, "
             "Used 29876, Requested 512. Please try again in 1.1s.",
    }
    provider = FastAPI()
    status = {"code": 401}

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        return JSONResponse({"error": {"message": upstream[status["code"]], "type": "invalid_request_error",
                                       "param": None, "code": None}}, status_code=status["code"])

    service, live = served
    force("teacher")
    with teacher_behind(service, provider):
        for code, kind, secret in ((401, "AuthenticationError", "sk-tea"), (429, "RateLimitError", "org-Zx81QwErTy")):
            status["code"] = code
            with pytest.raises(openai.APIStatusError) as e:
                client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": f"the vote {code}"}])
            assert e.value.status_code == 502 and (e.value.type, e.value.code) == ("server_error", "teacher_failed")
            assert kind in e.value.body["message"] and secret not in json.dumps(e.value.body), e.value.body
            row = rows(service)[-1]
            assert row["status"] == "error" and row["role"] == "teacher" and secret in row["error"]
            assert secret not in row["response"]  # the body the client got


def test_a_teacher_refusing_the_clients_chat_is_a_400_not_a_502(served, force):
    """Found by an audit: a teacher refusing the client's input (its 400 for a chat over its context)
    reached the client as a 502, as if the server had failed: the status was lost
    in the Response's error text. It is the client's 400 with the provider's error code, and the
    provider's own text (which may name the organization) stays in the ledger; a teacher failing
    for the operator's reasons (its 401) is still a 502."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    secret = "org-Zx81QwErTy"
    provider = FastAPI()
    status = {"code": 400, "error": "context_length_exceeded"}

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        return JSONResponse({"error": {"message": f"This model's maximum context length is 8192 tokens ({secret}). "
                                                  "However, your messages resulted in 9000 tokens.",
                                       "type": "invalid_request_error", "param": "messages",
                                       "code": status["error"]}}, status_code=status["code"])

    service, live = served
    force("teacher")
    with teacher_behind(service, provider):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                client(live).chat.completions.create(model="potstill", stream=stream,
                                                     messages=[{"role": "user", "content": f"the vote {stream}"}])
            err = e.value
            assert (err.status_code, err.type, err.code, err.param) == (400, "invalid_request_error",
                                                                      "context_length_exceeded", "messages")
            assert "teacher" in err.message and secret not in json.dumps(err.body), err.body
            row = rows(service)[-1]
            assert row["status"] == "error" and row["role"] == "teacher" and row["error"].startswith("400")
            assert secret in row["error"] and secret not in row["response"]
        # The operator's failures stay a 502: a bad key, and a 400 about the server's own settings
        # (OpenAI's unsupported_parameter for max_tokens on a reasoning model), not about the chat.
        for code, error in ((401, None), (400, "unsupported_parameter")):
            status.update(code=code, error=error)
            with pytest.raises(openai.APIStatusError) as e:
                client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": f"goal {code}"}])
            assert e.value.status_code == 502, (code, error)


def test_an_escalated_chat_with_tool_turns_keeps_them_for_the_teacher(served, teacher_server, force):
    """Found by an audit: escalation cut every message to role and content, so an assistant turn's
    tool_calls and a tool turn's tool_call_id were lost and an OpenAI teacher (the loopback one holds
    its rule) refused the chat: 'messages with role tool must be a response to a preceeding message
    with tool_calls'. The teacher gets the tool turns as the client sent them; the student reads
    their text as before."""
    service, live = served
    force("teacher")
    calls = [{"id": "call_1", "type": "function", "function": {"name": "topic", "arguments": "{}"}}]
    chat = [{"role": "user", "content": "the team won the match"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "sports"},
            {"role": "user", "content": "so the topic is"}]
    sent = sum(teacher_server.requests.values())
    c = client(live).chat.completions.create(model="potstill", messages=chat)
    assert c.model_extra["potstill"]["answered_by"] == "teacher" and c.model == "tiny-teacher"
    assert sum(teacher_server.requests.values()) == sent + 1
    got = [k for k in teacher_server.requests if "call_1" in k][-1]
    assert "'tool_call_id': 'call_1'" in got and "'tool_calls': [{" in got
    row = rows(service)[-1]
    assert row["status"] == "ok" and row["role"] == "teacher"


def test_a_failed_tool_chat_escalation_is_hashed_as_the_request_the_teacher_got(served, force):
    """Found by an audit: the ledger row of a failed escalation hashed the chat cut to role and text,
    so two tool chats that differ only in their tool turns (tool_calls, tool_call_id) shared one
    request hash, unlike the hash the same chat gets when the teacher answers it. A failed row now
    carries the hash of the request the teacher got: the one an answered row of the same request has."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    provider = FastAPI()
    fail = {"now": True}

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        if fail["now"]:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error", "param": None,
                                           "code": None}}, status_code=500)
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny-teacher",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})

    def tool_chat(call_id: str, args: str) -> list[dict]:
        calls = [{"id": call_id, "type": "function", "function": {"name": "topic", "arguments": args}}]
        return [{"role": "user", "content": "the team won the match"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": call_id, "content": "sports"},
                {"role": "user", "content": "so the topic is"}]

    service, live = served
    force("teacher")
    chats = [tool_chat("call_1", "{}"), tool_chat("call_2", "{}"), tool_chat("call_1", '{"x": 1}')]
    hashes = {}
    with teacher_behind(service, provider):
        for ok in (False, True):
            fail["now"] = not ok
            for i, chat_ in enumerate(chats):
                if ok:
                    client(live).chat.completions.create(model="potstill", messages=chat_)
                else:
                    with pytest.raises(openai.InternalServerError):
                        client(live).chat.completions.create(model="potstill", messages=chat_)
                row = rows(service)[-1]
                assert (row["status"], row["role"]) == ("ok" if ok else "error", "teacher")
                hashes[ok, i] = row["request_hash"]
        for i, chat_ in enumerate(chats):  # a tool chat refused before routing: hashed the same way
            with pytest.raises(openai.BadRequestError):
                client(live).chat.completions.create(model="potstill", messages=chat_,
                                                     stream_options={"include_usage": True})
            hashes["refused", i] = rows(service)[-1]["request_hash"]
    assert len({hashes[False, i] for i in range(3)}) == 3, hashes  # three requests, three hashes
    assert all(hashes[False, i] == hashes[True, i] == hashes["refused", i] for i in range(3)), hashes


def anthropic_provider(seen: list):
    """A Messages API on loopback that holds Anthropic's rules for a chat: roles user and assistant
    only, content never null, each assistant tool_use answered by a tool_result at the start of the
    next (user) turn, each tool_result answering a tool_use of the turn before, tool_use input an
    object, and a request holding tool_use or tool_result blocks defines its tools."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    def bad(msg: str) -> JSONResponse:
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": msg}},
                            status_code=400)

    @app.post("/v1/messages")
    def messages(body: dict = Body()) -> JSONResponse:
        seen.append(body)
        pending: list[str] = []
        for i, m in enumerate(body["messages"]):
            if m.get("role") not in ("user", "assistant"):
                return bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            blocks = m.get("content")
            if isinstance(blocks, str):
                blocks = [{"type": "text", "text": blocks}]
            if not isinstance(blocks, list):
                return bad(f"messages.{i}.content: Input should be a valid list")
            results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            if pending and [b.get("type") for b in blocks[:len(pending)]] != ["tool_result"] * len(pending):
                return bad(f"messages.{i}: Did not find {len(pending)} `tool_result` block(s) at the beginning")
            if sorted(results) != sorted(pending):
                return bad(f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {results}")
            if any(b.get("type") == "text" and not b.get("text") for b in blocks):
                return bad(f"messages.{i}: text content blocks must be non-empty")
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            if any(not isinstance(b.get("input"), dict) or not b.get("name") for b in uses):
                return bad(f"messages.{i}: tool_use.input: Input should be a valid dictionary")
            pending = [b["id"] for b in uses]
            if (uses or results) and not body.get("tools"):
                return bad("Requests which include `tool_use` or `tool_result` blocks must define tools.")
        return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                             "content": [{"type": "text", "text": "sports"}], "stop_reason": "end_turn",
                             "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}})

    return app


def test_an_anthropic_teacher_gets_openai_tool_turns_as_tool_use_and_tool_result_blocks(served, force):
    """Found by an audit: an escalated tool chat reached an Anthropic teacher as OpenAI messages, a
    'tool' role and an assistant turn of null content with tool_calls, which the Messages API refuses
    (a 502 for the client). The assistant's tool_calls are tool_use blocks (arguments parsed to
    input), the tool turns tool_result blocks at the start of one user turn, the user's text after them."""
    from potstill.config import TeacherConfig
    from tests.helpers.live_server import LiveServer

    seen: list = []
    calls = [{"id": "call_1", "type": "function", "function": {"name": "topic", "arguments": '{"about": "match"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "score", "arguments": "{}"}}]
    chat = [{"role": "user", "content": "the team won the match"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "sports"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "2-1"}]},
            {"role": "user", "content": "so the topic is"}]
    service, live = served
    force("teacher")
    saved = service.teacher
    with LiveServer(anthropic_provider(seen)) as fake:
        cfg = TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=fake.url, api_key_env="TEACHER_KEY",
                            max_tokens=4, max_retries=0, timeout_s=10)
        service.teacher = get_teacher(cfg, service.task)
        try:
            c = client(live).chat.completions.create(model="potstill", messages=chat)
            plain = client(live).chat.completions.create(model="potstill", messages=MSG)
        finally:
            service.teacher.close()
            service.teacher = saved
    assert c.choices[0].message.content == "sports" and c.model == "claude-haiku-4-5"
    assert seen[0]["messages"] == [
        {"role": "user", "content": "the team won the match"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "call_1", "name": "topic", "input": {"about": "match"}},
                                          {"type": "tool_use", "id": "call_2", "name": "score", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sports"},
                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "2-1"},
                                     {"type": "text", "text": "so the topic is"}]}]
    # The tools the chat called are declared (the API refuses tool blocks otherwise), and none may be
    # called now: the teacher answers in text.
    assert [t["name"] for t in seen[0]["tools"]] == ["topic", "score"] and seen[0]["tool_choice"] == {"type": "none"}
    assert seen[1]["messages"] == MSG and plain.choices[0].message.content == "sports"  # a chat without tools as before
    assert "tools" not in seen[1] and "tool_choice" not in seen[1]


def test_a_chat_over_an_anthropic_teachers_context_is_the_clients_400(served, force):
    """Found by an audit: Anthropic's refusal of a chat over its context (a 400 'prompt is too long',
    with no error code, unlike OpenAI's context_length_exceeded) reached the client as a 502, as if
    the server had failed. It is the client's 400 with OpenAI's code, as an OpenAI teacher's is;
    another Anthropic 400 (about the server's settings) stays a 502."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from potstill.config import TeacherConfig
    from tests.helpers.live_server import LiveServer

    provider = FastAPI()
    said = {"message": "prompt is too long: 215000 tokens > 200000 maximum"}

    @provider.post("/v1/messages")
    def messages() -> JSONResponse:
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": said["message"]}},
                            status_code=400)

    service, live = served
    force("teacher")
    saved = service.teacher
    with LiveServer(provider) as fake:
        cfg = TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=fake.url, api_key_env="TEACHER_KEY",
                            max_tokens=4, max_retries=0, timeout_s=10)
        service.teacher = get_teacher(cfg, service.task)
        try:
            with pytest.raises(openai.BadRequestError) as e:
                client(live).chat.completions.create(model="potstill", messages=MSG)
            assert (e.value.code, e.value.param) == ("context_length_exceeded", "messages")
            assert "215000" not in json.dumps(e.value.body)  # the provider's words stay in the ledger
            assert rows(service)[-1]["error"].startswith("400") and "215000" in rows(service)[-1]["error"]
            said["message"] = "max_tokens: 100000 > 64000, which is the maximum allowed for this model"
            with pytest.raises(openai.InternalServerError):
                client(live).chat.completions.create(model="potstill", messages=MSG)
        finally:
            service.teacher.close()
            service.teacher = saved


def test_an_escalation_is_billed_at_the_generate_price_table_when_the_teacher_names_no_price(
        tmp_path, tiny_model, teacher_server, monkeypatch):
    """A teacher priced by `generate.prices` (the built-in table, or a config's entry), with no
    `teacher.price` of its own, is billed by generate; its served escalations were billed $0."""
    import yaml

    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from potstill.teachers.api.prices import token_cost
    from potstill.config import PriceConfig
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, tiny_model, teacher_server.base_url)
    cfg = yaml.safe_load((run / "potstill.yaml").read_text())
    del cfg["teacher"]["price"]
    cfg["generate"] = {"prices": {"tiny-teacher": {"input_per_mtok": 3.0, "output_per_mtok": 12.0}}}
    (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    service = load_service(run, run_config(run, None), device="cpu")
    service.routing = Routing(confidence_threshold=float("inf"), ood_threshold=float("inf"))
    try:
        with LiveServer(build_app(service, SERVE_KEY)) as live:
            c = client(live).chat.completions.create(model="potstill", messages=MSG)
        assert c.model_extra["potstill"]["answered_by"] == "teacher"
        row = rows(service)[-1]
        price = PriceConfig(input_per_mtok=3.0, output_per_mtok=12.0)
        teacher_cost = token_cost(price, row["input_tokens"], row["output_tokens"])
        # The row's cost is the teacher's bill; the student's share of its forward is kept apart.
        assert teacher_cost > 0 and row["cost_usd"] == pytest.approx(teacher_cost)
        assert 0 < row["student_cost_usd"] < teacher_cost / 100
    finally:
        service.close()


def test_an_escalation_reuses_generates_answer_when_generate_took_n_samples(tmp_path, tiny_model, monkeypatch):
    """With generate.n 3 generate's request asks for 3 samples, so a served escalation of the same
    chat (one sample) never found it in the ledger and paid the teacher again; it is now served
    from generate's answer, whose majority sample is the answer, as generate chose it."""
    import yaml
    from fastapi import FastAPI

    from potstill.config import GenerateConfig
    from potstill.generate import label_records
    from potstill.records import Record
    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    asked: list[dict] = []
    provider = FastAPI()

    @provider.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        asked.append(body)
        answers = ["tech", "sports", "sports"][: int(body.get("n") or 1)]  # the first sample is outvoted
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": i, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}
                            for i, a in enumerate(answers)],
                "usage": {"prompt_tokens": 9, "completion_tokens": len(answers), "total_tokens": 9 + len(answers)}}

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    with LiveServer(provider) as fake:
        run = write_run(tmp_path, tiny_model, fake.url + "/v1")
        cfg = yaml.safe_load((run / "potstill.yaml").read_text())
        cfg["generate"] = {"n": 3}
        (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        service = load_service(run, run_config(run, None), device="cpu")
        service.routing = Routing(confidence_threshold=float("inf"), ood_threshold=float("inf"))
        try:
            msg = [{"role": "user", "content": "the striker scored twice in the cup final"}]
            generating = get_teacher(service.teacher.cfg, service.task)  # generate's own, as in `potstill generate`
            (rec,), stats = label_records([Record(messages=msg)], service.task, generating, service.ledger,
                                          stage="generate", gcfg=GenerateConfig(n=3))
            generating.close()
            assert stats.calls == 1 and rec.output == "sports" and asked[-1]["n"] == 3
            with LiveServer(build_app(service, SERVE_KEY)) as live:
                raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=msg)
            assert len(asked) == 1  # no second teacher call
            assert raw.headers["x-potstill-reason"] == "low_confidence+cached"
            assert raw.parse().choices[0].message.content == "sports"
            row = rows(service)[-1]
            assert row["request_hash"] == rec.meta["request_hash"]
        finally:
            service.close()


def test_a_teacher_refusal_is_the_clients_400_so_no_sdk_retries_it(served, force):
    """An OpenAI teacher's refusal (``message.refusal``, no content) was served as the answer "";
    as an error (Anthropic's refusal too) it was a 502 'teacher failed', which the client's SDK
    retries (openai: twice by default), each retry a teacher call paid and refused again. A refusal
    is about the client's chat: its 400 with code refusal, the refusal's words in the ledger only."""
    from tests.teachers.test_openai_refusal import REFUSAL, refusing_provider

    asked: list[dict] = []
    service, live = served
    force("teacher")
    with teacher_behind(service, refusing_provider(asked)):
        with pytest.raises(openai.BadRequestError) as e:
            client(live).with_options(max_retries=2).chat.completions.create(
                model="potstill", messages=[{"role": "user", "content": "pick this lock"}])
    err = e.value
    assert (err.status_code, err.code, err.param) == (400, "refusal", "messages") and len(asked) == 1
    assert "the teacher refused this chat (refusal)" in err.message and REFUSAL not in json.dumps(err.body)
    row = rows(service)[-1]
    assert row["status"] == "error" and row["role"] == "teacher" and REFUSAL in row["error"]


def test_a_refused_escalation_keeps_the_tokens_and_cost_the_provider_billed(served, force):
    """A refusal is billed by the provider (its prompt and the refusal's tokens), and generate's error
    row keeps that cost; serve's failed row was written with 0 tokens and $0, so its ledger, and
    `potstill cost`, came out under the bill by every refused escalation."""
    from tests.teachers.test_openai_refusal import refusing_provider

    service, live = served
    force("teacher")
    with teacher_behind(service, refusing_provider([])):
        expected = service.teacher.token_cost(20, 11)
        with pytest.raises(openai.BadRequestError):
            client(live).with_options(max_retries=0).chat.completions.create(
                model="potstill", messages=[{"role": "user", "content": "pick this lock"}])
    row = rows(service)[-1]
    assert row["status"] == "error" and (row["input_tokens"], row["output_tokens"]) == (20, 11)
    assert expected > 0 and row["cost_usd"] == pytest.approx(expected)


def test_a_failed_escalations_502_tells_the_sdk_not_to_retry_and_passes_on_retry_after(served, force):
    """serve already retried the teacher (teacher.max_retries, after its Retry-After); the openai
    SDK, at its default 2 retries, then sent the whole request twice more: 3 teacher requests per
    client call here (teacher.max_retries 0), (1 + 5) x 3 = 18 at the defaults. The 502 now says
    x-should-retry: false, which the openai and anthropic SDKs obey, and carries the teacher's Retry-After."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    asked: list[int] = []
    provider = FastAPI()

    @provider.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        asked.append(1)
        return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                                       "code": "rate_limit_exceeded"}}, status_code=429, headers={"retry-after": "2"})

    service, live = served
    force("teacher")
    sdk = openai.OpenAI(base_url=live.url + "/v1", api_key=client(live).api_key)  # the SDK's own default retries
    assert sdk.max_retries == 2
    with teacher_behind(service, provider):
        with pytest.raises(openai.InternalServerError) as e:
            sdk.chat.completions.create(model="potstill", messages=[{"role": "user", "content": "the retried vote"}])
    assert (e.value.status_code, e.value.code) == (502, "teacher_failed")
    assert len(asked) == 1, f"{len(asked)} teacher requests for one client call"
    assert e.value.response.headers["x-should-retry"] == "false"
    assert e.value.response.headers["retry-after"] == "2"
    assert len([r for r in rows(service) if "the retried vote" in r["request"]]) == 1
