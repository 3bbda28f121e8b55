"""``potstill requests RUN``: the served requests in the run's ledger, read beside the live server
(a real process, the CLI as a user runs it): the latest as a table, one by its x-request-id in
full, filters, JSON lines, and one clear line for what it cannot find."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from tests.serve.conftest import MSG, SERVE_KEY, TEACHER_KEY, client


def cli(run, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POTSTILL_PROGRESS": "never"}
    return subprocess.run([sys.executable, "-m", "potstill.cli", "requests", str(run), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_requests_lists_and_finds_served_requests(served, force):
    service, live = served
    run = service.ledger.path.parent
    cl = client(live)
    force("student")
    chat = cl.chat.completions.create(model="potstill", messages=MSG, extra_headers={"X-Request-ID": "trace-a-1"})
    with pytest.raises(openai.BadRequestError):
        cl.chat.completions.create(model="potstill", messages=[{"role": "system", "content": "no user"}],
                                   extra_headers={"X-Request-ID": "trace-c-3"})
    cl.completions.create(model="potstill", prompt=["a vote in the election", "new phone software"],
                          extra_headers={"X-Request-ID": "trace-d-4"})
    force("teacher")
    resp = cl.responses.create(model="potstill", input="the film star", extra_headers={"X-Request-ID": "trace-b-2"})

    listed = cli(run, "--last", "5")
    assert listed.returncode == 0, listed.stderr
    head, *lines = listed.stdout.splitlines()
    assert head.split()[:6] == ["time", "request_id", "endpoint", "status", "by", "reason"]
    assert [ln.split()[2] for ln in lines] == ["trace-a-1", "trace-c-3", "trace-d-4", "trace-d-4", "trace-b-2"]
    assert [ln.split()[4] for ln in lines] == ["ok", "400", "ok", "ok", "ok"]
    assert "completions" in lines[2] and "responses" in lines[4] and "teacher" in lines[4]

    one = cli(run, "--id", "trace-b-2")
    assert one.returncode == 0, one.stderr
    got = json.loads(one.stdout)
    assert (got["endpoint"], got["answered_by"], got["answer"]) == ("/v1/responses", "teacher", resp.output_text)
    assert got["messages"] == [{"role": "user", "content": "the film star"}] and got["cost_usd"] > 0
    assert got["student_output"] is not None and got["confidence"] is not None
    assert got["response_id"] == resp.id and json.loads(cli(run, "--id", resp.id).stdout) == got

    both = [json.loads(x) for x in cli(run, "--id", "trace-d-4", "--json").stdout.splitlines()]
    assert [r["messages"][0]["content"] for r in both] == ["a vote in the election", "new phone software"]
    assert {r["endpoint"] for r in both} == {"/v1/completions"}

    [refused] = [json.loads(x) for x in cli(run, "--errors", "--json", "--since", "10m").stdout.splitlines()
                 if json.loads(x)["request_id"] == "trace-c-3"]
    assert (refused["status"], refused["answered_by"], refused["endpoint"]) == ("400", None, "/v1/chat/completions")
    assert "needs a user message" in refused["error"] or "user" in refused["error"]

    escalated = [json.loads(x) for x in cli(run, "--who", "teacher", "--json", "--last", "50").stdout.splitlines()]
    assert escalated and {r["answered_by"] for r in escalated} == {"teacher"}
    mine = json.loads(cli(run, "--id", "trace-a-1").stdout)
    assert mine["answer"] == chat.choices[0].message.content and mine["answered_by"] == "student"

    everything = "".join(cli(run, "--last", "500", *a).stdout for a in ((), ("--json",)))
    assert SERVE_KEY not in everything and TEACHER_KEY not in everything


@pytest.mark.parametrize("args, says", [
    (("--id", "trace-nothing"), "no served request with id 'trace-nothing'"),
    (("--since", "yesterday"), "--since 'yesterday': a span like 15m"),
    (("--who", "judge"), "--who 'judge': student or teacher"),
])
def test_what_it_cannot_read_is_one_line_and_exit_2(served, args, says):
    service, _ = served
    out = cli(service.ledger.path.parent, *args)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_run_without_a_ledger_is_one_line(tmp_path):
    out = cli(tmp_path)
    assert out.returncode == 2 and "calls.sqlite not found" in out.stderr


def test_an_empty_since_is_refused(tmp_path, monkeypatch, capsys):
    """Found by a review: `--since "$SINCE"` with SINCE unset listed every request and exited 0;
    watch refuses it, and so does requests now."""
    from potstill.ledger import Ledger
    from tests.helpers.cli import run_main

    Ledger(tmp_path / "calls.sqlite").close()
    assert run_main(monkeypatch, capsys, "requests", str(tmp_path), "--since", "") == (
        2, ["error: --since '': a span like 15m, 2h or 7d, or a date like 2026-12-06T09:30"])


def test_a_follow_stopped_by_ctrl_c_exits_130_with_one_line(tmp_path):
    """Found by a review: `--follow` ended by Ctrl-C exited 0 without a word, where every other
    command exits 130 with one line (README), so a script could not tell it was stopped."""
    import signal
    import time

    from potstill.ledger import Ledger
    from tests.helpers.cli import sigint_default

    Ledger(tmp_path / "calls.sqlite").close()
    p = subprocess.Popen([sys.executable, "-m", "potstill.cli", "requests", str(tmp_path), "--follow",
                          "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "POTSTILL_PROGRESS": "never"}, preexec_fn=sigint_default)
    try:
        deadline = time.time() + 60  # following once its imports are done and it has the ledger open
        while time.time() < deadline and p.poll() is None and not _holds(p.pid, tmp_path / "calls.sqlite"):
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert (p.returncode, err.strip().splitlines()) == (130, ["interrupted: potstill requests stopped"]), err


def _holds(pid: int, path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    try:
        return any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == os.path.realpath(path)
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_follow_prints_each_request_as_it_is_logged(served, force):
    """``--follow`` (as ``tail -f``): the latest, then each new request as the server logs it, in
    the table or as JSON lines, until Ctrl-C, which ends it as it ends every command: exit 130, one line."""
    import signal

    service, live = served
    force("student")
    run = service.ledger.path.parent
    client(live).chat.completions.create(model="potstill", messages=MSG)  # a latest row, whatever ran before
    env = {**os.environ, "POTSTILL_PROGRESS": "never", "PYTHONUNBUFFERED": "1"}
    procs = {mode: subprocess.Popen([sys.executable, "-m", "potstill.cli", "requests", str(run), "--follow",
                                     "--last", "1", "--interval", "0.1", *extra], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env,
                                    # Ctrl-C's signal as a terminal delivers it: a pytest-xdist worker
                                    # ignores SIGINT, and a child inherits that.
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
             for mode, extra in (("table", ()), ("json", ("--json",)))}
    import threading

    watchdog = threading.Timer(60, lambda: [p.kill() for p in procs.values()])  # a stuck read fails, not hangs
    watchdog.start()
    try:
        for p in procs.values():  # each has printed what was there before it takes in the new ones
            assert p.stdout.readline()
        procs["table"].stdout.readline()  # the head, then the latest row
        for i in range(3):
            client(live).chat.completions.create(model="potstill", messages=MSG,
                                                 extra_headers={"X-Request-ID": f"follow-{i}"})
        seen = {mode: [p.stdout.readline() for _ in range(3)] for mode, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        outs = {mode: p.communicate(timeout=30) for mode, p in procs.items()}
        watchdog.cancel()
    assert [ln.split()[2] for ln in seen["table"]] == ["follow-0", "follow-1", "follow-2"]
    assert [json.loads(ln)["request_id"] for ln in seen["json"]] == ["follow-0", "follow-1", "follow-2"]
    for mode, p in procs.items():
        assert p.returncode == 130 and outs[mode][1] == "interrupted: potstill requests stopped\n", outs[mode][1]


# Cursor up and erase the line, three times, then colours: the rows above are wiped on a terminal.
WIPES = "\x1b[1A\x1b[2K" * 3 + "\x1b[32mhi\x1b[0m \x9b2J \u202e(n=4)\r"


def test_control_characters_a_client_sends_are_shown_never_sent_to_the_terminal(served, force):
    """A served client's message went to the operator's terminal as it came: its ESC sequences erased
    the rows of the requests before it in `potstill requests` (and under --follow). Every control
    character (C0, C1, DEL) and bidi override is written as its \\uXXXX escape now, in the table and
    in JSON lines, which read back to the message the client sent."""
    service, live = served
    force("student")
    client(live).chat.completions.create(model="potstill", messages=[{"role": "user", "content": WIPES}],
                                         extra_headers={"X-Request-ID": "wipes"})
    run = service.ledger.path.parent
    outs = [cli(run, *args) for args in (("--last", "5"), ("--json",), ("--id", "wipes"))]
    for out in outs:
        assert out.returncode == 0, out.stderr
        assert not any(ch in out.stdout for ch in "\x1b\x9b\u202e\r"), out.stdout
    assert "\\u001b[1A\\u001b[2K\\u001b[1A" in outs[0].stdout.splitlines()[-1]
    assert json.loads(outs[1].stdout.splitlines()[-1])["messages"][0]["content"] == WIPES
    assert json.loads(outs[2].stdout)["messages"][0]["content"] == WIPES


def test_an_error_naming_outside_text_shows_its_control_characters(tmp_path):
    """The one error line went out as written: a path (or a record's text) holding ESC sequences
    acted on the terminal."""
    out = cli(tmp_path / "run\x1b]0;owned\x07\x1b[2J")
    assert out.returncode == 2 and "\x1b" not in out.stderr and "\x07" not in out.stderr
    assert "run\\u001b]0;owned\\u0007\\u001b[2J" in out.stderr and len(out.stderr.strip().splitlines()) == 1
