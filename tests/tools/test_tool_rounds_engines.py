"""``generate.tool_rounds`` on the other engines: through the provider's batch API (a round is two
batches, the functions played and then the chats answered, each at the batch price) for OpenAI and
Anthropic, with a ``kill -9`` while a round's batch is open, and on Ray workers. The loopback
servers count every request they were sent: nothing is asked or paid for twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

from potstill.config import load_config
from potstill.generate.stage import generate_stage
from potstill.records import read_records
from potstill.tasks import get_task
from tests.generate.test_batch import MODELS, SECRET, _submitted, _wait, cli, cli_env, ledger_batches, ok_rows_per_hash
from tests.helpers.batch_server import AGENT_REPLY, AGENT_RESULT, BatchLoopback
from tests.tools.test_agent_turns import TOOLS

ASKS = ["celsius please", "switch to celsius", "metric units", "I want degrees C", "use celsius from now on"]
# Teacher requests: each first request, one function played (every input's call is set_unit with
# {"unit": "c"}, one request), each chat holding its result.
CALLS = 2 * len(ASKS) + 1


def project(tmp, url: str, teacher: str, engine: str, rounds: int = 2, **generate) -> object:
    (tmp / "inputs.jsonl").write_text("".join(
        json.dumps({"id": f"a{i}", "messages": [{"role": "user", "content": t}]}) + "\n" for i, t in enumerate(ASKS)))
    cfg = {"run_dir": "run", "task": {"type": "tools", "instruction": "Help with units.", "tools": TOOLS,
                                      "tool_choice": "auto", "max_output_tokens": 32},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": teacher, "model": MODELS.get(teacher, "gpt-4.1-mini"), "base_url": url,
                       "api_key_env": "TEACHER_KEY", "max_retries": 1, "timeout_s": 10},
           "generate": {"engine": engine, "tool_rounds": rounds, "batch_poll_s": 0.05, **generate}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "potstill.yaml"


def check_rounds(tmp) -> None:
    """Each first request, the function's result the teacher wrote, and the reply after it."""
    cfg = load_config(tmp / "potstill.yaml")
    task = get_task(cfg.task)
    recs = {r.id: r for r in read_records(tmp / "run" / "teacher.jsonl")}
    assert sorted(recs) == sorted([f"a{i}" for i in range(len(ASKS))] + [f"a{i}.r1" for i in range(len(ASKS))])
    for i in range(len(ASKS)):
        first, after = recs[f"a{i}"], recs[f"a{i}.r1"]
        assert json.loads(task.target(first)) == {"name": "set_unit", "arguments": {"unit": "c"}}
        assert after.messages[-1] == {"role": "tool", "tool_call_id": "call_1_0", "content": AGENT_RESULT}
        assert json.loads(task.target(after)) == {"content": AGENT_REPLY} and after.slice == ["tool_round:1"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_tool_rounds_go_through_the_batch_api_at_the_batch_price(tmp_path, monkeypatch, provider):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with BatchLoopback(key=SECRET, agent=True) as srv:
        url = srv.openai_url if provider == "openai" else srv.anthropic_url
        summary = generate_stage(load_config(project(tmp_path, url, provider, "batch")))
        again = generate_stage(load_config(tmp_path / "potstill.yaml"), force=True)
        stats = srv.stats()
    check_rounds(tmp_path)
    # Three batches: the first requests, the function played (the five identical calls are one
    # request), the chats holding its result; the second round finds only replies and asks nothing.
    # Each request once, every answer at half price, and a rerun asks nothing.
    assert stats["created"] == {provider: 3} and set(stats["submissions"].values()) == {1}
    assert len(stats["submissions"]) == CALLS == summary["calls"]
    assert sorted(b["requests"] for b in ledger_batches(tmp_path / "run" / "calls.sqlite")) == [1, len(ASKS), len(ASKS)]
    assert again["calls"] == 0
    from potstill.ledger import Ledger

    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        assert {r["price_multiplier"] for r in ledger.rows(role="teacher")} == {0.5}


def test_a_kill_inside_a_rounds_batch_resumes_it_and_pays_nothing_twice(tmp_path):
    with BatchLoopback(key=SECRET, agent=True, latency=2.0) as srv:
        cfg_path = project(tmp_path, srv.openai_url, "openai", "batch")
        db = tmp_path / "run" / "calls.sqlite"
        proc = subprocess.Popen([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Round 1's first batch (the functions played) is created and open: kill the run inside it.
        _wait(lambda: _submitted(db) >= 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "run" / "teacher.jsonl").exists()
        # `potstill cost` reports the generate with its round, not the round's open step alone: the
        # five first requests answered, the one function to play outstanding.
        killed = cli(["cost", "run"], tmp_path)
        final = cli(["generate", "-c", str(cfg_path)], tmp_path)
        assert final.returncode == 0, final.stderr
        stats = srv.stats()
        after = cli(["cost", "run"], tmp_path)
    check_rounds(tmp_path)
    assert killed.returncode == 0, killed.stderr
    assert ("last generate (stale): 5 inputs and 1 tool round(s), 0 cache hits, 0 retries, 5 of 6 requests answered "
            "before it stopped (its process died without finishing); a rerun sends the other 1") in killed.stdout
    # The rerun: the first requests from the ledger, round 1's two steps answered (one resumed batch).
    assert f"last generate (done): 5 inputs and 1 tool round(s), 5 cache hits, 0 retries, 0 of {CALLS} requests " \
        "unanswered" in after.stdout, after.stdout
    assert "resuming 1 open" in final.stderr
    assert stats["created"] == {"openai": 3} and set(stats["submissions"].values()) == {1}
    assert set(ok_rows_per_hash(db).values()) == {1} and len(ok_rows_per_hash(db)) == CALLS


def test_tool_rounds_run_on_ray_workers(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from tests.helpers.live_server import LiveServer
    from tests.tools.test_agent_turns import agent_teacher

    monkeypatch.setenv("TEACHER_KEY", SECRET)  # before ray.init: workers take the driver's environment then
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    seen: list = []
    try:
        with LiveServer(agent_teacher(seen)) as srv:
            summary = generate_stage(load_config(project(tmp_path, srv.url + "/v1", "openai", "ray")))
            again = generate_stage(load_config(tmp_path / "potstill.yaml"), force=True)
    finally:
        ray.shutdown()
    check_rounds(tmp_path)
    assert summary["calls"] == len(seen) == CALLS and again["calls"] == 0
