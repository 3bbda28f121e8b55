import json
import sqlite3

import pytest

from potstill.errors import PotstillError
from potstill.ledger import MIGRATIONS, Call, Ledger
from potstill.records import Record, read_records, write_jsonl


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"input": "ok"}\n\n{"input": "fine"}\n{"input": broken}\n')
    with pytest.raises(PotstillError, match=r"in\.jsonl:4: malformed JSON"):
        read_records(p)
    p.write_text('{"input": "ok"}\n{"messages": "not a list"}\n')
    with pytest.raises(PotstillError, match=r"in\.jsonl:2: messages"):
        read_records(p)


def test_malformed_line_says_what_is_wrong_where_a_person_looks(tmp_path):
    """json reports where parsing stopped: for a brace missing at the end, "line 2 column 1" of a
    one-line record, which used to come out as "column 1"."""
    p = tmp_path / "in.jsonl"
    cases = {
        '{"input": "the team won", "label": "sports"': "the text ends inside the object opened at column 1: "
                                                        "missing '}' at the end",
        '{"input": "a", "slice": ["x", {"k": 1}': "the text ends inside the array opened at column 25: missing ']}' at the end",
        '{"input": "unclosed}': "a string opened at column 11 is never closed",
        '{"input": "a" "label": "b"}': "expecting ',' delimiter at column 15, near",
        '{"input": "a"}}': "unexpected text after the JSON value at column 15: '}'",
    }
    for line, said in cases.items():
        p.write_text('{"input": "ok"}\n' + line + "\n")
        with pytest.raises(PotstillError) as e:
            read_records(p)
        assert str(e.value).startswith(f"{p}:2: malformed JSON: ") and said in str(e.value), str(e.value)


def test_shorthand_and_ids_are_stable(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"input": "hello", "label": "a", "slice": "s1"}\n')
    (r,) = read_records(p)
    assert r.messages == [{"role": "user", "content": "hello"}] and r.slice == ["s1"]
    assert r.id == Record(messages=[{"role": "user", "content": "hello"}]).id


def test_write_is_atomic(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(p, rows())
    assert p.read_text() == '{"a": 1}\n'
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]


def test_ledger_migrations_cache_and_summary(tmp_path):
    path = tmp_path / "calls.sqlite"
    with Ledger(path) as led:
        led.record(Call("h1", "teacher", "generate", "m", {"q": 1}, {"output": "x"}, 10, 2, cost_usd=0.5, latency_s=0.1))
        led.record(Call("h2", "teacher", "generate", "m", {"q": 2}, None, status="error", error="boom"))
        assert led.lookup(["h1", "h2", "h3"]) == {"h1": {"output": "x"}}
        s = led.summary("teacher")
        assert s["calls"] == 1 and s["input_tokens"] == 10 and s["cost_usd"] == 0.5
    # Reopening applies no migration twice; the table records each once.
    Ledger(path).close()
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT id FROM _migrations")] == list(range(1, len(MIGRATIONS) + 1))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert json.loads(db.execute("SELECT request FROM calls WHERE request_hash='h1'").fetchone()[0]) == {"q": 1}
