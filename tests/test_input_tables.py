"""Inputs as a table: ``data.inputs`` (and every reader of records) takes a CSV, a TSV or a Parquet
file beside JSONL, by its suffix, and reads the same records from each; a bad row is one line
naming file and row. Real files: written with the csv module and with pyarrow."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.records import read_numbered, read_records
from potstill.stage import load_inputs

ROWS = [
    {"id": "a1", "input": "The team won, 3-1, at home", "label": "sports", "slice": "short"},
    {"id": "a2", "input": "Shares fell\nafter the \"profit\" warning", "label": "Business", "slice": '["long", "news"]'},
    {"id": "a3", "input": "A new phone, with a bigger screen", "label": "", "slice": ""},
]
JSONL = [
    {"id": "a1", "input": "The team won, 3-1, at home", "label": "sports", "slice": "short"},
    {"id": "a2", "input": "Shares fell\nafter the \"profit\" warning", "label": "Business", "slice": ["long", "news"]},
    {"id": "a3", "input": "A new phone, with a bigger screen"},
]


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # a byte-order mark, as Excel writes
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_csv_or_tsv_gives_the_records_its_jsonl_would(tmp_path, suffix):
    table = write_csv(tmp_path / f"inputs{suffix}", ROWS, "\t" if suffix == ".tsv" else ",")
    want = read_records(jsonl(tmp_path / "inputs.jsonl", JSONL))
    got = read_records(table)
    assert [r.model_dump() for r in got] == [r.model_dump() for r in want]
    assert got[1].text == "Shares fell\nafter the \"profit\" warning" and got[1].slice == ["long", "news"]
    assert got[2].label is None and got[2].slice == []  # empty cells are fields left out
    # The line a row ends on: the quoted newline makes row 2 span lines 3-4, so row 3 is line 5.
    assert [n for n, _ in read_numbered(table)] == [2, 4, 5]


def test_a_parquet_file_gives_the_records_its_jsonl_would(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    chats = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "The team won"}],
             [{"role": "user", "content": "Shares fell"}]]
    table = pa.table({"id": [1, 2], "messages": chats, "label": [5, None], "slice": [["short"], None]})
    pq.write_table(table, tmp_path / "inputs.parquet")
    want = read_records(jsonl(tmp_path / "inputs.jsonl", [
        {"id": "1", "messages": chats[0], "label": "5", "slice": ["short"]}, {"id": "2", "messages": chats[1]}]))
    got = read_numbered(tmp_path / "inputs.parquet")
    assert [n for n, _ in got] == [1, 2]
    # Parquet's structs give every message every field (None where it had none): they are left out.
    assert [r.model_dump() for _, r in got] == [r.model_dump() for r in want]


def test_a_run_reads_its_inputs_from_a_csv(tmp_path):
    """The stage's own loader: gold labels checked against the task (``Business`` is ``business``),
    ``data.limit`` applied, the config's suffix deciding the format."""
    write_csv(tmp_path / "in.csv", ROWS)
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "run", "task": {"type": "classification", "labels": ["sports", "business", "tech"]},
        "data": {"inputs": "in.csv", "limit": 2}, "teacher": {"type": "openai", "model": "m"}}))
    cfg = load_config(tmp_path / "potstill.yaml")
    recs = load_inputs(cfg)
    assert [(r.id, r.label) for r in recs] == [("a1", "sports"), ("a2", "business")]


def test_a_bad_row_is_one_line_naming_file_and_row(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text('input,label\n"fine",sports\n"one","two","three"\n')
    with pytest.raises(PotstillError, match=r"in\.csv:3: 3 cells for 2 columns"):
        read_records(p)
    p.write_text('messages,label\n"[{""role"": ""user"", ""content"": ""hi""",sports\n')
    with pytest.raises(PotstillError, match=r"in\.csv:2: column messages: malformed JSON"):
        read_records(p)
    p.write_text("text,label\nhello,sports\n")  # the text under another column name
    with pytest.raises(PotstillError, match=r'in\.csv:2: no "input" \(the text\) or "messages"'):
        read_records(p)
    p.write_text("input,input\na,b\n")
    with pytest.raises(PotstillError, match=r"in\.csv:1: a column name appears twice"):
        read_records(p)
    bad = tmp_path / "in.parquet"
    bad.write_text("not parquet at all")
    with pytest.raises(PotstillError, match=r"in\.parquet: not a readable Parquet file") as e:
        read_records(bad)
    assert "\n" not in str(e.value)


def test_parquet_without_pyarrow_names_what_to_install(tmp_path, monkeypatch):
    p = tmp_path / "in.parquet"
    p.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(PotstillError, match=r"reading Parquet needs pyarrow: pip install 'potstill\[parquet\]'"):
        read_records(p)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_gzipped_csv_or_tsv_is_read_as_the_table_it_holds(tmp_path, suffix):
    """in.csv.gz was told apart by its last suffix, .gz, so read as JSONL once decompressed:
    'in.csv.gz:1: malformed JSON: expecting value at column 1, near 'text,label''. The suffix before .gz
    names the table, read as it is decompressed; a gzipped Parquet file (it compresses its own columns)
    is one line saying to gunzip it."""
    import gzip

    table = write_csv(tmp_path / f"inputs{suffix}", ROWS, "\t" if suffix == ".tsv" else ",")
    packed = tmp_path / f"inputs{suffix}.GZ"
    packed.write_bytes(gzip.compress(table.read_bytes()))
    got = read_numbered(packed)
    assert [(n, r.model_dump()) for n, r in got] == [(n, r.model_dump()) for n, r in read_numbered(table)]
    assert [n for n, _ in got] == [2, 4, 5]
    # A bad row is named in the table's terms, not '.GZ'.
    sep = "\t" if suffix == ".tsv" else ","
    packed.write_bytes(gzip.compress(f"input{sep}label\nx{sep}a{sep}b\n".encode()))
    with pytest.raises(PotstillError) as e:
        read_records(packed)
    assert str(e.value) == f"{packed}:2: 3 cells for 2 columns"
    packed.write_bytes(gzip.compress(table.read_bytes())[:-12])  # a download that stopped
    with pytest.raises(PotstillError) as e:
        read_records(packed)
    assert str(e.value).startswith(f"{packed}: gzip-compressed, but not a whole gzip file (")
    parquet = tmp_path / "inputs.parquet.gz"
    parquet.write_bytes(gzip.compress(b"PAR1" + b"\0" * 16 + b"PAR1"))
    with pytest.raises(PotstillError) as e:
        read_records(parquet)
    assert str(e.value) == (f"{parquet}: a gzip-compressed Parquet file, which is read only as it is (it compresses "
                            "its columns itself): gunzip it first")
