"""Bad input files are one line naming file:line and the problem, found when read: never a
traceback, never a record sent to a (paid) teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from potstill.errors import PotstillError
from potstill.records import read_objects, read_records


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes('{"input": "ok"}\n{"input": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(PotstillError, match=r"^.*in\.jsonl:2: not UTF-8 \(byte 0xe9, the line's byte 15\)$"):
        read_records(p)
    # What PowerShell's `>` writes: UTF-16 with a byte-order mark.
    p.write_bytes('{"input": "ok"}\n'.encode("utf-16"))
    with pytest.raises(PotstillError, match=r"in\.jsonl:1: not UTF-8 \(byte 0xff, .*it looks like UTF-16"):
        list(read_objects(p))


def test_a_directory_is_not_a_jsonl_file(tmp_path):
    with pytest.raises(PotstillError, match=rf"^{tmp_path} is a directory, not a JSONL file$"):
        read_records(tmp_path)


# Lines that must still read: tool calls (an assistant turn without content), content parts, every role.
VALID = [
    {"input": "hello"},
    {"messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}]},
    {"messages": [{"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                  {"role": "assistant", "content": ""}, {"role": "user", "content": "again"}]},
]


@pytest.mark.parametrize("line, said", [
    ({"input": 42}, "input: expected a string, got int (42)"),
    ({"input": ""}, "input: empty text"),
    ({"input": "  \n"}, "input: empty text"),
    ({"messages": []}, "messages: empty list"),
    # A Hugging Face dataset's column name: the line has neither field potstill reads, and the message
    # named only one of them ("messages: Field required"), not the {"input": ...} form a user meant.
    ({"text": "the team won", "label": "sports"}, 'no "input" (the text) or "messages" (OpenAI chat) field; '
                                                  "this line has: text, label"),
    ({"messages": [{"role": "user"}]}, "messages.0: a user message without content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role: 'wizard' is not one of system, developer, "
                                                          "user, assistant, tool"),
    ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages.0.content: expected a string or a list"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages: no user message with text"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "messages: no user message with text"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool"}]}, "messages.1: a tool message without content"),
])
def test_a_record_no_teacher_can_answer_is_refused_at_read_time(tmp_path, line, said):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in VALID))
    assert [r.messages for r in read_records(p)][1:] == [r["messages"] for r in VALID[1:]]
    p.write_text(p.read_text() + json.dumps(line) + "\n")
    with pytest.raises(PotstillError) as e:
        read_records(p)
    assert str(e.value).startswith(f"{p}:{len(VALID) + 1}: {said}"), str(e.value)


def test_cli_generate_says_one_line_for_a_directory_or_a_bad_encoding(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "utf16.jsonl").write_bytes('{"input": "ok"}\n'.encode("utf-16"))
    cfg = {"run_dir": "run", "task": {"type": "freetext", "instruction": "summary"}, "data": {"inputs": "inputs"},
           "teacher": {"type": "openai", "model": "gpt-4o-mini"}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    for inputs, said in (("inputs", "error: inputs is a directory, not a JSONL file"),
                         ("utf16.jsonl", "error: utf16.jsonl:1: not UTF-8")):
        out = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", "potstill.yaml",
                              "--data.inputs", inputs], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OPENAI_API_KEY": "sk-test"})
        assert out.returncode == 2 and out.stderr.strip().startswith(said), out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_half_a_character_is_refused_with_its_file_and_line(tmp_path):
    """A teacher.jsonl input holding JSON's \\ud83d alone (an emoji cut in two) made `potstill curate`
    end in a 70-line UnicodeEncodeError from deduplication, and no card was written, so the run could
    not be reviewed; it is one line naming the file, line and field, as any malformed line. A whole
    pair (\\ud83d\\ude00) is one character, and reads."""
    from potstill.config import Config
    from potstill.curate.stage import curate_stage

    run = tmp_path / "run"
    run.mkdir()
    line = ('{{"id": "s{n}", "messages": [{{"role": "user", "content": "great product {n} {emoji}"}}], '
            '"output": "positive", "valid": true}}\n')
    (run / "teacher.jsonl").write_text(line.format(n=1, emoji="\\ud83d\\ude00") + line.format(n=2, emoji="\\ud83d"))
    with pytest.raises(PotstillError) as e:
        curate_stage(Config(run_dir=str(run), task={"labels": ["positive", "negative"]}, curate={"val": 0, "test": 0}))
    assert str(e.value) == (f"{run / 'teacher.jsonl'}:2: messages.0.content: text holds a lone UTF-16 surrogate (an "
                            "escape \\ud800-\\udfff without its pair), as from an emoji cut in two")
    (run / "teacher.jsonl").write_text(line.format(n=1, emoji="\\ud83d\\ude00"))
    assert read_records(run / "teacher.jsonl")[0].text == "great product 1 \U0001F600"
