"""`potstill watch` on a real served run: shifted traffic sent through the real server is flagged,
unshifted traffic is not (three seeds each), the CLI's exit codes say so, and bad input gets one
clear error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from potstill.errors import PotstillError
from potstill.serve import run_config
from potstill.watch import EXIT_DRIFT, watch_run
from tests.watch.conftest import WATCH, traffic

SEEDS = [0, 1, 2]


def cli(run, *args: str) -> subprocess.CompletedProcess:
    """``potstill watch RUN ARGS``; with ``run`` None, no RUN (``-c`` among ARGS names it)."""
    env = {**os.environ, "POTSTILL_PROGRESS": "never", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "potstill.cli", "watch", *([str(run)] if run else []), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def watch(run, **kw):
    return watch_run(run, run_config(run, None), device="cpu", **kw)


def test_flags_shifted_traffic_and_not_unshifted(served_run):
    run, send, _ = served_run
    verdicts, order = {}, []
    for seed in SEEDS:
        for kind in ("unshifted", "topic", "language"):
            send(traffic(kind, WATCH["window"], seed))
            if seed == 0 and kind in ("unshifted", "topic"):
                # The real command, in a subprocess, for its exit code and its table; once named
                # as every stage is, by its config (whose run_dir is the run).
                p = cli(run) if kind == "topic" else cli(None, "-c", str(run / "potstill.yaml"))
                assert p.returncode == (0 if kind == "unshifted" else EXIT_DRIFT), p.stderr
                assert "potstill watch" in p.stdout and ("DRIFT" in p.stdout) == (kind != "unshifted")
                report = json.loads((run / "watch" / "report.json").read_text())
            else:
                report = watch(run)
            assert report["traffic"]["n"] == WATCH["window"]
            verdicts[kind, seed] = report
            order.append(report)
    for seed in SEEDS:
        calm, topic, lang = verdicts["unshifted", seed], verdicts["topic", seed], verdicts["language", seed]
        assert not calm["drift"], calm["checks"]
        assert topic["checks"]["input"]["flagged"] and topic["drift"]
        assert lang["checks"]["input"]["flagged"] and lang["drift"]
        # The shift is an effect, not just significance: MMD far above the unshifted window's.
        assert topic["checks"]["input"]["effect"] > 2 * calm["checks"]["input"]["effect"]
    # The report on disk is the last verdict, whole, with its human-readable twin; no temp files stay.
    md = (run / "watch" / "report.md").read_text()
    assert md.startswith("# potstill watch: DRIFT") and "| inputs (MMD) |" in md
    assert sorted(p.name for p in (run / "watch").iterdir()) == ["history.jsonl", "reference.pt", "report.json",
                                                                  "report.md"]
    # Every run is a line of history.jsonl, in order, and report.md tabulates them, newest first.
    history = [json.loads(x) for x in (run / "watch" / "history.jsonl").read_text().splitlines()]
    assert [(h["created"], h["drift"], h["input"]["effect"]) for h in history] == \
        [(r["created"], r["drift"], r["checks"]["input"]["effect"]) for r in order]
    assert "## History: the last 9 of 9 runs" in md
    table = [ln for ln in md.split("## History", 1)[1].splitlines() if ln.startswith("| 20")]
    assert [ln.split(" | ")[0][2:] for ln in table] == [r["created"] for r in reversed(order)]
    assert [ln.rstrip(" |").endswith("DRIFT") for ln in table] == [r["drift"] for r in reversed(order)]


def test_time_range_selects_requests_by_time(served_run):
    run, send, _ = served_run
    start = time.time()
    time.sleep(0.05)
    send(traffic("unshifted", 35, seed=7))
    report = watch(run, since=start)
    assert report["traffic"]["n"] == 35 and report["traffic"]["selection"] == "time range"
    with pytest.raises(PotstillError, match=r"0 answered served request\(s\) in that time range; watch needs at least 30"):
        watch(run, since=time.time() + 60)
    p = cli(run, "--since", "2h", "--until", "not-a-time")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "cannot read time 'not-a-time'" in p.stderr


def test_errors_are_one_clear_line(served_run, tmp_path):
    run, _, _ = served_run
    with pytest.raises(PotstillError, match=r"calls.sqlite not found: no served traffic"):
        watch_run(tmp_path, run_config(run, None))
    (tmp_path / "calls.sqlite").write_text("not a database")
    with pytest.raises(PotstillError, match=r"calls.sqlite: not a potstill ledger"):
        watch_run(tmp_path, run_config(run, None))
    with pytest.raises(PotstillError, match=r"watch needs at least 100000 \(watch.min_requests\)"):
        cfg = run_config(run, None, {"watch.min_requests": 100000, "watch.window": 100000})
        watch_run(run, cfg, device="cpu")
    p = cli(run, "--watch.alpha", "2")
    assert p.returncode == 2 and "watch.alpha" in p.stderr and p.stderr.strip().count("\n") == 0
    p = cli(None)
    assert p.returncode == 2 and p.stderr.strip() == "error: potstill watch: give RUN (the run directory) or -c potstill.yaml (its run_dir)"


def test_escalation_surge_is_flagged(served_run):
    """Unshifted inputs, but every one sent to the teacher (as a broken student would be): the
    escalation share and the label mix (the tiny teacher answers noise) are flagged, the inputs not."""
    from potstill.serve.routing import Routing

    run, send, service = served_run
    saved = service.routing
    service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf, stats=saved.stats)
    try:
        send(traffic("unshifted", WATCH["window"], seed=11))
    finally:
        service.routing = saved
    report = watch(run)
    esc = report["checks"]["escalation"]
    assert esc["share"] == 1.0 and esc["flagged"] and esc["max"] == pytest.approx(esc["expected"] + 0.15)
    # Which rule sent them: the confidence threshold at +inf, here (the OOD one at +inf sends none).
    assert esc["by_reason"] == {"low_confidence": 1.0}
    md = (run / "watch" / "report.md").read_text()
    assert "| escalated by reason | low_confidence 100.0% |" in md
    # The "flag when" cell names the condition that raises the flag, as every other row does
    # (it read "share <= 35%" beside DRIFT).
    limit = f"{esc['max']:.0%}"
    assert f"share > {limit} (val" in md and f"share <= {limit}" not in md
    assert report["checks"]["labels"]["flagged"] and report["checks"]["labels"]["live"]["(invalid)"] > 0.5
    assert not report["checks"]["input"]["flagged"]


def test_a_window_under_min_requests_is_named_not_blamed_on_the_ledger(tmp_path):
    # 60 requests served; a window of 20 was reported as "20 answered served request(s) in the ledger".
    from potstill.config import Config
    from potstill.ledger import Ledger, ServedCall

    with Ledger(tmp_path / "calls.sqlite") as ledger:
        for i in range(60):
            ledger.record_served(ServedCall(request={"messages": [{"role": "user", "content": f"input {i}"}]},
                                            answered_by="student", model="student", content="tech"))
    cfg = Config(task={"labels": ["tech", "sports"]}, watch={"window": 20})
    with pytest.raises(PotstillError, match=r"watch.window 20 is under watch.min_requests 50"):
        watch_run(tmp_path, cfg)


def test_a_corrupt_reference_cache_is_embedded_again_and_a_corrupt_routing_file_named(served_run, tmp_path):
    """RUN/watch/reference.pt cut short or RUN/serve/routing.json edited by hand: watch stopped with
    a traceback (torch's unpickling error, json's JSONDecodeError). The reference is watch's own
    cache: it is embedded again and rewritten; routing.json is serve's: the escalation share is
    reported, not judged, and the note names the file."""
    import shutil

    import torch

    run, send, _ = served_run
    send(traffic("unshifted", 30, seed=21))  # the earlier tests may not have run: at least min_requests
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    watch(copy)  # writes copy/watch/reference.pt
    good = torch.load(copy / "watch" / "reference.pt")["embeddings"]
    (copy / "watch" / "reference.pt").write_bytes(b"PK\x03\x04 cut short")
    (copy / "serve" / "routing.json").write_text('{"key": "abc", "stats": {"val_escala')
    report = watch(copy)
    assert torch.equal(torch.load(copy / "watch" / "reference.pt")["embeddings"], good)
    esc = report["checks"]["escalation"]
    assert esc["expected"] is None and not esc["flagged"]
    note = next(n for n in report["notes"] if "routing.json" in n)
    assert "cannot be read" in note and "reported but not judged" in note and "\n" not in note
    p = cli(copy)
    assert p.returncode in (0, EXIT_DRIFT) and "Traceback" not in p.stderr, p.stderr


def test_a_history_line_cut_short_is_skipped_and_the_next_run_starts_its_own(tmp_path):
    from potstill.watch.stage import append_history, read_history

    path = tmp_path / "watch" / "history.jsonl"
    append_history(path, {"created": "a", "drift": False})
    with open(path, "a") as f:
        f.write('{"created": "b", "dri')  # a run killed in the middle of its line
    append_history(path, {"created": "c", "drift": True})
    rows, cut = read_history(path)
    assert [r["created"] for r in rows] == ["a", "c"] and cut == 1
