"""The ledger's lookups by hash go through the hash indexes, never through calls_role_stage.

Given 2 or more hashes in ``request_hash IN (...)`` and no ANALYZE statistics, SQLite picked
calls_role_stage for ``role=?``, and role teacher is nearly every row: each lookup read the whole
ledger, so generate's cache check over n inputs cost n/500 full scans. The plans are checked here;
what they cost is `benchmarks/ledger_lookup.py`'s."""

from __future__ import annotations

from potstill.ledger import Call, Ledger


def _ledger(path) -> Ledger:
    """3,000 generate rows of the teacher (every 10th a failure, every 100th a refusal, every 50th a
    failed n-sample row that kept its answered samples), and 300 of serve's escalations."""
    led = Ledger(path)
    rows = []
    for i in range(3000):
        if i % 100 == 0:
            rows.append(Call(f"h{i}", "teacher", "generate", "m", {"i": i}, None, status="error",
                             error="refusal: I can't help with that", prompt_hash=f"p{i}"))
        elif i % 50 == 0:
            rows.append(Call(f"h{i}", "teacher", "generate", "m", {"i": i}, {"samples": ["a"]}, status="error",
                             error="1 of 2 samples failed", prompt_hash=f"p{i}"))
        elif i % 10 == 0:
            rows.append(Call(f"h{i}", "teacher", "generate", "m", {"i": i}, None, status="error", error="timeout",
                             prompt_hash=f"p{i}"))
        else:
            rows.append(Call(f"h{i}", "teacher", "generate", "m", {"i": i, "max_tokens": 8}, {"output": f"a{i}"},
                             stop_reason="stop", prompt_hash=f"p{i}"))
    rows += [Call(f"s{i}", "teacher", "serve", "m", {"i": i}, {"content": f"s{i}", "teacher_stop_reason": "stop"})
             for i in range(300)]
    led.record_many(rows)
    return led


def test_every_lookup_by_hash_searches_the_hash_index(tmp_path):
    with _ledger(tmp_path / "calls.sqlite") as led:
        sent: list[str] = []
        led._db.set_trace_callback(sent.append)  # each statement as run, its values in place
        try:
            answers = led.lookup(["h1", "h2", "h10", "nope"])
            refused = led.refusals(["h100", "h200", "h10"])
            partial = led.partial(["h50", "h150", "h1"])
            rows = led.rows_for(["h1", "h2", "h3"])
            escalated_one = led.served_escalations(["s1"])
            escalated = led.served_escalations(["s1", "s2", "h1"])
            whole = led.whole_answers({"new1": ("p1", 16), "new2": ("p2", 16)}, lambda req: req.get("max_tokens"))
        finally:
            led._db.set_trace_callback(None)
        # The answers first: the queries still find what they found.
        assert answers == {"h1": {"output": "a1"}, "h2": {"output": "a2"}}
        assert set(refused) == {"h100", "h200"}
        assert set(partial) == {"h50", "h150"}
        assert [r["request_hash"] for r in rows] == ["h1", "h2", "h3"]
        assert set(escalated_one) == {"s1"} and set(escalated) == {"s1", "s2"}
        assert whole == {"new1": "h1", "new2": "h2"}

        queries = [q for q in sent if q.lstrip().upper().startswith("SELECT") and " calls " in q + " "]
        assert len(queries) == 7, queries
        for q in queries:
            plan = " | ".join(r[3] for r in led._db.execute("EXPLAIN QUERY PLAN " + q))
            index = "calls_prompt" if "prompt_hash IN" in q else "calls_hash"
            assert f"SEARCH calls USING INDEX {index} " in plan and "calls_role_stage" not in plan, (q, plan)

