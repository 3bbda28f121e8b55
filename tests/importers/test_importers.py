"""`potstill import` on each traffic format, from JSONL logs and from a ledger's served rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from potstill.errors import PotstillError
from potstill.importers import import_traffic
from potstill.ledger import Call, Ledger
from potstill.records import read_records

ROOT = Path(__file__).resolve().parents[2]
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "sports"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _env() -> dict[str, str]:
    """The environment of a ``potstill`` subprocess: the potstill under test (a worktree's src/ on
    PYTHONPATH), not whichever one the venv installed."""
    import potstill

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(potstill.__file__).parents[1]), str(ROOT)])}


def test_import_finetune_logs_batches_pairs_and_served_traffic(tmp_path):
    sys_msg = {"role": "system", "content": "Topic?"}
    user = {"role": "user", "content": "the team won"}
    src = jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [sys_msg, user, {"role": "assistant", "content": "sports"}]},
        {"request": {"model": "gpt-4o", "messages": [sys_msg, user]}, "response": COMPLETION},
        {"prompt": "new phone", "completion": "tech"},
        {"request": {"system": "Topic?", "messages": [{"role": "user", "content": "a vote"}]},
         "response": {"type": "message", "model": "claude-sonnet-4", "content": [{"type": "text", "text": "politics"}],
                      "stop_reason": "end_turn", "usage": {"input_tokens": 9, "output_tokens": 1}}},
    ])
    assert import_traffic(src, tmp_path / "out.jsonl") == 4
    recs = read_records(tmp_path / "out.jsonl")
    assert [r.output for r in recs] == ["sports", "sports", "tech", "politics"]
    assert [r.meta["format"] for r in recs] == ["finetune", "openai-log", "pairs", "pairs"]
    assert all(r.meta["source"] == str(src) for r in recs) and [r.meta["line"] for r in recs] == [1, 2, 3, 4]
    assert recs[0].messages == [user] and recs[0].meta["system"] == "Topic?"
    assert recs[1].meta["teacher"] == "gpt-4o-2024-08-06" and recs[1].meta["usage"]["prompt_tokens"] == 12
    assert recs[3].meta["finish_reason"] == "end_turn" and recs[3].meta["system"] == "Topic?"

    # the Batch API: outputs joined to their inputs by custom_id
    reqs = jsonl(tmp_path / "batch_in.jsonl", [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                                "body": {"model": "gpt-4o", "messages": [user]}}])
    outs = jsonl(tmp_path / "batch_out.jsonl", [{"id": "b1", "custom_id": "a", "error": None,
                                                 "response": {"status_code": 200, "body": COMPLETION}}])
    assert import_traffic(outs, tmp_path / "b.jsonl", "openai-log", reqs) == 1
    rec = read_records(tmp_path / "b.jsonl")[0]
    assert rec.output == "sports" and rec.meta["custom_id"] == "a" and rec.messages == [user]

    # potstill's own served traffic: the serve rows of a ledger
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        ledger.record(Call(request_hash="h1", role="student", stage="serve", model="student-v1",
                           request={"model": "student", "messages": [sys_msg, user]}, response={"content": "sports"},
                           input_tokens=5))
        ledger.record(Call(request_hash="h2", role="teacher", stage="generate", model="t", request={"messages": [user]},
                           response={"output": "x"}))
    assert import_traffic(tmp_path / "calls.sqlite", tmp_path / "s.jsonl") == 1
    rec = read_records(tmp_path / "s.jsonl")[0]
    assert rec.output == "sports" and rec.meta["teacher"] == "student-v1" and rec.meta["format"] == "served"


def test_import_errors_name_file_and_line_and_leave_nothing_behind(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
                   + "\n{not json\n")
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "import", str(bad), "-o", str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == (f"error: {bad}:2: malformed JSON: expecting property name enclosed in "
                                                  "double quotes at column 2, near '{not json'")
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(PotstillError, match=r"bad.jsonl:1: expected messages ending with an assistant turn"):
        jsonl(bad, [{"messages": [{"role": "user", "content": "x"}]}])
        import_traffic(bad, tmp_path / "o.jsonl", "finetune")


def test_a_failed_import_into_a_new_folder_leaves_no_folder(tmp_path):
    """Found by a review: -o new/dir/records.jsonl made new/dir before the first line was read, so an
    import that failed (a bad line) left that empty folder behind. It appears with the records or not at all."""
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": "new phone", "completion": "tech"}, {"prompt": "x"}])
    with pytest.raises(PotstillError, match=r"bad\.jsonl:2: expected a request"):
        import_traffic(bad, tmp_path / "new" / "dir" / "records.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    jsonl(bad, [{"prompt": "new phone", "completion": "tech"}])
    assert import_traffic(bad, tmp_path / "new" / "dir" / "records.jsonl") == 1
    assert read_records(tmp_path / "new" / "dir" / "records.jsonl")[0].output == "tech"


def test_import_never_writes_over_its_own_source_and_names_a_missing_or_folder_input(tmp_path):
    """``-o`` naming the traffic file (or the --requests file) is refused before anything is read, and
    the file keeps its bytes; a folder or a missing --requests file is one line, not a traceback."""
    src = tmp_path / "traffic.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n"
    src.write_text(line)
    for out in (src, tmp_path / "." / "traffic.jsonl"):
        with pytest.raises(PotstillError, match=r"is the file being imported; name another file"):
            import_traffic(src, out)
    assert src.read_text() == line
    with pytest.raises(PotstillError, match=r"is the file being imported"):
        import_traffic(src, tmp_path / "reqs.jsonl", requests=tmp_path / "reqs.jsonl")
    with pytest.raises(PotstillError, match=r"is a directory, not a traffic file"):
        import_traffic(tmp_path, tmp_path / "o.jsonl")
    with pytest.raises(PotstillError, match=r"--requests .*nope.jsonl: not found; expected a Batch API input JSONL"):
        import_traffic(src, tmp_path / "o.jsonl", requests=tmp_path / "nope.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("row, why", [
    ({"messages": ["hi", "there"]}, r"messages.0: expected an object with role and content, got str"),
    ({"request": ["hi"], "response": "x"}, r"messages.0: expected an object with role and content, got str"),
    ({"object": "chat.completion", "choices": [{"message": {"content": "x"}}], "input_messages": ["hi"]},
     r"messages.0: expected an object with role and content, got str"),
    ({"request": {"messages": [{"role": "user", "content": "hi"}]}, "response": {"choices": ["x"]}},
     r"cannot find the response's text"),
    # the same checks as an input file's, so generate never refuses what import wrote
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, r"messages.0: a user message without content"),
    ({"messages": [{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     r"messages.0.role: 'usr' is not one of"),
    ({"prompt": "hi \ud800", "completion": "x"}, r"prompt: text holds a lone UTF-16 surrogate"),
    # tool_calls in another shape than OpenAI's: a traceback under --tool-calls (AttributeError)
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": "x"}]},
     r'tool_calls: expected a list of \{id, type, function: \{name, arguments\}\}, got "x"'),
    ({"request": {"messages": [{"role": "user", "content": "hi"}]},
      "response": {"choices": [{"message": {"role": "assistant", "tool_calls": ["call_1"]}}]}},
     r'tool_calls: expected a list of .*, got \["call_1"\]'),
])
@pytest.mark.parametrize("tool_calls", [False, True])
def test_import_odd_rows_are_one_line_naming_file_and_line(tmp_path, row, why, tool_calls):
    """A row of the wrong shape is one line naming it, not a traceback; nothing is written."""
    good = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    src = jsonl(tmp_path / "traffic.jsonl", [good, row])
    with pytest.raises(PotstillError, match=r"traffic.jsonl:2: " + why):
        import_traffic(src, tmp_path / "o.jsonl", tool_calls=tool_calls)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_stored_completion_after_a_tool_call_keeps_the_call(tmp_path):
    side = [{"id": "m1", "role": "user", "content": "weather in Oslo?"},
            {"id": "m2", "role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"id": "m3", "role": "tool", "tool_call_id": "c1", "content": "4 C"}]
    src = jsonl(tmp_path / "stored.jsonl", [{**COMPLETION, "input_messages": side}])
    import_traffic(src, tmp_path / "o.jsonl")
    (rec,) = read_records(tmp_path / "o.jsonl")  # read as generate reads its inputs
    assert rec.messages[1]["tool_calls"][0]["id"] == "c1" and rec.messages[2]["tool_call_id"] == "c1"
    assert "id" not in rec.messages[0] and rec.output == "sports"


def test_a_finetune_line_whose_answer_is_a_tool_call_or_text_parts(tmp_path, capsys):
    """OpenAI's fine-tuning format allows an assistant answer of tool calls (content null) and content
    as a list of text parts: the first is skipped and counted as a log's call is (it was imported as
    the text 'None', then refused with the whole file, though a function-calling fine-tune holds some),
    the second is its text (it was Python's repr of the list)."""
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}
    text = {"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "Where?"}]}
    # Words beside the call ("Let me check.") make it no text answer either: it was imported as one.
    src = jsonl(tmp_path / "ft.jsonl", [text, {"messages": [{"role": "user", "content": "weather in Oslo?"}, call]},
                                        {"messages": [{"role": "user", "content": "weather in Oslo?"},
                                                      {**call, "content": "Let me check."}]}])
    assert import_traffic(src, tmp_path / "o.jsonl") == 1
    assert [r.output for r in read_records(tmp_path / "o.jsonl")] == ["Where?"]
    assert f"2 line(s) skipped, its answer is a tool call with no text to distil (first at {src}:2)" in \
        capsys.readouterr().err
    parts = {"role": "assistant", "content": [{"type": "text", "text": "spo"}, {"type": "text", "text": "rts"}]}
    src = jsonl(tmp_path / "ft.jsonl", [{"messages": [{"role": "user", "content": [{"type": "text", "text": "A match."}]},
                                                      parts]}])
    import_traffic(src, tmp_path / "o.jsonl")
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.output == "sports" and rec.text == "A match."


def test_a_developer_message_is_the_system_prompt_not_part_of_the_input(tmp_path):
    """OpenAI's newer models take their instruction as a ``developer`` message: import keeps it in
    ``meta.system`` as it does a system message. Kept among the record's messages, the teacher got
    the instruction twice (task.instruction, then this) and `export --format openai-jsonl` refused
    every record ('developer' is no fine-tuning role)."""
    dev = {"role": "developer", "content": "Topic?"}
    user = {"role": "user", "content": "the team won"}
    src = jsonl(tmp_path / "logs.jsonl", [
        {"request": {"model": "gpt-4.1", "messages": [dev, user]}, "response": COMPLETION},
        {**COMPLETION, "input_messages": [{"id": "m1", **dev}, {"id": "m2", **user}]},
        {"messages": [dev, user, {"role": "assistant", "content": "sports"}]},
    ])
    assert import_traffic(src, tmp_path / "o.jsonl") == 3
    recs = read_records(tmp_path / "o.jsonl")
    assert [r.messages for r in recs] == [[user]] * 3 and [r.meta["system"] for r in recs] == ["Topic?"] * 3
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        ledger.record(Call(request_hash="h1", role="student", stage="serve", model="student-v1",
                           request={"model": "student", "messages": [dev, user]}, response={"content": "sports"}))
    import_traffic(tmp_path / "calls.sqlite", tmp_path / "s.jsonl")
    assert read_records(tmp_path / "s.jsonl")[0].messages == [user]


def test_an_out_that_is_a_folder_is_named_before_anything_is_read(tmp_path):
    """``-o`` naming a folder was read to the end and then refused as 'Is a directory: <a temp file
    the user never made> -> DIR'; it is one line naming --out, and nothing is left beside it."""
    src = jsonl(tmp_path / "traffic.jsonl", [{"prompt": "new phone", "completion": "tech"}])
    (tmp_path / "data").mkdir()
    with pytest.raises(PotstillError) as e:
        import_traffic(src, tmp_path / "data")
    assert str(e.value) == f"--out {tmp_path / 'data'} is a folder; name the records file to write (-o data/records.jsonl)"
    assert list((tmp_path / "data").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["data", "traffic.jsonl"]


def test_logged_answers_that_are_a_tool_call_or_a_refusal_are_skipped_and_counted(tmp_path, capsys):
    """A logged completion whose answer is a tool call or a refusal (content null) was imported as the
    answer "" with no word, then trained on as an empty answer (curate.real_data) or counted as input
    with an empty gold; such lines are skipped and counted, the others imported."""
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    asked = {"input_messages": [{"role": "user", "content": "A match."}]}
    lines = [{**COMPLETION, **asked, "choices": [{**COMPLETION["choices"][0], "message": m}]} for m in (call, refusal)]
    anthropic = {"request": {"messages": [{"role": "user", "content": "weather?"}]},
                 "response": {"type": "message", "model": "claude", "stop_reason": "tool_use",
                              "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]}}
    src = jsonl(tmp_path / "log.jsonl", [{**COMPLETION, **asked}, *lines, anthropic])
    assert import_traffic(src, tmp_path / "o.jsonl") == 1
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.output == "sports"
    err = capsys.readouterr().err
    assert "2 line(s) skipped, its answer is a tool call with no text to distil (first at" in err and ":2)" in err
    assert "1 line(s) skipped, its answer is a refusal" in err


def test_a_served_answer_cut_at_its_budget_keeps_its_finish_reason(tmp_path):
    """A served row's finish_reason (``length``: cut at the token budget) comes along as the other logs'
    does, so curate.real_data sets the cut answer aside as truncated; it was dropped, and half an answer
    of the student's own became training data."""
    from potstill.ledger import ServedCall

    user = {"role": "user", "content": "Summarise the ticket."}
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        ledger.record_served(ServedCall(request={"model": "potstill", "messages": [user]}, answered_by="student",
                                        model="s", content="a refund refund refund", finish_reason="length"))
        ledger.record_served(ServedCall(request={"model": "potstill", "messages": [user]}, answered_by="teacher",
                                        model="t", content="Refund a double charge.", finish_reason="stop"))
    assert import_traffic(tmp_path / "calls.sqlite", tmp_path / "s.jsonl") == 2
    assert [r.meta["finish_reason"] for r in read_records(tmp_path / "s.jsonl")] == ["length", "stop"]


def test_served_rows_answered_with_tool_calls_are_skipped_and_counted(tmp_path, capsys):
    """A served escalation answered with tool calls (a client's tools) has no text, and its row was
    imported as the answer ""."""
    from potstill.ledger import ServedCall

    user = {"role": "user", "content": "A match."}
    call = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        ledger.record_served(ServedCall(request={"model": "potstill", "messages": [user]}, answered_by="student",
                                        model="s", content="sports"))
        ledger.record_served(ServedCall(request={"model": "potstill", "messages": [user], "tools": []},
                                        answered_by="teacher", model="t", content="", reason="tools",
                                        extra={"tool_calls": call}, finish_reason="tool_calls"))
    assert import_traffic(tmp_path / "calls.sqlite", tmp_path / "s.jsonl") == 1
    assert [r.output for r in read_records(tmp_path / "s.jsonl")] == ["sports"]
    assert "1 served row(s) skipped, their answer is a tool call" in capsys.readouterr().err


def test_a_logged_completion_with_several_choices_keeps_the_first_and_says_so(tmp_path, capsys):
    """A completion asked with n > 1 holds several choices; import kept choices[0] and dropped the
    others without a word, then said so but not that meta.usage (the completion_tokens of all the
    choices) is not the kept answer's."""
    asked = {"input_messages": [{"role": "user", "content": "A match."}]}
    two = {**COMPLETION, **asked, "choices": [COMPLETION["choices"][0],
                                             {"index": 1, "message": {"role": "assistant", "content": "tech"},
                                              "finish_reason": "stop"}]}
    src = jsonl(tmp_path / "log.jsonl", [{**COMPLETION, **asked}, two])
    assert import_traffic(src, tmp_path / "o.jsonl") == 2
    recs = read_records(tmp_path / "o.jsonl")
    assert [r.output for r in recs] == ["sports", "sports"] and recs[1].meta["choices"] == 2 and "choices" not in recs[0].meta
    assert ("1 logged completion(s) held several choices (n > 1); the first choice of each is its answer, the others "
            "are left out; meta.choices counts them, and meta.usage, as logged, counts the tokens of them all") in \
        " ".join(capsys.readouterr().err.split())


def test_a_finetune_files_weights_stay_out_of_the_imported_chat(tmp_path):
    """OpenAI's fine-tuning format marks an assistant turn ``weight: 0`` (not trained on), and
    `potstill export --format openai-jsonl` writes it on an input's earlier assistant turns. Import kept
    the key on the prompt's messages, so generate sent it to the teacher, where OpenAI's chat API
    refuses a message field it does not know; the chat is imported without it."""
    src = jsonl(tmp_path / "ft.jsonl", [{"messages": [
        {"role": "system", "content": "Topic?"}, {"role": "user", "content": "the team won"},
        {"role": "assistant", "content": "sports", "weight": 0}, {"role": "user", "content": "and this one?"},
        {"role": "assistant", "content": "business", "weight": 1}]}])
    import_traffic(src, tmp_path / "o.jsonl")
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.output == "business" and all("weight" not in m for m in rec.messages)
    assert [m["content"] for m in rec.messages] == ["the team won", "sports", "and this one?"]


def test_a_legacy_completions_log_imports_its_prompt_and_text(tmp_path):
    """A /v1/completions log (gpt-3.5-turbo-instruct, vLLM's completions endpoint) has ``prompt`` and
    ``choices[0].text``: its request was refused ('cannot find the request's messages') and, as
    pairs, its answer imported as "" without a word."""
    resp = {"id": "cmpl-1", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
            "choices": [{"index": 0, "text": "sports", "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    src = jsonl(tmp_path / "logs.jsonl", [{"request": {"model": "gpt-3.5-turbo-instruct", "prompt": "the team won"},
                                           "response": resp},
                                          {"prompt": "new phone software", "response": {**resp, "choices": [
                                              {"index": 0, "text": "tech", "finish_reason": "length"}]}}])
    assert import_traffic(src, tmp_path / "o.jsonl") == 2
    recs = read_records(tmp_path / "o.jsonl")
    assert [(r.text, r.output) for r in recs] == [("the team won", "sports"), ("new phone software", "tech")]
    assert recs[0].meta["teacher"] == "gpt-3.5-turbo-instruct" and recs[1].meta["finish_reason"] == "length"


def test_with_tool_calls_kept_each_logs_call_is_the_text_a_tools_task_learns(tmp_path, capsys):
    """``--tool-calls``: a logged answer that is a tool call (a chat completion's tool_calls, the legacy
    function_call, Claude's tool_use beside its words, a Responses function_call, a fine-tuning line's
    assistant tool_calls, a served escalation's calls) is imported as ``{name, arguments}``, as a
    tools task (task.type tools) learns it; text answers as before."""
    from potstill.ledger import ServedCall

    args = '{"city": "Oslo"}'
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": args}}]}
    legacy = {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": args}}
    asked = {"input_messages": [{"role": "user", "content": "weather in Oslo?"}]}
    claude = {"request": {"messages": [{"role": "user", "content": "weather in Oslo?"}]},
              "response": {"type": "message", "model": "claude", "stop_reason": "tool_use", "content": [
                  {"type": "text", "text": "Let me look that up."},
                  {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}]}}
    responses = {"request": {"model": "gpt-4.1", "input": "weather in Oslo?"},
                 "response": {"object": "response", "id": "resp_1", "model": "gpt-4.1", "status": "completed",
                              "output": [{"type": "function_call", "call_id": "fc1", "name": "weather",
                                          "arguments": args}]}}
    src = jsonl(tmp_path / "log.jsonl", [
        {**COMPLETION, **asked}, *[{**COMPLETION, **asked, "choices": [{**COMPLETION["choices"][0], "message": m}]}
                                   for m in (call, legacy)],
        claude, responses, {"messages": [{"role": "user", "content": "weather in Oslo?"}, call]}])
    assert import_traffic(src, tmp_path / "o.jsonl", tool_calls=True) == 6
    outputs = [r.output for r in read_records(tmp_path / "o.jsonl")]
    assert outputs[0] == "sports"
    assert [json.loads(o) for o in outputs[1:]] == [{"name": "weather", "arguments": {"city": "Oslo"}}] * 5
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        ledger.record_served(ServedCall(request={"model": "potstill", "messages": [asked["input_messages"][0]]},
                                        answered_by="teacher", model="t", content="", extra={"tool_calls": call["tool_calls"]},
                                        finish_reason="tool_calls"))
    assert import_traffic(tmp_path / "calls.sqlite", tmp_path / "s.jsonl", tool_calls=True) == 1
    assert json.loads(read_records(tmp_path / "s.jsonl")[0].output)["name"] == "weather"
    assert "skipped" not in capsys.readouterr().err
    # Without it, the logs' calls are skipped and counted as before (a fine-tuning line's is refused).
    logs = jsonl(tmp_path / "logs.jsonl", [json.loads(x) for x in src.read_text().splitlines()[:-1]])
    # Claude's words beside its call ("Let me look that up.") are no answer either: it was imported as one.
    assert import_traffic(logs, tmp_path / "t.jsonl") == 1
    assert "4 line(s) skipped, its answer is a tool call" in capsys.readouterr().err


def test_answers_stopped_as_a_refusal_are_skipped_whatever_their_text(tmp_path, capsys):
    """Claude 4 stops a refusal with ``stop_reason: refusal`` after the words it wrote ("Sure, first
    you take some"), OpenAI cuts or withholds content with ``finish_reason: content_filter``: import kept
    such lines whenever they held text, and curate trained on them. They are skipped and counted as
    refusals; Anthropic's ``model_context_window_exceeded`` (a cut answer) is imported with its reason."""
    params = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Tell me."}]}
    reqs = jsonl(tmp_path / "anth_req.jsonl", [{"custom_id": c, "params": params} for c in "abc"])

    def message(text: str, stop: str) -> dict:
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": text}], "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 7}}

    results = jsonl(tmp_path / "anth_res.jsonl", [
        {"custom_id": c, "result": {"type": "succeeded", "message": message(text, stop)}}
        for c, text, stop in (("a", "Sure, first you take some", "refusal"),
                              ("b", "The document describes the", "model_context_window_exceeded"),
                              ("c", "Hi!", "end_turn"))])
    assert import_traffic(results, tmp_path / "a.jsonl", requests=reqs) == 2
    recs = read_records(tmp_path / "a.jsonl")
    assert [(r.output, r.meta["finish_reason"]) for r in recs] == [
        ("The document describes the", "model_context_window_exceeded"), ("Hi!", "end_turn")]
    assert "1 line(s) skipped, its answer is a refusal" in capsys.readouterr().err

    def filtered(content: str | None) -> dict:
        return {**COMPLETION, "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                                           "finish_reason": "content_filter"}]}

    logs = jsonl(tmp_path / "logs.jsonl", [{"request": {"messages": [{"role": "user", "content": f"story {i}"}]},
                                            "response": r}
                                           for i, r in enumerate([COMPLETION, filtered("Once upon a time the"),
                                                                  filtered(None)])])
    assert import_traffic(logs, tmp_path / "o.jsonl") == 1
    assert [r.output for r in read_records(tmp_path / "o.jsonl")] == ["sports"]
    assert f"2 line(s) skipped, its answer is a refusal with no text to distil (first at {logs}:2)" in capsys.readouterr().err


def test_a_finetune_lines_target_is_its_last_trained_assistant_turn(tmp_path, capsys):
    """``weight: 0`` marks an assistant turn OpenAI does not train on: import took the last assistant turn
    as the answer whatever its weight, so a wrong answer kept out of training ("5, I think") became one.
    The target is the last turn of weight 1 (the default), the turns after it go; a line with none is
    skipped and counted, as is a refusal (content null), which was imported as the answer ""."""
    user = {"role": "user", "content": "What is 2+2?"}
    src = jsonl(tmp_path / "ft.jsonl", [
        {"messages": [{"role": "system", "content": "Be a bot."}, user,
                      {"role": "assistant", "content": "5, I think", "weight": 0}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris", "weight": 1},
                      {"role": "user", "content": "And Spain?"}, {"role": "assistant", "content": "Lisbon", "weight": 0}]},
        {"messages": [user, {"role": "assistant", "content": None, "refusal": "I can't help with that."}]},
    ])
    proc = subprocess.run([sys.executable, "-m", "potstill.cli", "import", str(src), "-o", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    recs = read_records(tmp_path / "o.jsonl")
    assert [(r.messages, r.output) for r in recs] == [([{"role": "user", "content": "Hi"}], "Hello!"),
                                                      ([{"role": "user", "content": "Capital of France?"}], "Paris")]
    err = proc.stderr
    assert f"1 line(s) skipped, its assistant turns all have weight 0 (not trained on) with no text to distil (first at {src}:1)" in err
    assert f"1 line(s) skipped, its answer is a refusal with no text to distil (first at {src}:4)" in err
    # An assistant turn of neither text nor refusal, or a weight OpenAI does not know, is one line.
    for msg, why in (({"role": "assistant", "content": None}, r"messages\.1: an assistant message without content"),
                     ({"role": "assistant", "content": "4", "weight": "0"}, r"messages\.1\.weight: expected 0 or 1, got '0'")):
        with pytest.raises(PotstillError, match=r"bad\.jsonl:1: " + why):
            import_traffic(jsonl(tmp_path / "bad.jsonl", [{"messages": [user, msg]}]), tmp_path / "b.jsonl")


def test_an_anthropic_prefill_begins_the_answer_and_leaves_the_prompt(tmp_path):
    """A Messages request that ends with an assistant turn (a prefill, ``{``) has Claude go on from it:
    import kept the prefill as the prompt's last turn and the rest as the answer ('"name": "Bob", "age":
    42}', no JSON), so the student learnt to answer a chat that ends with its own turn. The answer is the
    prefill and Claude's text, the prompt ends at the user's turn; in a Message Batch and in a pairs log."""
    ask = {"role": "user", "content": "Extract the name and age as JSON: Bob is 42."}
    params = {"model": "claude-x", "max_tokens": 200, "messages": [ask, {"role": "assistant", "content": "{"}]}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": '"name": "Bob", "age": 42}'}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 9}}
    reqs = jsonl(tmp_path / "pre_req.jsonl", [{"custom_id": "p1", "params": params}])
    results = jsonl(tmp_path / "pre_res.jsonl", [{"custom_id": "p1", "result": {"type": "succeeded", "message": message}}])
    proc = subprocess.run([sys.executable, "-m", "potstill.cli", "import", str(results), "--requests", str(reqs),
                           "-o", str(tmp_path / "o.jsonl")], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    (rec,) = read_records(tmp_path / "o.jsonl")
    assert rec.messages == [ask] and json.loads(rec.output) == {"name": "Bob", "age": 42}
    blocks = {**params, "messages": [ask, {"role": "assistant", "content": [{"type": "text", "text": "{"}]}]}
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"request": blocks, "response": message},
                                             {"request": {"messages": [ask]}, "response": COMPLETION}])
    assert import_traffic(pairs, tmp_path / "p.jsonl") == 2
    assert [(r.messages, r.output) for r in read_records(tmp_path / "p.jsonl")] == [
        ([ask], '{"name": "Bob", "age": 42}'), ([ask], "sports")]


def test_a_file_given_format_served_that_is_no_ledger_gets_format_advice(tmp_path):
    """Found by a review: `import log.jsonl --format served` said "not a potstill ledger (SQLite: file
    is not a database); move it aside", advice for a run's calls.sqlite, not for the user's input read
    as the wrong format; it now names the formats, and says whether the file is SQLite at all."""
    import sqlite3

    src = jsonl(tmp_path / "log.jsonl", [{"prompt": "new phone", "completion": "tech"}])
    with pytest.raises(PotstillError) as e:
        import_traffic(src, tmp_path / "o.jsonl", "served")
    assert str(e.value) == (f"{src}: not a SQLite database; --format served reads the calls.sqlite `potstill serve` "
                            "writes: give that, or this file's own --format (auto, finetune, openai-log, pairs or "
                            "stored)")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(PotstillError, match=r"other.sqlite: a SQLite database with no served calls table; --format"):
        import_traffic(other, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="/proc: a folder no file can be made in, on Linux")
def test_an_out_that_cannot_be_written_is_named_not_a_temp_file(tmp_path):
    """Found by a review: `import ... -o /proc/x.jsonl` failed naming /proc/.x.jsonl.oa7bui0h.tmp, the
    temp file potstill writes before renaming, which the user never named; the error names -o's path."""
    src = jsonl(tmp_path / "traffic.jsonl", [{"prompt": "new phone", "completion": "tech"}])
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "import", str(src), "-o", "/proc/x.jsonl"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert (out.returncode, out.stderr.strip()) == (2, "error: No such file or directory: /proc/x.jsonl")
