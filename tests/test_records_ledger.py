import json
import sqlite3
import sys

import pytest

from potstill.cli import main
from potstill.errors import PotstillError
from potstill.ledger import MIGRATIONS, Call, Ledger
from potstill.records import Record, atomic_files, atomic_write, read_records, write_jsonl


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


def test_a_byte_order_mark_at_the_start_is_read_past(tmp_path):
    """Found by an audit: inputs saved by Windows Notepad (UTF-8 with a BOM) were refused as
    'malformed JSON: unexpected UTF-8 BOM'; the mark is dropped, the lines read as written."""
    p = tmp_path / "in.jsonl"
    p.write_bytes("\ufeff".encode() + b'{"input": "caf\xc3\xa9 one"}\n{"input": "two"}\n')
    assert [r.messages[0]["content"] for r in read_records(p)] == ["caf\u00e9 one", "two"]


def test_content_parts_are_their_text_and_a_non_text_part_is_refused_at_its_line(tmp_path):
    """OpenAI's content-parts form was let through but read as Python's repr of the list (Record.text,
    and the chat template of a local teacher or student); an image part reached training unseen."""
    from potstill.models.prompting import PromptFormat
    from tests.helpers.tiny import make_tokenizer

    p = tmp_path / "in.jsonl"
    parts = [{"type": "text", "text": "the team "}, {"type": "text", "text": "won"}]
    p.write_text(json.dumps({"messages": [{"role": "user", "content": parts}]}) + "\n")
    (r,) = read_records(p)
    assert r.text == "the team won"
    tok = make_tokenizer()
    for kind in ("chat", "completion"):
        fmt = PromptFormat(kind=kind, instruction="Topic?")
        assert fmt.query(tok, r.messages) == fmt.query(tok, [{"role": "user", "content": "the team won"}])
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    p.write_text('{"input": "ok"}\n' + json.dumps({"messages": [{"role": "user", "content": [parts[0], image]}]}) + "\n")
    with pytest.raises(PotstillError, match=r"in\.jsonl:2: messages\.0\.content\.1: a part of type 'image_url'; "
                                            r"potstill distils text"):
        read_records(p)


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


def test_a_failed_write_leaves_no_folder_it_would_have_made(tmp_path):
    """Found by a review: atomic_write made the missing folders above its path before the first line,
    so a failed write left them behind, empty. They appear with the file, or not at all; folders that
    were there before stay."""
    def rows():
        yield {"a": 1}
        raise RuntimeError("crash mid-write")

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "kept" / "new" / "dir" / "out.jsonl", rows())
    with pytest.raises(RuntimeError), atomic_files([tmp_path / "run" / "train.jsonl", tmp_path / "run" / "sub" / "val.jsonl"]) as fs:
        for f in fs.values():
            f.write("{}\n")
        raise RuntimeError("crash before the renames")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["kept"]  # no temp file either
    write_jsonl(tmp_path / "kept" / "new" / "dir" / "out.jsonl", [{"a": 1}])
    assert (tmp_path / "kept" / "new" / "dir" / "out.jsonl").read_text() == '{"a": 1}\n'
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "kept", "kept/new", "kept/new/dir", "kept/new/dir/out.jsonl"]
    (tmp_path / "file").write_text("")
    with pytest.raises((FileExistsError, NotADirectoryError)):  # a file in the way: said before any row is written
        with atomic_write(tmp_path / "file" / "x" / "out.jsonl"):
            pytest.fail("opened a temp file under a file")


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


def test_served_rows_round_trip_and_query_by_time_and_limit(tmp_path):
    from potstill.ledger import ServedCall

    path = tmp_path / "calls.sqlite"
    chat = {"model": "m", "messages": [{"role": "system", "content": "ignored"},
                                       {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}]}
    with Ledger(path) as led:
        for i in range(5):
            led.record_served(ServedCall(request=chat, answered_by="teacher" if i % 2 else "student", model=f"m{i}",
                                         content=f"c{i}", reason="low_confidence" if i % 2 else "confident",
                                         confidence=0.5, extra={"teacher_latency_s": 0.1}, cost_usd=0.01,
                                         request_hash=f"h{i}", created_at=1000.0 + i))
        led.record_served(ServedCall(request={"bad": 1}, answered_by="student", model="m", status="error",
                                     error="400: no", error_body={"error": {"message": "no"}}, created_at=1010.0))
        # served rows are never a teacher answer to reuse, even under a teacher hash
        assert led.lookup(["h1"]) == {}
    with Ledger(path, readonly=True) as led:
        every = led.served()
        assert [s.content for s in every] == ["c0", "c1", "c2", "c3", "c4"]
        s = every[1]
        assert s.escalated and s.model == "m1" and s.reason == "low_confidence" and s.extra == {"teacher_latency_s": 0.1}
        assert s.messages == [{"role": "user", "content": "a b"}] and s.request == chat and s.request_hash == "h1"
        assert [s.content for s in led.served(since=1001.0, until=1003.0)] == ["c1", "c2", "c3"]
        assert [s.content for s in led.served(limit=2)] == ["c3", "c4"]
        failed = led.served(status=None)[-1]
        assert failed.status == "error" and failed.error_body == {"error": {"message": "no"}} and failed.content is None
        with pytest.raises(sqlite3.OperationalError):
            led._db.execute("DELETE FROM calls")  # read-only: watching never writes
    with pytest.raises(PotstillError, match="not found"):
        Ledger(tmp_path / "none.sqlite", readonly=True)


def test_projected_cost_is_priced_from_this_generate_runs_answers(tmp_path):
    """The rest of a stopped generate is priced at the mean of the answers it got, not of every
    call to the model: synthesize's long inputs (or served escalations) cost far more per call
    than a label, and counted in, they inflated `potstill cost`'s projection."""
    with Ledger(tmp_path / "calls.sqlite") as led:
        led.record_many([Call(f"s{i}", "teacher", "synthesize", "m", {"s": i}, {"output": "long text"}, 200, 400,
                              cost_usd=0.01) for i in range(5)])
        hashes = [f"g{i}" for i in range(10)]
        run_id = led.start_run("generate", "m", 10, hashes, 0)
        led.record_many([Call(h, "teacher", "generate", "m", {"g": h}, {"output": "a"}, 20, 1, cost_usd=0.0001)
                         for h in hashes[:4]])
        led.record(Call(hashes[4], "teacher", "generate", "m", {"g": 4}, None, status="error", error="boom"))
        led.finish_run(run_id, "budget", 0)
        latest = led.cost_report()["latest_run"]
    assert latest["remaining"] == 6
    assert latest["cost_per_call_usd"] == pytest.approx(0.0001)
    assert latest["projected_remaining_usd"] == pytest.approx(6 * 0.0001)


def test_projected_cost_covers_what_earlier_runs_of_the_same_teacher_left_unanswered(tmp_path, monkeypatch, capsys):
    """A budget-stopped generate over 10 inputs, then a trial rerun with data.limit 3 (all cached):
    the 6 inputs the first run left are still to pay for, and `potstill cost` says so; a run of
    another teacher (another identity) abandons them."""
    with Ledger(tmp_path / "calls.sqlite") as led:
        hashes = [f"g{i}" for i in range(10)]
        first = led.start_run("generate", "m", 10, hashes, 0, identity="teacher-a")
        led.record_many([Call(h, "teacher", "generate", "m", {"g": h}, {"output": "a"}, 20, 1, cost_usd=0.0001)
                         for h in hashes[:4]])
        led.finish_run(first, "budget", 0)
        trial = led.start_run("generate", "m", 3, hashes[:3], 3, identity="teacher-a")
        led.finish_run(trial, "done", 0)
        latest = led.cost_report()["latest_run"]
        assert (latest["remaining"], latest["unique_requests"], latest["earlier_remaining"]) == (6, 9, 6)
        assert latest["projected_remaining_usd"] == pytest.approx(6 * 0.0001)
        monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(tmp_path)])
        with pytest.raises(SystemExit) as e:
            main()
        out = capsys.readouterr().out
        assert e.value.code == 0 and "6 of 9 requests unanswered, projected cost of the rest $0.0006 (6 of these" in out
        other = led.start_run("generate", "m", 2, ["x0", "x1"], 0, identity="teacher-b")
        led.finish_run(other, "error", 0)
        latest = led.cost_report()["latest_run"]
    assert (latest["remaining"], latest["unique_requests"], latest["earlier_remaining"]) == (2, 2, 0)


def test_a_generates_tool_rounds_are_reported_with_it(tmp_path):
    """generate.tool_rounds: each round's steps are runs of their own (parent: the generate's run). The
    report is the generate and its steps together, even when the last step finished; the next generate
    drops the steps' plans (their requests came from answers, and its own rounds ask what is missing)
    while keeping what the first requests left, as for any rerun."""
    with Ledger(tmp_path / "calls.sqlite") as led:
        answer = lambda hs: led.record_many([Call(h, "teacher", "generate", "m", {"g": h}, {"output": "a"}, 20, 1,
                                                  cost_usd=0.0001) for h in hs])
        main_run = led.start_run("generate", "m", 3, ["g0", "g1", "g2"], 0, identity="tools")
        answer(["g0", "g1"])
        led.finish_run(main_run, "done", 1)
        played = led.start_run("generate", "m", 2, ["p0"], 0, identity="player", parent=main_run)
        answer(["p0"])
        led.finish_run(played, "done", 0)
        chats = led.start_run("generate", "m", 2, ["t0", "t1"], 1, identity="tools", parent=main_run)
        answer(["t0"])
        led.finish_run(chats, "errors", 2)
        latest = led.cost_report()["latest_run"]
        assert (latest["inputs"], latest["tool_rounds"], latest["unique_requests"], latest["remaining"]) == (3, 1, 6, 2)
        assert (latest["status"], latest["cache_hits"], latest["retries"], latest["earlier_remaining"]) == (
            "errors", 1, 3, 0)
        # The next generate: g2 is still this teacher's to answer; t1 leaves with its step.
        again = led.start_run("generate", "m", 2, ["g0", "g1"], 2, identity="tools")
        led.finish_run(again, "done", 0)
        latest = led.cost_report()["latest_run"]
    assert (latest["tool_rounds"], latest["unique_requests"], latest["remaining"], latest["earlier_remaining"]) == (
        0, 3, 1, 1)


def test_spend_counts_the_paid_error_rows(tmp_path, monkeypatch, capsys):
    """An error row can hold a billed cost (Anthropic's samples answered beside a failed one, a refusal):
    the ledger keeps it so that it equals the bill. The per-model spend counted it, but the per-stage
    lines of `potstill cost` and ``summary`` (evaluate's one-time generation cost) read ok rows only."""
    with Ledger(tmp_path / "calls.sqlite") as led:
        led.record(Call("g0", "teacher", "generate", "m", {"g": 0}, {"output": "a"}, 20, 5, cost_usd=0.01))
        led.record(Call("g1", "teacher", "generate", "m", {"g": 1}, None, 20, 5, cost_usd=0.004, status="error",
                        error="1 of 2 samples failed: APIStatusError"))
        led.record(Call("p0", "teacher", "pilot", "m", {"p": 0}, {"output": "a"}, 20, 5, cost_usd=0.002))
        led.record(Call("p1", "teacher", "pilot", "m", {"p": 1}, None, status="error", error="timeout"))
        s = led.summary("teacher")
        assert (s["calls"], s["cost_usd"], s["input_tokens"], s["output_tokens"]) == (2, pytest.approx(0.016), 60, 15)
    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "teacher m: 4 calls (2 errors), 60 input (0 cached) + 15 output tokens, $0.0160" in out
    assert "teacher m (generate): 2 calls (1 errors), 40 input + 10 output tokens, $0.0140" in out
    assert "teacher m (pilot): 2 calls (1 errors), 20 input + 5 output tokens, $0.0020" in out


def _cost_out(monkeypatch, capsys, run) -> str:
    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(run)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    return out


def test_the_projection_after_a_batch_run_is_priced_at_what_the_rerun_pays(tmp_path, monkeypatch, capsys):
    """A budget-stopped generate answered through a provider batch API (half the live price): a plain
    rerun sends the rest live, at full price, so the projection must not be the batch run's mean
    cost per call; under generate.engine batch the rerun pays generate.batch_price, and it says which."""
    import yaml

    with Ledger(tmp_path / "calls.sqlite") as led:
        hashes = [f"g{i}" for i in range(10)]
        run_id = led.start_run("generate", "gpt-4o-mini", 10, hashes, 0)
        led.record_many([Call(h, "teacher", "generate", "gpt-4o-mini", {"g": h}, {"output": "a"}, 20, 1,
                              cost_usd=0.00005, price_multiplier=0.5) for h in hashes[:4]])
        led.finish_run(run_id, "budget", 0)
    # no saved config: the live price, said so
    out = _cost_out(monkeypatch, capsys, tmp_path)
    assert "projected cost of the rest $0.0006 at the live price" in out, out
    cfg = {"task": {"type": "classification", "labels": ["a", "b"]}, "teacher": {"type": "openai", "model": "gpt-4o-mini"}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    out = _cost_out(monkeypatch, capsys, tmp_path)
    assert "projected cost of the rest $0.0006 at the live price (generate.engine async)" in out, out
    cfg["generate"] = {"engine": "batch", "batch_price": {"openai": 0.2}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    out = _cost_out(monkeypatch, capsys, tmp_path)
    assert ("projected cost of the rest $0.0001 at 0.2 of the live price (generate.engine batch, "
            "generate.batch_price.openai)") in out, out


def test_a_directory_written_atomically_has_the_modes_mkdir_and_open_give(tmp_path):
    """atomic_dir (the trained student, checkpoints, converted models) renamed mkdtemp's 0700
    directory into place, and files some writers make 0600 kept that: a student trained by one
    account could not be served by another. The modes follow the umask, as a plain mkdir's would."""
    import os
    import stat
    import tempfile

    from potstill.records import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "student") as d:
            fd, f = tempfile.mkstemp(dir=d)  # 0600, as safetensors and torch may leave a file
            os.close(fd)
            (d / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    out = tmp_path / "student"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 and stat.S_IMODE((out / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / os.path.basename(f)).stat().st_mode) == 0o644


def test_a_kept_objects_change_is_never_written_over_by_another_servers(tmp_path):
    """Two servers on one run (two connections to one ledger): a batch's periodic counts, read and
    written back while another server cancels it, kept the old status and lost the cancel. In one
    write transaction, the other change waits and lands on top of this one."""
    import threading

    path = tmp_path / "calls.sqlite"
    a, b = Ledger(path), Ledger(path)
    a.put_object("serve_batches", {"id": "batch_1", "status": "in_progress", "created_at": 1, "counts": 0})
    done = threading.Event()

    def cancel() -> None:
        b.update_object("serve_batches", "batch_1", lambda o: o.update(status="cancelling"))
        done.set()

    def count(o: dict) -> None:
        threading.Thread(target=cancel).start()
        assert not done.wait(0.3)  # the other server waits for this write
        o["counts"] = 7

    a.update_object("serve_batches", "batch_1", count)
    assert done.wait(10)
    assert a.get_object("serve_batches", "batch_1") == {"id": "batch_1", "status": "cancelling", "created_at": 1,
                                                        "counts": 7}
    a.close()
    b.close()
