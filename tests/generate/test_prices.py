"""The default price table by model id, and the word generate says when a provider's model has no price."""

from __future__ import annotations

import pytest

from potstill.config import load_config
from potstill.generate.stage import generate_stage
from potstill.teachers.api.prices import price_for, token_cost
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, project


@pytest.mark.parametrize("model,usd", [
    # A family's sibling matched its elder's prefix: o3-mini was billed at o3's price (1.8x), Opus 4.5
    # at Opus 4's (3x); gpt-5.1 and Claude 3.5 Sonnet matched nothing and cost $0 without a word.
    ("o3-mini", 5.5), ("o3-mini-2025-01-31", 5.5), ("o3", 10.0), ("o3-pro", 100.0),
    ("claude-opus-4-5", 30.0), ("claude-opus-4-5-20251101", 30.0), ("claude-opus-4-1-20250805", 90.0),
    ("gpt-5.1", 11.25), ("gpt-5.1-2025-11-13", 11.25), ("gpt-5-pro", 135.0), ("gpt-5", 11.25),
    ("claude-3-5-sonnet-20241022", 18.0), ("claude-3-haiku-20240307", 1.5), ("gpt-4o-2024-05-13", 20.0),
    ("gpt-4o-2024-08-06", 12.5),
])
def test_the_default_table_prices_each_sibling_as_itself(model, usd):
    """USD for a million tokens in and a million out, at the built-in table's list prices."""
    cfg = load_config(None, {"task.labels": ["a", "b"]})
    price = price_for(model, cfg.teacher.price, cfg.generate.prices)
    assert price is not None, model
    assert token_cost(price, 1_000_000, 1_000_000) == pytest.approx(usd)


def test_generate_says_when_a_providers_model_has_no_price(tmp_path, monkeypatch, capsys):
    """A model of the provider's own API that no table prices counted $0 in the ledger and in `potstill
    cost` with no word unless a budget was set; a self-hosted server's (base_url set) stays quiet."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    for d in ("api", "own"):
        (tmp_path / d).mkdir()
    with Loopback(key=SECRET) as srv:
        # No base_url: the provider's API, reached here through the SDK's own environment variable.
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        generate_stage(load_config(project(tmp_path / "api", srv.base_url, 3, {"model": "gpt-7-preview",
                                                                               "base_url": None})))
        err = capsys.readouterr()
        said = err.out + err.err
        assert "no price is known for teacher.model 'gpt-7-preview'" in said and "teacher.price" in said, said
        assert sum(srv.stats()["answered"].values()) == 3  # a word, not a refusal
        generate_stage(load_config(project(tmp_path / "own", srv.base_url, 3, {"model": "gpt-7-preview"})))
        err = capsys.readouterr()
        assert "no price is known" not in err.out + err.err


def test_generate_names_the_entry_that_priced_a_sibling(tmp_path, monkeypatch, capsys):
    """o3-deep-research matched o3's entry by the prefix rule and was billed at $2/$8 per Mtok (its list
    price is $10/$40), claude-opus-4-6 at claude-opus-4's ($15/$75 for a $5/$25 model), without a word.
    A dated snapshot of a listed model (gpt-4o-mini-2024-07-18) is that model: nothing to say."""
    from potstill.teachers.api.prices import sibling_priced

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    cfg = load_config(None, {"task.labels": ["a", "b"]})
    named = {m: sibling_priced(m, cfg.teacher.price, cfg.generate.prices) for m in (
        "claude-opus-4-6", "o4-mini-deep-research", "gpt-4o-mini-2024-07-18", "claude-haiku-4-5-20251001",
        "gpt-4o-mini", "gpt-7-preview", "gpt-5-latest")}
    assert named == {"claude-opus-4-6": "claude-opus-4", "o4-mini-deep-research": "o4-mini",
                     "gpt-4o-mini-2024-07-18": None, "claude-haiku-4-5-20251001": None, "gpt-4o-mini": None,
                     "gpt-7-preview": None, "gpt-5-latest": None}
    with Loopback(key=SECRET) as srv:
        generate_stage(load_config(project(tmp_path, srv.base_url, 3, {"model": "o3-deep-research",
                                                                      "max_tokens": 2000})))
    said = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert ("teacher.model 'o3-deep-research' was priced as 'o3' ($2 input, $8 output per Mtok), the longest entry "
            "of generate.prices its name starts with; if its own list price differs, set teacher.price") in said, said
