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


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "total": {"type": "number"}},
          "required": ["name", "total"], "additionalProperties": False}


def extraction_run(tmp_path):
    """A curated extraction run: twelve invoices, the teacher's totals off by 10 on each."""
    from potstill.config import Config
    from potstill.curate.stage import curate_stage
    from potstill.records import Record, write_jsonl

    run = tmp_path / "run"
    names = ["Acme", "Bolt", "Crane", "Dyno", "Echo", "Flux", "Gale", "Hive", "Iris", "Jade", "Kite", "Lumen"]
    write_jsonl(run / "teacher.jsonl", [
        Record(id=f"inv-{i}", messages=[{"role": "user", "content": f"Invoice {i} from {n} Ltd, total {100 * i + 5}.00"}],
               output=f'{{"name": "{n} Ltd", "total": {100 * i + 15}}}', valid=True) for i, n in enumerate(names)])
    cfg = Config(run_dir=str(run), task={"type": "extraction", "json_schema": SCHEMA},
                 curate={"val": 0, "test": 0, "near_dup": False, "max_output_chars": 120})
    curate_stage(cfg)
    return cfg


def test_an_edit_is_checked_by_the_task_stored_and_applied_by_curate(tmp_path):
    import json
    from pathlib import Path

    import httpx

    from potstill.curate.stage import curate_stage
    from potstill.records import read_records
    from potstill.review.app import create_app
    from potstill.review.store import load_decisions
    from tests.helpers.live_server import LiveServer

    cfg = extraction_run(tmp_path)
    run = Path(cfg.run_dir)
    with LiveServer(create_app(run, sample=6)) as served:
        state = httpx.get(served.url + "/api/state").json()
        assert state["labels"] == []
        item = state["items"][0]
        said = json.loads(item["output"])
        fixed = json.dumps({**said, "total": said["total"] - 10})

        refused = [  # (corrected answer, message): curate would set each aside, so the server says why now
            ('{"name": "Acme Ltd", "total": ', "output: invalid JSON: Expecting value at column 30"),
            (json.dumps({**said, "total": "1,250.00"}), "output: schema violation at total: '1,250.00' is not of type 'number'"),
            (json.dumps({**said, "notes": "x" * 200}), "output: schema violation at (root): Additional properties are not "
                                                        "allowed ('notes' was unexpected)"),
            (json.dumps({**said, "name": "x" * 120}), f"output: too long: {len(json.dumps({**said, 'name': 'x' * 120}))} "
                                                       "> 120 characters"),
        ]
        for text, message in refused:
            r = httpx.post(served.url + "/api/decisions", json={"id": item["id"], "decision": "edit", "output": text})
            assert r.status_code == 400, (text, r.text)
            assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": "output",
                                         "code": "invalid_output"}
        r = httpx.post(served.url + "/api/decisions", json={"id": item["id"], "decision": "edit"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "output"
        # Half an emoji pasted: Chrome's JSON.stringify sends the lone \ud83d, which SQLite cannot store (it
        # was a bare 500, and the page said the server had not answered).
        cut = json.dumps({"id": item["id"], "decision": "edit", "output": '{"name": "Acme \ud83d", "total": 5}'})
        r = httpx.post(served.url + "/api/decisions", content=cut, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == {
            "message": "output: not valid Unicode: character 16 is half of a character (a lone surrogate, as from a "
                       "cut emoji); delete it or paste the whole character",
            "type": "invalid_request_error", "param": "output", "code": "invalid_output"}, r.text
        assert load_decisions(run / "review.sqlite") == {}  # nothing refused was stored

        r = httpx.post(served.url + "/api/decisions", json={"id": item["id"], "decision": "edit", "output": fixed})
        assert r.status_code == 200, r.text
        assert r.json()["decisions"][item["id"]]["output"] == fixed
        assert r.json()["progress"] == {"reviewed": 1, "total": 6, "teacher_error_rate": 1.0}
        # an edit the task reads as the teacher's answer (other spacing) confirms the teacher
        other = state["items"][1]
        same = json.dumps(json.loads(other["output"]), indent=2)
        r = httpx.post(served.url + "/api/decisions", json={"id": other["id"], "decision": "edit", "output": same})
        assert r.json()["progress"]["teacher_error_rate"] == 0.5
    stored = load_decisions(run / "review.sqlite")[item["id"]]
    assert (stored["decision"], stored["output"], stored["teacher_output"]) == ("edit", fixed, item["output"])

    assert not curate_stage(cfg)["skipped"]  # review.sqlite changed: curate runs again and applies the edit
    rec = next(r for r in read_records(run / "train.jsonl") if r.id == item["id"])
    assert json.loads(rec.output) == json.loads(fixed) and rec.meta["teacher_output"] == item["output"]
    card = json.loads((run / "card.json").read_text())["review_decisions"]
    assert (card["edit"], card["teacher_error_rate"]) == (2, 0.5)


def test_an_edit_is_refused_where_the_answer_is_a_label_and_old_cards_still_check_the_schema(tmp_path, served):
    import json

    import httpx

    from potstill.review.app import create_app
    from tests.helpers.live_server import LiveServer

    item = httpx.get(served.url + "/api/state").json()["items"][0]
    r = httpx.post(served.url + "/api/decisions", json={"id": item["id"], "decision": "edit", "output": "tech"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "decision"
    assert "relabel" in r.json()["error"]["message"]

    # A card curated before it named the JSON Schema: RUN/potstill.yaml still does.
    run = extraction_run(tmp_path / "old").run_dir
    card = json.loads((tmp_path / "old" / "run" / "card.json").read_text())
    del card["task"]["json_schema"]
    (tmp_path / "old" / "run" / "card.json").write_text(json.dumps(card))
    with LiveServer(create_app(run, sample=2)) as old:
        item = httpx.get(old.url + "/api/state").json()["items"][0]
        r = httpx.post(old.url + "/api/decisions", json={"id": item["id"], "decision": "edit", "output": '{"name": 1}'})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("output: schema violation"), r.text


def test_a_reviewer_corrects_one_field_by_keyboard_and_typing_decides_nothing(tmp_path):
    """In headless Chromium: e opens the teacher's answer in an editor; the letters typed there (a,
    r, e, j, k: decision and move keys) are text; a correction the schema refuses stays open with
    the reason; Ctrl+Enter saves, the page moves on, and curate trains on the corrected answer."""
    import json
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from potstill.curate.stage import curate_stage
    from potstill.records import read_records
    from potstill.review.app import create_app
    from potstill.review.store import load_decisions
    from tests.helpers.live_server import LiveServer
    from tests.review.test_review_browser import _open

    cfg = extraction_run(tmp_path)
    run = Path(cfg.run_dir)
    with LiveServer(create_app(run, sample=6)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        assert page.is_hidden("#relabelkeys") and page.is_visible("#editkey")
        assert page.is_hidden("#editedrow")  # no correction yet: no empty "corrected" row
        first, said = page.text_content("#rid"), page.text_content("#output")
        page.keyboard.press("e")
        page.wait_for_selector("#edittext:focus")
        assert page.input_value("#edittext") == said  # the teacher's answer, not an "e" typed into it

        bad = json.dumps({**json.loads(said), "name": "Jake Parker", "total": "1,205.00"})
        page.keyboard.press("Control+a")
        page.keyboard.type(bad)
        page.keyboard.press("ArrowLeft")  # moves the caret, not the record
        assert page.text_content("#rid") == first and page.text_content("#progress") == "0 / 6 reviewed"
        page.keyboard.press("Control+Enter")
        page.wait_for_function("document.getElementById('msg').textContent.includes('not saved')")
        assert page.text_content("#msg") == (f"record {first} not saved: output: schema violation at total: "
                                              "'1,205.00' is not of type 'number'")
        assert page.is_visible("#editor") and page.input_value("#edittext") == bad  # nothing typed is lost
        assert load_decisions(run / "review.sqlite") == {}

        fixed = json.dumps({**json.loads(said), "name": "Jake Parker", "total": 1205})
        page.fill("#edittext", fixed)
        page.keyboard.press("Control+Enter")
        page.wait_for_function("document.getElementById('progress').textContent === '1 / 6 reviewed'")
        assert page.is_hidden("#editor") and page.text_content("#rid") != first and page.text_content("#msg") == ""
        assert page.text_content("#errrate") == "100.0%"

        second = page.text_content("#rid")  # Esc cancels: nothing is decided, the keys work again
        page.keyboard.press("e")
        page.wait_for_selector("#edittext:focus")
        page.keyboard.type(" are")
        page.keyboard.press("Escape")
        assert page.is_hidden("#editor") and page.text_content("#decision") == "not yet"
        page.keyboard.press("ArrowLeft")
        assert page.text_content("#rid") == first and page.text_content("#decision") == "edit"
        assert page.inner_text("#edited") == fixed and page.is_visible("#editedrow")
        page.keyboard.press("e")  # reopening shows the saved correction
        page.wait_for_selector("#edittext:focus")
        assert page.input_value("#edittext") == fixed
        browser.close()
    assert set(load_decisions(run / "review.sqlite")) == {first} and second != first

    assert not curate_stage(cfg)["skipped"]
    rec = next(r for r in read_records(run / "train.jsonl") if r.id == first)
    assert json.loads(rec.output) == json.loads(fixed) and rec.meta["teacher_output"] == said
    assert json.loads((run / "card.json").read_text())["review_decisions"]["edit"] == 1


def test_a_failed_earlier_save_keeps_the_correction_being_typed_and_esc_does_not_seem_to_cancel_a_save(tmp_path):
    """In headless Chromium: an accept whose save failed while the reviewer typed a correction on the
    next record made the page jump back and close the editor, losing the text; Esc while a
    correction was being saved closed the box, yet the server stored it."""
    import json
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from potstill.review.app import create_app
    from potstill.review.store import load_decisions
    from tests.helpers.live_server import LiveServer
    from tests.review.test_review_browser import _open

    cfg = extraction_run(tmp_path)
    run = Path(cfg.run_dir)
    held = []
    with LiveServer(create_app(run, sample=6)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        page.route("**/api/decisions", lambda route: held.append(route))  # answered when the test says
        first = page.text_content("#rid")
        page.keyboard.press("a")  # its save is held, then fails
        second = page.text_content("#rid")
        assert second != first
        page.keyboard.press("e")
        page.wait_for_selector("#edittext:focus")
        page.keyboard.type(" (checked)")
        typed = page.input_value("#edittext")
        page.wait_for_function("1", timeout=2000)
        assert len(held) == 1
        held.pop().abort()
        page.wait_for_function("document.getElementById('msg').textContent.includes('not saved')")
        assert page.is_visible("#editor") and page.input_value("#edittext") == typed
        assert page.text_content("#rid") == second and first in page.text_content("#msg")

        fixed = json.dumps({**json.loads(page.text_content("#output")), "total": 7})
        page.fill("#edittext", fixed)
        page.keyboard.press("Control+Enter")  # held: the save is on its way
        page.wait_for_function("document.getElementById('edittext').disabled")
        page.keyboard.press("Escape")
        assert page.is_visible("#editor") and "cannot be cancelled" in page.text_content("#msg")
        page.wait_for_function("1", timeout=2000)
        held.pop().continue_()
        page.wait_for_function("document.getElementById('progress').textContent === '1 / 6 reviewed'")
        assert page.is_hidden("#editor")
        browser.close()
    assert {k: v["decision"] for k, v in load_decisions(run / "review.sqlite").items()} == {second: "edit"}


def test_a_tools_task_reviews_with_its_own_schema_whatever_its_answers_are(tmp_path):
    """The card left parallel_tool_calls and tool_choice out, so review rebuilt a one-call task and
    refused the run's own schema (a list of calls, or calls and replies) when it loaded."""
    import json

    import yaml

    from potstill.config import Config
    from potstill.curate.stage import curate_stage
    from potstill.records import Record, write_jsonl
    from potstill.review.app import load_checks
    from tests.tools.test_agent_turns import AFTER, REPLY, TOOLS

    both = json.dumps([{"name": "ping", "arguments": {}}, {"name": "set_unit", "arguments": {"unit": "f"}}])
    for task, output in (({"parallel_tool_calls": True}, both), ({"tool_choice": "auto"}, REPLY),
                         ({"parallel_tool_calls": True, "tool_choice": "auto"}, both)):
        run = tmp_path / str(len(task)) / ("p" if "parallel_tool_calls" in task else "a")
        write_jsonl(run / "teacher.jsonl", [Record(id="a1", messages=AFTER, output=output, valid=True)])
        cfg = Config(run_dir=str(run), task={"type": "tools", "tools": TOOLS, **task}, curate={"val": 0, "test": 0})
        curate_stage(cfg)
        checked, _ = load_checks(run)
        assert checked.validate(checked.parse(output)) is None
        card = json.loads((run / "card.json").read_text())  # a card from before: RUN/potstill.yaml says it
        for key in task:
            card["task"].pop(key)
        (run / "card.json").write_text(json.dumps(card))
        (run / "potstill.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        checked, _ = load_checks(run)
        assert checked.validate(checked.parse(output)) is None
