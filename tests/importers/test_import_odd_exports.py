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
