"""`potstill import` writes records as it reads them: its memory is a record, not the log.

Found by a review: import built every record before writing any, so a 282 MB log of 300k lines
peaked at 933 MB of RSS, and a 200k-row served ledger at 913 MB (benchmarks/import_memory.json).
Python's own allocations (tracemalloc) measure it here with no timing: holding the records costs
more than the file they make, streaming them a small fraction of it.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from potstill.errors import PotstillError
from potstill.importers import import_traffic
from potstill.ledger import Ledger, ServedCall
from potstill.records import read_records

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}}


def _ticket(i: int) -> str:
    # ~600 characters, each line its own (distinct strings: nothing shared between records).
    return f"ticket {i}: " + " ".join(f"word{(i * 7 + k) % 997}" for k in range(80))


def _peak_bytes(fn) -> int:
    """Python's peak allocation while ``fn`` runs, above what was allocated before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _log(path: Path, n: int, start: int = 0) -> Path:
    with open(path, "w") as f:
        for i in range(start, start + n):
            req = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Classify the ticket."},
                                                        {"role": "user", "content": _ticket(i)}]}
            f.write(json.dumps({"request": req, "response": COMPLETION}) + "\n")
    return path


def test_a_log_is_written_as_it_is_read(tmp_path):
    # Warm up: what the first import loads once (modules, the progress console) is not the log's.
    import_traffic(_log(tmp_path / "one.jsonl", 1), tmp_path / "one_out.jsonl")
    src, out = _log(tmp_path / "log.jsonl", 3000), tmp_path / "out.jsonl"
    peak = _peak_bytes(lambda: import_traffic(src, out))
    written = out.stat().st_size  # ~3.2 MB: 3000 records of ~1,050 bytes
    recs = read_records(out)
    assert len(recs) == 3000 and recs[-1].meta["line"] == 3000 and recs[-1].messages[0]["content"] == _ticket(2999)
    # Held, the 3000 records peaked at 2.8x the file they make; one at a time, 54 KB (measured).
    assert peak < written / 10, f"import peaked at {peak} bytes for {written} bytes of records"


def test_a_bad_line_after_thousands_written_leaves_the_target_as_it_was(tmp_path):
    """The records already written go with the temp file: the target keeps its old content, and no
    temp file is left beside it."""
    src, out = _log(tmp_path / "log.jsonl", 2000), tmp_path / "out.jsonl"
    with open(src, "a") as f:
        f.write('{"request": {"messages": []}, "response": "x"\n')  # cut short
    out.write_text("previous\n")
    with pytest.raises(PotstillError, match=r"log\.jsonl:2001: malformed JSON"):
        import_traffic(src, out)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "out.jsonl"]


def test_served_rows_are_read_a_page_at_a_time(tmp_path, monkeypatch):
    """A served ledger is read in pages of rows (``SERVED_PAGE``), not all at once."""
    import potstill.importers

    monkeypatch.setattr(potstill.importers, "SERVED_PAGE", 100)  # a thirtieth of the ledger
    db = tmp_path / "calls.sqlite"
    with Ledger(db) as ledger:
        for i in range(3000):
            ledger.record_served(ServedCall(request={"model": "potstill", "messages": [{"role": "user", "content": _ticket(i)}]},
                                            answered_by="student", model="student-v1", content="billing"))
        # an escalation answered with a client's tools: skipped and counted, as before
        ledger.record_served(ServedCall(request={"model": "potstill", "messages": [{"role": "user", "content": "x"}]},
                                        answered_by="teacher", model="gpt-4o", content="",
                                        extra={"tool_calls": [{"id": "c", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]}))
    import_traffic(db, tmp_path / "one_out.jsonl")  # warm up
    out = tmp_path / "out.jsonl"
    peak = _peak_bytes(lambda: import_traffic(db, out))
    written = out.stat().st_size
    recs = read_records(out)
    assert len(recs) == 3000 and [r.meta["ledger_id"] for r in recs] == list(range(1, 3001))
    assert recs[-1].messages[0]["content"] == _ticket(2999)
    # Held, the 3000 rows peaked at 4x the file they make; a page of 100 rows, 0.13x (measured).
    assert peak < written / 4, f"import peaked at {peak} bytes for {written} bytes of records"



@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_csv_or_parquet_table_is_written_as_it_is_read(tmp_path, monkeypatch, suffix):
    """Found by a review: a CSV or Parquet table was read whole (every row as a Python object) before
    its first record was written, to count its rows for the progress bar. Now a CSV is read a row at a
    time and a Parquet file a batch of rows at a time (``PARQUET_BATCH``), as a log a line at a time."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    import potstill.records

    monkeypatch.setattr(potstill.records, "PARQUET_BATCH", 100, raising=False)  # a thirtieth of the table
    tickets = [_ticket(i) for i in range(3000)]
    src = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        with open(src, "w", newline="") as f:
            csv.writer(f).writerows([("prompt", "completion"), *((t, "billing") for t in tickets)])
    else:
        pq.write_table(pa.table({"prompt": tickets, "completion": ["billing"] * 3000}), src)
    import_traffic(src, tmp_path / "one_out.jsonl")  # warm up (modules, pyarrow's readers)
    out = tmp_path / "out.jsonl"
    peak = _peak_bytes(lambda: import_traffic(src, out))
    written = out.stat().st_size  # ~2.6 MB: 3000 records of ~860 bytes
    recs = read_records(out)
    assert len(recs) == 3000 and [r.messages[0]["content"] for r in recs] == tickets
    assert recs[-1].meta["line"] == (3001 if suffix == ".csv" else 3000)  # the file line a CSV row ends on; the row
    # Held, the 3000 rows peaked at 1.15x (CSV) and 1.35x (Parquet) the file they make; streamed, 0.03x and
    # 0.08x (measured).
    assert peak < written / 4, f"import of {src.name} peaked at {peak} bytes for {written} bytes of records"


def test_a_batchs_requests_file_is_not_held_in_memory(tmp_path):
    """Found by a review: a Batch import's --requests file was held whole, every request parsed, to
    join the output's lines by custom_id. The requests now wait in a temporary SQLite file (its page
    cache, SQLite's own 2 MB at most, is outside what tracemalloc counts) and are read back one a line."""
    reqs, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    with open(reqs, "w") as f:
        for i in range(3000):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": _ticket(i)}]}
            f.write(json.dumps({"custom_id": f"req-{i}", "url": "/v1/chat/completions", "body": body}) + "\n")
    with open(results, "w") as f:
        for i in reversed(range(3000)):  # a batch's output comes in its own order
            f.write(json.dumps({"custom_id": f"req-{i}", "response": {"status_code": 200, "body": COMPLETION}}) + "\n")
    import_traffic(results, tmp_path / "one_out.jsonl", requests=reqs)  # warm up
    out = tmp_path / "out.jsonl"
    peak = _peak_bytes(lambda: import_traffic(results, out, requests=reqs))
    written = out.stat().st_size
    recs = read_records(out)
    assert [r.meta["custom_id"] for r in recs] == [f"req-{i}" for i in reversed(range(3000))]
    assert recs[0].messages[0]["content"] == _ticket(2999) and recs[-1].messages[0]["content"] == _ticket(0)
    # Held, the 3000 requests peaked at 1.6x the file the import makes; in SQLite, 0.02x (measured).
    assert peak < written / 4, f"import peaked at {peak} bytes for {written} bytes of records"
