"""The OpenAI fine-tuning JSONL checker: the exporter's own files pass, each crafted fault is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from potstill.config import Config, TaskConfig
from potstill.errors import PotstillError
from potstill.export import export
from potstill.export.check import check_openai_jsonl
from potstill.records import Record, write_jsonl

LABELS = ["sports", "tech"]
CALL = {"id": "call_0", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Lima"}'}}
TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# What a tools task exports: the call as the assistant's turn, the tools on the line.
CALLED = {"messages": [{"role": "user", "content": "time in Lima"}, {"role": "assistant", "tool_calls": [CALL]}],
          "tools": [TOOL], "parallel_tool_calls": False}
GOOD = {"messages": [{"role": "system", "content": "classify"}, {"role": "user", "content": "a goal"},
                     {"role": "assistant", "content": "sports"}]}


def make_run(tmp_path: Path, outputs: list[str]) -> Config:
    run = tmp_path / "run"
    for split in ("train", "val"):
        write_jsonl(run / f"{split}.jsonl", [
            Record(id=f"{split}{i}", messages=[{"role": "user", "content": f"text {i}"}], output=o, valid=True)
            for i, o in enumerate(outputs)])
    return Config(run_dir=str(run), task=TaskConfig(type="freetext", instruction="Summarise."))


def test_exported_files_pass(tmp_path):
    written = export(make_run(tmp_path, ["sports"] * 12), "openai-jsonl")
    assert [p.name for p in written] == ["train.jsonl", "val.jsonl"]
    assert all(check_openai_jsonl(p) == [] for p in written)


def test_exporter_refuses_an_empty_completion_and_leaves_no_file(tmp_path):
    cfg = make_run(tmp_path, ["a summary"] * 11 + ["  "])
    with pytest.raises(PotstillError, match=r"train\.jsonl:12: messages\[2\] \(assistant\): empty completion"):
        export(cfg, "openai-jsonl")
    assert not list((Path(cfg.run_dir) / "export" / "openai-jsonl").glob("*.jsonl"))


BAD = {
    "not json": ("{oops", "not valid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object, got list"),
    "no messages": (json.dumps({"prompt": "x"}), "'messages' must be a non-empty list"),
    "bad role": (json.dumps({"messages": [{"role": "robot", "content": "x"}, *GOOD["messages"][1:]]}),
                 "messages[0].role 'robot' is not one of system, user, assistant, tool"),
    "content not a string": (json.dumps({"messages": [{"role": "user", "content": 3}, GOOD["messages"][2]]}),
                             "messages[0].content must be a string or a list of parts, got int"),
    "a part not a part": (json.dumps({"messages": [{"role": "user", "content": ["x"]}, GOOD["messages"][2]]}),
                          "messages[0].content: part 0 is not a part of type text or image_url"),
    "tool without its call": (json.dumps({"messages": [GOOD["messages"][1], {"role": "tool", "content": "4 C"},
                                                       GOOD["messages"][2]]}),
                              "messages[1] (tool): no tool_call_id naming the call it answers"),
    "empty user": (json.dumps({"messages": [{"role": "user", "content": " "}, GOOD["messages"][2]]}),
                   "messages[0] (user): empty content"),
    "empty completion": (json.dumps({"messages": [*GOOD["messages"][:2], {"role": "assistant", "content": ""}]}),
                         "messages[2] (assistant): empty completion"),
    # A list of parts whose one text part is empty joined to "" and passed as an image; OpenAI refuses it.
    "empty text part": (json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]},
                                                 GOOD["messages"][2]]}),
                        "messages[0].content: part 0 is a text part with no text"),
    "no user": (json.dumps({"messages": [GOOD["messages"][0], GOOD["messages"][2]]}), "no user message"),
    "ends with user": (json.dumps({"messages": GOOD["messages"][:2]}), "the last message must be the assistant's"),
    "blank line": ("", "blank line"),
    "weight not 0 or 1": (json.dumps({"messages": [*GOOD["messages"][:2], {**GOOD["messages"][2], "weight": 2}]}),
                          "messages[2].weight 2 is not 0 or 1"),
    # Python's json reads NaN and Infinity, which are not JSON: an upload's parser refuses the line.
    "NaN": ('{"messages": [{"role": "user", "content": "a goal"}, {"role": "assistant", "content": "sports"}], "score": NaN}',
            "not valid JSON (NaN is not a JSON value)"),
    # What the exporter refuses (test_text_utf8_cannot_encode_is_named_and_the_earlier_export_kept), the
    # check passed as "ok": half an emoji, escaped as JSON writes it ("\ud83d"), reads back but is no text.
    "lone surrogate": (json.dumps({"messages": [{"role": "user", "content": "a goal \ud83d"}, GOOD["messages"][2]]}),
                       "messages[0].content: a lone surrogate U+D83D (half a character) after 'a goal '"),
    # Function calling: each call an id, a declared name and its arguments as a JSON object string.
    "call arguments not a string": (json.dumps({**CALLED, "messages": [GOOD["messages"][1], {
        "role": "assistant", "tool_calls": [{**CALL, "function": {"name": "get_time", "arguments": {"city": "Lima"}}}]}]}),
        "messages[1].tool_calls[0].function.arguments must be a JSON object written as a string"),
    "call of an undeclared tool": (json.dumps({**CALLED, "messages": [GOOD["messages"][1], {
        "role": "assistant", "tool_calls": [{**CALL, "function": {"name": "ping", "arguments": "{}"}}]}]}),
        "messages[1].tool_calls[0] calls 'ping', which the line's tools do not declare"),
    "call without an id": (json.dumps({**CALLED, "messages": [GOOD["messages"][1], {
        "role": "assistant", "tool_calls": [{k: v for k, v in CALL.items() if k != "id"}]}]}),
        "messages[1].tool_calls[0] is not a function call"),
    "tools not function tools": (json.dumps({**CALLED, "tools": [{"name": "get_time"}]}),
                                 "tools[0] is not a function tool"),
    "parallel_tool_calls not a bool": (json.dumps({**CALLED, "parallel_tool_calls": "no"}),
                                       "parallel_tool_calls must be true or false"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_fault_is_reported_at_its_line(tmp_path, case):
    line, problem = BAD[case]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
    problems = check_openai_jsonl(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: {problem}"), problems


def test_cli_export_check(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    bad.write_text(json.dumps(GOOD) + "\n" + BAD["ends with user"][0] + "\n")
    cmd = [sys.executable, "-m", "potstill.cli", "export-check"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}: ok"
    no = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=120)
    assert no.returncode == 1 and no.stdout.strip().startswith(f"{bad}:2: the last message")


def test_a_failed_reexport_keeps_the_previous_export(tmp_path):
    """A re-export that fails the check is refused before writing: the earlier, good files stay as they were."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    first = export(cfg, "openai-jsonl")
    before = {p.name: p.read_text() for p in first}
    make_run(tmp_path, ["a summary"] * 11 + ["  "])  # the next curate left an empty completion
    with pytest.raises(PotstillError, match=r"train\.jsonl:12: messages\[2\] \(assistant\): empty completion"):
        export(cfg, "openai-jsonl")
    assert {p.name: p.read_text() for p in first} == before


def test_an_empty_instruction_exports_no_system_message(tmp_path):
    """task.instruction "" is a valid config: the student trained with no system turn (PromptFormat drops
    it), so the export has none either, instead of an empty one that the check (and OpenAI) refuses."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    cfg.task.instruction = ""
    written = export(cfg, "openai-jsonl")
    rows = [json.loads(x) for x in written[0].read_text().splitlines()]
    assert rows[0]["messages"] == [{"role": "user", "content": "text 0"}, {"role": "assistant", "content": "a summary"}]
    assert all(check_openai_jsonl(p) == [] for p in written)



def test_a_tool_chat_and_text_parts_export_as_openai_fine_tuning_takes_them(tmp_path):
    """Records may hold tool turns and content parts (generate takes them); the export dropped the
    tool fields and kept the parts, and its own check then refused the run (an assistant turn of
    tool calls has no content; a tool message needs its tool_call_id)."""
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    chat = [{"role": "user", "content": [{"type": "text", "text": "weather in "}, {"type": "text", "text": "Oslo?"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "4 C"}]
    cfg = make_run(tmp_path, ["a summary"] * 12)
    recs = [Record(id=f"t{i}", messages=chat, output="Cold: 4 C.", valid=True) for i in range(12)]
    write_jsonl(Path(cfg.run_dir) / "train.jsonl", recs)
    written = export(cfg, "openai-jsonl")
    row = json.loads(written[0].read_text().splitlines()[0])
    assert row["messages"][1:] == [{"role": "user", "content": "weather in Oslo?"},
                                   {"role": "assistant", "content": None, "tool_calls": [call], "weight": 0},
                                   {"role": "tool", "content": "4 C", "tool_call_id": "c1"},
                                   {"role": "assistant", "content": "Cold: 4 C."}]
    assert all(check_openai_jsonl(p) == [] for p in written)


def test_a_developer_message_exports_as_the_system_message_the_fine_tuning_format_takes(tmp_path):
    """Input files may hold OpenAI's newer `developer` instruction turn (generate and train take it), but
    the fine-tuning format's roles are system, user, assistant and tool: the export wrote it as it was,
    and its own check then refused every row, so the run could not be exported."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    chat = [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "text"}]
    write_jsonl(Path(cfg.run_dir) / "train.jsonl",
                [Record(id=f"t{i}", messages=chat, output="short.", valid=True) for i in range(12)])
    written = export(cfg, "openai-jsonl")
    row = json.loads(written[0].read_text().splitlines()[0])
    assert row["messages"][1:] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "text"},
                                   {"role": "assistant", "content": "short."}]
    assert all(check_openai_jsonl(p) == [] for p in written)


def test_a_split_now_empty_leaves_no_stale_file(tmp_path):
    """After a curate with no validation split, the folder must not keep the earlier val.jsonl: uploaded
    beside the new train.jsonl it would validate on another dataset (maybe on the new training rows)."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    export(cfg, "openai-jsonl")
    write_jsonl(Path(cfg.run_dir) / "val.jsonl", [])
    written = export(cfg, "openai-jsonl")
    out = Path(cfg.run_dir) / "export" / "openai-jsonl"
    assert [p.name for p in written] == ["train.jsonl"] and sorted(p.name for p in out.glob("*.jsonl")) == ["train.jsonl"]


def test_nothing_to_export_is_one_clear_error(tmp_path):
    """An empty train.jsonl gives no training file to upload: said in words, not as a missing-file error."""
    cfg = make_run(tmp_path, [])
    with pytest.raises(PotstillError, match=r"train\.jsonl: no records to export"):
        export(cfg, "openai-jsonl")
    assert not (Path(cfg.run_dir) / "export").exists()


def test_a_file_not_in_utf8_is_named_so_not_called_invalid_json(tmp_path):
    """A UTF-16 export (Windows) was read with replacement characters and reported as 'not valid
    JSON' on every line, which sends the user looking for a syntax error."""
    path = tmp_path / "utf16.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    problems = check_openai_jsonl(path)
    assert problems and problems[0].startswith(f"{path}:1: not UTF-8"), problems


def test_cli_export_check_on_the_folder_export_wrote_checks_each_jsonl_in_it(tmp_path):
    """`export-check RUN/export/openai-jsonl` (the folder export names) checks train.jsonl and val.jsonl in it."""
    cfg = make_run(tmp_path, ["sports"] * 12)
    folder = export(cfg, "openai-jsonl")[0].parent
    cmd = [sys.executable, "-m", "potstill.cli", "export-check"]
    ok = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines() == [f"{folder / 'train.jsonl'}: ok", f"{folder / 'val.jsonl'}: ok"]
    (folder / "val.jsonl").write_text(json.dumps(GOOD) + "\n" + BAD["ends with user"][0] + "\n")
    no = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, timeout=120)
    assert no.returncode == 1
    assert no.stdout.splitlines()[0] == f"{folder / 'train.jsonl'}: ok"
    assert no.stdout.splitlines()[1].startswith(f"{folder / 'val.jsonl'}:2: the last message")


@pytest.mark.parametrize("kind", ["empty folder", "run directory"])
def test_cli_export_check_on_a_folder_it_cannot_check_says_what_it_expected(tmp_path, kind):
    """A folder with no *.jsonl, or a run directory (potstill records, not fine-tuning rows), is one line, exit 2."""
    if kind == "empty folder":
        folder, expect = tmp_path / "empty", "no *.jsonl file in this folder"
        folder.mkdir()
    else:
        folder, expect = Path(make_run(tmp_path, ["sports"] * 12).run_dir), "a potstill run directory"
        (folder / "manifest.json").write_text('{"stages": {}}')
    r = subprocess.run([sys.executable, "-m", "potstill.cli", "export-check", str(folder)],
                       capture_output=True, text=True, timeout=120)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and len(out.splitlines()) == 1, out
    assert str(folder) in out and expect in out and "export/openai-jsonl" in out and "not found" not in out, out


def test_the_library_check_of_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(PotstillError, match=r": a directory, not a JSONL file; potstill.export.check.files_to_check"):
        check_openai_jsonl(tmp_path)


@pytest.mark.parametrize("task,outputs,why", [
    (TaskConfig(type="classification", labels=LABELS, instruction="Classify."), ["sports", "maybe"], "answer outside the label set"),
    (TaskConfig(type="extraction", instruction="Extract.", json_schema={"type": "object"}), ['{"a": 1}', "{oops"], "invalid JSON"),
])
def test_an_answer_the_task_cannot_parse_is_named_at_its_line_not_a_traceback(tmp_path, task, outputs, why):
    """A hand-edited split can hold an answer that is no label (or no JSON); `potstill train` names such a
    line. The export asserted (classification) or hit a TypeError (extraction), a traceback and no line."""
    cfg = make_run(tmp_path, outputs * 6).model_copy(update={"task": task})
    with pytest.raises(PotstillError, match=rf"train\.jsonl:2: .*{why}.*nothing was exported"):
        export(cfg, "openai-jsonl")
    assert not (Path(cfg.run_dir) / "export").exists()


def test_a_multi_turn_chat_trains_the_hosted_model_on_the_final_answer_only(tmp_path):
    """potstill trains on the completion only; an input's earlier assistant turns are prompt. OpenAI's
    fine-tuning trains on every assistant message of an example unless its weight is 0, so the export
    taught the hosted model the chat's history (often not the teacher's words) besides the target."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    chat = [{"role": "user", "content": "first text"}, {"role": "assistant", "content": "an old answer"},
            {"role": "user", "content": "second text"}]
    write_jsonl(Path(cfg.run_dir) / "train.jsonl",
                [Record(id=f"t{i}", messages=chat, output="the teacher's answer", valid=True) for i in range(12)])
    written = export(cfg, "openai-jsonl")
    msgs = json.loads(written[0].read_text().splitlines()[0])["messages"]
    trained = [m["content"] for m in msgs if m["role"] == "assistant" and m.get("weight", 1) == 1]
    assert trained == ["the teacher's answer"], msgs
    assert msgs[2] == {"role": "assistant", "content": "an old answer", "weight": 0}
    assert all(check_openai_jsonl(p) == [] for p in written)


def test_text_utf8_cannot_encode_is_named_and_the_earlier_export_kept(tmp_path):
    """A record can hold a lone surrogate (JSON's "\\ud83d" alone: an emoji cut in half at a token limit).
    The export checked the row, replaced train.jsonl, then died writing val.jsonl with a
    UnicodeEncodeError traceback: a new train file beside none (or an old val file), no mark."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    first = export(cfg, "openai-jsonl")
    before = {p.name: p.read_text() for p in first}
    val = Path(cfg.run_dir) / "val.jsonl"
    lines = val.read_text().splitlines()
    lines[2] = lines[2].replace("text 2", "text 2 \\ud83d")  # as JSON escapes it; read back, one lone surrogate
    val.write_text("\n".join(lines) + "\n")
    (Path(cfg.run_dir) / "train.jsonl").write_text((Path(cfg.run_dir) / "train.jsonl").read_text().replace("a summary", "new"))
    # refused as the split is read (records.read_records), before a file is written
    with pytest.raises(PotstillError, match=r"val\.jsonl:3: messages\.0\.content: text holds a lone UTF-16 surrogate"):
        export(cfg, "openai-jsonl")
    assert {p.name: p.read_text() for p in first} == before
    assert sorted(p.name for p in first[0].parent.iterdir()) == [".potstill-export", "train.jsonl", "val.jsonl"]


def test_a_tool_call_turn_with_empty_content_exports_as_one_without_content(tmp_path):
    """Many clients log an assistant turn of tool calls with content "" rather than null; generate and
    train take it (records.record_problem), but the export refused the whole run as an 'empty
    completion'. It is written as the fine-tuning format's tool-call turn: content null."""
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    chat = [{"role": "user", "content": "weather in Oslo?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "4 C"}]
    cfg = make_run(tmp_path, ["a summary"] * 12)
    write_jsonl(Path(cfg.run_dir) / "train.jsonl",
                [Record(id=f"t{i}", messages=chat, output="Cold: 4 C.", valid=True) for i in range(12)])
    written = export(cfg, "openai-jsonl")
    msgs = json.loads(written[0].read_text().splitlines()[0])["messages"]
    assert msgs[2] == {"role": "assistant", "content": None, "tool_calls": [call], "weight": 0}
    assert all(check_openai_jsonl(p) == [] for p in written)


def test_legacy_function_calling_examples_pass_as_openai_takes_them(tmp_path):
    """OpenAI's fine-tuning format still takes the legacy function calling (Azure's fine-tuning requires
    it): an assistant turn of `function_call` without content, a `function` message naming the function.
    export-check called both problems, so a valid training file from an OpenAI fine-tune failed it."""
    call = {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}
    fns = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    rows = [{"messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "function_call": call}],
             "functions": fns},
            {"messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None, "function_call": call},
                          {"role": "function", "name": "get_weather", "content": "4 C"},
                          {"role": "assistant", "content": "It is 4 C in Oslo."}], "functions": fns},
            {"messages": [{"role": "user", "content": "Weather?"}, {"role": "function", "content": "4 C"},
                          {"role": "assistant", "content": "4 C."}]}]
    path = tmp_path / "legacy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert check_openai_jsonl(path) == [f"{path}:3: messages[1] (function): no name naming the function it answers"]


@pytest.mark.parametrize("role", ["system", "developer"])
def test_an_inputs_empty_instruction_turn_is_left_out_not_a_refused_run(tmp_path, role):
    """An input's own blank system turn is left out (OpenAI refuses empty content); a blank developer
    turn, the same instruction turn under OpenAI's newer name, was written as an empty system message,
    and the export refused the whole run though generate and train take it."""
    cfg = make_run(tmp_path, ["a summary"] * 12)
    chat = [{"role": role, "content": " "}, {"role": "user", "content": "text"}]
    write_jsonl(Path(cfg.run_dir) / "train.jsonl",
                [Record(id=f"t{i}", messages=chat, output="short.", valid=True) for i in range(12)])
    written = export(cfg, "openai-jsonl")
    row = json.loads(written[0].read_text().splitlines()[0])
    assert row["messages"] == [{"role": "system", "content": "Summarise."}, {"role": "user", "content": "text"},
                               {"role": "assistant", "content": "short."}]


def test_a_tools_task_exports_its_calls_as_openai_fine_tunes_function_calling(tmp_path):
    """The call as an assistant turn of tool_calls (arguments a JSON string), the task's tools and
    parallel_tool_calls false on every line; the check passes what the exporter writes."""
    run = tmp_path / "run"
    calls = [{"name": "get_time", "arguments": {"city": c}} for c in ("Lima", "Oslo", "Rome")]
    for split in ("train", "val"):
        write_jsonl(run / f"{split}.jsonl", [
            Record(id=f"{split}{i}", messages=[{"role": "user", "content": f"time in {c['arguments']['city']}"}],
                   output=json.dumps(c), valid=True) for i, c in enumerate(calls)])
    cfg = Config(run_dir=str(run), task=TaskConfig(type="tools", instruction="Call a tool.", tools=[TOOL]))
    written = export(cfg, "openai-jsonl")
    assert all(check_openai_jsonl(p) == [] for p in written)
    line = json.loads(written[0].read_text().splitlines()[1])
    assert line["tools"] == [TOOL] and line["parallel_tool_calls"] is False
    assert line["messages"][-1] == {"role": "assistant", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}}]}
