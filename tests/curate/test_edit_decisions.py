"""A reviewer's edit (the corrected answer of a free-text or extraction record) as curate applies it."""

from __future__ import annotations

import json

from potstill.config import Config
from potstill.curate import card_markdown, curate
from potstill.records import Record

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "total": {"type": "number"}},
          "required": ["name", "total"]}


def extraction(**curate_kw) -> Config:
    return Config(task={"type": "extraction", "json_schema": SCHEMA}, curate={"val": 0, "test": 0, **curate_kw})


def rec(rec_id: str, text: str, output: str, **kw) -> Record:
    return Record(id=rec_id, messages=[{"role": "user", "content": text}], output=output, valid=True, **kw)


def kept(c) -> dict[str, Record]:
    return {r.id: r for r in c.train + c.val + c.test}


def test_an_edit_replaces_the_teachers_answer_as_a_relabel_does():
    wrong = '{"name": "Acme Ltd", "total": 1200}'
    records = [rec("inv-1", "Invoice from Acme Ltd, total 1,250.00", wrong, samples=[wrong, wrong],
                   logprobs=[{"token": "{", "logprob": -0.1, "top": []}]),
               rec("inv-2", "Invoice from Bolt plc, total 80", '{"name": "Bolt plc", "total": 80}')]
    fixed = '{"name": "Acme Ltd", "total": 1250}'
    decisions = {"inv-1": {"decision": "edit", "label": None, "teacher_output": wrong, "output": fixed},
                 "inv-2": {"decision": "accept", "label": None, "teacher_output": records[1].output, "output": None}}
    c = curate(extraction(), records, decisions)
    r = kept(c)["inv-1"]
    assert r.output == fixed and r.meta["teacher_output"] == wrong and r.meta["review"] == "edit"
    # the teacher's samples and token log-probs are of its own answer: KD would pull back towards it
    assert r.samples is None and r.logprobs is None and r.label_probs is None
    review = c.card["review_decisions"]
    assert (review["decisions"], review["accept"], review["edit"], review["teacher_error_rate"]) == (2, 1, 1, 0.5)
    assert "2 records reviewed: 1 accepted, 0 rejected, 0 relabelled, 1 edited" in card_markdown(c.card)
    # the card says what the data was validated against, and `potstill review` checks edits by it
    assert c.card["task"]["json_schema"] == SCHEMA


def test_an_edit_still_holds_after_the_teacher_answers_again_and_is_validated_by_the_task():
    # teacher.jsonl generated again: an accept of the old answer is stale, an edit names the
    # input's answer and holds (as a relabel does). An edit the schema no longer allows (the
    # schema changed since the review) is set aside as a teacher answer would be.
    records = [rec("a", "Invoice A, total 10", '{"name": "A", "total": 11}'),
               rec("b", "Invoice B, total 20", '{"name": "B", "total": 21}'),
               rec("c", "Invoice C, total 30", '{"name": "C", "total": 30}')]
    decisions = {"a": {"decision": "edit", "label": None, "teacher_output": '{"name": "A", "total": 12}',
                       "output": '{"name": "A", "total": 10}'},
                 "b": {"decision": "edit", "label": None, "teacher_output": '{"name": "B", "total": 21}',
                       "output": '{"name": "B", "total": "twenty"}'},
                 "c": {"decision": "accept", "label": None, "teacher_output": '{"name": "C", "total": 31}', "output": None}}
    c = curate(extraction(), records, decisions)
    out = kept(c)
    assert json.loads(out["a"].output) == {"name": "A", "total": 10}
    assert out["a"].meta["teacher_output"] == '{"name": "A", "total": 11}'  # the answer teacher.jsonl holds now
    assert "review" not in out["c"].meta  # the stale accept is not applied
    assert [(r.id, r.invalid_reason.split(":")[0]) for r in c.rejected] == [("b", "schema violation at total")]
    assert c.card["review_decisions"]["stale"] == 1


def test_an_edit_outranks_a_real_label_and_an_unchanged_edit_is_no_teacher_error():
    config = Config(task={"type": "freetext"}, curate={"val": 0, "test": 0})
    records = [rec("s1", "Summarise: rates rose 0.25 points in May.", "Rates rose 0.5 points."),
               rec("s2", "Summarise: jobs fell by 3,000 in June.", "Jobs fell by 3,000.")]
    decisions = {"s1": {"decision": "edit", "label": None, "teacher_output": "Rates rose 0.5 points.",
                        "output": "Rates rose 0.25 points in May."},
                 # the reviewer opened the editor and saved the teacher's answer with a line break moved
                 "s2": {"decision": "edit", "label": None, "teacher_output": "Jobs fell by 3,000.",
                        "output": "Jobs fell\nby 3,000."}}
    real = [Record(messages=[{"role": "user", "content": "Summarise: rates rose 0.25 points in May."}],
                   output="Rates up a quarter point.")]
    c = curate(config.model_copy(update={"curate": config.curate.model_copy(update={"real_ratio": 1.0})}),
               records, decisions, real)
    assert kept(c)["s1"].output == "Rates rose 0.25 points in May."  # the reviewer's, not the real label
    assert c.card["review_decisions"]["teacher_error_rate"] == 0.5
