"""Escalations that ask for tools or log-probabilities stream as the teacher writes them too
(``serve.stream_teacher``), through the official openai client: a token's log-probs arrive with
its text (chat completions, and the legacy form in a one-prompt completion), tool calls as OpenAI
sends their fragments (chat completions) or as ``function_call`` items (Responses API), from an
OpenAI-compatible teacher and from Anthropic's Messages API, each on loopback; what went out adds up
to the unstreamed answer, and the ledger row holds what the client got."""

from __future__ import annotations

import json
import threading

from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

from tests.helpers.sse import claude_event, claude_start, openai_chunk
from tests.serve.conftest import claude_behind, client, rows, teacher_behind
from tests.serve.test_live_stream import ASK, escalating, held
from tests.serve.test_tool_calls import TOOLS, streamed

LOOKUP = '{"about": "match"}'


def _entries(chunks) -> list[tuple]:
    """The log-probs a streamed chat completion's chunks carry, token by token."""
    return [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs])
            for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content or []]


def test_log_probs_stream_with_their_text(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        whole = client(live).chat.completions.create(model="potstill", messages=ASK, logprobs=True, top_logprobs=2)
        ref = _entries([whole])
        assert len(ref) > 1 and all(len(top) == 2 for _, _, top in ref)
        with held(teacher_server) as hold:
            with client(live).chat.completions.with_streaming_response.create(
                    model="potstill", messages=ASK, stream=True, logprobs=True, top_logprobs=2) as r:
                chunks = r.parse()
                for first in chunks:
                    if first.choices and first.choices[0].delta.content:
                        break
                # The teacher server still waits after its first token: that token's log-probs came with it.
                assert teacher_server.holding.is_set() and not hold.is_set()
                assert _entries([first]) == ref[:len(_entries([first]))] and _entries([first])
                hold.set()
                rest = list(chunks)
        got = [first] + rest
        assert "".join(ch.choices[0].delta.content or "" for ch in got if ch.choices) == whole.choices[0].message.content
        assert _entries(got) == ref
        assert json.loads(rows(service)[-1]["response"])["teacher_logprobs"]

        # Cut by a stop string: the tokens wholly before it, as the unstreamed answer gives them.
        text = whole.choices[0].message.content
        stop = text[len(text) // 2:len(text) // 2 + 2]
        cut = client(live).chat.completions.create(model="potstill", messages=ASK, logprobs=True, top_logprobs=2,
                                                   stop=[stop])
        live_cut = list(client(live).chat.completions.create(model="potstill", messages=ASK, logprobs=True,
                                                             top_logprobs=2, stop=[stop], stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in live_cut if ch.choices) == \
            cut.choices[0].message.content == text[:text.find(stop)]
        assert _entries(live_cut) == _entries([cut]) and len(_entries([cut])) < len(ref)

        # A one-prompt completion: the legacy form, offsets running on across chunks.
        one = client(live).completions.create(model="potstill", prompt=ASK[0]["content"], logprobs=2)
        with held(teacher_server) as hold:  # the teacher waits after its first token: pieces, however loaded the CPU
            stream = client(live).completions.create(model="potstill", prompt=ASK[0]["content"], logprobs=2,
                                                     stream=True)
            parts = []
            for part in stream:
                parts.append(part)
                if part.choices[0].text:
                    break
            hold.set()
            parts += list(stream)
        assert len([p for p in parts if p.choices[0].text]) > 1  # streamed in pieces
        tokens = [t for p in parts if p.choices[0].logprobs for t in p.choices[0].logprobs.tokens]
        offsets = [o for p in parts if p.choices[0].logprobs for o in p.choices[0].logprobs.text_offset]
        lps = [v for p in parts if p.choices[0].logprobs for v in p.choices[0].logprobs.token_logprobs]
        assert (tokens, offsets, lps) == (one.choices[0].logprobs.tokens, one.choices[0].logprobs.text_offset,
                                          one.choices[0].logprobs.token_logprobs)


def _tool_teacher(hold: threading.Event, holding: threading.Event, seen: list) -> FastAPI:
    """OpenAI's chat completions on loopback answering with a line of text and two tool calls,
    streamed the way OpenAI sends them (a call's id and name first, then pieces of its arguments),
    waiting for ``hold`` after the first call began; unstreamed, the same answer whole."""
    app = FastAPI()
    calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup_topic", "arguments": LOOKUP}},
             {"id": "call_2", "type": "function", "function": {"name": "ping", "arguments": "{}"}}]
    usage = {"prompt_tokens": 40, "completion_tokens": 17, "total_tokens": 57}

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body()):
        seen.append(body)
        if not body.get("stream"):
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "tool_calls",
                                 "message": {"role": "assistant", "content": "Checking.", "tool_calls": calls}}],
                    "usage": usage}

        def chunk(delta: dict, finish: str | None = None) -> str:
            return openai_chunk(body["model"], delta, finish)

        def fragment(index: int, **fields) -> str:
            return chunk({"tool_calls": [{"index": index, **fields}]})

        def chunks():
            yield chunk({"role": "assistant", "content": ""})
            yield chunk({"content": "Checking."})
            holding.set()  # before the call goes out: the rest cannot come before the test lets it
            yield fragment(0, id="call_1", type="function", function={"name": "lookup_topic", "arguments": ""})
            assert hold.wait(timeout=20), "the test never let the stream go on"
            yield fragment(0, function={"arguments": LOOKUP[:9]})
            yield fragment(0, function={"arguments": LOOKUP[9:]})
            yield fragment(1, id="call_2", type="function", function={"name": "ping", "arguments": ""})
            yield fragment(1, function={"arguments": "{}"})
            yield chunk({}, "tool_calls")
            yield openai_chunk(body["model"], usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_tool_calls_stream_as_the_teacher_writes_them(tmp_path, tiny_model, teacher_server, monkeypatch):
    want = [{"id": "call_1", "name": "lookup_topic", "arguments": LOOKUP}, {"id": "call_2", "name": "ping",
                                                                            "arguments": "{}"}]
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold, holding, seen = threading.Event(), threading.Event(), []
        with teacher_behind(service, _tool_teacher(hold, holding, seen)):
            with client(live).chat.completions.with_streaming_response.create(
                    model="potstill", messages=ASK, tools=TOOLS, stream=True) as r:
                assert (r.headers["x-potstill-answered-by"], r.headers["x-potstill-reason"]) == ("teacher", "tools")
                chunks = r.parse()
                got = []
                for ch in chunks:
                    got.append(ch)
                    if ch.choices and ch.choices[0].delta.tool_calls:
                        break
                # The first call's id and name reached the client while the teacher was still writing.
                assert holding.is_set() and not hold.is_set()
                assert got[-1].choices[0].delta.tool_calls[0].id == "call_1"
                assert "".join(ch.choices[0].delta.content or "" for ch in got if ch.choices) == "Checking."
                hold.set()
                got += list(chunks)
            assert seen[-1]["stream"] is True and seen[-1]["tools"] == TOOLS
            fragments = [f for ch in got if ch.choices for f in ch.choices[0].delta.tool_calls or []]
            assert len(fragments) == 5  # as the teacher sent them, not one delta per call
            # The SDK's own stream helper puts them together into the completion the client gets whole.
            with client(live).chat.completions.stream(model="potstill", messages=ASK, tools=TOOLS) as stream:
                final = stream.get_final_completion()
            msg = final.choices[0].message
            assert (msg.content, final.choices[0].finish_reason) == ("Checking.", "tool_calls")
            assert [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                    for c in msg.tool_calls] == want
            # The helper joining deltas by index (tests/serve/test_tool_calls.py) agrees.
            content, calls, finish = streamed(client(live), messages=ASK, tools=TOOLS)
            assert (content, calls, finish) == ("Checking.", want, "tool_calls")
            whole = client(live).chat.completions.create(model="potstill", messages=ASK, tools=TOOLS)
            assert [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                    for c in whole.choices[0].message.tool_calls] == want
        row = rows(service)[-2]  # the last streamed one
        logged = json.loads(row["response"])
        assert (row["status"], row["output_tokens"], logged["content"]) == ("ok", 17, "Checking.")
        assert [c["function"]["arguments"] for c in logged["tool_calls"]] == [LOOKUP, "{}"]


def test_a_shared_teacher_call_streams_each_client_call_ids_of_its_own(tmp_path, tiny_model, teacher_server,
                                                                       monkeypatch):
    """Found by a review: identical requests in flight together share one teacher call, and every
    client got its call ids, so an agent asking the same twice in one thread had two turns whose tool
    results it could not tell apart. The client that joins gets new ids, in its fragments and in
    its row alike; the payer keeps the teacher's."""
    from tests.serve.test_teacher_queue import _queued, wait_for

    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch, reuse_escalations=True) as (service, live):
        hold, holding, seen = threading.Event(), threading.Event(), []
        got: dict[int, tuple] = {}

        def ask(k: int) -> None:
            got[k] = streamed(client(live), messages=ASK, tools=TOOLS)

        with teacher_behind(service, _tool_teacher(hold, holding, seen)):
            threads = [threading.Thread(target=ask, args=(0,))]
            threads[0].start()
            assert holding.wait(timeout=20)  # the first call's id is on its way
            threads.append(threading.Thread(target=ask, args=(1,)))
            threads[1].start()
            wait_for(lambda: _queued(service) == 2)  # the second waits on the first's call
            hold.set()
            for t in threads:
                t.join()
        wait_for(lambda: len(rows(service)) == 2)
        logged = {json.loads(r["response"])["reason"]: json.loads(r["response"])["tool_calls"] for r in rows(service)}
    assert len(seen) == 1  # one teacher call
    (_, payer, _), (_, joined, _) = got[0], got[1]
    assert [c["id"] for c in payer] == ["call_1", "call_2"]
    assert [(c["name"], c["arguments"]) for c in joined] == [(c["name"], c["arguments"]) for c in payer]
    assert len({c["id"] for c in payer + joined}) == 4 and all(c["id"].startswith("call_") for c in joined)
    assert [c["id"] for c in logged["tools+cached"]] == [c["id"] for c in joined]


def test_the_responses_api_streams_function_calls_as_items(tmp_path, tiny_model, teacher_server, monkeypatch):
    tools = [{"type": "function", "name": t["function"]["name"], **{k: v for k, v in t["function"].items()
                                                                    if k != "name"}} for t in TOOLS]
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold, holding, seen = threading.Event(), threading.Event(), []
        with teacher_behind(service, _tool_teacher(hold, holding, seen)):
            whole = client(live).responses.create(model="potstill", input=ASK[0]["content"], tools=tools)
            events = []
            for ev in client(live).responses.create(model="potstill", input=ASK[0]["content"], tools=tools,
                                                    stream=True):
                events.append(ev)
                if ev.type == "response.output_item.added" and ev.item.type == "function_call" and not hold.is_set():
                    assert holding.is_set()  # the call's item opened while the teacher was still writing
                    hold.set()
        kinds = [ev.type for ev in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        added = [ev.item for ev in events if ev.type == "response.output_item.added"]
        assert [(i.type, getattr(i, "call_id", None), getattr(i, "name", None)) for i in added] == \
            [("message", None, None), ("function_call", "call_1", "lookup_topic"), ("function_call", "call_2", "ping")]
        args = {}
        for ev in events:
            if ev.type == "response.function_call_arguments.delta":
                args[ev.item_id] = args.get(ev.item_id, "") + ev.delta
        assert [args[i.id] for i in added[1:]] == [LOOKUP, "{}"]
        assert kinds.count("response.function_call_arguments.delta") == 3  # as the pieces came
        done = events[-1].response
        assert [i.id for i in done.output] == [i.id for i in added]  # the items as they went out
        assert [(i.type, getattr(i, "arguments", None)) for i in done.output] == \
            [(i.type, getattr(i, "arguments", None)) for i in whole.output]
        assert done.output_text == whole.output_text == "Checking."
        # Each item done once; a call is done before the next one is added.
        assert sorted(ev.output_index for ev in events if ev.type == "response.output_item.done") == [0, 1, 2]
        assert kinds.index("response.output_item.done") < max(i for i, k in enumerate(kinds)
                                                              if k == "response.output_item.added")


def _claude_calling_tools(hold: threading.Event, holding: threading.Event) -> FastAPI:
    """Anthropic's Messages API streaming a line of text, a ``tool_use`` block whose input comes in
    two pieces (waiting for ``hold`` after the block began) and one with no input."""
    app = FastAPI()

    @app.post("/v1/messages")
    def messages(body: dict = Body()) -> StreamingResponse:
        assert body.get("stream") is True and body["tools"][0]["name"] == "lookup_topic"

        def tool(block: int, call_id: str, name: str) -> str:
            return claude_event("content_block_start", {"index": block, "content_block": {
                "type": "tool_use", "id": call_id, "name": name, "input": {}}})

        def json_piece(block: int, text: str) -> str:
            return claude_event("content_block_delta", {"index": block, "delta": {"type": "input_json_delta",
                                                                                  "partial_json": text}})

        def events():
            yield claude_start(body["model"])
            yield claude_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                             "text": "Let me look."}})
            yield claude_event("content_block_stop", {"index": 0})
            holding.set()  # before the call goes out: the rest cannot come before the test lets it
            yield tool(1, "toolu_1", "lookup_topic")
            yield json_piece(1, "")
            assert hold.wait(timeout=20), "the test never let the stream go on"
            yield json_piece(1, '{"about"')
            yield json_piece(1, ':"match"}')
            yield claude_event("content_block_stop", {"index": 1})
            yield tool(2, "toolu_2", "ping")
            yield json_piece(2, "")
            yield claude_event("content_block_stop", {"index": 2})
            yield claude_event("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                                 "usage": {"output_tokens": 24}})
            yield claude_event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def test_an_anthropic_teacher_streams_its_tool_calls(tmp_path, tiny_model, teacher_server, monkeypatch):
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        hold, holding = threading.Event(), threading.Event()
        with claude_behind(service, _claude_calling_tools(hold, holding), max_tokens=50):
            got = []
            for ch in client(live).chat.completions.create(model="potstill", messages=ASK, tools=TOOLS, stream=True):
                got.append(ch)
                if ch.choices and ch.choices[0].delta.tool_calls and not hold.is_set():
                    assert holding.is_set()  # the call began while Claude was still writing its input
                    assert ch.choices[0].delta.tool_calls[0].id == "toolu_1"
                    hold.set()
        assert hold.is_set()
        calls: dict[int, dict] = {}
        for ch in got:
            for f in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                c = calls.setdefault(f.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = f.id or c["id"]
                c["name"] += (f.function.name or "") if f.function else ""
                c["arguments"] += (f.function.arguments or "") if f.function else ""
        # The input as Claude wrote it (not re-serialised), and {} for a call with none.
        assert [calls[i] for i in sorted(calls)] == [{"id": "toolu_1", "name": "lookup_topic", "arguments": '{"about":"match"}'},
                                                   {"id": "toolu_2", "name": "ping", "arguments": "{}"}]
        assert "".join(ch.choices[0].delta.content or "" for ch in got if ch.choices) == "Let me look."
        assert [ch.choices[0].finish_reason for ch in got if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]
        row = rows(service)[-1]
        logged = json.loads(row["response"])
        assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", 30, 24)
        assert [c["function"]["arguments"] for c in logged["tool_calls"]] == ['{"about":"match"}', "{}"]
