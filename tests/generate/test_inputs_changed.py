"""`potstill generate` reads data.inputs again at each pass (not held). An input file
edited while the requests go out stops the run with one line, and no request made from an edited line
reaches the ledger under the hash of the line as it was (which would answer that input wrongly on
every later run); the rerun labels the file as it is now."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.records import read_records
from tests.generate.loopback import Loopback, answer_for, committed_answers
from tests.generate.test_generate import SECRET, project


N = 200


def test_an_input_file_edited_while_sending_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    # Every answer 0.1 s late, four at a time: 200 requests take ~5 s to send.
    with Loopback(key=SECRET, pslow=1.0, slow_s=0.1) as srv:
        cfg_path = project(tmp_path, srv.base_url, N, {"concurrency": 4})
        inputs = tmp_path / "inputs.jsonl"
        # ~400 bytes a line, 80 KB in all: more than the 8 KB a read buffers, so the lines still to send
        # are read from the file as it is when they go out (64 lines at a time, inputs.BLOCK).
        pad = " ".join(["words"] * 64)
        inputs.write_text("".join(json.dumps({"id": f"r{i}", "input": f"item {i} {pad}"}) + "\n" for i in range(N)))
        edited = "".join(json.dumps({"id": f"r{i}", "input": f"edited {i} {pad}"}) + "\n" for i in range(N))

        def edit() -> None:  # once the first answers are in: the rest are still to send
            deadline = time.monotonic() + 30
            while committed_answers(tmp_path / "run" / "calls.sqlite") < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            inputs.write_text(edited)

        editor = threading.Thread(target=edit)
        editor.start()
        try:
            with pytest.raises(PotstillError) as e:
                generate_stage(load_config(cfg_path))
        finally:
            editor.join()
        assert str(e.value).startswith(f"{inputs}: changed while this run read it"), e.value
        assert not (tmp_path / "run" / "teacher.jsonl").exists()
        with sqlite3.connect(tmp_path / "run" / "calls.sqlite") as db:
            sent = [json.loads(q)["messages"][-1]["content"] for (q,) in db.execute("SELECT request FROM calls")]
        assert sent and all(t.startswith("item ") for t in sent), sent
        assert len(sent) < N

        generate_stage(load_config(cfg_path))
    out = read_records(tmp_path / "run" / "teacher.jsonl")
    assert [r.text for r in out] == [f"edited {i} {pad}" for i in range(N)]
    assert all(r.valid and r.output == answer_for(r.text) for r in out)
