"""A provider batch that a killed run left open, met by a rerun that no longer asks for its requests
as they are. It is billed when it ends all the same; the rerun used to skip it (open batches were
matched on exact request hashes), leave it ``submitted`` in the ledger for good and pay for every
request again, in a new batch or live."""

from __future__ import annotations

import pytest
import yaml

from potstill.ledger import Ledger
from tests.generate.test_batch import SECRET, kill_with_batch_open, ledger_batches, project
from tests.generate.test_generate import check_output
from tests.helpers.batch_server import BatchLoopback
from tests.helpers.cli import run_main


def _kill_with_batch_open(tmp_path, srv, provider: str, n: int, **changes):
    """A generate killed (-9) while its one batch is open at the provider; then the config changed."""
    cfg_path = project(tmp_path, srv, provider, n)
    db = kill_with_batch_open(tmp_path, cfg_path)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["teacher"].update(changes)
    cfg_path.write_text(yaml.safe_dump(raw))
    return cfg_path, db


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_left_open_under_another_max_tokens_is_collected_and_its_answers_reused(
        tmp_path, monkeypatch, capsys, provider):
    n = 20
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    with BatchLoopback(key=SECRET, latency=30) as srv:
        # Every request hash changes with max_tokens; the prompts do not.
        cfg_path, db = _kill_with_batch_open(tmp_path, srv, provider, n, max_tokens=16)
        bid = ledger_batches(db)[0]["batch_id"]
        # Live, the same prompts would be paid twice: one line names the batch and what to do.
        code, err = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path), "--generate.engine=async")
        said = " ".join(" ".join(err).split())
        assert code == 2 and said.count("error:") == 1, said
        assert bid in said and "generate.engine batch to collect it first" in said, said
        srv.set_latency(0.2)
        code, err = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path))
        stats = srv.stats()
    said = " ".join(" ".join(err).split())
    assert code == 0, said
    assert f"collecting 1 open {provider} batch(es) of a killed run first, holding {n} requests" in said, said
    check_output(tmp_path / "run" / "teacher.jsonl", n)
    # Collected, and its answers (each ended by itself within 16 tokens) reused: no second batch,
    # no request submitted twice.
    assert stats["created"] == {provider: 1} and set(stats["submissions"].values()) == {1}
    assert [(b["batch_id"], b["state"]) for b in ledger_batches(db)] == [(bid, "collected")]
    assert f"{n} answered under another teacher.max_tokens" in said, said


def test_an_open_batch_of_another_model_is_collected_beside_the_new_one(tmp_path, monkeypatch, capsys):
    """A batch of another teacher.model answers nothing here, but it is billed: it is collected,
    priced and logged under its own model, while this run's requests go out in a new batch."""
    n = 10
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    with BatchLoopback(key=SECRET, latency=30) as srv:
        cfg_path, db = _kill_with_batch_open(tmp_path, srv, "openai", n, model="gpt-4o")
        srv.set_latency(0.2)
        code, err = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path))
        stats = srv.stats()
    assert code == 0, err
    check_output(tmp_path / "run" / "teacher.jsonl", n)
    assert [b["state"] for b in ledger_batches(db)] == ["collected", "collected"]
    assert stats["created"] == {"openai": 2} and set(stats["submissions"].values()) == {1}
    with Ledger(db) as ledger:
        rows = ledger.rows(role="teacher")
    by_model = {m: [r for r in rows if r["model"] == m] for m in ("gpt-4o-mini", "gpt-4o")}
    assert [len(v) for v in by_model.values()] == [n, n]
    # each at its own model's batch price (the default table: $0.15 / $2.50 per Mtok of input)
    for model, per_in in (("gpt-4o-mini", 0.15), ("gpt-4o", 2.5)):
        r = by_model[model][0]
        assert r["cost_usd"] > 0 and r["cost_usd"] >= r["input_tokens"] * per_in / 1e6 * 0.5 * 0.999


def test_a_killed_runs_batch_never_sent_is_not_sent_for_requests_no_one_asks_for(tmp_path, monkeypatch, capsys):
    """The row of a batch that never reached the provider (it was down), then teacher.model changed:
    the rerun looks for it, finds nothing and closes it as unsent, rather than buying answers of
    the old model that no input asks for."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    with BatchLoopback(key=SECRET) as srv:
        port = srv.port
        cfg_path = project(tmp_path, srv, "openai", 6)
    code, _ = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path))  # nothing listens: connection refused
    db = tmp_path / "run" / "calls.sqlite"
    assert code == 2 and [b["state"] for b in ledger_batches(db)] == ["preparing"]
    raw = yaml.safe_load(cfg_path.read_text())
    raw["teacher"]["model"] = "gpt-4o"
    cfg_path.write_text(yaml.safe_dump(raw))
    fresh = BatchLoopback(key=SECRET)
    fresh.port = port
    fresh.args = [f"--port={port}", f"--key={SECRET}"]
    with fresh:
        code, err = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path))
        stats = fresh.stats()
    assert code == 0, err
    check_output(tmp_path / "run" / "teacher.jsonl", 6)
    assert [b["state"] for b in ledger_batches(db)] == ["unsent", "collected"]
    assert stats["created"] == {"openai": 1} and stats["uploads"] == 1
