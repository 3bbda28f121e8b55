"""Each curate filter on crafted records: what goes in, what is set aside and why, what is counted."""

from __future__ import annotations

import hashlib
import json
import random

from potstill.config import Config
from potstill.curate import curate
from potstill.curate.dedup import jaccard, shingles
from potstill.records import Record

LABELS = ["sports", "tech", "politics"]


def cfg(**curate_kw) -> Config:
    return Config(task={"type": "classification", "labels": LABELS}, curate={"val": 0, "test": 0, **curate_kw})


def rec(text: str, output: str | None, **kw) -> Record:
    return Record(messages=[{"role": "user", "content": text}], output=output, **kw)


def kept(c) -> list[Record]:
    return c.train + c.val + c.test


def reasons(c) -> dict[str, str]:
    return {r.text: r.invalid_reason for r in c.rejected}


def survivor(*texts: str) -> str:
    """The one of a group of duplicate inputs dedup keeps: the lowest sha256 of the input text."""
    return min(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())


def test_invalid_json_and_schema_violation_keep_the_reason_and_the_failing_path():
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                                "address": {"type": "object", "properties": {"zip": {"type": "integer"}}}},
              "required": ["name"]}
    config = Config(task={"type": "extraction", "json_schema": schema}, curate={"val": 0, "test": 0})
    records = [rec("ok", '{"name": "Ada", "address": {"zip": 1}}'), rec("truncated", '{"name": "Ada", '),
               rec("bad zip", '{"name": "Bob", "address": {"zip": "SW1"}}'), rec("no name", '{"age": 3}'),
               rec("fenced", '```json\n{"name": "Cy"}\n```')]
    c = curate(config, records)
    assert sorted(r.text for r in kept(c)) == ["fenced", "ok"]
    why = reasons(c)
    assert why["truncated"].startswith("invalid JSON")
    assert why["bad zip"].startswith("schema violation at address/zip:")
    assert why["no name"].startswith("schema violation at (root):") and "'name' is a required property" in why["no name"]
    assert c.card["counts"]["invalid"] == 3
    assert c.card["rejected_reasons"] == {"invalid JSON": 1, "schema violation at address/zip": 1,
                                          "schema violation at (root)": 1}


def test_label_outside_the_set_teacher_errors_and_format_rules_are_set_aside():
    records = [rec("a match", "sports"), rec("a phone", "Tech."), rec("the weather", "weather"),
               rec("a vote", None, valid=False, invalid_reason="teacher error: 500 upstream"),
               rec("long winded", "sports " + "very " * 30)]
    c = curate(cfg(max_output_chars=40), records)
    assert sorted(r.text for r in kept(c)) == ["a match", "a phone"]
    why = reasons(c)
    assert why["the weather"] == "answer outside the label set"
    assert next(r for r in c.rejected if r.text == "the weather").output == "weather"  # kept for inspection
    assert why["a vote"] == "teacher error: 500 upstream"
    assert why["long winded"].startswith("too long")
    assert c.card["counts"]["invalid"] == 3
    assert c.card["rejected_reasons"] == {"answer outside the label set": 1, "teacher error": 1, "too long": 1}

    c = curate(cfg(output_regex=r"[a-z]+"), [rec("x", "sports"), rec("y", "Tech.")])
    assert [r.text for r in kept(c)] == ["x"] and reasons(c)["y"].startswith("format:")


def test_exact_and_near_duplicates_are_dropped_and_distinct_texts_kept():
    base = "Manchester United beat Chelsea two nil at Old Trafford on Saturday afternoon in the league"
    near = "Manchester United beat Chelsea two-nil at Old Trafford on Saturday afternoon in the league!"
    other = "Manchester City lost to Arsenal at the Emirates on Sunday evening after a late penalty"
    assert jaccard(shingles(base), shingles(near)) >= 0.8 > jaccard(shingles(base), shingles(other))
    shouted = "  MANCHESTER united beat chelsea two nil at old trafford on saturday afternoon in the league "
    records = [rec(base, "sports"), rec(shouted, "sports"), rec(near, "sports"), rec(other, "sports")]
    c = curate(cfg(), records)
    first = survivor(base, shouted)  # of the two exact copies; then the near one is dropped against it
    assert survivor(first, near) == first
    assert {r.text for r in kept(c)} == {first, other}
    assert c.card["counts"]["duplicates_exact"] == 1 and c.card["counts"]["duplicates_near"] == 1
    assert c.card["counts"]["duplicates"] == 2
    why = reasons(c)
    assert why[near].startswith(f"near duplicate input: of {next(r.id for r in records if r.text == first)}")

    off = curate(cfg(near_dup=False), records)
    assert off.card["counts"]["duplicates_near"] == 0 and len(kept(off)) == 3
    none = curate(cfg(dedup=False), records)
    assert len(kept(none)) == 4


def test_inputs_equal_up_to_unicode_normalisation_are_exact_duplicates():
    # Exports mix NFC and NFD (macOS file names, some CRMs), non-breaking and zero-width spaces, and
    # case folding beyond lower() (Straße / STRASSE): the same input, which must not be split apart.
    import unicodedata

    base = ["Zoë wins at Malmö café", "Straße closed in Köln", "Señor Núñez resigns"]
    twins = [unicodedata.normalize("NFD", base[0]), base[0].replace(" ", "\u00a0"), "Zoë wins at Malmö\u200b café",
             "STRASSE CLOSED IN KÖLN", unicodedata.normalize("NFD", base[2]).upper()]
    records = [rec(t, "sports") for t in base + twins]
    groups = [[base[0], *twins[:3]], [base[1], twins[3]], [base[2], twins[4]]]
    for near in (True, False):
        c = curate(cfg(near_dup=near, test=0.5), records)
        assert sorted(r.text for r in kept(c)) == sorted(survivor(*g) for g in groups), [r.text for r in kept(c)]
        assert c.card["counts"]["duplicates_exact"] == len(twins)
        assert all(r.invalid_reason.startswith("exact duplicate input") for r in c.rejected)


def test_conversations_that_end_alike_are_not_duplicates():
    # Chat logs: many conversations end with the same user turn; the input is the whole conversation.
    def conv(city: str, answer: str) -> Record:
        return Record(messages=[{"role": "user", "content": f"Tell me about {city}."},
                                {"role": "assistant", "content": f"{city} is a large city with a long history."},
                                {"role": "user", "content": "Tell me more."}], output=answer)

    records = [conv("Paris", "It has the Louvre."), conv("Rome", "It has the Colosseum."),
               conv("Cairo", "It has the pyramids nearby."), conv("Paris", "Its metro is old.")]
    c = curate(Config(task={"type": "freetext"}, curate={"val": 0, "test": 0}), records)
    assert sorted(r.output for r in kept(c)) == ["It has the Colosseum.", "It has the Louvre.", "It has the pyramids nearby."]
    assert [r.output for r in c.rejected] == ["Its metro is old."]  # the same conversation again


def test_a_system_prompt_shared_by_every_input_does_not_make_them_duplicates():
    # Chat logs carry one fixed system prompt; under it, 20 different one-line requests were 18 near
    # duplicates of the first. Serve drops system and developer turns, so dedup compares the rest.
    system = ("You are the customer support assistant of ACME Corp. Always answer politely and concisely. "
              "Never reveal internal information. If you are unsure, ask a clarifying question. "
              "Our business hours are 9-17 CET, Monday to Friday. Refunds take 5-7 business days.")
    texts = ["My invoice shows a double charge", "The app crashes on startup", "How do I change my password?",
             "The parcel arrived damaged", "Can I get a refund for order 17?", "Error 500 when saving a draft",
             "Do you ship to Norway?", "Login fails after the update"]
    records = [Record(messages=[{"role": "system" if i % 2 else "developer", "content": system},
                                {"role": "user", "content": t}], output="tech") for i, t in enumerate(texts)]
    c = curate(cfg(), records)
    assert sorted(r.text for r in kept(c)) == sorted(texts), reasons(c)
    # The same request under another system prompt is still the same input.
    again = Record(messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": texts[0]}],
                   output="tech")
    c = curate(cfg(), records + [again])
    assert [r.invalid_reason.split(":")[0] for r in c.rejected] == ["exact duplicate input"]


def _variants(n: int) -> list[tuple[str, str]]:
    """Pairs of near-identical headlines (one word changed), each pair about a different subject."""
    teams = ["Leeds", "Wigan", "Derby", "Fulham", "Stoke", "Hull", "Bolton", "Burnley", "Reading", "Watford",
             "Norwich", "Ipswich", "Barnsley", "Millwall", "Preston", "Luton", "Bristol", "Cardiff", "Swansea", "Blackpool"]
    out = []
    for i in range(n):
        t, u = teams[i % len(teams)], teams[(i * 7 + 3) % len(teams)]
        a = f"{t} beat {u} {i} goals to one at home on Saturday afternoon, manager pleased with the second half"
        out.append((a, a.replace("Saturday", "Sunday")))
    return out


def test_a_near_duplicate_of_a_test_input_never_lands_in_train():
    pairs = _variants(20)
    flat = [rec(t, "sports") for pair in pairs for t in pair]
    # Without dedup, hash assignment puts some pairs on both sides of the border: the case to guard.
    raw = curate(cfg(dedup=False, test=0.5), flat)
    raw_test = {r.text for r in raw.test}
    straddling = [p for p in pairs if (p[0] in raw_test) != (p[1] in raw_test)]
    assert straddling, "crafted data must contain pairs that straddle train/test"

    c = curate(cfg(test=0.5), flat)
    assert c.card["counts"]["duplicates_near"] == 20
    for r in c.train:
        for t in c.test:
            assert jaccard(shingles(r.text), shingles(t.text)) < 0.8, (r.text, t.text)
    for a, b in straddling:
        assert ({a, b} & {r.text for r in kept(c)}) == {survivor(a, b)}  # one of each pair survives, once


def test_which_duplicate_survives_does_not_depend_on_the_order_of_the_lines():
    # Before, the first line of each group survived: the same inputs reordered kept the other twin of
    # a pair, whose own hash put it in another split, and train and test changed with the line order.
    pairs = _variants(20)
    flat = [rec(t, "sports") for pair in pairs for t in pair]
    flat += [rec(pairs[0][0], "sports"), rec(pairs[1][1], "tech")]  # exact copies, one with another answer

    def dataset(records: list[Record]) -> dict[str, list[tuple[str, str | None]]]:
        c = curate(cfg(test=0.5), records)
        return {name: [(r.text, r.output) for r in part] for name, part in
                (("train", c.train), ("test", c.test), ("rejected", sorted(c.rejected, key=lambda r: r.id)))}

    expected = dataset(flat)
    assert dataset(flat[::-1]) == expected
    for seed in range(3):
        shuffled = flat[:]
        random.Random(seed).shuffle(shuffled)
        assert dataset(shuffled) == expected
    assert sorted(t for t, _ in expected["train"] + expected["test"]) == sorted(survivor(*p) for p in pairs)


def test_samples_that_disagree():
    records = [
        rec("agree", "sports", samples=["sports", "sports", "sports"]),
        rec("majority fixes output", "tech", samples=["sports", "Sports.", "tech"]),
        rec("split three ways", "sports", samples=["sports", "tech", "politics"]),
        rec("invalid samples count against", "tech", samples=["tech", "weather", "rain", "tech", "snow"]),
        rec("no samples", "politics"),
    ]
    c = curate(cfg(min_agreement=0.5), records)
    by_text = {r.text: r for r in kept(c)}
    assert set(by_text) == {"agree", "majority fixes output", "no samples"}
    assert by_text["agree"].meta["agreement"] == 1.0
    fixed = by_text["majority fixes output"]
    assert fixed.output == "sports" and fixed.meta["agreement"] == round(2 / 3, 4) and fixed.meta["first_output"] == "tech"
    assert "agreement" not in by_text["no samples"].meta
    why = reasons(c)
    assert why["split three ways"] == "self-consistency: agreement 0.33 < 0.50"
    assert why["invalid samples count against"] == "self-consistency: agreement 0.40 < 0.50"
    assert c.card["counts"]["inconsistent"] == 2
    assert len(kept(curate(cfg(min_agreement=0.3), records))) == 5


def test_a_sample_that_fails_validation_never_becomes_the_output():
    # min_agreement 0 turns the agreement filter off, not validation: the vote may only pick an
    # answer that validation (the label set, and curate's own rules) would let through.
    records = [rec("the vote on the bill was close", "politics", samples=["weather", "cooking", "weather"]),
               rec("a new phone with a fast chip", "tech", samples=["Tech.", "Tech.", "tech"])]
    c = curate(cfg(min_agreement=0.0, output_regex=r"[a-z]+"), records)
    by_text = {r.text: r for r in kept(c)}
    assert by_text["the vote on the bill was close"].output == "politics"
    assert by_text["the vote on the bill was close"].meta["agreement"] == 0.0
    # "Tech." passes the label set but not output_regex: the one sample that passes it wins.
    assert by_text["a new phone with a fast chip"].output == "tech"
    assert by_text["a new phone with a fast chip"].meta["agreement"] == round(1 / 3, 4)
    assert not c.rejected


def test_a_review_decision_holds_for_the_exact_duplicates_of_its_input():
    # Inputs keep their own ids (a CRM's), so one text twice is two records the review page shows
    # apart; a reviewer who corrects the copy that dedup then drops must not see the correction lost.
    records = [rec("Budget vote passes narrowly", "tech", id="crm-1"),
               rec("budget vote  passes narrowly", "tech", id="crm-2"),
               rec("Ferrari on pole at Monza", "tech", id="crm-3"),
               rec("FERRARI ON POLE AT MONZA", "tech", id="crm-4"),
               rec("Murray through to the final", "sports", id="crm-5"),
               rec("Murray through to the final.", "tech", id="crm-6")]
    decisions = {"crm-2": {"decision": "relabel", "label": "politics", "teacher_output": "tech"},
                 "crm-4": {"decision": "reject", "label": None, "teacher_output": "tech"},
                 "crm-6": {"decision": "reject", "label": None, "teacher_output": "tech"}}
    c = curate(cfg(), records, decisions)
    out = {r.id: r.output for r in kept(c)}
    assert out == {"crm-1": "politics", "crm-5": "sports"}, out
    assert next(r for r in kept(c) if r.id == "crm-1").meta["review"] == "relabel"
    # the reject of crm-6 was about its answer (tech), not crm-5's (sports)
    assert {r.id: r.invalid_reason.split(":")[0] for r in c.rejected} == {
        "crm-2": "exact duplicate input", "crm-3": "review", "crm-4": "review", "crm-6": "review"}
    assert c.card["review_decisions"]["decisions"] == 3  # what the reviewer decided, not its reach


def test_an_accept_or_reject_of_another_answer_is_stale_after_the_teacher_changes():
    # review.sqlite outlives teacher.jsonl: after a regenerate with another teacher, a reject of the
    # old teacher's wrong answer must not throw away the new teacher's answer; a relabel (the
    # input's label) still holds.
    records = [rec("Budget vote passes narrowly", "politics", id="a"),
               rec("Ferrari on pole at Monza", "Sports.", id="b"),
               rec("New chip doubles battery life", "sports", id="c")]
    decisions = {"a": {"decision": "reject", "label": None, "teacher_output": "tech"},
                 "b": {"decision": "reject", "label": None, "teacher_output": "sports"},
                 "c": {"decision": "relabel", "label": "tech", "teacher_output": "politics"}}
    c = curate(cfg(), records, decisions)
    assert {r.id: r.output for r in kept(c)} == {"a": "politics", "c": "tech"}
    assert "review" not in next(r for r in kept(c) if r.id == "a").meta
    assert [r.id for r in c.rejected] == ["b"]  # "Sports." is the answer the reviewer rejected
    assert c.card["counts"]["review_rejected"] == 1
    assert c.card["review_decisions"]["stale"] == 1


def test_a_decision_for_a_record_teacher_jsonl_no_longer_holds_is_not_counted_as_applied():
    # review.sqlite outlives teacher.jsonl: after a regenerate on new inputs (or a smaller
    # data.limit) a decided record can be gone. The card counted its decision as applied: "2
    # rejected" and a teacher error rate of 100% while one record was rejected.
    records = [rec("Budget vote passes narrowly", "politics", id="a"),
               rec("Ferrari on pole at Monza", "sports", id="b")]
    decisions = {"a": {"decision": "reject", "label": None, "teacher_output": "politics"},
                 "b": {"decision": "accept", "label": None, "teacher_output": "sports"},
                 "gone": {"decision": "reject", "label": None, "teacher_output": "tech"}}
    c = curate(cfg(), records, decisions)
    assert [r.id for r in c.rejected] == ["a"] and c.card["counts"]["review_rejected"] == 1
    review = c.card["review_decisions"]
    assert (review["decisions"], review["accept"], review["reject"]) == (2, 1, 1)
    assert review["teacher_error_rate"] == 0.5 and review["missing"] == 1
    from potstill.curate import card_markdown

    assert "1 decision not applied: their records are not in teacher.jsonl" in card_markdown(c.card)


def test_a_decision_about_an_answer_fix_text_repaired_still_applies():
    # The page shows teacher.jsonl as it is; curate.fix_text repairs it before the review step.
    records = [rec("Summarise the report", "The cafÃ© raised prices.", id="a"),
               rec("Summarise the budget", "Taxes rise.", id="b")]
    decisions = {"a": {"decision": "reject", "label": None, "teacher_output": "The cafÃ© raised prices."}}
    config = Config(task={"type": "freetext"}, curate={"val": 0, "test": 0, "fix_text": True})
    c = curate(config, records, decisions)
    assert [r.id for r in c.rejected] == ["a"] and "stale" not in c.card["review_decisions"]


def test_teacher_accuracy_per_label_and_slice_flags_the_weak_spot():
    records = []
    for i in range(10):
        records.append(rec(f"match report {i}", "sports", label="sports", slice=["uk"]))
        # the teacher calls half the politics stories tech, all of them in the 'us' slice
        records.append(rec(f"senate vote {i}", "tech" if i % 2 else "politics", label="politics",
                           slice=["us" if i % 2 else "uk"]))
    c = curate(cfg(), records)
    acc = c.card["teacher_accuracy"]
    assert acc["n"] == 20 and acc["accuracy"] == 0.75
    assert acc["per_label"]["sports"] == {"n": 10, "accuracy": 1.0, "weak": False}
    assert acc["per_label"]["politics"] == {"n": 10, "accuracy": 0.5, "weak": True}
    assert acc["per_slice"]["us"]["accuracy"] == 0.0 and acc["per_slice"]["us"]["weak"]
    assert not acc["per_slice"]["uk"]["weak"]


def _words(i: int) -> str:
    """A distinct pseudo-sentence per i (no two are near-duplicates)."""
    import random

    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(12))


WORDS = ("cup final striker chip market phone vote senate budget film award album season coach league bank "
         "shares profit court minister election software network game player transfer band chart tour").split()


def test_real_examples_are_mixed_at_the_ratio_tagged_and_never_duplicate_a_held_out_input():
    teacher = [rec(_words(i), "sports") for i in range(40)]
    c0 = curate(cfg(test=10), teacher)
    held_out = c0.test[0].text
    real = [rec(_words(100 + i), None, label="tech") for i in range(30)]
    real.append(rec(held_out.upper(), None, label="sports"))  # same input as a test record
    real.append(rec("a real one with a bad label", None, label="cooking"))
    c = curate(cfg(test=10, real_ratio=0.5, real_source="newsroom archive", real_license="CC-BY-4.0"), teacher, real=real)
    n_teacher_train = len(c0.train)
    real_in_train = [r for r in c.train if r.meta.get("source") == "real"]
    assert n_teacher_train == 30 and c.card["counts"]["duplicates_near"] == 0
    assert len(real_in_train) == round(0.5 * n_teacher_train) == c.card["counts"]["real_added"]
    assert all(r.output == "tech" and r.meta["dataset"] == "newsroom archive" for r in real_in_train)
    assert all(r.meta["source"] == "teacher" for r in c.test + c.val)
    assert held_out.upper() not in {r.text for r in c.train}
    assert c.card["counts"]["real_duplicates"] == 1
    assert reasons(c)["a real one with a bad label"].startswith("real example: answer outside the label set")
    assert c.card["sources"][1]["license"] == "CC-BY-4.0" and c.card["sources"][1]["added_to_train"] == len(real_in_train)


def test_a_real_label_wins_over_the_teacher_answer_for_the_same_input():
    """A person's label for an input the teacher also answered is kept: the teacher's copy keeps its
    place in the split (no input on both sides of the border) and carries the real label as gold;
    in train the student learns the real label, the teacher's answer kept in meta."""
    teacher = [rec(_words(i), "sports", label_probs={"sports": 0.9, "tech": 0.05, "politics": 0.05})
               for i in range(40)]
    c0 = curate(cfg(test=10), teacher)
    in_train, in_test = c0.train[0].text, c0.test[0].text
    real = [rec(f"  {in_train.upper()} ", None, label="politics", id="human-1"),
            rec(in_test, "politics", id="human-2")]
    c = curate(cfg(test=10, real_ratio=0.5), teacher, real=real)
    by_text = {r.text: r for r in kept(c)}
    trained = by_text[in_train]
    assert trained.meta["source"] == "teacher" and trained.meta["real_label"] == "human-1"
    assert trained.output == "politics" and trained.label == "politics"
    assert trained.meta["teacher_output"] == "sports" and trained.logprobs is None
    assert trained.label_probs == {"sports": 0.0, "tech": 0.0, "politics": 1.0}
    held = by_text[in_test]
    assert held in c.test and held.label == "politics"
    assert held.output == "sports"  # the test split still measures agreement with the teacher
    assert c.card["counts"]["real_labels_applied"] == 2 and c.card["counts"]["real_duplicates"] == 2
    assert not any(r.id.startswith("human-") for r in c.rejected)
    assert sum(r.text.strip().lower() == in_train.lower() for r in kept(c)) == 1


def test_a_real_label_for_a_teacher_input_dropped_as_a_near_duplicate_is_not_counted_as_applied():
    """A real example with exactly the input of a teacher record that dedup dropped as a near duplicate
    (of a kept one) put its label on the dropped record: no kept record carried it, and the card counted
    it in real_labels_applied. Every duplicate now points at its cluster's survivor, so the example is
    that survivor's near duplicate (another text, whose label it need not be), set aside with the reason
    and not counted as applied; a third teacher copy is counted the same way, not as an exact duplicate
    of a record that is not kept."""
    base = "The delivery arrived two days late and the box was badly damaged on one corner"
    first, second, third = rec(base + ".", "sports"), rec(base + "!!", "sports"), rec(base + "!!", "sports", id="copy")
    teacher = [first, second, third, *(rec(f"unrelated review number {i} about shoes", "sports") for i in range(3))]
    real = rec(base + "!!", None, label="politics", id="human-1")
    c = curate(cfg(real_ratio=1.0), teacher, real=[real])
    assert not any(r.meta.get("real_label") for r in kept(c)) and first.text in {r.text for r in kept(c)}
    counts = c.card["counts"]
    assert counts["real_labels_applied"] == 0 and counts["real_duplicates"] == 1
    assert counts["duplicates_near"] == 2 and counts["duplicates_exact"] == 0
    why = {r.id: r.invalid_reason for r in c.rejected}
    assert why["human-1"].startswith(f"near duplicate input: of {first.id} (similarity 0.9")
    assert why["copy"] == why[second.id] == why["human-1"]


def test_a_relabel_drops_the_teachers_token_logprobs_and_the_card_counts_the_teachers_own_labels():
    """A relabel kept the teacher's token log-probs of the answer it replaced (token-level KD pulled the
    student back to it), and the card's teacher label distribution counted the reviewer's label."""
    lp = [{"token": "tech", "logprob": -0.1, "top": [{"token": "tech", "logprob": -0.1}]}]
    records = [rec("Budget vote passes narrowly", "tech", id="a", logprobs=lp),
               rec("Ferrari on pole at Monza", "sports", id="b", logprobs=lp)]
    c = curate(cfg(), records, {"a": {"decision": "relabel", "label": "politics", "teacher_output": "tech"}})
    a = next(r for r in kept(c) if r.id == "a")
    assert a.output == "politics" and a.logprobs is None and a.meta["teacher_output"] == "tech"
    assert next(r for r in kept(c) if r.id == "b").logprobs == lp
    assert c.card["teacher_label_distribution"] == {"tech": 1, "sports": 1}


def test_a_vote_that_changes_the_output_drops_the_log_probs_of_the_text_it_replaced():
    # Token log-probs are the teacher's for one text: top-k KD on them teaches that text, so once the
    # vote makes another sample the output they must go (the record holds no log-probs of the others).
    tech = [{"token": "tech", "logprob": -0.1, "top": [{"token": "tech", "logprob": -0.1}]}]
    records = [rec("a new phone", "tech", samples=["sports", "Sports.", "tech"], logprobs=tech),
               rec("a new laptop", "tech", samples=["tech", "Tech.", "sports"], logprobs=tech)]
    by_text = {r.text: r for r in kept(curate(cfg(), records))}
    assert by_text["a new phone"].output == "sports" and by_text["a new phone"].logprobs is None
    assert by_text["a new laptop"].output == "tech" and by_text["a new laptop"].logprobs == tech


def test_a_real_example_with_only_a_reference_trains_on_it(tmp_path):
    """``reference`` is a record's gold answer (``Task.gold`` reads it where there is no ``label``): an
    extraction object or a free-text answer. A real example that gave only that was rejected as having
    "no label or output"; it now trains on its reference, validated like any answer, and lends it as
    gold to the teacher record of the same input."""
    from potstill.records import read_records

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    ext = Config(task={"type": "extraction", "json_schema": schema}, curate={"val": 0, "test": 0, "real_ratio": 1})
    teacher = [rec(_words(i), '{"name": "T"}') for i in range(10)]
    path = tmp_path / "real.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "r1", "input": "Ada Lovelace wrote the notes", "reference": {"name": "Ada"}},
        {"id": "r2", "input": "nobody is named here at all", "reference": {"age": 3}},
        {"id": "r3", "input": "no answer given for this one"},
        {"id": "r4", "input": teacher[0].text, "reference": {"name": "Real"}}]) + "\n")
    c = curate(ext, teacher, real=read_records(path))
    real_in_train = {r.id: r for r in c.train if r.meta.get("source") == "real"}
    assert list(real_in_train) == ["r1"] and json.loads(real_in_train["r1"].output) == {"name": "Ada"}
    why = {r.id: r.invalid_reason for r in c.rejected}
    assert why["r2"].startswith("real example: schema violation") and why["r3"] == "real example: no label, output or reference"
    twin = next(r for r in c.train if r.text == teacher[0].text)
    assert json.loads(twin.output) == {"name": "Real"} and twin.meta["teacher_output"] == '{"name": "T"}'
    from potstill.tasks import get_task

    assert get_task(ext.task).gold(twin) == {"name": "Real"}

    free = Config(task={"type": "freetext"}, curate={"val": 0, "test": 0, "real_ratio": 1})
    c = curate(free, [rec(_words(i), "a teacher summary") for i in range(4)],
               real=[rec("summarise the match report", None, reference="The home team won.")])
    assert [r.output for r in c.train if r.meta.get("source") == "real"] == ["The home team won."]


def test_a_real_examples_import_provenance_is_kept():
    """`potstill import` records where each example came from in meta.source (its file); curate set
    meta.source to 'real' over it, so the example's origin was lost from the training data."""
    from potstill.records import Record

    cfg = Config(task={"type": "freetext"}, curate={"val": 0, "test": 0, "real_ratio": 1})
    teacher = [rec(_words(i), "a teacher answer") for i in range(10)]
    real = [Record(id="r1", messages=[{"role": "user", "content": "a logged question about tides"}],
                   output="a logged answer", meta={"source": "/data/logs.jsonl", "line": 7})]
    c = curate(cfg, teacher, real=real)
    (r1,) = [r for r in c.train if r.id == "r1"]
    assert r1.meta["source"] == "real" and r1.meta["imported_from"] == "/data/logs.jsonl" and r1.meta["line"] == 7


def test_a_real_label_in_another_case_is_the_one_hot_soft_label_of_its_input():
    """A person's label written 'Politics' for the task's 'politics' (a CRM export, a spreadsheet)
    replaced the teacher's soft label with {sports: 0, tech: 0, politics: 0}: the one-hot compared
    the raw text with the labels, so label KD learnt from a distribution with no mass at all."""
    teacher = [rec(_words(i), "sports", label_probs={"sports": 0.9, "tech": 0.05, "politics": 0.05})
               for i in range(10)]
    real = [rec(teacher[0].text, None, label="Politics", id="human-1"),
            rec(teacher[1].text, "Tech.", id="human-2")]
    c = curate(cfg(real_ratio=0.5), teacher, real=real)
    by_text = {r.text: r for r in kept(c)}
    assert by_text[teacher[0].text].label_probs == {"sports": 0.0, "tech": 0.0, "politics": 1.0}
    assert by_text[teacher[1].text].label_probs == {"sports": 0.0, "tech": 1.0, "politics": 0.0}
    # and the person's label is written in the label set's spelling, as a teacher's is
    assert (by_text[teacher[0].text].output, by_text[teacher[1].text].output) == ("politics", "tech")
    alone = curate(cfg(real_ratio=1.0), teacher[2:], real=[rec("a text no teacher answered at all", None,
                                                                label="Politics", id="human-3")])
    (added,) = [r for r in kept(alone) if r.meta.get("source") == "real"]
    assert (added.output, added.label) == ("politics", "politics")


def test_the_card_names_the_teacher_that_wrote_the_records_not_only_the_configured_one():
    """The card's teacher (and terms of use) came from the config alone: a teacher.jsonl written by
    gpt-4o-mini, curated after teacher.model was changed to another model, went out with a card
    naming the new model and its terms as the source of every answer."""
    from potstill.curate import card_markdown

    records = [rec(_words(i), "sports", meta={"teacher": "gpt-4o-mini", "teacher_type": "openai"}) for i in range(4)]
    config = Config(task={"labels": LABELS}, teacher={"type": "anthropic", "model": "claude-haiku-4-5",
                                                      "terms": "Anthropic commercial terms"},
                    curate={"val": 0, "test": 0})
    c = curate(config, records)
    assert c.card["teacher"]["records_by_model"] == {"gpt-4o-mini": 4}
    md = card_markdown(c.card)
    assert "`gpt-4o-mini` (4 records)" in md and "claude-haiku-4-5" in md and "wrote none of them" in md
    same = curate(Config(task={"labels": LABELS}, teacher={"model": "gpt-4o-mini"}, curate={"val": 0, "test": 0}), records)
    assert "wrote none of them" not in card_markdown(same.card)
    replayed = [rec(_words(i), "sports", meta={"teacher": "replay"}) for i in range(2)]  # a teacher with no model
    assert "wrote none" not in card_markdown(curate(Config(task={"labels": LABELS}, teacher={"type": "replay"},
                                                           curate={"val": 0, "test": 0}), replayed).card)


def test_imported_model_traffic_mixed_in_as_real_data_is_carded_as_that_model_s_answers():
    """Real data that `potstill import` took from gpt-4o's logs (meta.teacher) was carded "labelled by
    people" and left out of records_by_model; the card names the logged model, its terms not given."""
    from potstill.curate import card_markdown

    teacher = [rec(_words(i), "sports", meta={"teacher": "gpt-4o-mini"}) for i in range(4)]
    real = [rec(_words(10 + i), None, label="tech", id=f"log-{i}",
                meta={"teacher": "gpt-4o-2024-08-06", "format": "openai-log"}) for i in range(2)]
    config = Config(task={"labels": LABELS}, teacher={"model": "gpt-4o-mini"},
                    curate={"val": 0, "test": 0, "real_ratio": 1.0})
    c = curate(config, teacher, real=real)
    assert c.card["teacher"]["records_by_model"].get("gpt-4o-2024-08-06") == 2
    [source] = [s for s in c.card["sources"] if s["name"] == "real"]
    assert source["labelled_by"] == "answers logged from `gpt-4o-2024-08-06` (2 kept, imported; terms of use: not given)"
    assert "people" not in card_markdown(c.card)


def test_a_local_teacher_spelled_by_another_path_is_the_same_teacher(tmp_path, monkeypatch):
    """`-c potstill.yaml` writes meta.teacher `models/t`; `-c /abs/potstill.yaml` configures
    `/abs/models/t`: the card said the configured teacher wrote none of the answers."""
    from potstill.curate import card_markdown

    (tmp_path / "models" / "t").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    records = [rec(_words(i), "sports", meta={"teacher": "models/t"}) for i in range(4)]
    c = curate(Config(task={"labels": LABELS}, teacher={"type": "local", "model": str(tmp_path / "models" / "t")},
                      curate={"val": 0, "test": 0}), records)
    assert "wrote none of them" not in card_markdown(c.card) and "Answers written by" not in card_markdown(c.card)
