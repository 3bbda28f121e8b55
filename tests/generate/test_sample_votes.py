"""generate.n > 1 against a real OpenAI-compatible server on 127.0.0.1 whose samples disagree in
chosen ways: which sample becomes the output, and what the record keeps of it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer

KEY = "sk-votes-5e1f0c9a7b3d"


def provider(answers: list[str], asked: list[dict], finish: list[str] | None = None) -> FastAPI:
    """Answers every request with ``answers`` as its n choices (cut to n), each with the
    log-probs of its own text (one token per word) when asked; 1 completion token per word;
    ``finish``: each choice's finish_reason (default stop)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        asked.append(body)
        texts = answers[: int(body.get("n") or 1)]
        choices: list[dict[str, Any]] = []
        for i, text in enumerate(texts):
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": text},
                                      "finish_reason": finish[i] if finish else "stop"}
            if body.get("logprobs"):
                words = [w if j == 0 else " " + w for j, w in enumerate(text.split(" "))]
                choice["logprobs"] = {"content": [
                    {"token": w, "logprob": -0.1 * (i + 1), "bytes": None,
                     "top_logprobs": [{"token": w, "logprob": -0.1 * (i + 1), "bytes": None}]} for w in words]}
            choices.append(choice)
        out = sum(len(t.split(" ")) for t in texts)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 9, "completion_tokens": out, "total_tokens": 9 + out}}

    return app


def label(tmp_path, monkeypatch, answers: list[str], task: dict, n: int, logprobs: int = 0,
          finish: list[str] | None = None) -> tuple[Record, Any, list]:
    """One record through ``label_records`` with n samples, twice: the second run answers from the ledger."""
    monkeypatch.setenv("VOTES_KEY", KEY)
    asked: list[dict] = []
    t = get_task(TaskConfig(**task))
    got = []
    with LiveServer(provider(answers, asked, finish)) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        for _ in range(2):
            teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                                api_key_env="VOTES_KEY", max_tokens=16, max_retries=0,
                                                logprobs=logprobs), t)
            try:
                (rec,), stats = label_records([Record(id="r0", messages=[{"role": "user", "content": "x"}])], t,
                                              teacher, ledger, "generate", GenerateConfig(n=n))
            finally:
                teacher.close()
            got.append(rec)
    assert len(asked) == 1 and asked[0]["n"] == n  # the rerun is answered from the ledger
    fresh, cached = got
    assert cached.model_dump() == fresh.model_dump()
    return fresh, stats, asked


def test_the_logprobs_kept_are_those_of_the_majority_sample_not_of_the_first_choice(tmp_path, monkeypatch):
    """Choice 0 is outvoted: the record's output is the majority text, so its token log-probs
    (what top-k KD trains on) must be that text's, not choice 0's."""
    rec, _, _ = label(tmp_path, monkeypatch, ["the cat sat", "a dog ran off", "a dog ran off"],
                      {"type": "freetext", "instruction": "Say something."}, n=3, logprobs=1)
    assert rec.output == "a dog ran off" and rec.meta["agreement"] == pytest.approx(2 / 3)
    assert "".join(t["token"] for t in rec.logprobs) == rec.output
    assert rec.logprobs[0]["logprob"] == pytest.approx(-0.2)  # choice 1's, the first that gives the output


def test_invalid_samples_never_outvote_a_valid_minority(tmp_path, monkeypatch):
    """Three answers outside the label set against two 'sports': they voted together (as None)
    and won, so the record's output was invalid and curate dropped it though two samples agreed."""
    labels = ["sports", "tech", "film"]
    rec, stats, _ = label(tmp_path, monkeypatch, ["dunno", "maybe", "sports", "no idea", "sports"],
                          {"type": "classification", "labels": labels, "instruction": "Topic?"}, n=5)
    assert rec.valid and rec.output == "sports" and stats.invalid == 0
    assert rec.meta["majority"] == "sports" and rec.meta["agreement"] == pytest.approx(0.4)  # 2 of all 5
    # The soft label is the share of the valid votes: a distribution, not 0.4 of one.
    assert rec.label_probs == {"sports": 1.0, "tech": 0.0, "film": 0.0}


def test_unparseable_json_samples_vote_alike_and_a_valid_one_wins(tmp_path, monkeypatch):
    """Each unparseable sample's key held its object's address, so each voted alone: the first
    of a tie won (an invalid one here) and the vote changed from run to run."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rec, _, _ = label(tmp_path, monkeypatch, ["oops", '{"a": 1}', "nope"],
                      {"type": "extraction", "json_schema": schema, "instruction": "Extract."}, n=3)
    assert rec.valid and rec.output == '{"a": 1}' and rec.meta["agreement"] == pytest.approx(1 / 3)


def test_a_server_that_ignores_n_is_named_not_taken_for_self_consistency(tmp_path, monkeypatch, capsys):
    """An OpenAI-compatible server that ignores n (Ollama's takes no n) answers one choice: the
    record had no samples and no agreement, so curate's min_agreement let it through unvoted, and
    nothing said that generate.n had not been applied."""
    rec, stats, _ = label(tmp_path, monkeypatch, ["sports"], {"type": "classification", "labels": ["sports", "tech"],
                                                              "instruction": "Topic?"}, n=5)
    assert rec.output == "sports" and rec.samples is None
    assert stats.fewer_samples == 1
    err = capsys.readouterr().err
    assert "generate.n 5: the teacher answered 1 sample for 1 of 1 inputs" in " ".join(err.split())


def test_the_stop_reason_kept_is_that_of_the_sample_that_is_the_output(tmp_path, monkeypatch):
    """Only choice 0's finish_reason was kept: an outvoted choice cut at max_tokens made the
    record's meta.stop_reason 'length' (curate's truncated check drops it) while its output ended
    whole, and a cut majority passed as 'stop'. Each choice's is kept; the output's is the record's."""
    task = {"type": "freetext", "instruction": "Say something."}
    rec, _, _ = label(tmp_path / "a", monkeypatch, ["the cat", "a dog ran off", "a dog ran off"], task, n=3,
                      finish=["length", "stop", "stop"])
    assert rec.output == "a dog ran off" and rec.meta["stop_reason"] == "stop"
    rec, _, _ = label(tmp_path / "b", monkeypatch, ["the cat sat", "a dog", "a dog"], task, n=3,
                      finish=["stop", "length", "length"])
    assert rec.output == "a dog" and rec.meta["stop_reason"] == "length"

    from potstill.config import CurateConfig
    from potstill.curate.checks import invalid_reason

    assert invalid_reason(rec, get_task(TaskConfig(**task)), CurateConfig()).startswith("truncated")


def test_samples_that_are_one_json_value_vote_together():
    """The vote keyed samples by json.dumps of the parsed answer, so {"n": 2} and {"n": 2.0}, one JSON
    value (and one answer to evaluate, which compares canonical JSON), split their votes: a third
    sample {"n": 3} tied them and the first won at agreement 1/3. Curate's re-vote the same."""
    import json

    from potstill.config import CurateConfig, TaskConfig
    from potstill.curate.checks import majority
    from potstill.generate.consistency import vote
    from potstill.records import Record
    from potstill.tasks import get_task

    samples = ['{"n": 3}', '{"n": 2}', '{"n": 2.0}']
    assert vote(samples, json.loads, lambda x: None) == (1, 2 / 3)
    task = get_task(TaskConfig(type="extraction", instruction="n?", json_schema={"type": "object"}))
    rec = Record(messages=[{"role": "user", "content": "x"}], output=samples[0], samples=samples)
    assert majority(rec, task, CurateConfig()) == ('{"n": 2}', 2 / 3, None)  # no stop reasons kept: not known


def test_curates_re_vote_never_makes_a_sample_cut_at_the_token_limit_the_output(tmp_path, monkeypatch):
    """Curate re-votes generate's samples under its own rules, but the record kept no stop reason
    per sample, so the re-vote counted a sample cut at max_tokens as a whole answer. Here generate's
    output ('a dog ran off', tied 2 to 2 and seen first) passes curate's 13-character limit but its
    other copy (two spaces, 14 characters) does not; the re-vote went to the two cut 'the cat'
    (agreement 0.5, at min_agreement), which became the training target while meta.stop_reason still
    said 'stop' (that of the replaced output), so curate's truncated check never saw it."""
    from potstill.config import load_config
    from potstill.curate import curate

    task = {"type": "freetext", "instruction": "Say something."}
    rec, _, _ = label(tmp_path, monkeypatch, ["a dog ran off", "a dog  ran off", "the cat", "the cat"], task, n=4,
                      finish=["stop", "stop", "length", "length"])
    assert rec.output == "a dog ran off" and rec.meta["stop_reason"] == "stop"
    assert rec.meta["sample_stop_reasons"] == ["stop", "stop", "length", "length"]
    cfg = load_config(overrides={"run_dir": str(tmp_path / "run"), "task": task,
                                 "curate": {"val": 0, "test": 0, "max_output_chars": 13}})
    out = curate(cfg, [rec])
    kept = out.train + out.val + out.test
    assert [r.output for r in kept] == []  # a whole answer at 1 of 4 (0.25 < 0.5): set aside, not swapped for a cut one
    (gone,) = out.rejected
    assert gone.invalid_reason.startswith("self-consistency: agreement 0.25")
    # A record written before generate kept each sample's stop reason: the swapped-in output's is not
    # known, so the replaced output's is not kept as if it were.
    old = Record(id="r1", messages=[{"role": "user", "content": "y"}], output="a dog ran off",
                 samples=["a dog ran off", "a dog  ran off", "the cat", "the cat"], meta={"stop_reason": "stop"})
    (kept,) = curate(cfg, [old]).train
    assert kept.output == "the cat" and "stop_reason" not in kept.meta and kept.meta["first_output"] == "a dog ran off"
