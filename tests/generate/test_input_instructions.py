"""An input's own system or developer message: serve drops a client's (the run's instruction
replaces it), so generate moves it to ``meta.system`` as ``potstill import`` does, and the teacher,
the trainer and the served student all read the task instruction as the prompt's one system turn."""

from __future__ import annotations

import json

from potstill.config import load_config
from potstill.generate.stage import generate_stage
from potstill.ledger import Ledger
from potstill.records import read_records
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, project


def test_an_inputs_system_message_goes_to_meta_not_to_the_teacher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, seed=0) as srv:
        cfg_path = project(tmp_path, srv.root_url, 0)
        rows = [{"id": "a", "messages": [{"role": "system", "content": "You are the ACME bot. Be terse."},
                                         {"role": "user", "content": "my invoice is wrong"}]},
                {"id": "b", "messages": [{"role": "developer", "content": "Answer in German."},
                                         {"role": "user", "content": "the app crashes"}]},
                {"id": "c", "input": "where is my parcel"}]
        (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        generate_stage(load_config(cfg_path))
        with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
            sent = [json.loads(r["request"])["messages"] for r in ledger.rows(role="teacher")]
    assert len(sent) == 3
    # The task instruction is the one system turn the teacher got, as the served student gets it.
    assert all([m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"] == "Topic?" for msgs in sent)
    recs = {r.id: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
    assert {i: [m["role"] for m in r.messages] for i, r in recs.items()} == {"a": ["user"], "b": ["user"], "c": ["user"]}
    assert (recs["a"].meta["system"], recs["b"].meta["system"]) == ("You are the ACME bot. Be terse.", "Answer in German.")
    assert "system" not in recs["c"].meta
    said = [line for line in capsys.readouterr().err.splitlines() if "meta.system" in line]
    assert len(said) == 1 and "2 of 3 records have a system or developer message" in said[0], said
