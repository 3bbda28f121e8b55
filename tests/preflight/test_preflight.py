"""`potstill preflight`: each check refuses the run it exists for, on tiny real models and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.preflight import projected_cost, require, run_checks, _Ctx
from tests.helpers.cli import run_in_process as potstill
from tests.helpers.tiny import make_model_dir, make_tokenizer


def _cfg(tmp_path: Path, **sections) -> Config:
    base = {"run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "summary"},
            "data": {"inputs": str(tmp_path / "inputs.jsonl")}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return Config.model_validate(base)


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _status(cfg: Config, name: str, stage: str | None = None) -> tuple[str, str]:
    c = next(c for c in run_checks(cfg, stage) if c.name == name)
    return c.status, c.detail


def _inputs(tmp_path: Path, n: int = 4) -> None:
    _write(tmp_path / "inputs.jsonl", [{"messages": [{"role": "user", "content": "the team won the match"}]}] * n)


def test_vocabulary_mismatch_of_a_local_teacher_refuses(tiny_model, tmp_path):
    other = tmp_path / "other"
    make_model_dir(other)
    tok = make_tokenizer()
    tok.add_tokens(["zebra"])  # one token more: ids still align below it, the LM heads do not
    tok.save_pretrained(other)
    kd = {"objective": "kd", "kd_signal": "logits"}
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, train={**kd, "teacher_model": str(other)})
    status, detail = _status(cfg, "vocabulary")
    assert status == "fail" and "another tokenizer" in detail and "zebra" in detail
    same = _cfg(tmp_path, student={"model": str(tiny_model)}, train={**kd, "teacher_model": str(tiny_model)})
    assert _status(same, "vocabulary")[0] == "ok"
    with pytest.raises(PotstillError, match="^preflight vocabulary: "):
        require(cfg, "train")


def test_heads_padded_to_other_sizes_past_one_tokenizer_pass(tiny_model, tmp_path):
    """One family's sizes pad the LM head differently past one tokenizer (Qwen2.5-7B, 0.5B): refused as
    a mismatch before; the rows both heads have hold every token, so it is ok and says so."""
    from tests.train.test_padded_heads import padded

    teacher = padded(tiny_model, tmp_path / "teacher-pad", extra=8)
    kd = {"objective": "kd", "kd_signal": "logits", "teacher_model": str(teacher)}
    status, detail = _status(_cfg(tmp_path, student={"model": str(tiny_model)}, train=kd), "vocabulary")
    assert status == "ok" and "padded to" in detail, detail


def _topk_record(tokens: list[str]) -> dict:
    return {"messages": [{"role": "user", "content": "a goal"}], "output": "sports match win", "valid": True,
            "logprobs": [{"token": t, "logprob": -0.1, "top": [{"token": t, "logprob": -0.1}]} for t in tokens]}


def test_topk_tokens_of_another_tokenizer_refuse(tiny_model, tmp_path):
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, train={"objective": "kd", "kd_signal": "topk"})
    # A BPE teacher splits "sports" into pieces the word-level student does not have.
    _write(tmp_path / "run" / "train.jsonl", [_topk_record(["sp", "orts", " match", " win"])] * 3)
    status, detail = _status(cfg, "vocabulary")
    assert status == "fail" and "0% of the teacher's output tokens" in detail
    _write(tmp_path / "run" / "train.jsonl", [_topk_record(["sports", "match", "win", "<|im_end|>"])] * 3)
    assert _status(cfg, "vocabulary") == ("ok", "100% of the teacher's output tokens map onto student tokens")


def test_topk_tokens_of_an_edited_answer_refuse_naming_the_answer_not_the_tokenizer(tiny_model, tmp_path):
    """Records whose answer is not the text their teacher tokens spell (edited after generate) map
    onto nothing whatever the tokenizers: the refusal blamed the teacher's tokenizer; it names the
    records now."""
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, train={"objective": "kd", "kd_signal": "topk"})
    rows = [{**_topk_record(["sports", " match", " win"]), "id": f"r{i}", "output": "film star vote"} for i in range(3)]
    _write(tmp_path / "run" / "train.jsonl", rows)
    status, detail = _status(cfg, "vocabulary")
    assert status == "fail" and "tokenizer" not in detail, detail
    assert "3 of 3 records' answers are not the text their teacher tokens spell (record r0: " in detail, detail


def test_classification_kd_on_labels_is_not_refused_for_top_k_it_does_not_use(tiny_model, tmp_path):
    """kd_signal auto on a classification task trains on the label distribution (``resolve_signal``),
    whatever top-k logprobs an API teacher's records carry: its tokenizer is no reason to refuse
    ``potstill train``; an explicit topk still is checked."""
    task = {"type": "classification", "labels": ["sports", "tech"], "instruction": "topic"}
    cfg = _cfg(tmp_path, task=task, student={"model": str(tiny_model)}, train={"objective": "kd"})
    row = {**_topk_record(["sp", "orts"]), "output": "sports", "label_probs": {"sports": 0.9, "tech": 0.1}}
    _write(tmp_path / "run" / "train.jsonl", [row] * 3)
    assert _status(cfg, "vocabulary", "train")[0] == "skip"
    require(cfg, "train")
    topk = _cfg(tmp_path, task=task, student={"model": str(tiny_model)}, train={"objective": "kd", "kd_signal": "topk"})
    assert _status(topk, "vocabulary", "train")[0] == "fail"


def test_served_chat_template_differing_from_training_refuses(tiny_model, tmp_path):
    _inputs(tmp_path)
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)})
    assert _status(cfg, "prompt")[0] == "ok"
    served = tmp_path / "run" / "student"
    tok = make_tokenizer()
    tok.chat_template = tok.chat_template.replace("<|im_start|>assistant\n", "<|im_start|>assistant\nanswer :")
    tok.save_pretrained(served)
    status, detail = _status(cfg, "prompt")
    assert status == "fail" and "differ from token" in detail and "answer" in detail


def test_a_records_own_system_message_that_serve_drops_refuses(tiny_model, tmp_path):
    """Training read an input's system turn after the instruction; serve drops a client's. The check
    rendered the same messages for both and said they matched."""
    turns = [{"role": "system", "content": "You are the ACME bot. Be terse."},
             {"role": "user", "content": "the team won the match"}]
    _write(tmp_path / "inputs.jsonl", [{"messages": turns}])
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)})
    assert _status(cfg, "prompt")[0] == "ok"  # data.inputs' system turn is read into meta.system
    _write(tmp_path / "run" / "train.jsonl", [{"id": "t1", "messages": turns, "output": "sports"}])
    status, detail = _status(cfg, "prompt")
    assert status == "fail" and "record t1 has its own system or developer message" in detail, detail


def test_plain_text_student_trains_on_the_served_prompt(tiny_model, tmp_path):
    """A student without a chat template: training used to drop the instruction serving sends."""
    plain = tmp_path / "plain"
    make_model_dir(plain)
    tok = make_tokenizer()
    tok.chat_template = None
    tok.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    _inputs(tmp_path)
    cfg = _cfg(tmp_path, student={"model": str(plain)})
    assert _Ctx(cfg).fmt(_Ctx(cfg).student_tok).kind == "completion"
    assert _status(cfg, "prompt")[0] == "ok"


def test_labels_sharing_a_first_token_refuse(tiny_model, tmp_path):
    task = {"type": "classification", "labels": ["sports", "sports match", "tech"]}
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, task=task)
    status, detail = _status(cfg, "labels", "generate")
    assert status == "fail" and "share their first token" in detail and detail.startswith("student")
    ok = _cfg(tmp_path, student={"model": str(tiny_model)}, task={**task, "labels": ["sports", "tech"]})
    assert _status(ok, "labels")[0] == "ok"


def test_projected_teacher_cost_above_budget_refuses(tiny_model, tmp_path):
    # 1,000 x (1 + 5 tokens of text by the student's tokenizer, 5 of chat format per message and 5 per
    # request) = 21k tokens in; 1,000 x 256 out
    _inputs(tmp_path, n=1000)
    teacher = {"type": "openai", "model": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}}
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"budget_usd": 1.0})
    usd, n, _ = projected_cost(_Ctx(cfg))
    assert n == 1000 and usd == pytest.approx((21_000 * 2.5 + 256_000 * 10.0) / 1e6, rel=1e-3)  # $2.61
    status, detail = _status(cfg, "budget", "generate")
    assert status == "fail" and "above generate.budget_usd $1" in detail
    rich = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"budget_usd": 3.0})
    assert _status(rich, "budget")[0] == "ok"


def test_the_budget_projection_counts_tokens_with_a_tokenizer_not_four_characters(tiny_model, tmp_path, monkeypatch):
    """Four characters a token holds for English prose; code, numbers and most other scripts take
    several times more, so a run that preflight passed could stop on generate.budget_usd part-way.
    The student's tokenizer (always local) counts them, as a proxy for an API teacher's; over
    TOKEN_SAMPLE inputs a seeded sample is counted and scaled, and the message says so."""
    import potstill.preflight as preflight

    code = '{"a": {"a": {"a": "the"}}}, ' * 20
    _write(tmp_path / "inputs.jsonl", [{"messages": [{"role": "user", "content": code}]}] * 100)
    teacher = {"type": "openai", "model": "gpt-4o", "max_tokens": 10,
               "price": {"input_per_mtok": 1.0, "output_per_mtok": 0.0}}
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"budget_usd": 0.03})
    usd, n, how = projected_cost(_Ctx(cfg))
    tok = make_tokenizer()
    text = len(tok(code, add_special_tokens=False)["input_ids"])
    assert text > 2 * math.ceil(len(code) / 4)  # 1.3 characters a token: quotes, braces and colons
    assert n == 100 and usd == pytest.approx(100 * (1 + 5 + text + 5 + 5) / 1e6)
    assert "tokens by the student's tokenizer (a proxy for the teacher's)" in how and "sample" not in how
    status, detail = _status(cfg, "budget")  # $0.0157 at four characters a token: it passed
    assert status == "fail" and "student's tokenizer" in detail
    monkeypatch.setattr(preflight, "TOKEN_SAMPLE", 10)
    sampled, n, how = projected_cost(_Ctx(cfg))
    assert sampled == pytest.approx(usd) and "counted on a sample of 10 inputs" in how


def test_openai_samples_pay_the_prompt_once_anthropic_n_times(tiny_model, tmp_path):
    """generate.n 5 on an OpenAI teacher is one request with n=5: the prompt is billed once and the
    output five times. It was projected as 5 calls (the prompt five times), so with a long prompt and
    a short label preflight, and so generate, refused a budget about 5x what the run costs. Anthropic
    has no n (the teacher sends 5 requests): there the prompt is paid 5 times."""
    _write(tmp_path / "inputs.jsonl", [{"input": "the team won the match " * 40}] * 1000)  # ~210 tokens in
    task = {"type": "classification", "instruction": "classify", "labels": ["sports", "tech"]}
    price = {"input_per_mtok": 2.5, "output_per_mtok": 10.0}

    def cost(kind: str, n: int, budget: float = 1.5) -> tuple[float, str, str]:
        cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, task=task, generate={"n": n, "budget_usd": budget},
                   teacher={"type": kind, "model": "m", "price": price})
        usd, _, how = projected_cost(_Ctx(cfg))
        return usd, how, _status(cfg, "budget")[0]

    one, _, _ = cost("openai", 1)
    # the instruction's 1 token and the input's 200, each with 5 of chat format, and 5 per request
    inp = 1000 * (1 + 5 + 200 + 5 + 5) * 2.5 / 1e6
    out = one - inp  # 1,000 x a label in a short sentence
    five, how, status = cost("openai", 5)
    assert five == pytest.approx(inp + 5 * out) and "1 call of 5 samples" in how
    assert status == "ok"  # $1.12 for a $1.50 budget; it was projected at $3.59 and refused
    anth, how, status = cost("anthropic", 5)
    assert anth == pytest.approx(5 * one) and "x 5 calls" in how and status == "fail"


def test_an_api_teachers_projection_has_no_shots_or_orders_it_never_sends(tiny_model, tmp_path):
    """teacher.few_shot shapes only the local teacher's prompt (its prefix, one scoring per shot
    order); an API teacher sends each input once with the instruction alone. A config that keeps
    few_shot while switching to an API teacher (the quickstart's k 50, orders 3) is projected as
    the same config without it, not as 3 calls of 50 shots each, which refused a budget it fits."""
    _write(tmp_path / "shots.jsonl", [{"input": "the team won the match " * 20, "label": "sports"}] * 50)
    _inputs(tmp_path, n=100)
    teacher = {"type": "openai", "model": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}}
    plain = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"budget_usd": 1.0})
    shots = _cfg(tmp_path, student={"model": str(tiny_model)}, generate={"budget_usd": 1.0},
                 teacher={**teacher, "few_shot": {"path": str(tmp_path / "shots.jsonl"), "k": 50, "orders": 3}})
    (usd, n, how), (usd_shots, n_shots, how_shots) = projected_cost(_Ctx(plain)), projected_cost(_Ctx(shots))
    assert (usd_shots, n_shots, how_shots) == (usd, n, how) and usd < 1.0
    assert _status(shots, "budget", "generate")[0] == "ok"


def test_a_budget_without_a_price_is_not_projected_as_zero(tiny_model, tmp_path):
    """An API model with no known price: generate refuses its budget (no spend would count), so
    preflight fails it too, where it printed "ok, projected $0.0000"; a local teacher (billed by
    the hour as it runs) has nothing to project: skipped, not "ok"."""
    _inputs(tmp_path)
    api = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher={"type": "openai", "model": "my-finetune-7"},
               generate={"budget_usd": 5.0})
    status, detail = _status(api, "budget")
    assert status == "fail" and "no price is known for teacher.model 'my-finetune-7'" in detail
    local = _cfg(tmp_path, student={"model": str(tiny_model)}, generate={"budget_usd": 5.0},
                 teacher={"type": "local", "model": str(tiny_model), "price": {"usd_per_hour": 1.0}})
    assert _status(local, "budget")[0] == "skip"


def test_missing_or_unreadable_inputs_refuse(tiny_model, tmp_path):
    """Preflight used to skip the prompt check ("no inputs to render") and pass; generate then refused."""
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)})
    status, detail = _status(cfg, "inputs")
    assert status == "fail" and detail == f"data.inputs: {tmp_path / 'inputs.jsonl'}: file not found"
    _write(tmp_path / "inputs.jsonl", [{"input": "the team won"}, {"messages": [{"role": "wizard", "content": "x"}]}])
    status, detail = _status(cfg, "inputs")
    assert status == "fail" and "inputs.jsonl:2: messages.0.role: 'wizard'" in detail
    _inputs(tmp_path)
    assert _status(cfg, "inputs") == ("ok", f"4 records in {tmp_path / 'inputs.jsonl'}")


def test_unknown_teacher_type_refuses(tiny_model, tmp_path):
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher={"type": "vllm"})
    status, detail = _status(cfg, "teacher")
    assert status == "fail" and detail.startswith("teacher.type: unknown teacher type 'vllm' (available: ")
    ok = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher={"type": "openai", "model": "gpt-4o"})
    assert _status(ok, "teacher")[0] == "ok"


def test_cli_preflight_prints_every_check_and_exits_non_zero(tiny_model, tmp_path):
    _inputs(tmp_path, n=1000)
    cfg = {"run_dir": "run", "task": {"type": "freetext", "instruction": "summary"},
           "data": {"inputs": "inputs.jsonl"}, "student": {"model": str(tiny_model)},
           "teacher": {"type": "openai", "model": "gpt-4o"}, "generate": {"budget_usd": 0.5}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    cmd = ["preflight", "-c", "potstill.yaml"]
    bad = potstill(cmd, tmp_path)
    assert bad.returncode == 2, bad.stderr
    names = ["inputs", "teacher", "context", "vocabulary", "prompt", "labels", "weights", "budget", "samples",
             "tool_turns", "output_budget", "kd_signal"]
    assert [ln.split()[1] for ln in bad.stdout.splitlines()] == names
    assert bad.stderr.strip().splitlines()[-1] == "error: preflight: 1 check(s) failed: budget"
    good = potstill([*cmd, "--generate.budget_usd", "100"], tmp_path)
    assert good.returncode == 0, good.stderr
    gen = potstill(["generate", "-c", "potstill.yaml"], tmp_path)
    assert gen.returncode == 2 and "preflight budget:" in gen.stderr and not (tmp_path / "run" / "teacher.jsonl").exists()


def test_a_rerun_after_the_budget_stopped_projects_only_what_it_would_send(tiny_model, tiny_model_b, tmp_path,
                                                                          monkeypatch):
    """generate's budget caps one run, and a run it stopped says to raise it and rerun; the inputs
    the ledger answered are not sent again, so preflight projects only the rest (it projected every
    input and refused the raised budget that covered them)."""
    from potstill.generate.stage import generate_body
    from potstill.rundir import RunDir
    from tests.helpers.chat_server import ChatServer

    words = "business market shares bank profit film music star award election minister party vote".split()
    _write(tmp_path / "inputs.jsonl", [{"input": f"{a} {b} {c}"} for a, b, c in zip(words, words[1:], words[2:])][:10])
    monkeypatch.setenv("TEACHER_KEY", "unused-by-the-test-server")
    with ChatServer(str(tiny_model_b)) as server:
        teacher = {"type": "openai", "model": "tiny", "base_url": server.base_url, "api_key_env": "TEACHER_KEY",
                   "max_tokens": 8, "price": {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}}
        full = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"budget_usd": 1.0})
        usd_all, n_all, _ = projected_cost(_Ctx(full))
        half = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, data={"limit": 6})
        generate_body(half, RunDir(half.run_dir))  # 6 of the 10 inputs answered and paid
        sent = sum(server.requests.values())
        usd_rest, n_rest, how = projected_cost(_Ctx(full))
        assert (n_all, sent, n_rest) == (10, 6, 4) and "6 more answered in the ledger" in how
        assert usd_rest == pytest.approx(usd_all * 4 / 10, rel=0.15)  # the 4 unanswered inputs' share
        enough = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher,
                      generate={"budget_usd": (usd_rest + usd_all) / 2})
        assert _status(enough, "budget", "generate")[0] == "ok"
        assert sum(server.requests.values()) == sent  # preflight sends nothing


def test_the_projection_covers_what_generate_then_spends_on_short_inputs(tiny_model, tiny_model_b, tmp_path,
                                                                         monkeypatch):
    """Tweet-length inputs to a classification teacher: the projection counted the text alone
    (characters / 4) and the longest label plus one token out, about a third of what the ledger
    then recorded: each message's role markers and the reply's priming are billed too, and the
    request lets the teacher write up to teacher.max_tokens, not one word."""
    from potstill.generate.stage import generate_body
    from potstill.ledger import Ledger
    from potstill.rundir import RunDir
    from tests.helpers.chat_server import ChatServer

    words = "win vote film goal bank game star party music phone".split()
    _write(tmp_path / "inputs.jsonl", [{"input": f"{a} {b}"} for a, b in zip(words, words[1:])])
    task = {"type": "classification", "instruction": "topic", "labels": ["sports", "tech", "politics"]}
    monkeypatch.setenv("TEACHER_KEY", "unused-by-the-test-server")
    with ChatServer(str(tiny_model_b)) as server:
        teacher = {"type": "openai", "model": "tiny", "base_url": server.base_url, "api_key_env": "TEACHER_KEY",
                   "max_tokens": 8, "logprobs": 0, "price": {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}}
        cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, task=task, teacher=teacher)
        usd, n, how = projected_cost(_Ctx(cfg))
        generate_body(cfg, RunDir(cfg.run_dir))
    with Ledger(tmp_path / "run" / "calls.sqlite", readonly=True) as ledger:
        spent = ledger.summary()
    assert n == spent["calls"] == 9
    assert spent["cost_usd"] <= usd <= 2 * spent["cost_usd"], (usd, spent, how)
    assert "up to 8 output tokens each" in how and "tokens of chat format per message" in how


def test_a_check_that_cannot_load_its_model_fails_alone_and_the_table_is_still_printed(tmp_path):
    """A student path that does not exist: the first check that loaded its tokenizer raised, and
    preflight printed one line and none of the other checks' results."""
    _inputs(tmp_path)
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": ["sports", "tech"]},
           "data": {"inputs": "inputs.jsonl"}, "student": {"model": str(tmp_path / "no-such-student")},
           "teacher": {"type": "openai", "model": "gpt-4o"}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    run = potstill(["preflight", "-c", "potstill.yaml"], tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    rows = [ln.split(None, 2) for ln in run.stdout.splitlines()]
    assert [r[1] for r in rows] == ["inputs", "teacher", "context", "vocabulary", "prompt", "labels", "weights",
                                    "budget", "samples", "tool_turns", "output_budget", "kd_signal"]
    status = {r[1]: r[0] for r in rows}
    assert status["inputs"] == status["teacher"] == "ok" and status["weights"] == status["budget"] == "skip"
    assert status["context"] == status["prompt"] == status["labels"] == "fail"
    for check in ("context", "prompt"):
        reason = next(r[2] for r in rows if r[1] == check)
        assert "no-such-student" in reason and "\n" not in reason
    assert run.stderr.strip().splitlines()[-1] == "error: preflight: 3 check(s) failed: context, prompt, labels"


def test_a_check_that_cannot_read_a_file_fails_alone(monkeypatch):
    """Only PotstillError was caught per check: an OSError (a file without read permission, a
    folder where a file belongs) from one check dropped every other check's result."""
    import errno

    from potstill import preflight
    from potstill.config import Config

    def check_unreadable(ctx):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/tok/tokenizer.json")

    def check_fine(ctx):
        return preflight.Check("fine", "ok", "nothing wrong")

    monkeypatch.setitem(preflight.CHECKS, None, [check_unreadable, check_fine])
    monkeypatch.delenv("POTSTILL_DEBUG", raising=False)
    got = preflight.run_checks(Config(task={"type": "freetext"}))
    assert [(c.name, c.status) for c in got] == [("unreadable", "fail"), ("fine", "ok")]
    assert got[0].detail == "/data/tok/tokenizer.json: Permission denied"


def test_n_greedy_samples_are_a_warning_that_generate_says(tiny_model, tmp_path, capsys):
    """generate.n 5 at teacher.temperature 0 (the default) paid 5 times for near-identical greedy
    samples and nothing said so. A warning (some servers sample anyway), said before generate runs."""
    _inputs(tmp_path)
    teacher = {"type": "openai", "model": "gpt-4o-mini"}
    cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"n": 5})
    status, detail = _status(cfg, "samples", "generate")
    assert status == "warn" and "generate.n 5 at teacher.temperature 0" in detail and "about 5 times" in detail
    require(cfg, "generate")  # a warning does not stop the run
    said = " ".join(capsys.readouterr().err.split())
    assert "preflight samples: generate.n 5 at teacher.temperature 0" in said
    warm = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher={**teacher, "temperature": 0.7}, generate={"n": 5})
    assert _status(warm, "samples")[0] == "ok"
    # An OpenAI reasoning model is sent no temperature: it samples at 1 whatever teacher.temperature says.
    o3 = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher={"type": "openai", "model": "o3-mini"},
              generate={"n": 5})
    assert _status(o3, "samples")[0] == "ok"
    assert _status(_cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher), "samples")[0] == "skip"


def test_the_budget_counts_a_content_parts_message_by_its_text(tiny_model, tmp_path):
    """Each message was counted as str(content): a message of content parts (as an OpenAI client
    sends them) was counted as the repr of its list, type keys and quotes and all, several times
    its text, which could fail a budget the run fits."""
    teacher = {"type": "openai", "model": "gpt-4o", "max_tokens": 10,
               "price": {"input_per_mtok": 1.0, "output_per_mtok": 0.0}}
    text = "the team won the match " * 5
    _write(tmp_path / "inputs.jsonl", [{"messages": [{"role": "user", "content": text}]}] * 20)
    plain, _, _ = projected_cost(_Ctx(_cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher)))
    _write(tmp_path / "inputs.jsonl", [{"messages": [{"role": "user", "content": [
        {"type": "text", "text": "the team won the match " * 2}, {"type": "text", "text": "the team won the match " * 3}]}]}] * 20)
    parts, _, _ = projected_cost(_Ctx(_cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher)))
    assert parts == pytest.approx(plain, rel=0.05), (parts, plain)


def test_tool_rounds_are_in_the_projection(tiny_model, tmp_path):
    """generate.tool_rounds asks up to two more calls per round and input (the function played, the
    turn after it); the projection counted the first round only, so a budget it passed could stop."""
    _inputs(tmp_path)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    teacher = {"type": "openai", "model": "gpt-4.1-mini", "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}

    def cost(rounds: int) -> tuple[float, str]:
        cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, teacher=teacher, generate={"tool_rounds": rounds},
                   task={"type": "tools", "tools": tools, "tool_choice": "auto", "instruction": "call"})
        usd, _, how = projected_cost(_Ctx(cfg))
        return usd, how

    (one, _), (three, how) = cost(0), cost(2)
    # The turns carry task.tools (1 + 2 = 3 times); the functions played do not.
    tools_usd = len(make_tokenizer()(json.dumps(tools), add_special_tokens=False)["input_ids"]) * 4 / 1e6  # 4 inputs
    assert three == pytest.approx(5 * (one - tools_usd) + 3 * tools_usd)
    assert "times 5 for generate.tool_rounds 2" in how and "task.tools 3 times" in how


def test_a_tools_tasks_projection_counts_the_tools_every_request_carries(tiny_model, tmp_path):
    """OpenAI and Anthropic bill the ``tools`` of each request as input; the projection counted the
    messages alone, the same for one small function as for five documented ones, so preflight passed
    a budget that generate then stopped on part-way. Counted as the teacher sends them: OpenAI's
    form, Anthropic's ``input_schema`` plus its tool-use system prompt."""
    import potstill.preflight as preflight

    _inputs(tmp_path, n=100)
    doc = "the name of the city " * 10
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": doc, "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "description": doc}}}}} for i in range(5)]
    price = {"input_per_mtok": 1.0, "output_per_mtok": 0.0}

    def cost(kind: str, task: dict, budget: float = 1.0) -> tuple[float, str, str]:
        cfg = _cfg(tmp_path, student={"model": str(tiny_model)}, task=task, generate={"budget_usd": budget},
                   teacher={"type": kind, "model": "m", "price": price})
        usd, _, how = projected_cost(_Ctx(cfg))
        return usd, how, _status(cfg, "budget")[0]

    tok = make_tokenizer()
    size = lambda x: len(tok(json.dumps(x), add_special_tokens=False)["input_ids"])  # noqa: E731
    anthropic_tools = [{"name": t["function"]["name"], "description": doc, "input_schema": t["function"]["parameters"]}
                       for t in tools]
    assert size(tools) > 500  # about ten times the message of each request
    words = {"type": "freetext", "instruction": "call"}
    called = {"type": "tools", "tools": tools, "instruction": "call"}
    for kind, sent in (("openai", lambda: size(tools)),
                       ("anthropic", lambda: size(anthropic_tools) + preflight.ANTHROPIC_TOOL_PROMPT)):
        plain, sent = cost(kind, words)[0], sent()
        usd, how, status = cost(kind, called, budget=(plain + 100 * sent / 1e6) * 0.9)
        assert usd == pytest.approx(plain + 100 * sent / 1e6), kind  # was plain
        assert f"{sent} tokens of task.tools in each request" in how and status == "fail"


def test_a_max_length_past_the_students_positions_refuses(tmp_path):
    """Found by an audit: a student with learned positions (GPT-2, 128 here) and the default
    student.max_length 256 passed preflight, then train failed with an IndexError traceback on the first
    example longer than 128 tokens. Refused in one line now, by preflight and by train."""
    from tests.serve.test_context import gpt2_dir

    _inputs(tmp_path)
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": ["sports", "tech"]},
           "data": {"inputs": "inputs.jsonl"}, "student": {"model": str(gpt2_dir(tmp_path / "gpt2"))},
           "teacher": {"type": "openai", "model": "gpt-4o"}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    cmd = ["preflight", "-c", "potstill.yaml"]
    bad = potstill(cmd, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    row = next(ln.split(None, 2) for ln in bad.stdout.splitlines() if ln.split()[1] == "context")
    assert row[0] == "fail" and row[2] == ("student.max_length 256 is more than the student's 128 positions; "
                                          "set student.max_length 128 or less")
    assert bad.stderr.strip().splitlines()[-1] == "error: preflight: 1 check(s) failed: context"
    good = potstill([*cmd, "--student.max_length", "128"], tmp_path)
    assert good.returncode == 0, good.stderr
    rotary = _cfg(tmp_path, student={"model": str(make_model_dir(tmp_path / "llama")), "max_length": 600})
    assert _status(rotary, "context", "train") == ("fail", "student.max_length 600 is more than the student's 512 "
                                                           "positions; set student.max_length 512 or less")
    with pytest.raises(PotstillError, match="^preflight context: student.max_length 600 "):
        require(rotary, "train")


def test_a_teacher_that_generate_refuses_fails_the_teacher_check(tmp_path):
    """`potstill init`'s starter (teacher type local, model '') passed preflight with "teacher type 'local'
    found", and `run` then stopped on "teacher.model is required for a local teacher"."""
    from potstill.config import starter_yaml
    from potstill.preflight import check_teacher

    def teacher(**cfg) -> tuple[str, str]:
        c = check_teacher(_Ctx(_cfg(tmp_path, teacher=cfg)))
        return c.status, c.detail

    starter = yaml.safe_load(starter_yaml())
    assert starter["teacher"]["type"] == "local" and not starter["teacher"]["model"]
    assert teacher(type="local", model="") == ("fail", "teacher.model is required for a local teacher")
    status, detail = teacher(type="replay", replay_path=str(tmp_path / "none.jsonl"))
    assert status == "fail" and "file not found" in detail
    assert teacher(type="openai", model="gpt-4o")[0] == "ok"


def test_inputs_a_required_tools_task_never_learns_are_a_warning_before_generate(tiny_model, tmp_path, capsys):
    """Found by a review: under task.tool_choice required (the default), an agent's chat that already
    ends with a tool result was sent with a call required, paid, and set aside by curate, without a
    word before. Now generate's preflight says how many, and the fix, before any request is sent."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    after = [{"role": "user", "content": "weather in Oslo?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 12}'}]
    first = [{"role": "user", "content": "weather in Rome?"}]
    _write(tmp_path / "inputs.jsonl", [{"messages": first}] * 3 + [{"messages": after}])

    def cfg(**task) -> Config:
        return _cfg(tmp_path, student={"model": str(tiny_model)}, teacher={"type": "openai", "model": "gpt-4o-mini"},
                    task={"type": "tools", "tools": tools, "instruction": "call", **task})

    status, detail = _status(cfg(), "tool_turns", "generate")
    assert status == "warn" and detail.startswith("1 of 4 inputs already hold tool calls or results (1 end with a "
                                                  "tool result)") and "set task.tool_choice: auto" in detail
    require(cfg(), "generate")  # a warning: the first requests still run
    assert "preflight tool_turns: 1 of 4 inputs" in " ".join(capsys.readouterr().err.split())
    assert _status(cfg(tool_choice="auto"), "tool_turns")[0] == "skip"  # auto learns those turns
    _write(tmp_path / "inputs.jsonl", [{"messages": first}] * 3)
    assert _status(cfg(), "tool_turns")[0] == "ok"
