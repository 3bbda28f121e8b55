"""``generate``'s ``on_text``: one prompt's answer handed on as it is decoded, on every decoding path
(drafts after a cached prefix, ``model.generate`` greedy and sampled, static caches, and on a GPU
the compiled static step), adding up to the text ``generate`` returns, stop strings and end
tokens included, in more than one piece."""

import pytest
import torch

from potstill.engines import load_engine
from potstill.models.generation import generate
from potstill.models.prompting import PromptFormat
from potstill.models.static_decode import StaticCaches
from tests.helpers.tiny import make_lively_model_dir

CHAT = PromptFormat(kind="chat", instruction="name the topic of the text")
MSGS = [[{"role": "user", "content": t}] for t in
        ["the team won the match", "new phone software for the computer and the internet", "a vote"]]
PATHS = ["drafts_after_prefix", "generate_greedy", "generate_sampled", "static_cache"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load_engine("transformers", str(make_lively_model_dir(tmp_path_factory.mktemp("lively"))), device="cpu")


def _kwargs(engine, path: str) -> dict:
    return {"drafts_after_prefix": dict(prefix=engine.prefix(CHAT), lookup=2),
            "generate_greedy": {},
            "generate_sampled": dict(temperature=0.9, seed=7),
            "static_cache": dict(prefix=engine.prefix(CHAT), static=StaticCaches.for_model(engine.lm.model))}[path]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stop", [(), ("the",)], ids=["no_stop", "stop_the"])
def test_on_text_adds_up_to_the_answer_on_every_path(engine, path, stop):
    kw = _kwargs(engine, path)
    pieces_seen = 0
    for msg in MSGS:
        pieces: list[str] = []
        streamed = generate(engine.lm, CHAT, [msg], 24, stop=stop, on_text=pieces.append, **kw)
        plain = generate(engine.lm, CHAT, [msg], 24, stop=stop, **kw)
        assert "".join(pieces) == streamed.texts[0] == plain.texts[0]
        assert all(pieces)
        pieces_seen = max(pieces_seen, len(pieces))
    # Handed on as it was decoded, not whole at the end (static caches: every CHECK_EVERY steps).
    assert pieces_seen > (2 if not stop else 1)


def test_on_text_takes_one_prompt(engine):
    with pytest.raises(ValueError, match="one answer, not 2"):
        generate(engine.lm, CHAT, MSGS[:2], 8, on_text=print)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_text_on_the_compiled_static_step_on_a_gpu(tmp_path):
    engine = load_engine("transformers", str(make_lively_model_dir(tmp_path)), device="cuda", dtype="float32",
                         compile=True)
    assert engine.static is not None
    for msg in MSGS:
        pieces: list[str] = []
        g = engine.generate(CHAT, [msg], 40, on_text=pieces.append)
        assert "".join(pieces) == g.texts[0] == engine.generate(CHAT, [msg], 40).texts[0]
