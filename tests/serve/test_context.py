"""A request longer than the student's context: escalated to the teacher, the student never runs on it.

Found by an audit: a student with learned position embeddings (GPT-2 style, any causal LM
transformers loads) failed such a request with a 500 and an IndexError traceback in the server
log; a rotary one answered it past the positions it has. Real parts: tiny students built from a
config, the real teacher server on loopback, the official openai client."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from potstill.serve.routing import Routing
from tests.helpers.live_server import LiveServer
from tests.helpers.tiny import make_model_dir, make_tokenizer
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, answered_by_teacher, write_run

FREETEXT = {"type": "freetext", "instruction": "name the topic", "max_output_tokens": 4}


def gpt2_dir(path, positions: int = 128):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=positions,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind,task", [("gpt2", None), ("gpt2", FREETEXT), ("llama", FREETEXT)])
def test_an_input_over_the_students_context_goes_to_the_teacher(tmp_path, teacher_server, monkeypatch, kind, task):
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    student = gpt2_dir(tmp_path / "gpt2") if kind == "gpt2" else make_model_dir(tmp_path / "llama")  # 128 / 512 positions
    context = 128 if kind == "gpt2" else 512
    run = write_run(tmp_path, student, teacher_server.base_url, task=task)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student answers all it can
    calls = []
    real = service.engine.answer
    service.engine.answer = lambda batch: calls.append(len(batch)) or real(batch)
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
            short = client.chat.completions.create(model="potstill", messages=[{"role": "user", "content": "the team won"}])
            assert short.model_extra["potstill"]["answered_by"] == "student" and calls == [1]
            sent = sum(teacher_server.requests.values())
            for stream in (False, True):
                # two chats: a repeat of the first would be answered from its row (serve.reuse_escalations)
                long = [{"role": "user", "content": "the team won the match " * (context // 5 + 1) + "goal" * stream}]
                raw = client.chat.completions.with_raw_response.create(model="potstill", messages=long, stream=stream)
                c = answered_by_teacher(raw, "too_long", stream)
                if c is not None:
                    assert c.model == "tiny-teacher" and c.choices[0].message.content
                    assert c.usage.prompt_tokens > context  # the teacher read it whole
                    route = c.model_extra["potstill"]
                    assert route["confidence"] is None and route["ood_distance"] is None and route["student_output"] == ""
            assert calls == [1]  # the student never ran on the long input
            assert sum(teacher_server.requests.values()) == sent + 2  # the real teacher answered both
            rows = service.ledger.rows(stage="serve")[-2:]
            assert [(r["status"], r["role"]) for r in rows] == [("ok", "teacher")] * 2
    finally:
        service.close()


def _load_with_one_more(run, messages: list[dict]):
    """The run's service, loaded (and calibrated) after one more record with ``messages`` joins
    train.jsonl and val.jsonl."""
    import json

    from potstill.serve import run_config
    from potstill.serve.service import load_service

    line = json.dumps({"messages": messages, "output": "sports"}) + "\n"
    for split in ("train.jsonl", "val.jsonl"):
        with open(run / split, "a") as f:
            f.write(line)
    return load_service(run, run_config(run, None), device="cpu")


def test_a_split_with_inputs_over_the_context_still_calibrates(tmp_path, teacher_server, monkeypatch, capsys):
    """Found by an audit: one val or train input longer than a GPT-2-style student's positions made
    `potstill serve` fail at start with an IndexError traceback (calibration embedded and scored
    it). Such inputs are left out of calibration, as serving leaves them to the teacher."""
    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, gpt2_dir(tmp_path / "gpt2"), teacher_server.base_url)
    service = _load_with_one_more(run, [{"role": "user", "content": "the team " * 100}])
    try:
        st = service.routing.stats
        assert st["n_val"] == 20 and st["n_val_too_long"] == 1 and st["n_reference"] == 30
        assert "1 of 21 val inputs are longer than the student's context (128 positions)" in capsys.readouterr().err
    finally:
        service.close()


def test_a_chat_the_students_template_refuses_is_a_400(tmp_path, teacher_server, monkeypatch):
    """Found by an audit: a chat template that refuses a chat (Gemma's and Mistral's raise 'Conversation
    roles must alternate' on two user turns in a row, which OpenAI's API takes) failed the request
    with a 500 'internal error (TemplateError)'; it is a 400 that says why, logged like any."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service
    from tests.helpers.tiny import CHATML

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    student = make_model_dir(tmp_path / "strict")
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
                         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
                         "{% endif %}{% endfor %}" + CHATML)
    tok.save_pretrained(student)
    run = write_run(tmp_path, student, teacher_server.base_url)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
            two = [{"role": "user", "content": "the team won"}, {"role": "user", "content": "the match"}]
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="potstill", messages=two)
            assert e.value.body["param"] == "messages" and "Conversation roles must alternate" in e.value.message
            row = service.ledger.rows(stage="serve")[-1]
            assert row["status"] == "error" and row["error"].startswith("400")
            counted = httpx.post(live.url + "/tokenize", json={"messages": two}, timeout=30,
                                 headers={"Authorization": f"Bearer {SERVE_KEY}"})
            assert counted.status_code == 400 and counted.json()["error"]["param"] == "messages", counted.text
            assert "chat template refuses this chat: Conversation roles must alternate" in counted.json()["error"]["message"]
            ok = [{"role": "user", "content": "the team won"}]
            assert client.chat.completions.create(model="potstill", messages=ok).choices[0].message.content
    finally:
        service.close()


def test_a_split_with_chats_the_students_template_refuses_still_calibrates(tmp_path, teacher_server, monkeypatch,
                                                                           capsys):
    """Found by an audit: one val or train chat the student's template refuses (two user turns in a
    row under Gemma's or Mistral's) made `potstill serve` fail at start with a RefusedChat
    traceback from calibration. Such chats are left out of calibration with one line, as serving
    answers them with a 400."""
    from tests.helpers.tiny import CHATML

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    student = make_model_dir(tmp_path / "strict")
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
                         "{{ raise_exception('Conversation roles must alternate') }}{% endif %}{% endfor %}" + CHATML)
    tok.save_pretrained(student)
    run = write_run(tmp_path, student, teacher_server.base_url)
    service = _load_with_one_more(run, [{"role": "user", "content": "the team won"},
                                        {"role": "user", "content": "the match"}])
    try:
        st = service.routing.stats
        assert st["n_val"] == 20 and st["n_reference"] == 30
        err = capsys.readouterr().err
        assert "1 of 21 val inputs are refused by the student's chat template" in err, err
        assert "Conversation roles must alternate" in err and "Traceback" not in err
    finally:
        service.close()


@pytest.mark.parametrize("task", [None, FREETEXT])
def test_a_served_prompt_is_tokenised_once(tmp_path, teacher_server, monkeypatch, task):
    """Found by an audit: serve tokenised each prompt to check it against the student's context, then
    the engine tokenised it again on the batcher's thread, where a long classification prompt (label
    scoring keeps its last tokens, so it is never too long) held every request batched with it: ~0.5 s
    a megabyte. The engine now takes the ids the check made; a prompt over the context still goes
    to the teacher unread."""
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, make_model_dir(tmp_path / "llama"), teacher_server.base_url, task=task)  # 512 positions
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student answers all it can
    seen: list[str] = []
    cls = type(service.engine.engine.tokenizer)
    real = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda tok, text=None, *a, **kw: seen.append(str(text)) or real(tok, text, *a, **kw))
    try:
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
            for i, word in enumerate(["zebra", "yak"]):
                c = client.chat.completions.create(model="potstill", messages=[{"role": "user", "content": f"{word} won"}])
                assert c.model_extra["potstill"]["answered_by"] == "student"
                assert sum(word in s for s in seen) == 1, seen
            long = [{"role": "user", "content": "the team won the match " * 110}]  # 550 words > 512 positions
            c = client.chat.completions.create(model="potstill", messages=long)
            assert (c.model_extra["potstill"]["answered_by"], c.model_extra["potstill"]["reason"]) == ("teacher", "too_long")
    finally:
        service.close()


def llama_dir(path, positions: int):
    """A tiny Llama with ``positions`` positions and lively weights (its label depends on the whole prompt)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                      initializer_range=0.3, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_served_label_reads_the_whole_prompt_up_to_the_students_context(tmp_path, teacher_server, monkeypatch):
    """Found by an audit: serve scored a label on a chat's last 2048 tokens whatever the student's context,
    so a longer chat that fits a 4,096-position student lost its start (the system turn first), got
    another label than evaluate measured for it, and billed 2048 prompt tokens. It reads the whole
    prompt now, as evaluate does, and reports its real length."""
    from potstill.models.prompting import encode_prompt
    from potstill.records import Record
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service
    from potstill.students import predict

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, llama_dir(tmp_path / "llama", 4096), teacher_server.base_url)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student answers all it can
    # ~2,450 tokens: one a word in the tiny tokenizer
    chat = [{"role": "user", "content": "tech phone software " * 150 + "the team won the match " * 400}]
    try:
        tok, fmt = service.engine.engine.tokenizer, service.engine.fmt
        whole = len(encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, chat), first=True))
        assert 2048 < whole < 4096
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
            c = client.chat.completions.create(model="potstill", messages=chat)
        assert c.model_extra["potstill"]["answered_by"] == "student"
        assert c.usage.prompt_tokens == whole
        p = predict(service.engine.engine, service.task, [Record(messages=chat)], batch_size=1)
        assert p.prompt_tokens == [whole] and c.choices[0].message.content == p.outputs[0]
    finally:
        service.close()
