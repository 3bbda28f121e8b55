"""`potstill cost`'s lines per model and stage are summed by SQLite: the command read every row of
each role (``SELECT *``, requests and responses included) to add them up in Python, ~3 KB of memory
a row. The numbers must stay those of that loop, kept here as the reference."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from potstill.cli import main
from potstill.ledger import Call, Ledger, ServedCall


def _reference(path, role: str) -> list[dict]:
    """What `potstill cost` printed until 2026-12-07: report.spend_by_stage's loop over every row."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    groups: dict[tuple[str, str], dict] = {}
    for r in db.execute("SELECT * FROM calls WHERE role=? ORDER BY id", (role,)):
        g = groups.setdefault((r["model"], r["stage"]), {"model": r["model"], "stage": r["stage"], "calls": 0,
                                                         "errors": 0, "input_tokens": 0, "output_tokens": 0,
                                                         "cost_usd": 0.0})
        g["calls"] += 1
        g["errors"] += r["status"] != "ok"
        g["input_tokens"] += r["input_tokens"]
        g["output_tokens"] += r["output_tokens"]
        g["cost_usd"] += r["cost_usd"]
    db.close()
    return [groups[k] for k in sorted(groups)]


def _line(role: str, g: dict) -> str:
    return (f"{role} {g['model']} ({g['stage']}): {g['calls']} calls ({g['errors']} errors), "
            f"{g['input_tokens']} input + {g['output_tokens']} output tokens, ${g['cost_usd']:.4f}")


def test_cost_per_model_and_stage_is_summed_in_sqlite_with_the_same_numbers(tmp_path, monkeypatch, capsys):
    path = tmp_path / "calls.sqlite"
    with Ledger(path) as led:
        rows = []
        for i in range(40):  # live answers, and a batch's at half the price (price_multiplier 0.5)
            rows.append(Call(f"g{i}", "teacher", "generate", "gpt-4o-mini", {"g": i}, {"output": "a"}, 120 + i, 3,
                             cached_input_tokens=64, cost_usd=0.000021 * (1 + i % 3),
                             price_multiplier=0.5 if i % 2 else 1.0))
        rows += [
            # a failed call the provider billed (samples answered beside a failed one), and one it did not
            Call("g40", "teacher", "generate", "gpt-4o-mini", {"g": 40}, None, 100, 9, cost_usd=0.0004,
                 status="error", error="1 of 2 samples failed: APIStatusError"),
            Call("g41", "teacher", "generate", "gpt-4o-mini", {"g": 41}, None, status="error", error="timeout"),
            Call("p0", "teacher", "pilot", "gpt-4o-mini", {"p": 0}, {"output": "a"}, 90, 2, cost_usd=0.0003),
            Call("p1", "teacher", "pilot", "gpt-4o-mini", {"p": 1}, None, 30, 0, cost_usd=0.0001, status="error",
                 error="refusal: no"),
            Call("s0", "teacher", "synthesize", "claude-haiku", {"s": 0}, {"output": "x"}, 500, 300, cost_usd=0.0017),
            Call("j0", "judge", "evaluate", "gpt-4o", {"j": 0}, {"output": "yes"}, 400, 1, cost_usd=0.001),
            Call("j1", "judge", "evaluate", "gpt-4o", {"j": 1}, None, status="error", error="timeout"),
            Call("e0", "student", "evaluate", "student-a", {"e": 0}, {"output": "a"}, 50, 2, cost_usd=1e-6),
            Call("e1", "student", "pilot", "student-a", {"e": 1}, {"output": "b"}, 50, 2, cost_usd=2e-6),
        ]
        led.record_many(rows)
        # serve's rows: an escalation the teacher answered, one the student did, one that failed
        for who, status in (("teacher", "ok"), ("student", "ok"), ("student", "error")):
            led.record_served(ServedCall(request_hash=f"v{who}{status}", answered_by=who, model="gpt-4o-mini"
                                         if who == "teacher" else "student-a", request={"messages": []},
                                         content="a", input_tokens=70, output_tokens=2, cost_usd=0.00002,
                                         status=status, error=None if status == "ok" else "boom"))
        for role in ("teacher", "judge", "student"):
            got, want = led.spend_by_stage(role), _reference(path, role)
            assert [{**g, "cost_usd": pytest.approx(g["cost_usd"], rel=1e-12)} for g in want] == got, role
        assert [(g["model"], g["stage"]) for g in led.spend_by_stage("teacher")] == [
            ("claude-haiku", "synthesize"), ("gpt-4o-mini", "generate"), ("gpt-4o-mini", "pilot"),
            ("gpt-4o-mini", "serve")]

    sent: list[str] = []
    connect = Ledger._connect

    def traced(self, *a, **k):
        db = connect(self, *a, **k)
        db.set_trace_callback(sent.append)
        return db

    monkeypatch.setattr(Ledger, "_connect", traced)
    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    # A model's stages are listed where it has more than one; the judge's and the student's always.
    teacher = [g for g in _reference(path, "teacher") if g["model"] == "gpt-4o-mini"]
    expected = [_line("teacher", g) for g in teacher]
    expected += [_line(r, g) for r in ("judge", "student") for g in _reference(path, r)]
    assert [ln for ln in out.splitlines() if " (" in ln.split(":")[0]] == expected, out
    assert "teacher gpt-4o-mini (generate): 42 calls (2 errors)" in out
    # Nothing read every row to add them up.
    assert sent and not [q for q in sent if "SELECT *" in q.upper() and "FROM CALLS" in q.upper()], sent


def test_cost_names_the_open_batches_it_cannot_count_yet(tmp_path, capsys):
    """A run killed with a batch at the provider: the batch is billed as it completes, but its answers
    (and their cost) reach the ledger only when generate collects them. `potstill cost` said nothing of it."""
    path = tmp_path / "calls.sqlite"
    with Ledger(path) as led:
        led.record_many([Call("g0", "teacher", "generate", "gpt-4o-mini", {"g": 0}, {"output": "a"}, 100, 2,
                              cost_usd=0.0001)])
        led.batch_new("b-open", "openai", "gpt-4o-mini", "generate", 1, [(f"h{i}", {"i": i}) for i in range(30)])
        led.batch_update("b-open", state="in_progress", batch_id="batch_1")
        led.batch_new("b-done", "openai", "gpt-4o-mini", "generate", 1, [("h99", {"i": 99})])
        led.batch_update("b-done", state="collected", batch_id="batch_0")
    sys.argv = ["potstill", "cost", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    batches = [ln for ln in out.splitlines() if " batch " in ln]
    assert len(batches) == 1 and "b-open (openai, in_progress) holds 30 requests not counted above" in batches[0], out


def test_a_served_reuse_of_a_teacher_answer_adds_no_tokens_to_the_bill(tmp_path, capsys):
    """serve answers an escalation whose request the teacher already answered from that answer
    (reason ``+cached``, $0), and its row keeps the reused call's tokens for `potstill requests`:
    `potstill cost` added them up, so one billed call of 50 input (20 cached) and 5 output tokens
    read as 100 input (40 cached) + 10 output beside its one $0.0100."""
    path = tmp_path / "calls.sqlite"
    msgs = {"messages": [{"role": "user", "content": "hi"}]}
    with Ledger(path) as led:
        for cached in (False, True):  # the fields serve.service writes for each
            led.record_served(ServedCall(
                request=msgs, answered_by="teacher", model="gpt", student="stud",
                reason="low_confidence" + ("+cached" if cached else ""), content="b", cost_usd=0.0 if cached else 0.01,
                student_cost_usd=0.001, input_tokens=50, output_tokens=5, cached_input_tokens=20,
                extra={"teacher_stop_reason": "stop", **({"teacher_cached": True} if cached else {})}))
        assert (led.summary("teacher")["input_tokens"], led.summary("teacher")["output_tokens"]) == (50, 5)
        assert [(g["input_tokens"], g["output_tokens"]) for g in led.spend_by_stage("teacher")] == [(50, 5)]
        served = led.served()
        assert len(served) == 2 and all(r.input_tokens == 50 for r in served)  # the rows keep them
    sys.argv = ["potstill", "cost", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "teacher gpt: 2 calls (0 errors), 50 input (20 cached) + 5 output tokens, $0.0100" in out, out
