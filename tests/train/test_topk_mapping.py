"""API top-k logprobs onto student ids when teacher and student share a tokenizer: every answer token
gets KD, in either prompt format, for byte-level BPE (SmolLM2's real tokenizer, the tokens read from
OpenAI's wire format by the official SDK on 127.0.0.1) and for a SentencePiece layout (Llama 2,
Mistral v0.1: ``▁`` for spaces, byte fallback)."""

from __future__ import annotations

import copy
import types

import pytest
from fastapi import FastAPI

from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
from potstill.generate import label_records
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from potstill.train.batching import build_examples, topk_for_completion
from tests.helpers.live_server import LiveServer
from tests.helpers.tiny import sentencepiece_tokenizer, smollm2_tokenizer

KEY = "sk-topk-map-5e1d0c2b"
# 東, 京 and the emoji are each split across byte-level tokens; the rest is plain English.
ANSWER = "We met in 東京 🙂 and the rest of this answer is plain English text."


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_tokenizer()


def byte_decoder() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode`` read back (as its tokenizer files spell bytes)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def openai_provider(tok) -> FastAPI:
    """Answers ANSWER as OpenAI does with logprobs: each token's text (a piece of a split character
    as escaped bytes, OpenAI's form) and its ``bytes``; top-3: the token, ``<|endoftext|>`` and a
    ``-9999`` filler. The tokens are the tokenizer's own, so the teacher shares the student's."""
    dec = byte_decoder()

    def wire(i: int, lp: float) -> dict:
        raw = bytes(dec[c] for c in tok.convert_ids_to_tokens(i))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "".join(f"\\x{b:02x}" for b in raw)
        return {"token": text, "bytes": list(raw), "logprob": lp}

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        content = [{**wire(i, -0.05), "top_logprobs": [wire(i, -0.05), {"token": "<|endoftext|>", "logprob": -3.5,
                                                                        "bytes": list(b"<|endoftext|>")},
                                                       {"token": " zzz", "bytes": list(b" zzz"), "logprob": -9999.0}]}
                   for i in tok(ANSWER, add_special_tokens=False)["input_ids"]]
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                             "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": len(content), "total_tokens": 9 + len(content)}}

    return app


def test_a_shared_byte_level_tokenizer_gets_kd_at_every_answer_token_in_both_formats(smollm2, tmp_path, monkeypatch):
    """Each teacher token was re-encoded alone and matched by position: KD ended at the first piece of a
    split character (東: 3 of the answer's tokens had KD), and a student without a chat template, whose
    target is " " + answer, had none at all. Laid along the answer by bytes, every teacher token is
    the student's token with the same bytes."""
    monkeypatch.setenv("TOPK_KEY", KEY)
    task = get_task(TaskConfig(type="freetext", instruction="Say something."))
    with LiveServer(openai_provider(smollm2)) as srv, Ledger(tmp_path / "calls.sqlite") as ledger:
        teacher = get_teacher(TeacherConfig(type="openai", model="gpt-4o-mini", base_url=srv.url + "/v1",
                                            api_key_env="TOPK_KEY", max_tokens=64, max_retries=0, logprobs=3), task)
        try:
            (rec,), _ = label_records([Record(id="r", messages=[{"role": "user", "content": "x"}])], task, teacher,
                                      ledger, "generate", GenerateConfig())
        finally:
            teacher.close()
    answer_ids = smollm2(ANSWER, add_special_tokens=False)["input_ids"]
    assert len(rec.logprobs) == len(answer_ids)
    split = [e for e in rec.logprobs if "bytes" in e]  # kept only where the text does not spell the bytes
    assert split and all(e["token"].startswith("\\x") for e in split) and len(split) < len(rec.logprobs)
    eot = smollm2.convert_tokens_to_ids("<|endoftext|>")

    lm = types.SimpleNamespace(tokenizer=smollm2)
    ex = build_examples(lm, student_format(lm, task), task, [rec], 512, with_topk=True)[0]
    assert student_format(lm, task).kind == "chat"
    completion = ex.ids[ex.n_prompt:]
    assert completion[:len(answer_ids)] == answer_ids
    assert [t[0] for t in ex.topk[:len(answer_ids)]] == [[i, eot] for i in answer_ids]  # the -9999 filler: no id
    assert all(t[1] == [-0.05, -3.5] for t in ex.topk[:len(answer_ids)])
    assert all(t is None for t in ex.topk[len(answer_ids):])  # <|im_end|>: the API sent no token for it

    base = copy.copy(smollm2)
    base.chat_template = None
    lm = types.SimpleNamespace(tokenizer=base)
    assert student_format(lm, task).kind == "completion"
    ex = build_examples(lm, student_format(lm, task), task, [rec], 512, with_topk=True)[0]
    completion = ex.ids[ex.n_prompt:]
    pieces = base.convert_ids_to_tokens(completion)
    assert pieces[0] == "ĠWe" and completion[1:len(answer_ids)] == answer_ids[1:]
    mapped = [(j, t) for j, t in enumerate(ex.topk) if t is not None]
    assert len(mapped) == len(answer_ids)
    # The first token is the student's " We": the teacher's "We" given the space the plain-text target starts with.
    assert mapped[0] == (0, ([completion[0]], [-0.05]))  # "<|endoftext|>" after a space is no token: tail mass
    assert [t[0] for _, t in mapped[1:]] == [[i, eot] for i in answer_ids[1:]]


@pytest.mark.parametrize("chat", [True, False])
def test_a_shared_sentencepiece_tokenizer_gets_kd_at_every_answer_token(chat):
    """" team" re-encoded alone is ['▁', '▁team'], so KD covered only each answer's first token. Each
    piece's bytes ('▁' a space, '<0xC3>' one byte) now name the student id, ü's two bytes included."""
    tok = sentencepiece_tokenizer()
    if not chat:
        tok.chat_template = None
    answer = "The team scored a late goal in Zürich to win the match."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert "<0xC3>" in pieces and tok.convert_ids_to_tokens(tok(" team", add_special_tokens=False)["input_ids"]) \
        == ["▁", "▁team"]
    # What a server reports: each piece's text, the first without its space, a lone byte as its bytes.
    entries = []
    for k, p in enumerate(pieces):
        raw = bytes([int(p[3:5], 16)]) if p.startswith("<0x") else p.replace("▁", " ").encode()
        raw = raw[1:] if k == 0 else raw
        alt = " goal" if k else "a"
        e = {"token": raw.decode("utf-8", "replace"), "logprob": -0.1,
             "top": [{"token": alt, "logprob": -2.0}, {"token": raw.decode("utf-8", "replace"), "logprob": -0.1}]}
        entries.append({**e, "bytes": list(raw)} if e["token"].encode() != raw else e)
    task = get_task(TaskConfig(type="freetext", instruction="Summarise."))
    rec = Record(id="r", messages=[{"role": "user", "content": "An article."}], output=answer, logprobs=entries)
    lm = types.SimpleNamespace(tokenizer=tok)
    ex = build_examples(lm, student_format(lm, task), task, [rec], 256, with_topk=True)[0]
    completion = ex.ids[ex.n_prompt:]
    mapped = [(j, t) for j, t in enumerate(ex.topk) if t is not None]
    assert len(mapped) == len(entries)
    assert [completion[j] for j, _ in mapped] == [t[0][-1] for _, t in mapped]  # the chosen: the student's id
    goal, a = tok.convert_tokens_to_ids("▁goal"), tok.convert_tokens_to_ids("▁a")
    assert mapped[0][1] == ([a, completion[mapped[0][0]]], [-2.0, -0.1])  # the first token's "a" as "▁a"
    assert all(t[0][0] == goal for _, t in mapped[1:] if t[0][-1] != goal)


def test_another_tokenizer_still_stops_kd_where_the_tokenizations_part(smollm2):
    """A token the student does not have at that place (another tokenizer's split, " tea" + "m" for
    " team") ends KD there for the rest of the answer, as the README says."""
    answer = "We met the team."
    comp = smollm2(answer, add_special_tokens=False)["input_ids"]
    entries = [{"token": t, "logprob": -0.1, "top": []} for t in ["We", " met", " the", " tea", "m", "."]]
    out = topk_for_completion(smollm2, comp, entries)
    assert [x is not None for x in out] == [True, True, True, False, False]
