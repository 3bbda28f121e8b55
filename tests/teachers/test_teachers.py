"""Teachers against real parts: the official openai client talking to a real HTTP server on
127.0.0.1 backed by a real tiny model; replay from fine-tuning JSONL."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from potstill.config import load_config
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import Record, read_records
from tests.helpers.chat_server import ChatServer

SECRET = "sk-test-4f9c2e7a1b3d5f60"


@pytest.fixture(scope="module")
def server(tiny_model_b):
    with ChatServer(str(tiny_model_b), api_key=SECRET) as s:
        yield s


def project(tmp_path: Path, base_url: str, task: dict, n: int = 12, **teacher) -> Path:
    texts = ["the team won the match", "new phone software", "a vote in the election", "the film star",
             "bank profit and market shares", "the internet and computer"]
    (tmp_path / "inputs.jsonl").write_text(
        "".join(json.dumps({"input": f"{texts[i % 6]} {'the ' * (i // 6)}".strip()}) + "\n" for i in range(n)))
    cfg = {
        "run_dir": "run", "task": task, "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "openai", "model": "tiny-teacher", "base_url": base_url, "api_key_env": "TEACHER_KEY",
                    "concurrency": 4, "max_tokens": 4, "price": {"input_per_mtok": 2.0, "output_per_mtok": 8.0},
                    **teacher},
        "student": {"max_length": 64}, "curate": {"val": 2, "test": 3},
        "train": {"lr": 0.01, "batch_size": 4}, "evaluate": {"latency_samples": 2, "batch_size": 4},
    }
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_openai_teacher_through_the_sdk_caches_and_bills(server, tmp_path, tiny_model, monkeypatch):
    root = project(tmp_path, server.base_url, {"type": "freetext", "instruction": "summarise"}, logprobs=3)
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    cfg = load_config(root / "potstill.yaml", {"student.model": str(tiny_model)})
    records = read_records(cfg.data.inputs)
    before = sum(server.requests.values())
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        out, stats = run_generate(cfg, records, ledger)
        assert stats.calls == 12 and stats.cache_hits == 0
        assert sum(server.requests.values()) - before == 12
        rows = ledger.rows(role="teacher")
        assert all(r["input_tokens"] > 0 for r in rows)
        expected = sum(r["input_tokens"] * 2.0 + r["output_tokens"] * 8.0 for r in rows) / 1e6
        assert ledger.summary()["cost_usd"] == pytest.approx(expected)
        # top-k logprobs are captured per output token
        assert all(len(t["top"]) == 3 for r in out if r.logprobs for t in r.logprobs)
        assert any(r.logprobs for r in out)
        # a rerun answers everything from the ledger: the server sees nothing new
        out2, stats2 = run_generate(cfg, records, ledger)
        assert stats2.calls == 0 and stats2.cache_hits == 12
        assert sum(server.requests.values()) - before == 12
        assert [r.output for r in out2] == [r.output for r in out]


def test_openai_teacher_end_to_end_run_never_leaks_the_key(server, tmp_path, tiny_model):
    # max_tokens above the server's 8: whole answers (curate sets aside the ones cut at the limit)
    root = project(tmp_path, server.base_url, {"type": "freetext", "instruction": "summarise"}, max_tokens=16)
    env = {**os.environ, "TEACHER_KEY": SECRET}
    cmd = [sys.executable, "-m", "potstill.cli", "run", "-c", "potstill.yaml", "--student.model", str(tiny_model)]
    first = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    n = sum(server.requests.values())
    second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert sum(server.requests.values()) == n
    # a wrong key: calls fail with 401 until five in a row stop the run (those in flight then finish; the
    # rest are not sent) and the error rows never contain the key (another model name, so the requests
    # are new and really go out)
    bad = subprocess.run([*cmd[:3], "generate", "-c", "potstill.yaml", "--teacher.model", "other",
                          "--teacher.max_retries", "0"], cwd=root,
                         env={**env, "TEACHER_KEY": SECRET + "-wrong"}, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "401" in bad.stderr
    assert "stopped, the key was refused" in bad.stderr or "12 of 12 teacher calls failed" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    with Ledger(root / "run" / "calls.sqlite") as ledger:
        errors = [r for r in ledger.rows(model="other") if r["status"] == "error"]
    assert 5 <= len(errors) <= 12 and all("401" in r["error"] for r in errors)
    blobs = [first.stdout, first.stderr, second.stdout, second.stderr, bad.stdout, bad.stderr]
    for p in (root / "run").rglob("*"):
        if p.is_file():
            blobs.append(p.read_bytes().decode("utf-8", "replace"))
    assert not any(SECRET in b for b in blobs)


def test_replay_teacher_and_invalid_labels_are_never_trained_on(tmp_path):
    labels = ["sports", "tech"]
    rec = [("the team won", "sports"), ("new phone software", "tech"), ("the match", "banana"),
           ("the computer", "Tech."), ("a goal", "sports")]
    (tmp_path / "traffic.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": t},
                                 {"role": "assistant", "content": a}]}) + "\n" for t, a in rec))
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t, _ in rec)
                                           + json.dumps({"input": "never recorded"}) + "\n")
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": labels},
           "data": {"inputs": "inputs.jsonl"}, "teacher": {"type": "replay", "replay_path": "traffic.jsonl"},
           "curate": {"val": 0, "test": 0}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    gen = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", "potstill.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    # one input has no recording: generate says so, keeps the rest, and curate goes on without it
    assert gen.returncode != 0 and "1 of 6 teacher calls failed" in gen.stderr
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "curate", "-c", "potstill.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    train = [json.loads(x) for x in (run / "train.jsonl").read_text().splitlines()]
    rejected = {json.loads(x)["messages"][0]["content"]: json.loads(x)["invalid_reason"]
                for x in (run / "rejected.jsonl").read_text().splitlines()}
    assert sorted(r["messages"][0]["content"] for r in train) == ["a goal", "new phone software", "the computer", "the team won"]
    assert rejected == {"the match": "answer outside the label set",
                        "never recorded": "teacher error: no recorded answer for this input"}
    card = json.loads((run / "card.json").read_text())
    assert card["counts"]["invalid"] == 2 and card["counts"]["train"] == 4


def test_a_budget_says_it_does_not_cap_a_teacher_that_runs_here(tmp_path, capsys):
    """generate.budget_usd caps what an API teacher spends; with a teacher run in-process it was
    silently ignored. One line says so (the run goes on)."""
    from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
    from potstill.generate import check_budget
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    (tmp_path / "traffic.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    teacher = get_teacher(TeacherConfig(type="replay", replay_path=str(tmp_path / "traffic.jsonl")),
                          get_task(TaskConfig(type="freetext")))
    check_budget(teacher, GenerateConfig(budget_usd=1.0))
    said = capsys.readouterr()
    assert "the replay teacher runs here" in (said.out + said.err).replace("\n", " ")
    check_budget(teacher, GenerateConfig())
    said = capsys.readouterr()
    assert "budget" not in said.out + said.err


@pytest.mark.parametrize("stray", ["\r", "\n", " ", "\u00e9"])
def test_a_key_with_a_stray_character_is_one_line_naming_the_variable(server, tmp_path, stray):
    """Found by an audit: a key read from a CRLF .env file ends in '\\r'; httpx refuses such a header
    value, so every call failed as 'APIConnectionError: Connection error.' (a non-ASCII character:
    a UnicodeEncodeError), retried and blamed on the network. The key is now refused before any
    request, in one line that names the variable and never shows the key."""
    root = project(tmp_path, server.base_url, {"type": "freetext", "instruction": "summarise"}, n=3)
    before = sum(server.requests.values())
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", "potstill.yaml"], cwd=root,
                         env={**os.environ, "TEACHER_KEY": SECRET + stray}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "TEACHER_KEY" in out.stderr and "Connection" not in out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert sum(server.requests.values()) == before


def test_a_replay_recording_answers_the_same_words_in_content_parts_and_refuses_a_textless_turn(tmp_path):
    """The recording's key was the raw content, so a chat sent as text parts missed the answer
    recorded for it as a string; an assistant turn of tool calls was recorded as the text 'None'."""
    from potstill.config import TaskConfig, TeacherConfig
    from potstill.errors import PotstillError
    from potstill.tasks import get_task
    from potstill.teachers.replay import ReplayTeacher

    task = get_task(TaskConfig(type="classification", labels=["sports", "tech"]))
    path = tmp_path / "traffic.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "the team won"},
                                             {"role": "assistant", "content": "sports"}]}) + "\n")
    teacher = ReplayTeacher(TeacherConfig(type="replay", replay_path=str(path)), task)
    got = {}
    parts = [{"type": "text", "text": "the team "}, {"type": "text", "text": "won"}]
    teacher.run([{"messages": [{"role": "user", "content": parts}]}], lambda i, r: got.update({i: r}))
    assert got[0].output == "sports" and got[0].error is None
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}]}) + "\n")
    with pytest.raises(PotstillError, match=r"traffic.jsonl:1: the assistant turn has no text"):
        ReplayTeacher(TeacherConfig(type="replay", replay_path=str(path)), task).run([], lambda i, r: None)


def test_a_local_teacher_whose_weights_are_replaced_in_place_is_asked_again(tmp_path, tiny_model, tiny_model_b):
    """The ledger cache keyed a local teacher by its folder's path: weights replaced in the same
    folder (a new fine-tune saved over the old) answered every input from the old model's cache,
    0 calls. It is keyed by the weights' content: replaced, it is asked again; copied unchanged to
    another folder under the same path, still cached."""
    import shutil

    from potstill.records import Record

    teacher_dir = tmp_path / "teacher"
    shutil.copytree(tiny_model, teacher_dir)
    cfg = load_config(overrides={"task": {"type": "classification", "labels": ["sports", "tech", "politics"]},
                                 "teacher": {"type": "local", "model": str(teacher_dir), "batch_size": 4}})
    records = [Record(messages=[{"role": "user", "content": f"the cup final number {i}"}]) for i in range(3)]
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        _, first = run_generate(cfg, records, ledger)
        _, again = run_generate(cfg, records, ledger)
        assert (first.calls, again.calls, again.cache_hits) == (3, 0, 3)
        shutil.rmtree(teacher_dir)
        shutil.copytree(tiny_model_b, teacher_dir)  # other weights, same folder
        _, replaced = run_generate(cfg, records, ledger)
        assert (replaced.calls, replaced.cache_hits) == (3, 0)
        shutil.rmtree(teacher_dir)
        shutil.copytree(tiny_model_b, teacher_dir)  # the same weights written again (new inodes, times)
        _, same = run_generate(cfg, records, ledger)
        assert (same.calls, same.cache_hits) == (0, 3)


def test_a_teacher_from_the_factory_bills_one_request_as_generate_bills_a_run(server, monkeypatch):
    """generate.prices reached a teacher's single requests (serve's escalations) only because
    load_service set it on teachers that had the attribute; the factory takes the table now, and
    one request submitted costs what the same answer costs in a generate run."""
    from potstill.config import GenerateConfig, PriceConfig, TaskConfig, TeacherConfig
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher
    from potstill.teachers.api.prices import token_cost

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    table = {"tiny-teacher": {"input_per_mtok": 3.0, "output_per_mtok": 12.0}}
    cfg = TeacherConfig(type="openai", model="tiny-teacher", base_url=server.base_url, api_key_env="TEACHER_KEY",
                        max_tokens=4, max_retries=0)  # no teacher.price: the table prices it
    task = get_task(TaskConfig(type="freetext", instruction="summarise"))
    teacher = get_teacher(cfg, task, prices=table)
    try:
        req = teacher.request(Record(messages=[{"role": "user", "content": "the team won the match"}]))
        one = teacher.answer_one(req)
        ran: list = []
        teacher.run([req], lambda i, r: ran.append(r), gcfg=GenerateConfig(prices=table))
    finally:
        teacher.close()
    assert one.ok and one.cost_usd > 0
    price = PriceConfig.model_validate(table["tiny-teacher"])
    assert one.cost_usd == pytest.approx(token_cost(price, one.input_tokens, one.output_tokens)) == ran[0].cost_usd


@pytest.mark.parametrize("typ", ["local", "replay", "anthropic"])
def test_teacher_logprobs_on_a_teacher_that_gives_none_is_one_line_before_any_answer(tmp_path, typ):
    """A local or replay teacher took teacher.logprobs 5 without a word and wrote records with no
    logprobs (train's kd then failed on a message that did not name this setting); only Anthropic's
    was refused. Each is refused now, naming the setting, before a model loads or a file is read."""
    from potstill.config import TaskConfig, TeacherConfig
    from potstill.errors import PotstillError
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    (tmp_path / "rec.jsonl").write_text("")
    cfg = TeacherConfig(type=typ, model="claude-x" if typ == "anthropic" else str(tmp_path / "no-model"),
                        replay_path=str(tmp_path / "rec.jsonl"), logprobs=5)
    with pytest.raises(PotstillError, match=r"^teacher\.logprobs: .*no .*log-probabilities.*; set it to 0$") as e:
        get_teacher(cfg, get_task(TaskConfig(type="freetext", instruction="Say something.")))
    assert "\n" not in str(e.value)
