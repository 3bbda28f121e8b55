"""End to end in headless Chromium (Debian's package, driven by Playwright): relabel one record and
reject another with the keyboard, rerun curate, and check the dataset changed accordingly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from potstill.curate.stage import curate_stage
from potstill.records import read_records
from potstill.review.app import create_app
from potstill.review.store import load_decisions
from tests.helpers.live_server import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _where(run, rec_id: str) -> tuple[str, object]:
    for split in ("train", "val", "test", "rejected"):
        for r in read_records(run / f"{split}.jsonl"):
            if r.id == rec_id:
                return split, r
    raise AssertionError(f"{rec_id} is in no split")


def test_relabel_and_reject_by_keyboard_then_curate_applies_them(curated, tmp_path):
    from playwright.sync_api import sync_playwright  # the test extra; .ci/run installs it

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required (apt-get install -y chromium; scripts/install.sh --test does it)")
    run = tmp_path / "run"
    before = {s: {r.id for r in read_records(run / f"{s}.jsonl")} for s in ("train", "val", "test")}
    with LiveServer(create_app(curated.run_dir, sample=9)) as served, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(served.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        assert page.text_content("#progress") == "0 / 9 reviewed"

        first_id, first_out = page.text_content("#rid"), page.text_content("#output")
        new_label = next(lab for lab in ("sports", "tech", "politics") if lab != first_out)
        page.keyboard.press(str(["sports", "tech", "politics"].index(new_label) + 1))
        page.wait_for_function("document.getElementById('progress').textContent === '1 / 9 reviewed'")
        second_id = page.text_content("#rid")
        assert second_id != first_id  # the page moved on to the next undecided record
        page.keyboard.press("r")
        page.wait_for_function("document.getElementById('progress').textContent === '2 / 9 reviewed'")
        assert page.text_content("#errrate") == "100.0%"  # both reviewed answers were the teacher's mistakes
        page.keyboard.press("ArrowLeft")
        assert page.text_content("#rid") == second_id and page.text_content("#decision") == "reject"
        page.keyboard.press("ArrowLeft")
        assert page.text_content("#decision") == f"relabel → {new_label}"
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        browser.close()
    assert (tmp_path / "review.png").stat().st_size > 10_000

    out = curate_stage(curated)
    assert not out["skipped"] and out["review_rejected"] == 1
    split, rec = _where(run, second_id)
    assert split == "rejected" and rec.invalid_reason == "review: rejected by a reviewer"
    split, rec = _where(run, first_id)
    assert split != "rejected" and rec.output == new_label and rec.meta["teacher_output"] == first_out
    assert rec.id in before[split]  # a relabel keeps the record's stratum, so its split
    card = json.loads((run / "card.json").read_text())
    assert card["review_decisions"] == {"decisions": 2, "accept": 0, "reject": 1, "relabel": 1, "edit": 0,
                                        "teacher_error_rate": 1.0}
    assert "2 records reviewed: 0 accepted, 1 rejected, 1 relabelled" in (run / "card.md").read_text()
    after = sum(len(read_records(run / f"{s}.jsonl")) for s in ("train", "val", "test"))
    assert after == sum(len(v) for v in before.values()) - 1


def _open(p, url: str):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required (apt-get install -y chromium; scripts/install.sh --test does it)")
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    return browser, page


def test_keys_pressed_faster_than_the_server_answers_each_judge_their_own_record(curated):
    """A reviewer who presses a, r, a in quick succession means three records. The page moved on
    only when the server answered, so the second key judged the first record again (its accept
    silently became a reject), the third judged the second, and the third record had none."""
    from playwright.sync_api import sync_playwright

    run = Path(curated.run_dir)
    with LiveServer(create_app(curated.run_dir, sample=9)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        ids = [it["id"] for it in page.evaluate("S.items")]
        for key in ("a", "r", "a"):
            page.keyboard.press(key)
        page.wait_for_function("document.getElementById('progress').textContent === '3 / 9 reviewed'", timeout=10_000)
        assert page.text_content("#rid") == ids[3]  # the page waits on the fourth record
        # A held key repeats: only its first press decides.
        page.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'r', repeat: true}))")
        page.wait_for_timeout(300)
        assert page.text_content("#rid") == ids[3] and page.text_content("#decision") == "not yet"
        served.__exit__(None, None, None)  # the reviewer stopped the server: a decision is not saved, and says so
        page.keyboard.press("a")
        page.wait_for_function("document.getElementById('msg').textContent.includes('not saved')", timeout=10_000)
        assert page.text_content("#rid") == ids[3] and page.text_content("#decision") == "not yet"
        browser.close()
    decided = load_decisions(run / "review.sqlite")
    assert {k: v["decision"] for k, v in decided.items()} == {ids[0]: "accept", ids[1]: "reject", ids[2]: "accept"}


def test_a_free_text_answer_is_shown_as_written(tmp_path):
    """A summary's lines ran together in one bold line ("- rates rise - jobs fall"), and an unbroken
    run of characters (a URL, base64) pushed the page sideways past the window; markup in an
    answer is shown as text, not run."""
    from playwright.sync_api import sync_playwright

    from potstill.config import Config
    from potstill.records import Record, write_jsonl

    run = tmp_path / "run"
    answer = "- rates rise\n- jobs <b>fall</b><script>document.title = 'ran'</script>\n- source: " + "x9" * 600
    url = "https://example.org/" + "a1b2c3" * 400
    write_jsonl(run / "teacher.jsonl", [Record(id="r1", messages=[{"role": "user", "content": f"Summarise {url}"}],
                                               output=answer, valid=True)])
    curate_stage(Config(run_dir=str(run), task={"type": "freetext"}, curate={"val": 0, "test": 0}))
    with LiveServer(create_app(run, sample=1)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        assert page.inner_text("#output") == answer
        assert page.title() == "potstill review"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        browser.close()


def test_a_label_past_the_ninth_can_be_chosen_by_keyboard(tmp_path):
    """With more than nine labels (intents, topics), keys 1-9 reached the first nine and the page
    listed only those: a record whose right label was the tenth could not be relabelled at all.
    `l` opens the whole label set; typing or arrows pick one, Enter relabels, Esc closes."""
    from playwright.sync_api import sync_playwright

    from potstill.config import Config
    from potstill.records import Record, write_jsonl

    labels = [f"intent{n:02d}" for n in range(1, 13)]
    asks = ["reset my password", "where is my parcel", "cancel the order", "change my address", "a refund please",
            "talk to a person"]
    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [Record(id=f"r{n}", messages=[{"role": "user", "content": ask}],
                                               output=labels[n % 3], valid=True) for n, ask in enumerate(asks)])
    curate_stage(Config(run_dir=str(run), task={"labels": labels}, curate={"val": 0, "test": 0}))
    with LiveServer(create_app(run, sample=6)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        first = page.text_content("#rid")
        assert "intent12" in page.text_content("#keys")  # every label is on the page, not only the first nine
        page.keyboard.press("l")
        page.keyboard.press("End")  # the last label
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('progress').textContent === '1 / 6 reviewed'", timeout=10_000)
        assert page.text_content("#rid") != first  # on to the next record, as a number key does
        page.keyboard.press("l")
        page.keyboard.press("a")  # a key typed in the open list picks a label, it is no accept
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        assert page.text_content("#progress") == "1 / 6 reviewed" and page.text_content("#decision") == "not yet"
        browser.close()
    assert load_decisions(run / "review.sqlite")[first] == {**load_decisions(run / "review.sqlite")[first],
                                                             "decision": "relabel", "label": "intent12"}


def test_the_earlier_turns_of_a_conversation_are_shown_with_its_last_message(tmp_path):
    """A record from a chat log is a conversation; the page showed only its last user message
    ("When will it arrive?"), so the reviewer judged an answer without what the teacher had read."""
    from playwright.sync_api import sync_playwright

    from potstill.config import Config
    from potstill.records import Record, write_jsonl

    run = tmp_path / "run"
    chat = [{"role": "user", "content": "My parcel <b>123</b> never came"},
            {"role": "assistant", "content": "Sorry about that: I have sent a new one."},
            {"role": "user", "content": [{"type": "text", "text": "When will it arrive?"}]}]
    write_jsonl(run / "teacher.jsonl", [Record(id="c1", messages=chat, output="Within three days.", valid=True)])
    curate_stage(Config(run_dir=str(run), task={"type": "freetext"}, curate={"val": 0, "test": 0}))
    with LiveServer(create_app(run, sample=1)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        assert page.inner_text("#text") == "When will it arrive?"
        shown = page.inner_text("#context")
        assert "My parcel <b>123</b> never came" in shown and "I have sent a new one." in shown
        assert shown.index("user") < shown.index("My parcel") < shown.index("assistant") < shown.index("I have sent")
        browser.close()


def test_an_agents_call_and_the_tools_result_are_shown_after_the_request(tmp_path):
    """The turn after a tool's result (task.tool_choice auto): the request is the last user message,
    so the call and the result came after it, and the page showed a reply without what it reports."""
    from playwright.sync_api import sync_playwright

    from potstill.config import Config
    from potstill.records import Record, write_jsonl
    from tests.tools.test_agent_turns import AFTER, REPLY, TOOLS

    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [Record(id="a1", messages=AFTER, output=REPLY, valid=True)])
    curate_stage(Config(run_dir=str(run), task={"type": "tools", "tools": TOOLS, "tool_choice": "auto"},
                        curate={"val": 0, "test": 0}))
    with LiveServer(create_app(run, sample=1)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        assert page.inner_text("#text") == "celsius please" and page.is_hidden("#context")
        after = page.inner_text("#after")
        assert after.index('assistant{"name": "set_unit", "arguments": {"unit": "c"}}') \
            < after.index("tool set_unitunit is now c"), after
        assert page.inner_text("#output") == REPLY
        browser.close()


def test_a_decision_made_in_another_tab_is_not_overwritten_unseen(curated):
    """Two tabs on one review (two reviewers, or one who opened the page twice): tab B still showed a
    record as undecided after tab A relabelled it, and B's accept silently replaced the relabel. B's
    decision is refused with the reason, B then shows A's decision, and a second press replaces it."""
    from playwright.sync_api import sync_playwright

    run = Path(curated.run_dir)
    with LiveServer(create_app(curated.run_dir, sample=9)) as served, sync_playwright() as p:
        browser, a = _open(p, served.url)
        b = browser.new_page(viewport={"width": 1100, "height": 720})
        b.goto(served.url + "/")
        b.wait_for_selector("body[data-ready='1']")
        first = a.text_content("#rid")
        assert b.text_content("#rid") == first
        relabel = next(str(n + 1) for n, lab in enumerate(["sports", "tech", "politics"]) if lab != a.text_content("#output"))
        a.keyboard.press(relabel)
        a.wait_for_function("document.getElementById('progress').textContent === '1 / 9 reviewed'", timeout=10_000)
        b.keyboard.press("a")
        b.wait_for_function("document.getElementById('msg').textContent.includes('not saved')", timeout=10_000)
        assert "another tab" in b.text_content("#msg")
        assert b.text_content("#rid") == first and b.text_content("#decision").startswith("relabel")
        assert load_decisions(run / "review.sqlite")[first]["decision"] == "relabel"
        b.wait_for_timeout(600)  # the reviewer reads it (a key pressed as the page jumps back is not used)
        b.keyboard.press("a")  # seen now: the reviewer means it
        b.wait_for_function("document.getElementById('progress').textContent === '1 / 9 reviewed' && "
                            "document.getElementById('rid').textContent !== " + repr(first), timeout=10_000)
        # B's page moves on before its decision reaches the store (found flaky under load: A's next
        # decision could arrive first): wait for the store.
        deadline = time.monotonic() + 10
        while load_decisions(run / "review.sqlite")[first]["decision"] != "accept" and time.monotonic() < deadline:
            time.sleep(0.02)
        # A's next decision brings back what changed since A's version, B's accept among it (not the sample).
        a.keyboard.press("r")
        a.wait_for_function("document.getElementById('progress').textContent === '2 / 9 reviewed'", timeout=10_000)
        a.keyboard.press("ArrowLeft")
        a.keyboard.press("ArrowLeft")  # back past the record A just rejected, to the first
        assert a.text_content("#rid") == first and a.text_content("#decision") == "accept"
        browser.close()
    assert load_decisions(run / "review.sqlite")[first]["decision"] == "accept"


def test_each_key_sits_beside_its_own_right_to_left_label(tmp_path):
    """Hebrew labels: the numbers and the labels ran together into one right-to-left run, so the key
    legend read "1 פוליטיקה 3 טכנולוגיה 2 ספורט" on screen, key 1 beside the third label, and a reviewer
    relabelled with the wrong key. Each label is isolated now, and a right-to-left input reads from the right."""
    from playwright.sync_api import sync_playwright

    from potstill.config import Config
    from potstill.records import Record, write_jsonl

    labels = ["ספורט", "טכנולוגיה", "פוליטיקה"]  # sports, technology, politics
    texts = ["המשחק הסתיים בתיקו", "שבב חדש הוכרז היום", "הבחירות נקבעו למאי"]
    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [Record(id=f"r{n}", messages=[{"role": "user", "content": t}],
                                               output=labels[n], valid=True) for n, t in enumerate(texts)])
    curate_stage(Config(run_dir=str(run), task={"labels": labels}, curate={"val": 0, "test": 0, "near_dup": False}))
    with LiveServer(create_app(run, sample=3)) as served, sync_playwright() as p:
        browser, page = _open(p, served.url)
        keys = page.evaluate("""() => [...document.querySelectorAll('#labels > span')].map(s => {
            const kbd = s.querySelector('kbd'), k = kbd.getBoundingClientRect(), r = document.createRange();
            r.selectNodeContents(s); r.setStartAfter(kbd);  // the label: whatever follows the key
            const l = r.getBoundingClientRect();
            return {label: r.toString().trim(), key_right: k.right, label_left: l.left, label_right: l.right}; })""")
        assert [k["label"] for k in keys] == labels
        for k in keys:  # the label starts just right of its own key (a space between them)
            assert 0 <= k["label_left"] - k["key_right"] < 15, keys
        for k, after in zip(keys, keys[1:]):  # and the keys go 1, 2, 3 from left to right
            assert k["label_right"] < after["key_right"], keys
        assert page.evaluate("getComputedStyle(document.getElementById('text')).direction") == "rtl"
        browser.close()


def test_a_key_typed_ahead_as_another_tabs_decision_shows_decides_nothing(curated):
    """Two reviewers on one review, both typing ahead. B's decision on a record A had decided was
    refused and B's page went back to that record, but B's next key, pressed for the next record
    40-150 ms later, landed on it: it carried A's decision as seen, so the server replaced A's
    decision with a label B chose for another text. Keys pressed as the page changes are not used
    (nor as a decision from another tab appears on the record on screen) until the keys pause."""
    from playwright.sync_api import sync_playwright

    import httpx

    run = Path(curated.run_dir)
    # A key dispatched the moment the page changes (as a reviewer's next key, already on its way): no
    # Playwright round trip between, so the test does not depend on how loaded the machine is.
    typed_ahead = """([what, key]) => { window.typed = false; new MutationObserver((_, o) => {
        const el = document.getElementById(what[0]);
        if (!el.textContent.includes(what[1])) return;
        o.disconnect(); document.dispatchEvent(new KeyboardEvent('keydown', {key})); window.typed = true;
      }).observe(document.body, {childList: true, characterData: true, subtree: true}); }"""
    with LiveServer(create_app(curated.run_dir, sample=9)) as served, sync_playwright() as p:
        browser, b = _open(p, served.url)
        ids = [it["id"] for it in b.evaluate("S.items")]
        post = lambda rec_id: httpx.post(served.url + "/api/decisions", json={"id": rec_id, "decision": "accept"})
        post(ids[0]).raise_for_status()  # reviewer A, in another tab

        b.evaluate(typed_ahead, [["msg", "not saved"], "2"])
        b.keyboard.press("r")  # refused: A decided it since; the page goes back to it, and "2" arrives
        b.wait_for_function("window.typed", timeout=10_000)
        assert b.text_content("#rid") == ids[0] and b.text_content("#decision") == "accept"
        assert "was not used" in b.text_content("#msg")

        b.wait_for_timeout(600)  # B reads it, and moves on by hand; A decides the next record meanwhile
        b.keyboard.press("ArrowRight")
        assert b.text_content("#rid") == ids[1]
        post(ids[2]).raise_for_status()
        b.evaluate(typed_ahead, [["decision", "accept"], "r"])
        b.keyboard.press("a")  # B's page moves to ids[2]; the answer brings A's accept onto it, and "r" arrives
        b.wait_for_function("window.typed", timeout=10_000)
        assert b.text_content("#rid") == ids[2] and "was not used" in b.text_content("#msg")
        b.wait_for_timeout(300)  # any decision the ignored keys had sent is answered by now
        browser.close()
    decided = {k: (v["decision"], v["label"]) for k, v in load_decisions(run / "review.sqlite").items()}
    assert decided == {ids[0]: ("accept", None), ids[1]: ("accept", None), ids[2]: ("accept", None)}
