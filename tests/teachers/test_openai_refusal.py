"""An OpenAI answer that is a refusal (``message.refusal`` set, no content), from a real
chat-completions server on 127.0.0.1 through the official SDK, as generate stores it."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer

KEY = "sk-refusal-7c2e9a10b4d6"
REFUSAL = "I'm sorry, but I can't help with that."


def refusing_provider(asked: list[dict]) -> FastAPI:
    """Refuses every chat whose user text holds 'lock' (OpenAI's form: content null, refusal set,
    finish_reason stop, the refusal's tokens billed); answers the others 'fine'."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        asked.append(body)
        text = " ".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
        refused = "lock" in text
        message = ({"role": "assistant", "content": None, "refusal": REFUSAL} if refused
                   else {"role": "assistant", "content": "fine", "refusal": None})
        out = 11 if refused else 1
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 20, "completion_tokens": out, "total_tokens": 20 + out}}

    return app


def test_an_openai_refusal_is_a_billed_error_row_not_an_empty_answer(tmp_path, monkeypatch):
    """The refusal was stored as the answer "" (finish_reason stop): generate kept "" as the
    teacher's output and serve could return it. It is an error row as Anthropic's refusal is:
    billed (the provider charges its tokens), the refusal's words in the error, no answer."""
    monkeypatch.setenv("REFUSAL_KEY", KEY)
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    asked: list[dict] = []
    records = [Record(id="a", messages=[{"role": "user", "content": "pick this lock"}]),
               Record(id="b", messages=[{"role": "user", "content": "say hi"}])]
    with LiveServer(refusing_provider(asked)) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                            api_key_env="REFUSAL_KEY", max_tokens=16, max_retries=0), task)
        try:
            (refused, fine), stats = label_records(records, task, teacher, ledger, "generate", GenerateConfig())
        finally:
            teacher.close()
        rows = {json.loads(r["request"])["messages"][-1]["content"]: r for r in ledger.rows(role="teacher")}
    assert fine.output == "fine" and fine.valid
    assert refused.output is None and not refused.valid
    assert refused.invalid_reason == f"teacher refused: refusal: {REFUSAL}"
    assert stats.errors == 0 and stats.refused == 1 and len(asked) == 2  # asked once: a 200 is not retried
    row = rows["pick this lock"]
    assert row["status"] == "error" and row["response"] is None and REFUSAL in row["error"]
    assert (row["input_tokens"], row["output_tokens"]) == (20, 11)
    assert row["cost_usd"] == pytest.approx((20 * 0.15 + 11 * 0.60) / 1e6)  # the bill, kept


def test_a_refused_input_is_not_paid_for_again_by_the_next_generate(tmp_path, monkeypatch):
    """A refusal was an error row, and generate exited 'N teacher calls failed; rerun to retry them':
    every rerun sent the refused request again, paid for it, was refused again and failed again, so a
    data set with one input the teacher refuses could never finish. A refusal stands: the run finishes,
    the input is set aside as refused, and no later run sends it again unless generate.retry_refusals."""
    import subprocess
    import sys

    monkeypatch.setenv("REFUSAL_KEY", KEY)
    asked: list[dict] = []
    (tmp_path / "inputs.jsonl").write_text(json.dumps({"input": "pick this lock"}) + "\n"
                                          + json.dumps({"input": "say hi"}) + "\n")
    with LiveServer(refusing_provider(asked)) as srv:
        (tmp_path / "potstill.yaml").write_text(json.dumps({
            "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Answer."},
            "data": {"inputs": str(tmp_path / "inputs.jsonl")},
            "teacher": {"type": "openai", "model": "gpt-4o-mini", "base_url": srv.url + "/v1",
                        "api_key_env": "REFUSAL_KEY", "max_tokens": 16, "max_retries": 0}}))

        def generate(*flags: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "potstill", "generate", "-c", str(tmp_path / "potstill.yaml"),
                                   "--force", *flags], capture_output=True, text=True, timeout=300)

        first = generate()
        assert first.returncode == 0, first.stderr
        assert "1 refused by the teacher" in first.stderr, first.stderr
        teacher = [json.loads(line) for line in (tmp_path / "run" / "teacher.jsonl").read_text().splitlines()]
        assert sorted(r.get("invalid_reason") or "" for r in teacher) == ["", f"teacher refused: refusal: {REFUSAL}"]
        assert len(asked) == 2
        # `potstill cost` counted the refused request as unanswered and priced it, though no rerun sends it.
        cost = subprocess.run([sys.executable, "-m", "potstill", "cost", str(tmp_path / "run"), "-c",
                               str(tmp_path / "potstill.yaml")], capture_output=True, text=True, timeout=120)
        assert cost.returncode == 0, cost.stderr
        assert "0 of 2 requests unanswered, projected cost of the rest $0.0000" in cost.stdout, cost.stdout
        assert "1 refused by the teacher, not sent again" in cost.stdout, cost.stdout
        with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
            resent = ledger.cost_report(resend_refused=True)["latest_run"]
        assert (resent["remaining"], resent["refused"]) == (1, 1) and resent["projected_remaining_usd"] > 0
        again = generate()
        assert again.returncode == 0, again.stderr
        assert len(asked) == 2  # the refusal stands: nothing sent, nothing paid
        retry = generate("--generate.retry_refusals", "true")
        assert retry.returncode == 0, retry.stderr
        assert len(asked) == 3 and "lock" in json.dumps(asked[-1]["messages"])


def test_an_inputs_earlier_call_is_kept_apart_from_the_teachers_answer(tmp_path, monkeypatch):
    """A synthetic input holds the synthesis call that wrote it (meta.request_hash, cost_usd, teacher)
    and an imported one the logged answer's (teacher, usage, finish_reason): generate wrote its answer's
    fields over them (the synthesis cost was lost), and where the teacher refused, the imported record
    still named the logged model as its teacher, with the log's finish_reason."""
    monkeypatch.setenv("REFUSAL_KEY", KEY)
    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    synthetic = Record(id="s", messages=[{"role": "user", "content": "say hi"}],
                       meta={"synthetic": True, "request_hash": "abc", "cost_usd": 0.5, "teacher": "writer-1"})
    imported = Record(id="i", messages=[{"role": "user", "content": "pick this lock"}],
                      meta={"format": "stored", "teacher": "gpt-4o", "finish_reason": "length", "usage": {"total": 9}})
    with LiveServer(refusing_provider([])) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                            api_key_env="REFUSAL_KEY", max_tokens=16, max_retries=0), task)
        try:
            (syn, imp), _ = label_records([synthetic, imported], task, teacher, ledger, "generate", GenerateConfig())
        finally:
            teacher.close()
    assert syn.meta["teacher"] == "gpt-4o-mini" and syn.meta["cost_usd"] > 0 and syn.meta["request_hash"] != "abc"
    assert syn.meta["synthesis"] == {"request_hash": "abc", "cost_usd": 0.5, "teacher": "writer-1"}
    assert not imp.valid and "teacher" not in imp.meta and "finish_reason" not in imp.meta
    assert imp.meta["logged"] == {"teacher": "gpt-4o", "finish_reason": "length", "usage": {"total": 9}}


def test_a_refused_choice_0_keeps_the_logprobs_of_the_answered_samples(tmp_path, monkeypatch):
    """generate.n 3 with logprobs: choice 0 refused, choices 1 and 2 the same answer with logprobs.
    Per-sample logprobs were built only when choice 0 had some, so the record of the majority answer
    kept no logprobs (no top-k KD) though the server sent them; it keeps choice 1's now."""
    monkeypatch.setenv("REFUSAL_KEY", KEY)
    content = [{"token": t, "bytes": list(t.encode()), "logprob": -0.05,
                "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": -0.05}]} for t in ["The", " cat"]]
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        refused = {"index": 0, "message": {"role": "assistant", "content": None, "refusal": REFUSAL},
                   "logprobs": {"content": None, "refusal": []}, "finish_reason": "stop"}
        answered = [{"index": i, "message": {"role": "assistant", "content": "The cat", "refusal": None},
                     "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"} for i in (1, 2)]
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [refused, *answered], "usage": {"prompt_tokens": 9, "completion_tokens": 15,
                                                           "total_tokens": 24}}

    task = get_task(TaskConfig(type="freetext", instruction="Answer."))
    with LiveServer(app) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                            api_key_env="REFUSAL_KEY", max_tokens=16, max_retries=0, logprobs=1), task)
        try:
            (rec,), _ = label_records([Record(id="a", messages=[{"role": "user", "content": "x"}])], task, teacher,
                                      ledger, "generate", GenerateConfig(n=3))
        finally:
            teacher.close()
    assert rec.output == "The cat" and rec.samples == ["", "The cat", "The cat"]
    assert [e["token"] for e in rec.logprobs] == ["The", " cat"]
