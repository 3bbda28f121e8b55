"""Reasoning teachers (OpenAI's o-series and gpt-5) against the loopback server (its own process),
which follows their rules: ``max_completion_tokens`` counts the hidden reasoning, and an answer whose
reasoning used it up comes back as content "" stopped at ``length``, billed. Reached through the
official openai SDK."""

from __future__ import annotations

import pytest

from potstill.config import load_config
from potstill.curate.stage import curate_stage
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.preflight import require, run_checks
from potstill.records import read_records
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, check_output, project


def _check(cfg, name: str):
    return next(c for c in run_checks(cfg, "generate") if c.name == name)


def test_an_answer_whose_reasoning_spent_max_tokens_is_truncated_not_a_wrong_label(tmp_path, monkeypatch, capsys):
    # o4-mini at max_tokens 256 thinking 300 tokens: every answer "" at length. curate said "answer
    # outside the label set" (classification) or "empty output" (free text), and preflight passed.
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, reasoning_tokens=300) as srv:
        cfg = load_config(project(tmp_path, srv.base_url, 6, {"model": "o4-mini", "max_tokens": 256}))
        warn = _check(cfg, "output_budget")
        assert warn.status == "warn" and "teacher.max_tokens 256" in warn.detail and "1024" in warn.detail
        require(cfg, "generate")  # as the CLI runs it: said, and the run goes on
        assert "preflight output_budget: teacher.max_tokens 256" in " ".join(capsys.readouterr().err.split())
        generate_stage(cfg)
    recs = read_records(tmp_path / "run" / "teacher.jsonl")
    assert {r.output for r in recs} == {""} and {r.meta["stop_reason"] for r in recs} == {"length"}
    with pytest.raises(PotstillError) as e:
        curate_stage(cfg)
    assert "truncated (6)" in str(e.value) and "outside the label set" not in str(e.value), str(e.value)
    from potstill.curate.checks import invalid_reason
    from potstill.tasks import get_task

    why = invalid_reason(recs[0], get_task(cfg.task), cfg.curate)
    assert why.startswith("truncated: the teacher spent all of teacher.max_tokens (256 tokens) before answering")
    assert "raise teacher.max_tokens" in why
    # Room for the reasoning: preflight is content, and a rerun answers every input.
    roomy = load_config(project(tmp_path, srv.base_url, 6, {"model": "o4-mini", "max_tokens": 2000}))
    assert _check(roomy, "output_budget").status == "ok"
    # Not a reasoning teacher: nothing to say.
    assert _check(load_config(project(tmp_path, srv.base_url, 6)), "output_budget").status == "skip"


@pytest.mark.parametrize("teacher, why", [
    ({"model": "o4-mini", "max_tokens": 2000}, "o4-mini is an OpenAI reasoning model, which returns no logprobs"),
    ({"type": "anthropic", "model": "claude-haiku-4-5"}, "the Anthropic Messages API returns no log-probabilities"),
    ({}, "teacher.logprobs is 0"),
])
def test_a_kd_run_whose_teacher_gives_no_logprobs_fails_before_generate_pays(tmp_path, monkeypatch, teacher, why):
    # train.objective kd, kd_signal labels: preflight passed, generate paid for every answer, then train
    # refused for want of label_probs and advised teacher.logprobs 5, which o4-mini refuses.
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET) as srv:
        path = project(tmp_path, srv.base_url, 4, teacher)
        kd = {"train": {"objective": "kd", "kd_signal": "labels"}}
        cfg = load_config(path, overrides=kd)
        check = _check(cfg, "kd_signal")
        assert check.status == "fail" and why in check.detail and "\n" not in check.detail, check.detail
        advice = check.detail.split(why)[1]
        assert ("teacher.logprobs 5" in advice) == (not teacher)  # never advised where the teacher refuses it
        with pytest.raises(PotstillError, match=r"^preflight kd_signal: train.objective kd with kd_signal labels"):
            require(cfg, "generate")
        assert srv.stats()["answered"] == {}
        if not teacher:  # the fix it names passes, and so does an sft run or a logits signal
            assert _check(load_config(path, overrides={**kd, "teacher": {"logprobs": 5}}), "kd_signal").status == "ok"
        assert _check(load_config(path), "kd_signal").status == "skip"
        logits = {"train": {"objective": "kd", "kd_signal": "logits", "teacher_model": "x"}}
        assert _check(load_config(path, overrides=logits), "kd_signal").status == "skip"


def test_teacher_reasoning_true_makes_an_alias_a_reasoning_model(tmp_path, monkeypatch):
    # An Azure deployment named prod-reasoner (o3 behind it) got max_tokens and temperature: every
    # request a 400, with no setting to say what the model is.
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, reasoner="prod-reasoner") as srv:
        teacher = {"model": "prod-reasoner", "max_tokens": 2000, "max_retries": 0}
        summary = generate_stage(load_config(project(tmp_path, srv.base_url, 5, {**teacher, "reasoning": True})))
        stats = srv.stats()
        assert summary["errors"] == 0 and stats["faults"] == {} and sum(stats["answered"].values()) == 5
        # auto (by OpenAI's ids) does not know the name: the server's 400s, as before
        (tmp_path / "auto").mkdir()
        with pytest.raises(PotstillError, match="max_tokens"):
            generate_stage(load_config(project(tmp_path / "auto", srv.base_url, 5, teacher)))
        assert srv.stats()["faults"].get("400-max_tokens")
    # Declared a reasoning model, it is one everywhere: no logprobs asked, preflight's budget check.
    cfg = load_config(project(tmp_path, srv.base_url, 5, {**teacher, "reasoning": True, "max_tokens": 100}))
    assert _check(cfg, "output_budget").status == "warn"
    with pytest.raises(PotstillError, match=r"prod-reasoner is an OpenAI reasoning model \(teacher.reasoning true\)"):
        generate_stage(load_config(project(tmp_path, srv.base_url, 5, {**teacher, "reasoning": True, "logprobs": 5})))
    # false: an id that looks like one is sent as a chat model (a local server's model named o3-tiny)
    from potstill.teachers.reasoning import reasoning_teacher

    assert not reasoning_teacher(load_config(project(tmp_path, srv.base_url, 5, {"model": "o3", "reasoning": False})).teacher)
    assert reasoning_teacher(load_config(project(tmp_path, srv.base_url, 5, {"model": "o3"})).teacher)


def test_anthropic_extended_thinking_from_teacher_thinking_budget(tmp_path, monkeypatch):
    # teacher.reasoning_effort on an Anthropic teacher was dropped without a word (the request carried
    # temperature 0 and no thinking), and nothing could turn extended thinking on.
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    claude = {"type": "anthropic", "model": "claude-sonnet-4-5", "max_retries": 0}
    with Loopback(key=SECRET) as srv:
        with pytest.raises(PotstillError, match=r"^teacher.reasoning_effort high: the Anthropic Messages API takes no "
                                                r"effort; set teacher.thinking_budget"):
            generate_stage(load_config(project(tmp_path, srv.root_url, 4, {**claude, "reasoning_effort": "high"})))
        with pytest.raises(PotstillError, match=r"^teacher.max_tokens 2000 must exceed teacher.thinking_budget 4096"):
            generate_stage(load_config(project(tmp_path, srv.root_url, 4, {**claude, "max_tokens": 2000,
                                                                            "thinking_budget": 4096})))
        assert srv.stats()["answered"] == {}
        # thinking {type: enabled, budget_tokens}, no temperature (the server refuses any but 1 with thinking)
        cfg = load_config(project(tmp_path, srv.root_url, 4, {**claude, "max_tokens": 3000, "thinking_budget": 2048}))
        summary = generate_stage(cfg)
        stats = srv.stats()
    assert summary["errors"] == 0 and stats["faults"] == {} and stats["reasoning_effort"] == {"thinking 2048": 4}
    # The thinking and redacted_thinking blocks before the text are not the answer.
    check_output(tmp_path / "run" / "teacher.jsonl", 4)
    assert _check(cfg, "output_budget").status == "ok"  # a thinking teacher: its budget is read
    # Another teacher has no such setting: said, not ignored.
    with pytest.raises(PotstillError, match=r"teacher.thinking_budget: the openai teacher has no extended thinking"):
        generate_stage(load_config(project(tmp_path, srv.base_url, 4, {"thinking_budget": 2048})))


@pytest.mark.parametrize("teacher, n, fault, named", [
    ({"model": "gpt-4.1-mini", "reasoning_effort": "low"}, 60, "400-reasoning_effort", "reasoning_effort (HTTP 400)"),
    ({"model": "gpt-5-pro"}, 60, "400-model", "model (HTTP 404)"),
    ({"model": "gpt-4.1-mini", "reasoning_effort": "low"}, 3, "400-reasoning_effort", "reasoning_effort (HTTP 400)"),
])
def test_a_setting_the_server_refuses_stops_the_run_after_a_few_identical_400s(tmp_path, monkeypatch, teacher, n,
                                                                              fault, named):
    # reasoning_effort on a chat model, a Responses-only model: every input was sent, each a 400 (404),
    # and the line said 'rerun to retry them', which would send them all again to the same answer.
    from potstill.teachers.api.engine import HALT_AFTER

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    conc = 4
    with Loopback(key=SECRET) as srv:
        cfg = load_config(project(tmp_path, srv.base_url, n, {**teacher, "concurrency": conc, "max_retries": 0}))
        with pytest.raises(PotstillError) as e:
            generate_stage(cfg)
        refused = srv.stats()["faults"][fault]
    msg = str(e.value)
    assert refused == n if n < HALT_AFTER else refused <= HALT_AFTER + conc - 1, (refused, msg)
    assert f"the server refuses the request's {named}" in msg and "\n" not in msg
    assert "rerun to retry" not in msg and "fix it and rerun" in msg.lower(), msg


def test_cost_shows_the_reasoning_tokens_in_the_output(tmp_path, monkeypatch, capsys):
    # 6 one-word answers at 301 output tokens each: `potstill cost` said nothing of the 300 hidden ones.
    import sys

    from potstill.cli import main
    from potstill.ledger import Ledger

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, reasoning_tokens=300) as srv:
        generate_stage(load_config(project(tmp_path, srv.base_url, 6, {"model": "o4-mini", "max_tokens": 2000})))
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        assert [r["reasoning_tokens"] for r in ledger.rows(role="teacher")] == [300] * 6
    monkeypatch.setattr(sys, "argv", ["potstill", "cost", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert "+ 1806 output tokens (1800 reasoning), $" in out, out
