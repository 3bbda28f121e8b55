"""The dataset card (card.md) gives the terms of use of each model whose outputs are in the data."""

from __future__ import annotations

from potstill.config import Config
from potstill.curate import card_markdown, curate
from tests.curate.test_filters import LABELS, _words, rec


def test_the_model_that_synthesized_the_inputs_is_carded_with_its_terms():
    """The "Synthetic inputs" section named the model that wrote the inputs but not its terms, while
    the provenance gave the teacher's: they are given the same way, the configured teacher's terms
    where it wrote them, "not given" for another model."""
    records = [rec(_words(i), "sports", meta={"teacher": "gpt-4o-mini"}) for i in range(4)]
    config = Config(task={"labels": LABELS}, teacher={"type": "openai", "model": "gpt-4o-mini",
                                                      "terms": "OpenAI's business terms"},
                    curate={"val": 0, "test": 0})
    card = curate(config, records).card
    synthesis = {"seeds": 2, "written": 4, "rejected": 1, "rejected_by_reason": {"too_short": 1},
                 "synthetic_per_split": {"train": 4, "val": 0, "test": 0}}
    card["synthesis"] = {**synthesis, "teacher": "gpt-4o-mini"}
    md = card_markdown(card)
    assert "`potstill synthesize` (gpt-4o-mini, its terms of use: OpenAI's business terms; 2 seeds)" in md
    assert "- Teacher terms of use: OpenAI's business terms" in md
    card["synthesis"] = {**synthesis, "teacher": "claude-haiku-4-5"}  # a config changed since synthesize
    assert "(claude-haiku-4-5, its terms of use: not given; 2 seeds)" in card_markdown(card)
