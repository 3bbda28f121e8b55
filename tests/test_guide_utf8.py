"""Guided decoding (``models.json_guide``) writes characters that byte-level BPE splits across tokens:
"☕", "東京", "🙂", and with a small vocabulary "é". A model that ranks an answer's own tokens first at
every step writes that answer under a guide that takes it, through the logits processor (``choose``)
and static decoding's ``pick`` alike, with SmolLM2's real tokenizer, the tiny byte-level BPE student's
and a SentencePiece layout with byte fallback; where the guide does not take a character (an enum, a
choice, a grammar's class), a token that begins it is refused."""

from __future__ import annotations

import json

import pytest
import torch

from potstill.models.grammar_constraint import grammar_guide
from potstill.models.json_guide import JsonSchemaLogits
from potstill.models.regex_constraint import choice_pattern, regex_guide
from potstill.models.utf8_tail import span, split
from tests.export.conftest import make_bpe_tokenizer
from tests.helpers.tiny import sentencepiece_tokenizer, smollm2_tokenizer

LABEL = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"],
         "additionalProperties": False}
CITY = {"type": "object", "properties": {"city": {"enum": ["東京", "大阪", "Oslo"]}}, "required": ["city"],
        "additionalProperties": False}
WORDS = ["tea ☕", "Café", "東京で会議", "Zoë 🙂", "naïve façade — 1½"]


@pytest.fixture(scope="module", params=["smollm2", "tiny_bpe", "sentencepiece"])
def tok(request):
    return {"smollm2": smollm2_tokenizer, "tiny_bpe": make_bpe_tokenizer,
            "sentencepiece": sentencepiece_tokenizer}[request.param]()


def written(tok, guide: dict, answer: str, via: str = "choose", start: int = 0) -> str:
    """The answer the guide lets a model write that ranks ``answer``'s own tokens first at each step,
    then the end token (the rest by a fixed random order), given its first ``start`` tokens."""
    end = tok.eos_token_id
    want = tok.encode(answer, add_special_tokens=False) + [end]
    if tok.decode(want[:1]) == "":  # SentencePiece's Prepend("▁"): a lone "▁" first, which writes nothing
        want = want[1:]
    g = JsonSchemaLogits(tok, guide, 0, [end])
    noise = torch.rand(len(tok), generator=torch.Generator().manual_seed(0))
    gen = want[:start]
    while len(gen) < len(want) + 40 and end not in gen:
        scores = noise.clone()[None]
        scores[0, want[len(gen)] if len(gen) < len(want) else end] = 10.0
        if via == "choose":
            t = int(g(torch.tensor([gen], dtype=torch.long), scores)[0].argmax())
        else:  # static decoding's: the place among the likeliest 32, or the processor's choice past them
            top = scores[0].topk(32).indices.tolist()
            at = g.pick([gen], [top])[0]
            t = top[at] if at >= 0 else g.choose([gen], scores)[0]
            t = int(scores[0].argmax()) if t is None else t  # a row the guide leaves as the model wants it
        gen.append(t)
    return tok.decode([t for t in gen if t != end], skip_special_tokens=False)


@pytest.mark.parametrize("via", ["choose", "pick"])
def test_a_guided_answer_holds_characters_split_across_tokens(tok, via):
    for word in WORDS:
        answer = json.dumps({"label": word}, ensure_ascii=False)
        assert written(tok, LABEL, answer, via) == answer
    answer = json.dumps({"city": "東京"}, ensure_ascii=False)
    assert written(tok, CITY, answer, via) == answer
    latin = {"type": "object", "properties": {"label": {"type": "string", "pattern": "^[a-z\\u00e0-\\u00ff ]+$"}}}
    answer = json.dumps({"label": "café crème"}, ensure_ascii=False)
    assert written(tok, latin, answer, via) == answer


def test_an_answer_read_from_the_middle_of_a_character_goes_on(tok):
    """The guide's first look at a row may come after several tokens (a catch-up): where they end
    part-way through a character, it reads them one at a time and goes on."""
    answer = json.dumps({"label": "東京 ☕"}, ensure_ascii=False)
    ids = tok.encode(answer, add_special_tokens=False)
    cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    assert written(tok, LABEL, answer, start=cut) == answer


def test_characters_the_guide_does_not_take_are_refused_from_their_first_byte(tok):
    # 大 begins with other bytes than 京 (E5 A4 A7, E4 BA AC): "東大" is not a city, nor "Zürich";
    # 亰 (E4 BA B0) shares 京's first two bytes, and the guide writes 京's last one instead of its own.
    for wanted in ("東大", "Zürich"):
        got = json.loads(written(tok, CITY, json.dumps({"city": wanted}, ensure_ascii=False)))
        assert got["city"] in CITY["properties"]["city"]["enum"]
    assert json.loads(written(tok, CITY, json.dumps({"city": "東亰"}, ensure_ascii=False))) == {"city": "東京"}
    assert written(tok, regex_guide(choice_pattern(["東", "東京"])), "東京") == "東京"
    assert written(tok, regex_guide(choice_pattern(["東", "東京"])), "東大") in ("東", "東京")
    assert written(tok, grammar_guide('root ::= [^"]+ "!"'), "Café ☕!") == "Café ☕!"
    latin = written(tok, grammar_guide("root ::= [a-z ]+"), "caf\u00e9 au lait")
    assert latin.isascii() and latin.startswith("caf")


def test_the_bytes_of_an_unfinished_character():
    assert split("ab東".encode()[:-1]) == ("ab", "東".encode()[:2])
    assert split("🙂".encode()) == ("🙂", b"")
    assert split(b"a\x9d") is None and split(b"\xe6b") is None  # a stray continuation; a lead cut short
    assert span(b"\xe6\x9d") == (0x6740, 0x677F) and span(b"\xf0") == (0x10000, 0x3FFFF)
    assert span(b"\xe0\x80") is None and span(b"\xed\xa0") is None  # overlong; a surrogate
    assert span(b"\xed") == (0xD000, 0xD7FF)
