"""A local teacher's escalations stream as it decodes them (``serve.stream_teacher``): the served
run's teacher is a real tiny model in the server's process, and the client's first text arrives
while that model is stopped in the middle of its answer. ``TextStream`` (the text handed on from
the tokens so far) never sends what the final text will not start with."""

from __future__ import annotations

import json
import threading

import pytest

from potstill.config import TeacherConfig
from potstill.models import generation
from potstill.models.generation import TextStream
from potstill.teachers import get_teacher
from tests.serve.conftest import client, rows
from tests.serve.test_live_stream import ASK, escalating


@pytest.fixture()
def local_teacher(tmp_path, tiny_model, tiny_model_b, teacher_server, monkeypatch):
    """A free-text run served on loopback whose every request goes to a local teacher (greedy, no
    drafts: one token per forward), answering up to 24 tokens: (service, live)."""
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        saved = service.teacher
        service.teacher = get_teacher(TeacherConfig(type="local", model=str(tiny_model_b), max_tokens=24,
                                                    draft_tokens=0), service.task)
        try:
            yield service, live
        finally:
            service.teacher.close()
            service.teacher = saved


def test_a_local_teacher_streams_its_answer_as_it_decodes(local_teacher, monkeypatch):
    service, live = local_teacher
    whole = client(live).chat.completions.create(model="potstill", messages=ASK)
    text = whole.choices[0].message.content
    assert whole.model_extra["potstill"]["answered_by"] == "teacher" and len(text) > 8

    # The model stops at its next forward once some of its text has gone out, until the test lets it go on.
    sent, hold, stopped = threading.Event(), threading.Event(), threading.Event()
    handed = TextStream.__call__

    def observed(self, toks, final=False):
        before = self.sent
        handed(self, toks, final)
        if self.sent != before:
            sent.set()

    monkeypatch.setattr(generation.TextStream, "__call__", observed)

    def pause(module, args, kwargs):
        if sent.is_set() and not hold.is_set():
            stopped.set()
            assert hold.wait(timeout=20), "the test never let the teacher go on"

    handle = service.teacher.lm().lm.model.register_forward_pre_hook(pause, with_kwargs=True)
    try:
        with client(live).chat.completions.with_streaming_response.create(
                model="potstill", messages=ASK, stream=True, stream_options={"include_usage": True}) as r:
            chunks = r.parse()
            for first in chunks:
                if first.choices and first.choices[0].delta.content:
                    break
            # The client has text while the teacher's model waits in the middle of the same answer.
            assert stopped.wait(timeout=20) and not hold.is_set()
            hold.set()
            rest = list(chunks)
    finally:
        hold.set()
        handle.remove()
    pieces = [first.choices[0].delta.content] + [ch.choices[0].delta.content for ch in rest
                                                 if ch.choices and ch.choices[0].delta.content]
    assert "".join(pieces) == text and len(pieces) > 1
    assert [ch.choices[0].finish_reason for ch in rest if ch.choices and ch.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert rest[-1].usage.completion_tokens == whole.usage.completion_tokens
    row = rows(service)[-1]
    logged = json.loads(row["response"])
    assert (row["role"], row["status"], logged["content"]) == ("teacher", "ok", text)
    assert 0 < logged["teacher_first_text_s"] < row["latency_s"]


def test_a_local_classifier_teacher_answers_whole(tiny_model_b):
    """A label is scored, not written: nothing to stream, and the answer comes as before."""
    from potstill.config import TaskConfig
    from potstill.tasks import get_task

    writer = get_teacher(TeacherConfig(type="local", model=str(tiny_model_b)),
                         get_task(TaskConfig(type="freetext", instruction="name the topic")))
    labeller = get_teacher(TeacherConfig(type="local", model=str(tiny_model_b)),
                           get_task(TaskConfig(type="classification", labels=["sports", "tech"])))
    try:
        assert writer.streams and not labeller.streams
        pieces: list = []
        answer = labeller.submit({"messages": ASK}, on_delta=pieces.append).result(timeout=120)
        assert answer.output in ("sports", "tech") and pieces == []
    finally:
        writer.close()
        labeller.close()


def test_text_stream_sends_only_what_the_final_text_starts_with(bpe_lm):
    """A byte-level BPE tokenizer, whose tokens can end inside a character (é, ☃)."""
    tok = bpe_lm.tokenizer
    ids = tok("The café said ☃: stop here, then more words.", add_special_tokens=False)["input_ids"]
    end = tok.eos_token_id

    def run(toks, stop=()):
        got = []
        stream = TextStream(tok, {end}, stop, got.append)
        for n in range(1, len(toks) + 1):
            stream(toks[:n])
        stream(toks, final=True)
        return got

    whole = tok.decode(ids, skip_special_tokens=True)
    assert "☃" in whole and any(tok.decode(ids[:n]).endswith("\ufffd") for n in range(1, len(ids)))
    got = run(ids)
    assert "".join(got) == whole and len(got) > 3
    assert all(not p.endswith("\ufffd") for p in got)
    # An end token: nothing past it; a stop string: up to and including it, as generate cuts the text.
    assert "".join(run(ids[:5] + [end] + ids[5:])) == tok.decode(ids[:5], skip_special_tokens=True)
    assert "".join(run(ids, stop=["stop"])) == whole[:whole.index("stop") + 4]


@pytest.mark.parametrize("engine", ["ctranslate2", "llamacpp"])
def test_a_local_teacher_on_another_engine_streams_too(tmp_path, tiny_model, teacher_server, monkeypatch, engine):
    """CTranslate2's per-token callback and llama-server's own stream (skipped without a llama-server)."""
    from tests.export.conftest import make_bpe_model

    if engine == "llamacpp":
        from potstill.engines.llamacpp import server_binary
        from potstill.errors import PotstillError

        try:
            server_binary()
        except PotstillError:
            pytest.skip("llama-server not on PATH")
    from potstill.models.loading import load_lm, save_lm
    from tests.engines.conftest import _teach

    lm = load_lm(str(make_bpe_model(tmp_path / "bpe")), device="cpu")
    _teach(lm, steps=120)  # a random byte-level model writes stray bytes, which llama-server refuses
    model = tmp_path / "taught"
    save_lm(lm.model, lm.tokenizer, model)
    # A tiny model answers in milliseconds, before the server has sent its first piece (then it goes
    # whole): the teacher's thread waits after its first piece until the client has it.
    from potstill.serve.streaming import LiveText

    hold = threading.Event()
    handed = LiveText.__call__

    def held_after_first(self, delta):
        handed(self, delta)
        if self.first_at is not None and not hold.is_set():
            assert hold.wait(timeout=20), "the client never got the first piece"

    monkeypatch.setattr(LiveText, "__call__", held_after_first)
    with escalating(tmp_path, tiny_model, teacher_server, monkeypatch) as (service, live):
        saved = service.teacher
        service.teacher = get_teacher(TeacherConfig(type="local", model=str(model), engine=engine,
                                                    quantization="none", max_tokens=16), service.task)
        try:
            whole = client(live).chat.completions.create(model="potstill", messages=ASK).choices[0].message.content
            chunks = []
            for ch in client(live).chat.completions.create(model="potstill", messages=ASK, stream=True):
                chunks.append(ch)
                if ch.choices and ch.choices[0].delta.content:
                    hold.set()
        finally:
            hold.set()
            service.teacher.close()
            service.teacher = saved
        pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
        assert "".join(pieces) == whole and len(pieces) > 1
        assert json.loads(rows(service)[-1]["response"])["teacher_first_text_s"] > 0


def test_a_local_teacher_is_loaded_before_the_first_request(tmp_path, tiny_model, tiny_model_b, teacher_server,
                                                            monkeypatch):
    """A local teacher loaded at its first escalation, on its own thread beside the student's forward,
    changed torch's process-wide default dtype while it loaded (transformers sets it for the load: bf16
    for the quickstart's gemma): benchmarks/watch.py on the quickstart run got 500s, the student's tensors
    made bf16 ('index_add_(): self (BFloat16) and source (Float)'). Serve loads it before it answers."""
    import yaml

    from potstill.serve import run_config
    from potstill.serve.service import load_service
    from tests.serve.conftest import TEACHER_KEY, write_run

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, teacher_server.base_url)
    cfg = yaml.safe_load((run / "potstill.yaml").read_text())
    cfg["teacher"] = {"type": "local", "model": str(tiny_model_b), "max_tokens": 8}
    (run / "potstill.yaml").write_text("# Written by potstill (a test's run)\n" + yaml.safe_dump(cfg))
    service = load_service(run, run_config(run, None), device="cpu")
    try:
        assert service.teacher.type == "local" and service.teacher._engine is not None
    finally:
        service.teacher.close()
        service.close()
