"""Tables as real tools export them: Excel's CSV (a byte-order mark, CRLF, a semicolon where the
locale writes decimal commas), pandas' ``to_csv`` (its index as an unnamed first column, NaN as an
empty cell) and ``to_parquet`` (``__index_level_0__``), Polars' NaN, a long document in one cell,
and a file whose suffix is not its content. Each reads as the equivalent JSONL, or fails in one line
naming the file."""

from __future__ import annotations

import json

import pytest

from potstill.errors import PotstillError
from potstill.records import read_numbered, read_records


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dumps(records):
    return [r.model_dump() for r in records]


def test_a_cell_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    """Python's csv refuses a field over 131,072 characters unless told otherwise: a long document
    (a contract, a transcript) to summarise is an ordinary input."""
    doc = "word " * 40_000  # 200,000 characters
    p = tmp_path / "in.csv"
    p.write_text(f'input,label\n"{doc}",long\nshort text,short\n')
    got = read_numbered(p)
    assert [n for n, _ in got] == [2, 3]
    want = read_records(jsonl(tmp_path / "in.jsonl", [{"input": doc, "label": "long"}, {"input": "short text", "label": "short"}]))
    assert dumps(r for _, r in got) == dumps(want)


def test_a_semicolon_csv_as_european_excel_writes_it_is_read(tmp_path):
    """Excel in a locale whose decimal separator is a comma (German, French, ...) saves "CSV" with
    semicolons, a byte-order mark and CRLF line ends; a comma inside a text is then no delimiter."""
    p = tmp_path / "in.csv"
    p.write_bytes("\ufeffid;input;label\r\n1;Hallo, Welt;sports\r\n2;\"Zwei; drei\";tech\r\n".encode("utf-8"))
    want = read_records(jsonl(tmp_path / "in.jsonl", [{"id": "1", "input": "Hallo, Welt", "label": "sports"},
                                                      {"id": "2", "input": "Zwei; drei", "label": "tech"}]))
    got = read_numbered(p)
    assert dumps(r for _, r in got) == dumps(want) and [n for n, _ in got] == [2, 3]


PANDAS_JSONL = [{"input": "a text", "label": "1"}, {"input": "b text"}, {"input": "c", "label": "3"}]


def test_pandas_to_csv_with_its_index_and_nan_labels_reads_as_the_jsonl(tmp_path):
    """``df.to_csv(path)``: the index as a first column with an empty name, a float label column
    (an int column with a gap) as 1.0 and an empty cell; read back and saved again
    (``pd.read_csv(path).to_csv(path, index=False)``) the index is a column named 'Unnamed: 0'."""
    want = dumps(read_records(jsonl(tmp_path / "in.jsonl", PANDAS_JSONL)))
    p = tmp_path / "in.csv"
    p.write_text(",input,label\n0,a text,1.0\n1,b text,\n2,c,3.0\n")
    assert dumps(read_records(p)) == want
    p.write_text("Unnamed: 0,input,label\n0,a text,1.0\n1,b text,\n2,c,3.0\n")
    assert dumps(read_records(p)) == want


def test_a_parquet_file_with_pandas_index_column_reads_as_the_jsonl(tmp_path):
    """``df.to_parquet`` of a filtered frame (or ``datasets.Dataset.from_pandas(df)``) keeps the
    index as a column ``__index_level_0__``."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    want = dumps(read_records(jsonl(tmp_path / "in.jsonl", PANDAS_JSONL)))
    pq.write_table(pa.table({"input": ["a text", "b text", "c"], "label": [1.0, None, 3.0],
                             "__index_level_0__": [4, 7, 9]}), tmp_path / "in.parquet")
    assert dumps(read_records(tmp_path / "in.parquet")) == want


def test_a_nan_in_a_parquet_float_column_is_a_cell_left_out(tmp_path):
    """Polars and DuckDB write a float column's NaN as NaN, not null (pandas turns it into null):
    for a label column that is an unlabelled row, as pandas reads it, not 'label: Input should be a
    valid string'."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    want = dumps(read_records(jsonl(tmp_path / "in.jsonl", PANDAS_JSONL)))
    pq.write_table(pa.table({"input": ["a text", "b text", "c"], "label": pa.array([1.0, float("nan"), 3.0])}),
                   tmp_path / "in.parquet")
    assert dumps(read_records(tmp_path / "in.parquet")) == want


@pytest.mark.parametrize("lines", [1, 3])
def test_jsonl_saved_with_a_csv_suffix_is_one_line_not_zero_records(tmp_path, lines):
    """Its first line was read as the header: one line of JSONL gave no records at all, three gave
    rows refused for a field named '{"input": "a text"'."""
    p = tmp_path / "in.csv"
    p.write_text("".join(json.dumps(r) + "\n" for r in PANDAS_JSONL[:lines]))
    with pytest.raises(PotstillError) as e:
        read_records(p)
    assert str(e.value) == f"{p}:1: this is JSONL (a JSON object a line), not a CSV: name the file .jsonl"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_parquet_saved_with_another_suffix_names_its_format(tmp_path, suffix):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / f"in{suffix}"
    pq.write_table(pa.table({"input": ["a text"]}), p)
    with pytest.raises(PotstillError) as e:
        read_records(p)
    assert str(e.value) == f"{p}: this is a Parquet file, not a {suffix[1:].upper()}: name the file .parquet"
