"""The `edit` decision: a reviewer corrects a free-text or extraction answer instead of rejecting it."""

from __future__ import annotations

import sqlite3

from potstill.review.store import MIGRATIONS, ReviewStore, error_rate


def test_a_review_store_from_before_edits_keeps_its_decisions_and_takes_an_edit(tmp_path):
    path = tmp_path / "review.sqlite"
    db = sqlite3.connect(path)
    for sql in MIGRATIONS[:1]:  # a store as the first release wrote it
        db.execute(sql)
    db.execute("CREATE TABLE _migrations (id INTEGER PRIMARY KEY, applied_at REAL)")
    db.execute("INSERT INTO _migrations VALUES (1, 0)")
    db.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?)",
                   [("r1", "reject", None, '{"total": 1}', "2026-01-01T00:00:00Z"),
                    ("r2", "relabel", "tech", "sports", "2026-01-01T00:00:01Z")])
    db.commit()
    db.close()
    with ReviewStore(path) as store:
        assert store.decisions() == {
            "r1": {"decision": "reject", "label": None, "teacher_output": '{"total": 1}',
                   "decided_at": "2026-01-01T00:00:00Z", "output": None},
            "r2": {"decision": "relabel", "label": "tech", "teacher_output": "sports",
                   "decided_at": "2026-01-01T00:00:01Z", "output": None}}
        store.decide("r1", "edit", teacher_output='{"total": 1}', output='{"total": 2}')
        assert store.decisions()["r1"]["output"] == '{"total": 2}'
        store.decide("r1", "accept", teacher_output='{"total": 1}')  # a changed mind drops the edited text
        assert store.decisions()["r1"]["output"] is None
        # an edit without its text, or a text on another decision, is refused by the table itself
        for row in (("r3", "edit", None), ("r4", "accept", "x")):
            try:
                store.db.execute("INSERT INTO decisions (record_id, decision, decided_at, output) VALUES (?, ?, 'now', ?)", row)
            except sqlite3.IntegrityError:
                continue
            raise AssertionError(f"{row} was stored")


def test_an_edit_is_a_teacher_error_unless_the_task_reads_it_as_the_teachers_answer():
    import json

    said = '{"name": "Acme", "total": 1200}'
    decisions = {"a": {"decision": "edit", "label": None, "teacher_output": said, "output": '{"name": "Acme", "total": 1250}'},
                 "b": {"decision": "edit", "label": None, "teacher_output": said, "output": '{"total": 1200,\n "name": "Acme"}'},
                 "c": {"decision": "accept", "label": None, "teacher_output": said, "output": None}}
    assert error_rate(decisions, json.loads) == 1 / 3
