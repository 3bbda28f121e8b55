"""A served answer holding characters that a byte-level BPE student writes as several tokens (its
small vocabulary splits every CJK character into bytes): ``max_tokens`` cutting inside one, and the
``logprobs`` of the tokens holding its parts, as OpenAI and vLLM send them."""

from __future__ import annotations

import torch

from potstill.config import TaskConfig
from potstill.serve.completions import legacy_logprobs
from potstill.serve.engine import StudentAnswer, TransformersEngine
from potstill.tasks import get_task

TEXT = "要約：東京で会議"


def served(bpe_lm) -> TransformersEngine:
    return TransformersEngine(bpe_lm, get_task(TaskConfig(type="freetext", instruction="要約してください")))


def answer(engine: TransformersEngine, text: str) -> StudentAnswer:
    ids = engine.engine.tokenizer.encode(text, add_special_tokens=False)
    return StudentAnswer(output=text, parsed=text, invalid=None, confidence=0.0, embedding=torch.zeros(4),
                         prompt_tokens=1, output_tokens=len(ids), seconds=0.0, tokens=ids)


def test_max_tokens_cutting_inside_a_character_sends_no_replacement_character(bpe_lm):
    engine = served(bpe_lm)
    tok = engine.engine.tokenizer
    a = answer(engine, TEXT)
    assert tok.decode(a.tokens[:1]) == "\ufffd"  # 要 is three tokens here: cut after the first, U+FFFD
    whole = ""
    for k in range(1, len(a.tokens)):
        text, n, finish = engine.shorten(a, k)
        assert (n, finish) == (k, "length") and "\ufffd" not in text and TEXT.startswith(text)
        whole = text if tok.decode(a.tokens[:k]) == text else whole  # the last cut on a character's end
        assert text == whole  # the characters the k tokens finish, the bytes of the next left out
    assert engine.shorten(a, 4)[0] == "要"


def test_logprobs_of_tokens_holding_part_of_a_character_keep_its_bytes(bpe_lm):
    engine = served(bpe_lm)
    msgs = [{"role": "user", "content": "会議の要約"}]
    a = answer(engine, TEXT)
    content = engine.logprobs(msgs, a, TEXT, a.output_tokens, 3)
    assert len(content) == a.output_tokens
    # Joined, the tokens' bytes are the text (they were U+FFFD, U+FFFD and "" for 要's three).
    assert b"".join(bytes(t["bytes"]) for t in content) == TEXT.encode()
    for t in content:
        raw = bytes(t["bytes"])
        try:
            assert t["token"] == raw.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: spelled as OpenAI spells it
            assert t["token"] == "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        for alt in t["top_logprobs"]:
            assert alt["bytes"] and "\ufffd" not in alt["token"]
    assert content[0]["token"] == "bytes:" + "".join(f"\\x{b:02x}" for b in bytes(content[0]["bytes"]))
    # Cut by max_tokens inside 約: the tokens of 要, whose bytes are the text sent.
    text, n, _ = engine.shorten(a, 4)
    cut = engine.logprobs(msgs, a, text, n, 1)
    assert b"".join(bytes(t["bytes"]) for t in cut) == "要".encode() and len(cut) == 3
    # The legacy completions form places each token at the character its bytes begin or go on with.
    offsets = legacy_logprobs(content)["text_offset"]
    done = b""
    for t, at in zip(content, offsets):
        assert at == len(done.decode("utf-8", "ignore"))
        done += bytes(t["bytes"])
