"""A served answer holding characters that a byte-level BPE student writes as several tokens (its
small vocabulary splits every CJK character into bytes): ``max_tokens`` cutting inside one, and the
``logprobs`` of the tokens holding its parts, as OpenAI and vLLM send them."""

from __future__ import annotations

import torch

from potstill.config import TaskConfig
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
