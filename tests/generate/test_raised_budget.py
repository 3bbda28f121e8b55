"""Raising ``teacher.max_tokens`` after curate set aside the answers it cut pays only for those: an
answer that ended by itself under the smaller budget is the larger budget's answer too, and is
reused from the ledger (``Ledger.whole_answers``). A real OpenAI-compatible server on loopback
answers each input with as many words as its text asks for, cut at the request's ``max_tokens``
(one token a word), through the official openai client."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import yaml
from fastapi import FastAPI

from potstill.config import load_config
from potstill.curate.stage import curate_stage
from potstill.generate.stage import generate_stage
from potstill.ledger import Ledger
from potstill.records import read_records
from tests.helpers.live_server import LiveServer

# How many words the teacher writes for each input: two of six run past a budget of 4.
WORDS = [2, 3, 6, 3, 8, 2]


def writer(seen: Counter) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        seen[(text, body["max_tokens"])] += 1
        want = int(text.split()[-1])
        n = min(want, body["max_tokens"])
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(["word"] * n)},
                             "finish_reason": "stop" if n == want else "length"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n}}

    return app


def project(tmp, url: str, max_tokens: int):
    (tmp / "inputs.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "input": f"item {i}, summarise in words: {w}"}) + "\n"
                                              for i, w in enumerate(WORDS)))
    cfg = {"run_dir": "run", "task": {"type": "freetext", "instruction": "Summarise.", "max_output_tokens": 16},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": "openai", "model": "gpt-4.1-mini", "base_url": url + "/v1", "api_key_env": "",
                       "max_tokens": max_tokens, "max_retries": 0,
                       "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}},
           "curate": {"val": 1, "test": 1, "dedup": False}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp / "potstill.yaml")


def test_a_raised_max_tokens_pays_only_for_the_answers_it_cut(tmp_path, capsys):
    from potstill.preflight import _Ctx, _unanswered

    seen: Counter = Counter()
    with LiveServer(writer(seen)) as srv:
        generate_stage(project(tmp_path, srv.url, 4))
        curate_stage(project(tmp_path, srv.url, 4))
        rejected = [json.loads(x) for x in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in rejected if "truncated" in r["invalid_reason"]) == ["r2", "r4"]
        first = {r.id: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
        assert sum(seen.values()) == 6

        cfg = project(tmp_path, srv.url, 10)
        # Preflight's projection counts what generate will send: the two cut answers only.
        assert sorted(r.id for r in _unanswered(_Ctx(cfg), read_records(tmp_path / "inputs.jsonl"))) == ["r2", "r4"]
        capsys.readouterr()
        generate_stage(cfg)
    assert sum(seen.values()) == 8 and seen[("item 2, summarise in words: 6", 10)] == 1
    assert seen[("item 4, summarise in words: 8", 10)] == 1
    assert "6 inputs, 4 from cache (4 answered under another teacher.max_tokens" in capsys.readouterr().err
    again = {r.id: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
    assert [len(again[f"r{i}"].output.split()) for i in range(6)] == WORDS
    for i in (0, 1, 3, 5):  # the row that paid for it, as for any cache hit
        assert again[f"r{i}"].meta["request_hash"] == first[f"r{i}"].meta["request_hash"]
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        rows = ledger.rows(role="teacher", stage="generate")
        assert len(rows) == 8 and all(r["prompt_hash"] for r in rows)
        # The two prompts sent twice share their key whatever the budget; the others were sent once.
        assert sorted(Counter(r["prompt_hash"] for r in rows).values()) == [1, 1, 1, 1, 2, 2]


def test_a_cut_answer_is_asked_again_and_a_lowered_budget_asks_only_the_longer_ones(tmp_path, capsys):
    """Only an answer that ended by itself counts: a cut one is asked again under the raised budget;
    under a lowered budget, an answer that ended by itself within it is reused (the lower budget
    would have answered it alike) and a longer one is asked again, to be cut there."""
    seen: Counter = Counter()
    with LiveServer(writer(seen)) as srv:
        generate_stage(project(tmp_path, srv.url, 6))
        generate_stage(project(tmp_path, srv.url, 8))  # r4 (8 words) was cut at 6: asked again
        assert sum(seen.values()) == 7 and seen[("item 4, summarise in words: 8", 8)] == 1
        capsys.readouterr()
        generate_stage(project(tmp_path, srv.url, 5))
        # r2 (6 words, whole under 6) and r4 (8, whole under 8) are longer than 5: asked again, cut.
        assert sum(seen.values()) == 9 and {k for k in seen if k[1] == 5} == {
            ("item 2, summarise in words: 6", 5), ("item 4, summarise in words: 8", 5)}
        assert "6 inputs, 4 from cache (4 answered under another teacher.max_tokens" in capsys.readouterr().err
        out = {r.id: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
        assert [len(out[f"r{i}"].output.split()) for i in range(6)] == [2, 3, 5, 3, 5, 2]
        generate_stage(project(tmp_path, srv.url, 2))  # only r0 and r5 (2 words each) fit
        assert sum(seen.values()) == 9 + 4 and seen[("item 0, summarise in words: 2", 2)] == 0


def test_samples_taken_from_a_failed_attempt_count_against_a_lowered_budget(tmp_path):
    """generate.n 3 on Anthropic (three requests): two samples of 90 tokens answered, the third failed;
    the rerun asked for the third alone (5 tokens), and its ok row counted those 5 only. Under a budget
    of 50 that row was reused as whole, though 50 would have cut two of its three samples."""
    from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
    from potstill.generate import label_records
    from potstill.records import Record
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    calls: list[int] = []
    app = FastAPI()

    @app.post("/v1/messages")
    def messages(body: dict[str, Any]) -> Any:
        from fastapi.responses import JSONResponse

        calls.append(body["max_tokens"])
        if len(calls) == 3:  # a 400 the SDK does not retry: the first attempt ends with two samples
            return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": "flaky"}},
                                status_code=400)
        n = min(5 if len(calls) == 4 else 90, body["max_tokens"])  # the rerun's missing sample is short
        return {"id": f"msg_{len(calls)}", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": " ".join(["word"] * n)}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": n}}

    task = get_task(TaskConfig(type="freetext", instruction="Write."))
    recs = [Record(messages=[{"role": "user", "content": "tell me"}])]
    with LiveServer(app) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        def run(max_tokens: int):
            teacher = get_teacher(TeacherConfig(type="anthropic", model="claude-haiku-4-5", base_url=srv.url,
                                                api_key_env="", max_tokens=max_tokens, max_retries=0, concurrency=1),
                                  task)
            try:
                return label_records(recs, task, teacher, ledger, "generate", GenerateConfig(n=3))
            finally:
                teacher.close()

        run(100)
        (done,), _ = run(100)
        assert len(calls) == 4 and [len(s.split()) for s in done.samples] == [90, 90, 5]
        (cut,), stats = run(50)
    assert stats.whole_reused == 0 and calls[4:] == [50, 50, 50]
    assert [len(s.split()) for s in cut.samples] == [50, 50, 50]
