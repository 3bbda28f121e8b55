"""`potstill import` on odd but valid exports: a pairs table whose answers are JSON, stored
completions whose input was sent as content parts, Batch API output (with and without its
requests file, a byte-order mark, lines that failed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from potstill.errors import PotstillError
from potstill.importers import import_traffic
from potstill.records import read_records


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_pairs_table_whose_answers_are_json_imports_them_as_text(tmp_path):
    """An extraction's pairs as a spreadsheet: the output cell holds the JSON answer. The table
    reader parses a JSON cell of `output` (as a record's output object), which import refused as
    'cannot find the response's text'; the JSONL line with the object says the same answer."""
    table = tmp_path / "pairs.csv"
    table.write_text('input,output\nAda is 36,"{""name"": ""Ada"", ""age"": 36}"\nBob,plain text\n')
    assert import_traffic(table, tmp_path / "t.jsonl") == 2
    obj = jsonl(tmp_path / "pairs.jsonl", [{"input": "Ada is 36", "output": {"name": "Ada", "age": 36}},
                                           {"input": "Bob", "output": "plain text"}])
    assert import_traffic(obj, tmp_path / "o.jsonl") == 2
    got, want = read_records(tmp_path / "t.jsonl"), read_records(tmp_path / "o.jsonl")
    assert [r.output for r in got] == [r.output for r in want] == ['{"name": "Ada", "age": 36}', "plain text"]
    assert [r.messages for r in got] == [r.messages for r in want]


COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "ft:gpt-4o-mini:org::abc",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports", "refusal": None},
                           "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}


def _part(**fields):
    """A content part as the stored-messages endpoint lists it: every field, null where unused."""
    return {"type": "text", "text": None, "image_url": None, "input_audio": None, "file": None, **fields}


def test_a_stored_completion_whose_input_was_content_parts_keeps_its_text(tmp_path):
    """GET /v1/chat/completions/{id}/messages lists a message sent as content parts with
    ``content: null`` and the parts under ``content_parts``; import refused it as 'a user message
    without content'. The parts are the message's content (null fields left out); a line with an
    image part is skipped and counted, as any log's is."""
    msgs = [{"id": "m0", "role": "developer", "content": "Topic?", "content_parts": None, "name": None},
            {"id": "m1", "role": "user", "content": None, "name": None,
             "content_parts": [_part(text="the team "), _part(text="won")]}]
    src = jsonl(tmp_path / "stored.jsonl", [{**COMPLETION, "input_messages": msgs}])
    assert import_traffic(src, tmp_path / "o.jsonl") == 1
    rec = read_records(tmp_path / "o.jsonl")[0]
    assert rec.text == "the team won" and rec.output == "sports" and rec.meta["system"] == "Topic?"
    assert rec.messages == [{"role": "user", "content": [{"type": "text", "text": "the team "},
                                                         {"type": "text", "text": "won"}]}]
    msgs[1]["content_parts"].append(_part(type="image_url", image_url={"url": "https://x/y.png", "detail": None}))
    src = jsonl(tmp_path / "stored.jsonl", [{**COMPLETION, "input_messages": msgs}])
    with pytest.raises(PotstillError, match=r"stored\.jsonl: no records to import"):
        import_traffic(src, tmp_path / "o.jsonl")


USER = {"role": "user", "content": "the team won"}


def _batch_requests(path: Path, ids: str, bom: bool = False) -> Path:
    lines = "".join(json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "m", "messages": [USER]}}) + "\n" for c in ids)
    path.write_bytes(("\ufeff" if bom else "").encode() + lines.encode())
    return path


def _batch_output(path: Path, ids: str) -> Path:
    return jsonl(path, [{"id": f"batch_req_{c}", "custom_id": c, "error": None,
                         "response": {"status_code": 200, "request_id": "r", "body": COMPLETION}} for c in ids])


def test_batch_output_without_its_requests_file_says_to_give_it(tmp_path):
    """Without --requests every custom_id was 'not in the --requests file', a file never given."""
    out = _batch_output(tmp_path / "batch_out.jsonl", "ab")
    with pytest.raises(PotstillError) as e:
        import_traffic(out, tmp_path / "o.jsonl")
    assert str(e.value) == (f"{out}:1: a Batch API output line (custom_id 'a') holds no request: give the batch's "
                            "input file with --requests")
    assert not (tmp_path / "o.jsonl").exists()


def test_a_batch_requests_file_with_a_byte_order_mark_is_read(tmp_path):
    """A requests file saved by a Windows editor starts with a byte-order mark: its first line was
    refused as 'expected a Batch API request line', and a line that is not UTF-8 was read with
    replacement characters in its prompt; both are read as every other input file is."""
    reqs = _batch_requests(tmp_path / "batch_in.jsonl", "ab", bom=True)
    assert import_traffic(_batch_output(tmp_path / "batch_out.jsonl", "ab"), tmp_path / "o.jsonl", requests=reqs) == 2
    assert [r.messages for r in read_records(tmp_path / "o.jsonl")] == [[USER], [USER]]
    reqs.write_bytes(reqs.read_bytes().replace(b"the team", b"the t\xe9am", 1))  # Latin-1, not UTF-8
    with pytest.raises(PotstillError, match=r"batch_in\.jsonl:1: not UTF-8"):
        import_traffic(tmp_path / "batch_out.jsonl", tmp_path / "o2.jsonl", requests=reqs)
    assert not (tmp_path / "o2.jsonl").exists()


def test_batch_lines_that_failed_are_skipped_and_counted(tmp_path, capsys):
    """vLLM's run_batch writes every request's line to one output file, a failed one with status
    400, no body and its error; OpenAI's error file has the status and the error body, an expired
    request an error and no response. One such line refused the whole file, so a batch with one
    failure could not be imported at all; they are skipped and counted, the answers imported."""
    reqs = _batch_requests(tmp_path / "batch_in.jsonl", "abcde")
    out = _batch_output(tmp_path / "batch_out.jsonl", "ad")
    good = out.read_text().splitlines()
    failed = [{"id": "vllm-b", "custom_id": "b", "response": {"status_code": 400, "request_id": "r", "body": None},
               "error": "This model's maximum context length is 2048 tokens"},
              {"id": "batch_req_c", "custom_id": "c", "error": None,
               "response": {"status_code": 429, "request_id": "r",
                            "body": {"error": {"message": "Rate limit", "type": "requests", "code": None}}}},
              {"id": "batch_req_e", "custom_id": "e", "response": None,
               "error": {"code": "batch_expired", "message": "not executed before the completion window expired"}}]
    out.write_text("\n".join([good[0], *map(json.dumps, failed), good[1]]) + "\n")
    assert import_traffic(out, tmp_path / "o.jsonl", requests=reqs) == 2
    assert [r.meta["custom_id"] for r in read_records(tmp_path / "o.jsonl")] == ["a", "d"]
    assert f"3 line(s) skipped, its request failed with no text to distil (first at {out}:2)" in capsys.readouterr().err


def test_logged_calls_that_failed_are_skipped_and_counted(tmp_path, capsys):
    """An app that logs every call logs its failures too: the SDK's error body as the response (a 429,
    Anthropic's overloaded_error) or no response beside the error (a connection error). One such line
    refused the whole log ('cannot find the response's text', 'expected a request ... and a
    response'); they are skipped and counted as a Batch's failed lines are. An extraction's answer
    object that holds an "error" key is still an answer."""
    asked = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}]}
    good = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}]}
    src = jsonl(tmp_path / "log.jsonl", [
        {"request": asked, "response": good},
        {"request": asked, "response": {"error": {"message": "Rate limit reached", "type": "requests",
                                                  "param": None, "code": "rate_limit_exceeded"}}},
        {"request": asked, "response": None, "error": "Connection error."},
        {"request": {"messages": asked["messages"]},
         "response": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}},
        {"input": "Ada is 36", "output": {"name": "Ada", "error": "no age given"}},
    ])
    assert import_traffic(src, tmp_path / "o.jsonl") == 2
    assert [r.output for r in read_records(tmp_path / "o.jsonl")] == ["Hi!", '{"name": "Ada", "error": "no age given"}']
    assert f"3 line(s) skipped, its request failed with no text to distil (first at {src}:2)" in capsys.readouterr().err
    # Given --format openai-log (the line has no answer by which auto would know it), the same.
    only = jsonl(tmp_path / "only.jsonl", [{"request": asked, "response": good},
                                           {"request": asked, "response": None, "error": "Connection error."}])
    assert import_traffic(only, tmp_path / "o2.jsonl", "openai-log") == 1


def test_a_gzip_compressed_log_is_read_as_it_is(tmp_path):
    """Logs archived from S3 or GCS come as .jsonl.gz; import said 'not UTF-8 (byte 0x8b, the line's
    byte 2)'. A gzip-compressed file (by its first bytes, whatever its name) is decompressed as it is
    read, a Batch's --requests file and an input file too; one cut short is one line saying so."""
    import gzip

    plain = _batch_output(tmp_path / "batch_out.jsonl", "ab")
    reqs = _batch_requests(tmp_path / "batch_in.jsonl", "ab")
    packed = tmp_path / "batch_out.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    renamed = tmp_path / "requests.jsonl"  # gzip bytes under a plain name
    renamed.write_bytes(gzip.compress(reqs.read_bytes()))
    assert import_traffic(plain, tmp_path / "want.jsonl", requests=reqs) == 2
    assert import_traffic(packed, tmp_path / "got.jsonl", requests=renamed) == 2
    want, got = read_records(tmp_path / "want.jsonl"), read_records(tmp_path / "got.jsonl")
    assert [(r.messages, r.output, r.meta["line"]) for r in got] == [(r.messages, r.output, r.meta["line"]) for r in want]
    records = tmp_path / "records.jsonl.gz"  # as data.inputs or curate.real_data: read by the same reader
    records.write_bytes(gzip.compress((tmp_path / "got.jsonl").read_bytes()))
    assert read_records(records) == got
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed.read_bytes()[:-12])
    with pytest.raises(PotstillError, match=r"cut\.jsonl\.gz: gzip-compressed, but not a whole gzip file"):
        import_traffic(cut, tmp_path / "o.jsonl", requests=reqs)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_litellm_logging_payload_is_read_as_an_openai_log(tmp_path, capsys):
    """LiteLLM's StandardLoggingPayload (a proxy's or the SDK's callback log) keeps the request's
    messages beside the response, which import read as no request: 'cannot find the request's
    messages', for every line. Its failed calls (status failure, error_str) are skipped and counted."""
    completion = {"id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    log = jsonl(tmp_path / "litellm.jsonl", [
        {"id": "a1", "call_type": "acompletion", "status": "success", "model": "gpt-4o-mini", "messages": asked,
         "response": completion, "response_cost": 0.00001},
        {"id": "a2", "call_type": "acompletion", "status": "failure", "model": "gpt-4o-mini", "messages": asked,
         "response": None, "error_str": "RateLimitError: 429"},
        {"id": "a3", "call_type": "acompletion", "status": "failure", "model": "gpt-4o-mini", "messages": asked,
         "response": {}, "error_str": "Timeout"}])
    assert import_traffic(log, tmp_path / "t.jsonl") == 1
    [r] = read_records(tmp_path / "t.jsonl")
    assert (r.messages, r.output) == ([{"role": "user", "content": "Hi there"}], "Hello!")
    assert (r.meta["teacher"], r.meta["system"], r.meta["format"]) == ("gpt-4o-mini-2024-07-18", "Be brief.", "openai-log")
    assert "2 line(s) skipped, its request failed with no text to distil (first at" in capsys.readouterr().err


def test_legacy_function_turns_are_read_as_the_tool_turns_they_became(tmp_path):
    """A log from before tools (gpt-3.5-turbo-0613's functions) holds an assistant's function_call and
    a role "function" message with its result: import stopped at 'messages.1: a assistant message
    without content', or at the role, which no record holds."""
    asked = {"model": "gpt-3.5-turbo-0613", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": '{"temp": 21}'}]}
    answer = {"object": "chat.completion", "model": "gpt-3.5-turbo-0613",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "21 C."}, "finish_reason": "stop"}]}
    log = jsonl(tmp_path / "log.jsonl", [{"request": asked, "response": answer},
                                         {"messages": [*asked["messages"], {"role": "assistant", "content": "21 C."}]}])
    assert import_traffic(log, tmp_path / "t.jsonl") == 2
    for r in read_records(tmp_path / "t.jsonl"):  # the log line and the fine-tuning line alike
        assert r.messages == [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
        assert r.output == "21 C."


def _one_long_line(path: Path, mib: int) -> Path:
    """A gzip file of a few kB holding one line of ``mib`` MiB, written a MiB at a time."""
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(b'{"messages": [{"role": "user", "content": "')
        for _ in range(mib):
            f.write(b"a" * 2**20)
        f.write(b'"}]}\n')
    return path


def _peak(call) -> tuple[PotstillError, int]:
    """The error ``call`` raises, and the most memory Python held meanwhile (bytes)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(PotstillError) as e:
            call()
        return e.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_line_longer_than_the_limit_stops_in_one_line_without_being_held(tmp_path, monkeypatch):
    """A 1 MB .jsonl.gz holding one line of 1 GiB took potstill import to 2.6 GB of memory (the line
    read whole, then decompressed once more to count lines for the bar) and ended in 'expected a
    request'; data.inputs, curate.real_data and synthesize.seeds read through the same reader. A line
    over records.MAX_LINE now stops in one line naming the file and line, read 8 kB at a time, and
    the bar's count reads at most COUNT_GZIP of a gzip file (the limits lowered here, as 64 MiB)."""
    from potstill import importers, records

    monkeypatch.setattr(records, "MAX_LINE", 2**20, raising=False)
    monkeypatch.setattr(importers, "COUNT_GZIP", 2**20, raising=False)
    path = _one_long_line(tmp_path / "bomb.jsonl.gz", 24)
    error, peak = _peak(lambda: import_traffic(path, tmp_path / "out.jsonl"))
    assert str(error) == (f"{path}:1: a line longer than 1 MiB, which no record needs (a gzip file that "
                          "decompresses to one endless line?): not read further")
    assert peak < 12 * 2**20, peak  # the 24 MiB line was never held (nor a copy of it)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_long_line_not_utf8_is_named_without_being_held(tmp_path, monkeypatch):
    """Where a file stops being UTF-8 was found by reading it again a whole line at a time: all of a
    line far over the limit, whose bad byte came first."""
    from potstill import records

    monkeypatch.setattr(records, "MAX_LINE", 2**20, raising=False)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"input": "ok"}\n{"input": "\xff' + b"a" * (24 * 2**20) + b'"}\n')
    error, peak = _peak(lambda: list(records.read_objects(path)))
    assert str(error) == f"{path}:2: not UTF-8 (byte 0xff, the line's byte 12)"
    assert peak < 12 * 2**20, peak
