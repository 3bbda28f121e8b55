"""``logprobs`` / ``top_logprobs`` through the official openai client: the student's are its own
log-probs of the tokens it returned (checked against a plain forward of the tiny model), a teacher's
are what it returned for its answer, and a teacher that gives none says so."""

from __future__ import annotations

import math

import openai
import pytest
import torch

from potstill.serve.routing import Routing
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import MSG, claude_behind, client, served_free_text
from tests.serve.test_tool_calls import anthropic_provider


def forward_logprobs(model_dir, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """(len(answer), vocab) log-probs at each answer position: the model as transformers loads it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0].float()
    return torch.log_softmax(logits, -1)[len(prompt) - 1 : len(prompt) + len(answer) - 1]


def check_against_forward(model_dir, service, msgs: list[dict], content: list, text: str, top: int) -> None:
    engine = service.live.engine
    tok = engine.engine.tokenizer
    prompt = tok(engine.fmt.prefix() + engine.fmt.query(tok, msgs), add_special_tokens=False)["input_ids"]
    answer = tok(text, add_special_tokens=False)["input_ids"]
    assert "".join(t.token for t in content) == text and len(content) == len(answer)
    lp = forward_logprobs(model_dir, prompt, answer)
    for j, (t, want) in enumerate(zip(content, answer)):
        assert t.logprob == pytest.approx(float(lp[j, want]), abs=1e-4)
        assert bytes(t.bytes).decode("utf-8") == t.token
        assert len(t.top_logprobs) == top
        best = lp[j].topk(top)
        assert [a.logprob for a in t.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert [tok.convert_tokens_to_ids(a.token.strip()) for a in t.top_logprobs] == best.indices.tolist()


def test_a_generating_students_logprobs_are_its_own_for_the_tokens_it_returned(tmp_path, tiny_model, teacher_server,
                                                                               monkeypatch):
    """Found by an audit: logprobs and top_logprobs were accepted and ignored, so a client reading
    choices[0].logprobs.content got None."""
    msgs = [{"role": "user", "content": "the team won the match"}]
    with served_free_text(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student
        cl = client(live)
        c = cl.chat.completions.create(model="potstill", messages=msgs, logprobs=True, top_logprobs=5)
        text = c.choices[0].message.content
        content = c.choices[0].logprobs.content
        assert c.model_extra["potstill"]["answered_by"] == "student" and len(content) == c.usage.completion_tokens
        check_against_forward(tiny_model, service, msgs, content, text, 5)
        # greedy: each returned token is the likeliest, and their mean is the confidence routing read
        assert all(t.top_logprobs[0].token == t.token for t in content)
        mean = sum(t.logprob for t in content) / len(content)
        assert mean == pytest.approx(c.model_extra["potstill"]["confidence"], abs=1e-4)
        # cut by max_tokens: the tokens sent; streamed: the same numbers on the content delta
        cut = cl.chat.completions.create(model="potstill", messages=msgs, logprobs=True, max_tokens=2)
        assert [(t.token, t.logprob, t.top_logprobs) for t in cut.choices[0].logprobs.content] == \
            [(t.token, t.logprob, []) for t in content[:2]]
        chunks = list(cl.chat.completions.create(model="potstill", messages=msgs, logprobs=True, top_logprobs=5,
                                                 stream=True))
        streamed = [t for ch in chunks for choice in ch.choices if choice.logprobs for t in choice.logprobs.content]
        assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
        plain = cl.chat.completions.create(model="potstill", messages=msgs)
        assert plain.choices[0].logprobs is None  # not asked: none computed


def test_a_labels_logprobs_from_the_student_and_from_an_openai_teacher(served, force, teacher_server, tiny_model):
    service, live = served
    force("student")
    c = client(live).chat.completions.create(model="potstill", messages=MSG, logprobs=True, top_logprobs=3)
    label = c.choices[0].message.content
    assert label in service.task.labels
    check_against_forward(tiny_model, service, MSG, c.choices[0].logprobs.content, label, 3)
    # the teacher (the real tiny model behind an OpenAI-compatible server) is asked for them
    force("teacher")
    c = client(live).chat.completions.create(model="potstill", messages=MSG, logprobs=True, top_logprobs=3)
    assert c.model_extra["potstill"]["answered_by"] == "teacher"
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob for t in content)  # greedy


def test_a_teacher_without_logprobs_says_so_and_bad_fields_are_400s(served, force):
    service, live = served
    force("teacher")
    with claude_behind(service, anthropic_provider([]), max_tokens=64):
        c = client(live).chat.completions.create(model="potstill", messages=MSG, logprobs=True)
    assert c.choices[0].message.content == "sports" and c.choices[0].logprobs is None
    assert c.model_extra["potstill"]["logprobs_unavailable"] == "the anthropic teacher gives no token log-probabilities"
    for kw, param in (({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                      ({"logprobs": "yes"}, "logprobs")):
        with pytest.raises(openai.BadRequestError) as e:
            client(live).chat.completions.create(model="potstill", messages=MSG, **kw)
        assert e.value.body["param"] == param


def _served_run(tmp_path, tiny_model, monkeypatch, **serve):
    """The served run of serve/conftest's ``write_run`` with ``serve`` fields, the student answering."""
    from potstill.serve import run_config
    from potstill.serve.service import load_service
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1", recheck_margin=0, **serve)
    cfg = run_config(run, None)
    service = load_service(run, cfg, device="cpu")
    service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)  # the student
    return service, cfg


def test_a_ctranslate2_student_returns_its_logprobs(tmp_path, tiny_model, monkeypatch):
    """serve.engine ctranslate2 (the real engine, the tiny student converted to float32 weights):
    logprobs were a 400 ('gives no token log-probabilities'); they are now its own, as a plain
    forward of the model gives them."""
    from potstill.serve import serve_key
    from potstill.serve.app import build_app

    pytest.importorskip("ctranslate2")  # the [test] extra has it; the lent GPU's image does not
    service, cfg = _served_run(tmp_path, tiny_model, monkeypatch, engine="ctranslate2", quantization="none")
    try:
        assert service.live.engine.engine.name == "ctranslate2"
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            c = client(live).chat.completions.create(model="potstill", messages=MSG, logprobs=True, top_logprobs=3)
            assert c.model_extra["potstill"]["answered_by"] == "student"
            check_against_forward(tiny_model, service, MSG, c.choices[0].logprobs.content, c.choices[0].message.content,
                                  3)
            # An answer CTranslate2 cannot score (past a sliding window that the prompt alone fits):
            # answered, its logprobs null and the reason given, as a teacher without them.
            student = service.live.engine
            tok = student.engine.tokenizer
            student.engine.window = len(tok(student.fmt.prefix() + student.fmt.query(tok, MSG),
                                            add_special_tokens=False)["input_ids"])
            c = client(live).chat.completions.create(model="potstill", messages=MSG, logprobs=True)
            assert c.model_extra["potstill"]["answered_by"] == "student" and c.choices[0].logprobs is None
            assert "sliding attention window" in c.model_extra["potstill"]["logprobs_unavailable"]
    finally:
        service.close()


def test_a_student_whose_engine_scores_no_tokens_refuses_logprobs_with_a_400(tmp_path, tiny_model, monkeypatch):
    """A plugin engine written to the protocol alone (no ``token_logprobs``, no transformers model):
    a request asking for logprobs is a 400 naming the engine, before the student or the teacher is
    asked, with its row in the ledger; the same request without them is answered."""
    from importlib.metadata import EntryPoint

    from potstill import plugins
    from potstill.serve import serve_key
    from potstill.serve.app import build_app
    from tests.engines.test_selection import OLDER_ENGINE
    from tests.serve.conftest import rows

    (tmp_path / "older_engine_plugin.py").write_text(OLDER_ENGINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="older", value="older_engine_plugin:OlderEngine", group="potstill.engines")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == "potstill.engines" else [])
    service, cfg = _served_run(tmp_path, tiny_model, monkeypatch, engine="older")
    try:
        assert service.live.engine.engine.name == "older"
        with LiveServer(build_app(service, serve_key(cfg))) as live:
            with pytest.raises(openai.BadRequestError) as e:
                client(live).chat.completions.create(model="potstill", messages=MSG, logprobs=True)
            assert e.value.body["param"] == "logprobs"
            assert e.value.body["message"] == ("logprobs: the student's engine (older) gives no token "
                                               "log-probabilities; serve the student with serve.engine transformers, "
                                               "ctranslate2 or llamacpp")
            assert [r["status"] for r in rows(service)] == ["error"]
            c = client(live).chat.completions.create(model="potstill", messages=MSG)
            assert c.model_extra["potstill"]["answered_by"] == "student" and c.choices[0].logprobs is None
            # The Responses API asks for them in include: the 400 names that.
            with pytest.raises(openai.BadRequestError) as e:
                client(live).responses.create(model="potstill", input=MSG[0]["content"],
                                              include=["message.output_text.logprobs"])
            assert e.value.body["param"] == "include" and e.value.body["message"].startswith("include: the student's")
    finally:
        service.close()
