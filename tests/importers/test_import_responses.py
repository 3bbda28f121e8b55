"""`potstill import` of Responses API traffic: request/response logs and stored responses with their
input items. Each logged object is first read by the official SDK's own types (so it has the shape
the API returns), then imported as generate reads its inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai.types.responses import Response

from potstill.errors import PotstillError
from potstill.importers import import_traffic
from potstill.records import read_records


def response(output: list[dict], status: str = "completed", **kw) -> dict:
    body = {"id": "resp_1", "object": "response", "created_at": 1764900000, "status": status, "model": "gpt-4.1-mini",
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
            "usage": {"input_tokens": 40, "output_tokens": 2, "total_tokens": 42,
                      "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
            **kw}
    Response.model_validate(body)  # the SDK's own reading of a response
    return body


def text(t: str) -> dict:
    return {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": t, "annotations": []}]}


CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}',
        "status": "completed"}


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_request_response_log_imports_its_input_instructions_and_text(tmp_path):
    rows = [{"request": {"model": "gpt-4.1-mini", "instructions": "Name the topic.", "input": "A late goal won it."},
             "response": response([text("sports")])},
            {"request": {"model": "gpt-4.1-mini", "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather in Oslo?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "4 C"}]},
             "response": response([text("It is 4 C in Oslo.")], status="incomplete")}]
    assert import_traffic(jsonl(tmp_path / "log.jsonl", rows), tmp_path / "o.jsonl") == 2
    first, second = read_records(tmp_path / "o.jsonl")  # read as generate reads its inputs
    assert first.messages == [{"role": "user", "content": "A late goal won it."}] and first.output == "sports"
    assert first.meta["system"] == "Name the topic." and first.meta["format"] == "openai-log"
    assert first.meta["teacher"] == "gpt-4.1-mini" and first.meta["usage"]["output_tokens"] == 2
    assert second.messages[1]["tool_calls"][0]["id"] == "call_1" and second.messages[2]["tool_call_id"] == "call_1"
    assert second.output == "It is 4 C in Oslo." and second.meta["finish_reason"] == "length"


def test_a_stored_response_with_its_input_items_page(tmp_path):
    """The input items endpoint lists the newest item first by default: read back in order."""
    page = {"object": "list", "has_more": False, "first_id": "msg_3", "last_id": "msg_0", "data": [
        {"type": "message", "id": "msg_3", "role": "user", "content": [{"type": "input_text", "text": "and Bergen?"}]},
        {"type": "message", "id": "msg_2", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "4 C", "annotations": []}]},
        {"type": "message", "id": "msg_1", "role": "user", "content": [{"type": "input_text", "text": "Oslo?"}]}]}
    stored = {**response([text("6 C")], instructions="Answer with the temperature."), "input_items": page}
    partial = {**stored, "input_items": {**page, "has_more": True}}
    assert import_traffic(jsonl(tmp_path / "stored.jsonl", [stored]), tmp_path / "o.jsonl") == 1
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert [m["content"] for m in rec.messages] == ["Oslo?", "4 C", "and Bergen?"] and rec.output == "6 C"
    assert rec.meta["format"] == "stored" and rec.meta["system"] == "Answer with the temperature."
    with pytest.raises(PotstillError, match=r"stored\.jsonl:1: its input_items page holds part of the conversation"):
        import_traffic(jsonl(tmp_path / "stored.jsonl", [partial]), tmp_path / "p.jsonl")


def test_instructions_given_as_input_items_come_first(tmp_path):
    """A response whose request used a stored prompt gives ``instructions`` as the prompt's messages,
    a list: it was dropped, and the records lost the task's instruction."""
    page = {"object": "list", "has_more": False, "first_id": "msg_1", "last_id": "msg_1", "data": [
        {"type": "message", "id": "msg_1", "role": "user", "content": [{"type": "input_text", "text": "Oslo?"}]}]}
    instructions = [{"type": "message", "role": "developer",
                     "content": [{"type": "input_text", "text": "Answer with the temperature."}]}]
    stored = {**response([text("6 C")], instructions=instructions), "input_items": page}
    assert import_traffic(jsonl(tmp_path / "stored.jsonl", [stored]), tmp_path / "o.jsonl") == 1
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert [m["content"] for m in rec.messages] == ["Oslo?"] and rec.output == "6 C"
    assert rec.meta["system"] == "Answer with the temperature."


def test_a_response_that_calls_a_tool_or_refuses_is_skipped_and_counted(tmp_path, capsys):
    refusal = {"type": "message", "id": "msg_9", "status": "completed", "role": "assistant",
               "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    ask = {"model": "gpt-4.1-mini", "input": "weather in Oslo?"}
    # Words beside a call ("4 C", then the call) are no whole answer either: the turn goes on after it.
    rows = [{"request": ask, "response": response([CALL])}, {"request": ask, "response": response([refusal])},
            {"request": ask, "response": response([text("4 C"), CALL])}, {"request": ask, "response": response([text("4 C")])}]
    assert import_traffic(jsonl(tmp_path / "log.jsonl", rows), tmp_path / "o.jsonl") == 1
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.output == "4 C" and rec.meta["line"] == 4
    err = capsys.readouterr().err
    assert "2 line(s) skipped, its answer is a tool call" in err and "1 line(s) skipped, its answer is a refusal" in err


def test_an_input_item_it_cannot_read_is_one_line(tmp_path):
    rows = [{"request": {"input": [{"type": "input_image_call", "id": "x"}]}, "response": response([text("a")])}]
    with pytest.raises(PotstillError, match=r"log\.jsonl:1: input\.0: an item of type 'input_image_call'"):
        import_traffic(jsonl(tmp_path / "log.jsonl", rows), tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_anthropic_message_batches_results_join_their_requests(tmp_path, capsys):
    """Message Batches results (read first by the anthropic SDK's own type) joined by custom_id to the
    batch's requests (``params`` as ``messages.batches.create`` takes them); an errored or expired
    one has no answer and is skipped and counted."""
    from anthropic.types.messages import MessageBatchIndividualResponse

    params = {"model": "claude-haiku-4-5", "max_tokens": 16, "system": "Name the topic.",
              "messages": [{"role": "user", "content": "A late goal won it."}]}
    reqs = jsonl(tmp_path / "batch_requests.jsonl", [{"custom_id": f"r{i}", "params": params} for i in range(3)])
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [{"type": "text", "text": "sports"}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 20, "output_tokens": 1}}
    error = {"type": "error", "request_id": None, "error": {"type": "overloaded_error", "message": "Overloaded"}}
    results = [{"custom_id": "r0", "result": {"type": "succeeded", "message": message}},
               {"custom_id": "r1", "result": {"type": "errored", "error": error}},
               {"custom_id": "r2", "result": {"type": "expired"}}]
    for line in results:
        MessageBatchIndividualResponse.model_validate(line)
    out = jsonl(tmp_path / "batch_results.jsonl", results)
    assert import_traffic(out, tmp_path / "o.jsonl", requests=reqs) == 1
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.messages == params["messages"] and rec.output == "sports" and rec.meta["system"] == "Name the topic."
    assert rec.meta["custom_id"] == "r0" and rec.meta["teacher"] == "claude-haiku-4-5"
    assert "2 line(s) skipped, its request failed" in capsys.readouterr().err
    with pytest.raises(PotstillError, match="holds no request: give the batch's input file with --requests"):
        import_traffic(out, tmp_path / "p.jsonl")


def test_a_batch_sent_to_v1_responses_imports_its_answers(tmp_path):
    """An OpenAI Batch sent to ``/v1/responses`` writes a Responses object under ``response.body``; import
    read every body as a chat completion and refused the whole file ('cannot find the response's text')."""
    import potstill

    reqs = jsonl(tmp_path / "batch_in.jsonl", [{"custom_id": "r1", "method": "POST", "url": "/v1/responses",
                                                "body": {"model": "gpt-4.1-mini", "input": "Classify: great phone",
                                                         "instructions": "Label it."}}])
    out = jsonl(tmp_path / "batch_out.jsonl", [{"id": "batch_req_1", "custom_id": "r1", "error": None, "response": {
        "status_code": 200, "request_id": "req_1", "body": response([text("positive")])}}])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(potstill.__file__).parents[1]),
                                                        str(Path(__file__).resolve().parents[2])])}
    proc = subprocess.run([sys.executable, "-m", "potstill.cli", "import", str(out), "--requests", str(reqs),
                           "-o", str(tmp_path / "o.jsonl")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.messages == [{"role": "user", "content": "Classify: great phone"}] and rec.output == "positive"
    assert rec.meta["system"] == "Label it." and rec.meta["custom_id"] == "r1" and rec.meta["finish_reason"] == "stop"


def test_a_response_that_never_completed_is_skipped_and_counted(tmp_path, capsys):
    """A response logged queued or in progress (background mode), cancelled, or incomplete before any
    text was imported as the answer "" with finish_reason stop, and curate trained on it; one stopped by
    the content filter as a whole answer. They are skipped and counted; an incomplete one with text (cut
    at max_output_tokens) is imported as a cut answer (``length``, which curate sets aside as truncated)."""
    ask = {"model": "gpt-4.1-mini", "input": "Summarise the ticket."}
    filtered = {"reason": "content_filter"}
    rows = [{"request": ask, "response": response([], status=s)} for s in ("queued", "in_progress", "cancelled")]
    rows += [{"request": ask, "response": response([], status="incomplete")},
             {"request": ask, "response": response([text("Once upon a")], status="incomplete", incomplete_details=filtered)},
             {"request": ask, "response": response([text("The customer asks for")], status="incomplete")},
             {"request": ask, "response": response([text("A refund.")])}]
    src = jsonl(tmp_path / "log.jsonl", rows)
    assert import_traffic(src, tmp_path / "o.jsonl") == 2
    assert [(r.output, r.meta["finish_reason"]) for r in read_records(tmp_path / "o.jsonl")] == [
        ("The customer asks for", "length"), ("A refund.", "stop")]
    err = capsys.readouterr().err
    for status, line in (("queued", 1), ("in_progress", 2), ("cancelled", 3), ("incomplete", 4)):
        assert f"1 line(s) skipped, its response never completed (status {status}) with no text to distil (first at {src}:{line})" in err
    assert f"1 line(s) skipped, its answer is a refusal with no text to distil (first at {src}:5)" in err
