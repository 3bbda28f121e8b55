"""Encoding damage in crafted records: counted in the card, repaired with curate.fix_text, left without it."""

from __future__ import annotations

from potstill.config import Config
from potstill.curate import card_markdown, curate
from potstill.records import Record

DAMAGED_BOTH = ("The cafÃ© raised prices to Â£5", "Prices rose to Â£5 at the cafÃ©.")
DAMAGED_INPUT = ("The minister said we donâ€™t know yet", "Nothing is decided.")
DAMAGED_OUTPUT = ("Summarise the match report", "The team \x1b[1mwon\x1b[0m 2-1.")
CLEAN = ("A “quoted” ﬁnal in ＦＵＬＬ width &amp; more\r\nlines", "Clean text stays.")
# The repaired twin of DAMAGED_BOTH's input: a duplicate only once the damage is undone.
TWIN = ("The café raised prices to £5", "Prices rose.")


def cfg(fix_text: bool) -> Config:
    return Config(task={"type": "freetext"}, curate={"val": 0, "test": 0, "fix_text": fix_text, "near_dup": False})


def records() -> list[Record]:
    return [Record(id=f"r{i}", messages=[{"role": "user", "content": text}], output=out, samples=[out] if i == 0 else None)
            for i, (text, out) in enumerate([DAMAGED_BOTH, DAMAGED_INPUT, DAMAGED_OUTPUT, CLEAN, TWIN])]


def by_id(c) -> dict[str, Record]:
    return {r.id: r for r in c.train + c.val + c.test + c.rejected}


def test_counted_and_repaired_with_fix_text_on():
    c = curate(cfg(True), records())
    h = c.card["text_hygiene"]
    assert (h["damaged_inputs"], h["damaged_outputs"], h["records"]) == (2, 2, 5)
    assert h["kinds"] == {"mojibake": 4, "remove_terminal_escapes": 1}
    assert h["fix_text"] is True and h["repaired"] is True
    r = by_id(c)
    assert r["r0"].text == "The café raised prices to £5" and r["r0"].output == "Prices rose to £5 at the café."
    assert r["r0"].samples == ["Prices rose to £5 at the café."]
    assert r["r1"].text == "The minister said we don’t know yet" and r["r1"].output == DAMAGED_INPUT[1]
    assert r["r2"].output == "The team won 2-1." and r["r2"].text == DAMAGED_OUTPUT[0]
    assert r["r0"].meta["text_fixed"] == ["inputs", "outputs"] and r["r2"].meta["text_fixed"] == ["outputs"]
    # Curly quotes, ligatures, full-width letters, entities and CRLF are text, not damage.
    assert r["r3"].text == CLEAN[0] and "text_fixed" not in r["r3"].meta
    # Repaired before deduplication: the mis-decoded copy and its clean twin are one input.
    assert r["r4"].invalid_reason.startswith("exact duplicate input: of r0")
    md = card_markdown(c.card)
    assert "## Text encoding damage (ftfy)" in md
    assert "2 records with damaged inputs and 2 with damaged teacher outputs, of 5; repaired (curate.fix_text on)." in md
    assert "'The cafÃ© raised prices to Â£5' -> 'The café raised prices to £5'" in md


def test_counted_but_untouched_with_fix_text_off():
    original = records()
    c = curate(cfg(False), records())
    h = c.card["text_hygiene"]
    assert (h["damaged_inputs"], h["damaged_outputs"]) == (2, 2)
    assert h["repaired"] is False
    r = by_id(c)
    for rec in original:
        assert r[rec.id].messages == rec.messages and r[rec.id].output == rec.output
        assert "text_fixed" not in r[rec.id].meta
    assert r["r4"].valid  # without the repair the two spellings differ, so both stay
    assert "left as found (set curate.fix_text to repair)" in card_markdown(c.card)


def test_clean_data_reports_none():
    c = curate(cfg(True), [Record(messages=[{"role": "user", "content": CLEAN[0]}], output=CLEAN[1])])
    assert c.card["text_hygiene"]["damaged_inputs"] == c.card["text_hygiene"]["damaged_outputs"] == 0
    assert "None found in 1 records." in card_markdown(c.card)


def test_text_parts_of_an_input_are_repaired_too():
    """An input in OpenAI's content-parts form skipped the repair (only string content was read)."""
    parts = [{"type": "text", "text": DAMAGED_INPUT[0]}, {"type": "text", "text": " today"}]
    c = curate(cfg(True), [Record(id="p", messages=[{"role": "user", "content": parts}], output="Nothing.")])
    (r,) = c.train
    assert r.text == "The minister said we don’t know yet today" and r.meta["text_fixed"] == ["inputs"]
    assert c.card["text_hygiene"]["damaged_inputs"] == 1
