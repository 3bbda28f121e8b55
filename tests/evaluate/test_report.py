"""`potstill evaluate` on a tiny-model run: eval.json holds every part of the decision, and report.html
opens in headless Chromium with no console errors and every required section (screenshot saved)."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from potstill.config import load_config
from potstill.evaluate.html import render
from potstill.evaluate.stage import evaluate_stage, worst_cases
from potstill.pipeline import run_all
from potstill.records import Record
from potstill.students import Predictions
from potstill.tasks.classification import ClassificationTask
from potstill.train.stage import train_stage

LABELS = ["sports", "tech", "politics"]
KEYWORDS = {"sports": ["match", "team", "goal", "win"], "tech": ["phone", "software", "internet", "computer"],
            "politics": ["minister", "party", "vote", "election"]}
FILLER = "the a of to in and on for with by is was were has have market shares bank profit film music star".split()


def potstill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "potstill.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model, tiny_model_b):
    """A whole tiny run (36 inputs, 12 held out), with record tags so there are tag slices."""
    root = tmp_path_factory.mktemp("evaluate-report")
    rng, rows = random.Random(0), []
    for label, words in KEYWORDS.items():
        for i in range(12):  # distinct texts (curate drops near-duplicates), two keywords each, 5 to 10 words
            text = rng.sample(words, 2) + rng.sample(FILLER, 3 + i % 6)
            rng.shuffle(text)
            rows.append({"input": " ".join(text), "label": label, "slice": ["short-form" if i % 6 < 3 else "long-form"]})
    (root / "inputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "run_dir": "run",
        "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "data": {"inputs": "inputs.jsonl"},
        "teacher": {"type": "local", "model": str(tiny_model_b), "batch_size": 4, "price": {"usd_per_hour": 1.0}},
        "student": {"model": str(tiny_model), "max_length": 64},
        "pilot": {"n": 6},
        "curate": {"val": 4, "test": 12},
        "train": {"lr": 0.01, "epochs": 2, "batch_size": 4},
        "evaluate": {"latency_samples": 3, "batch_size": 4, "monthly_calls": 10000},
        "report": {"min_slice_n": 4, "bootstrap_samples": 200},
    }
    (root / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    # In-process and without the pilot: the CLI path is tested in test_pipeline.py, and each
    # subprocess pays ~5 s of imports on a loaded machine.
    run_all(load_config(root / "potstill.yaml"), skip_pilot=True)
    return root


def test_eval_json_has_every_part_of_the_decision(evaluated):
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    assert list(ev["models"]) == ["untrained student", "teacher", "student"]
    by = {r["slice"]: r for r in ev["slices"]}
    assert {"all", "tag:short-form", "tag:long-form"} <= set(by) and any(s.startswith("label:") for s in by)
    assert any(s.startswith("length:") for s in by)
    assert by["all"]["n"] == ev["n_test"] == 12
    for r in ev["slices"]:
        a = r["agreement"]
        assert a["lo"] <= a["value"] <= a["hi"]
        assert r["verdict"] in {"pass", "fail", "inconclusive", "too small"} and r["reason"]
        # Gold decides wherever the teacher's gold metric is above 0, or the student's is where the teacher's
        # is 0 (else there is no ratio and gold tells them apart in nothing: agreement decides).
        on_gold = r["gold"]["relative"]["value"] is not None or r["gold"]["student"] > 0
        assert r["judged_on"] == ("gold" if on_gold else "agreement")
        assert (r["verdict"] == "too small") == (r["n_judged"] < 4)
        assert r["gold"]["gap"]["lo"] <= r["gold"]["gap"]["value"] <= r["gold"]["gap"]["hi"]
        if r["verdict"] in {"pass", "fail"}:
            assert r["settle_n"] is None
        elif r["verdict"] == "too small":
            assert r["settle_n"] == 4
    # The per-example numbers add up to the overall one measured by measure_student.
    assert by["all"]["agreement"]["value"] == pytest.approx(ev["models"]["student"]["agreement_with_teacher"])
    cm = ev["metrics"]["student"]["vs_teacher"]["confusion"]
    assert sum(map(sum, cm["counts"])) == 12
    assert ev["metrics"]["student"]["vs_teacher"]["accuracy"] == pytest.approx(by["all"]["agreement"]["value"])
    assert 0 <= ev["metrics"]["student"]["vs_teacher"]["calibration"]["ece"] <= 1
    rows = {r["model"]: r for r in ev["latency_cost"]}
    assert rows["student"]["p50_s"] > 0 and rows["student"]["batched_p50_s"] > 0 and rows["student"]["calls_per_s"] > 0
    # The local teacher is timed here in turns with the student (3 calls: latency_samples caps it), its
    # cost per call that mean at $1/h; the ledger's timing of generate's calls stays beside it.
    t = ev["models"]["teacher"]
    assert t["latency_batch1"]["n"] == 3 and t["latency_batch1"]["turns"] == 1
    assert t["cost_per_1k_calls_usd"] == pytest.approx(t["latency_batch1"]["mean_s"] * 1.0 / 3600 * 1000)
    assert t["ledger_latency_batch1"]["n"] == 12 and t["ledger_cost_per_1k_calls_usd"] > 0
    assert rows["teacher"]["p50_s"] > 0 and rows["teacher"]["source"].startswith("timed by this command")
    assert "timed by this command" in ev["sources"]["teacher"]
    # The student's batched cost beside it: its batches of 4 timed in the same turns (3 test inputs: 1 turn).
    s, usd = ev["models"]["student"], load_config(evaluated / "potstill.yaml").student.usd_per_hour
    assert s["batched_in_turns"]["n"] == 1 and s["batched_in_turns"]["batch_size"] == 4
    assert s["cost_per_1k_calls_batched_usd"] == pytest.approx(s["batched_in_turns"]["per_call_s"] * usd / 3600 * 1000)
    assert "in turns with the teacher" in rows["student"]["source"]
    assert "batched_in_turns" not in ev["models"]["untrained student"]  # no teacher beside it
    assert ev["one_time"]["generation_usd"] > 0 and ev["one_time"]["train_s"] > 0  # teacher at $1/h; train.json
    assert len(ev["break_even"]["curve"]["months"]) == 25
    b = ev["break_even"]["batched"]
    assert b["batch_size"] == 4 and b["student_cost_per_call_usd"] == pytest.approx(
        ev["models"]["student"]["cost_per_1k_calls_batched_usd"] / 1000)
    assert all(w["teacher"] != w["student"] for w in ev["worst_cases"])
    conf = [w["confidence"] for w in ev["worst_cases"]]
    assert conf == sorted(conf, reverse=True)
    v = ev["verdict"]
    assert isinstance(v["go"], bool) and v["decision"] in {"GO", "NO-GO", "INCONCLUSIVE"} and v["reason"]
    assert v["checks"][1]["check"] == "student cheaper per call than the teacher"
    assert set(v["pass_slices"] + v["fail_slices"] + v["inconclusive_slices"] + v["too_small_slices"]) == set(by) - {"all"}

    # A rerun with the same settings and artifacts is skipped (eval.json and report.html both hash-checked).
    assert evaluate_stage(load_config(evaluated / "potstill.yaml"))["skipped"]

    # The page escapes what it shows and renders a worst case and a non-classification task too.
    case = {"id": "x1", "input": "<script>alert(1)</script>", "teacher": {"a": 1}, "student": "invalid JSON",
            "student_raw": "{", "gold": None, "confidence": 0.9, "slices": ["tag:t"]}
    page = render({**ev, "worst_cases": [case]})
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    metrics = {"student": {"vs_teacher": {"n": 12, "validity_rate": 0.5, "field_f1": 0.25, "exact_match": 0.0}}}
    page = render({**ev, "task": "extraction", "metrics": metrics})
    assert "Not applicable" in page and "field_f1" in page


def test_the_page_holds_no_control_character_from_an_input(evaluated):
    """An input's NUL went into the worst-cases table as it was (grep called report.html a binary
    file; HTML parsers drop or replace it), and so would any other control character. Text put into
    the page leaves them out; tabs and line breaks stay."""
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    case = {"id": "nul\x01", "input": "NUL\x00文字\x1b[31m\tand\nmore\x7f\x85", "teacher": "tech", "student": "sports\x0c",
            "gold": None, "confidence": 0.9, "slices": ["tag:t\x07"]}
    page = render({**ev, "worst_cases": [case], "slices": [{**ev["slices"][0], "slice": "tag:\x00x"},
                                                            *ev["slices"][1:]]})
    assert "NUL文字[31m\tand\nmore" in page and "tag:x" in page
    bad = sorted({f"U+{ord(c):04X}" for c in page if (ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0})
    assert bad == []


def test_report_title_names_the_task_and_test_size(evaluated):
    """The tab's title is the page's heading, escaped as it is, not the template's literal text."""
    page = (evaluated / "run" / "report.html").read_text()
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title == "potstill evaluation: classification, 12 test inputs"
    assert f"<h1>{title}</h1>" in page
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    assert "<title>potstill evaluation: a&lt;b&gt;, 12 test inputs</title>" in render({**ev, "task": "a<b>"})


def _open(page_path: Path, shot: Path) -> tuple[dict, list[str]]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (scripts/install.sh --test installs it)")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"network request: {r.url}") if not r.url.startswith("file:") else None)
        page.goto(page_path.as_uri())
        found = {
            sel: page.locator(sel).count() for sel in (
                "#verdict .verdict", "#models table", "#slices svg circle", "#confusion table", "#calibration svg",
                "#cost table", "#break-even svg polyline", "#worst", "#sources table", "#compare table",
            )
        }
        found["text"] = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return found, errors


def test_report_opens_in_chromium_with_every_section(evaluated):
    found, errors = _open(evaluated / "run" / "report.html", evaluated / "report.png")
    assert errors == []
    for sel in ("#verdict .verdict", "#models table", "#confusion table", "#calibration svg", "#cost table",
                "#sources table"):
        assert found[sel] >= 1, sel
    assert found["#slices svg circle"] >= 4  # all, two tags, labels, lengths
    assert found["#break-even svg polyline"] == 2
    text = found["text"]
    for words in ("Untrained student, teacher, trained student", "Per-slice gap", "Confusion matrix",
                  "Latency and cost", "Break-even", "Inconclusive (need more test data)", "Where these numbers come from"):
        assert words in text, words
    assert (evaluated / "report.png").stat().st_size > 10_000


def test_champion_vs_challenger(evaluated):
    """A second student (another learning rate) on the same test split, compared in one report."""
    shutil.copytree(evaluated / "run", evaluated / "run2")
    cfg = load_config(evaluated / "potstill.yaml", {"run_dir": str(evaluated / "run2"), "train.lr": 0.03,
                                                    "evaluate.include_untrained": False})
    train_stage(cfg)
    evaluate_stage(cfg)
    out = potstill("report", "run", "--compare", "run2", "--out", "compare.html", cwd=evaluated)
    assert out.returncode == 0, out.stderr
    found, errors = _open(evaluated / "compare.html", evaluated / "compare.png")
    assert errors == [] and found["#compare table"] == 2
    assert "challenger: run2" in found["text"] and "different test split" not in found["text"]

    out = potstill("report", "run", "--compare", "nowhere", cwd=evaluated)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "nowhere: no eval.json" in out.stderr


def test_worst_cases_are_confident_disagreements_first():
    task = ClassificationTask(load_config(overrides={"task.labels": ["a", "b"]}).task)
    recs = [Record(messages=[{"role": "user", "content": f"text {i}"}], output=o) for i, o in enumerate("abab")]
    probs = [{"a": 0.9, "b": 0.1}, {"a": 0.6, "b": 0.4}, {"a": 0.2, "b": 0.8}, {"a": 0.95, "b": 0.05}]
    preds = Predictions(outputs=["a", "a", "b", "a"], parsed=["a", "a", "b", "a"], label_probs=probs,
                        confidence=[0.8, 0.2, 0.6, 0.9], prompt_tokens=[3] * 4, output_tokens=[1] * 4, seconds=[0.1] * 4)
    conf = [max(p.values()) for p in probs]
    # teacher a,b,a,b vs student a,a,b,a: disagreements at 1 (conf .6), 2 (.8), 3 (.95)
    worst = worst_cases(task, recs, preds, list("abab"), [None] * 4, conf, [["s"]] * 4, k=2)
    assert [w["input"] for w in worst] == ["text 3", "text 2"]
    assert worst[0]["teacher"] == "b" and worst[0]["student"] == "a" and worst[0]["confidence"] == 0.95


def test_page_states_the_bar_it_judged_when_gold_is_only_reported(evaluated):
    """quality_bar.min_relative_quality: null judges every slice on agreement: the page's rules must say
    so, and the gold-ratio plot (still drawn: gold is reported) must not show a bar nobody judged."""
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    ev["quality_bar"]["min_relative_quality"] = None
    ev["slices"] = [{**r, "judged_on": "agreement"} for r in ev["slices"]]
    page = render(ev)
    rules = page.split("Where these numbers come from:</b>", 1)[1].split("</p>", 1)[0]
    assert "None" not in rules and "the bar is agreement with the teacher &gt;= 0.85" in rules, rules
    gold_plot = page.split("gold metric / the teacher", 1)[0].rsplit("<svg", 1)[1]
    assert ">bar " not in gold_plot  # no dashed bar line on the plot of a ratio that was not judged


def test_no_worst_cases_listed_is_not_a_claim_of_full_agreement(evaluated):
    """report.worst_cases: 0 lists none; the page must not then say the student agrees everywhere."""
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    all_row = {**ev["slices"][0], "agreement": {**ev["slices"][0]["agreement"], "value": 0.75}}
    page = render({**ev, "worst_cases": [], "slices": [all_row, *ev["slices"][1:]]})
    assert "agrees with the teacher on every test input" not in page
    perfect = {**ev["slices"][0], "agreement": {**ev["slices"][0]["agreement"], "value": 1.0}}
    page = render({**ev, "worst_cases": [], "slices": [perfect, *ev["slices"][1:]]})
    assert "agrees with the teacher on every test input" in page


@pytest.mark.parametrize("broken", [
    # the champion's manifest.json, edited by hand: its evaluate outputs not a {name: sha256} object
    ("run", "manifest.json", lambda m: m["stages"]["evaluate"].update(outputs=5)),
    ("run", "manifest.json", lambda m: m["stages"]["evaluate"].update(outputs=["report.html"])),
    ("run", "manifest.json", lambda m: m["stages"]["evaluate"]["outputs"].update({"report.html": 7})),
    # the challenger's eval.json with keys missing or of the wrong type
    ("other", "eval.json", lambda ev: ev.pop("models")),
    ("other", "eval.json", lambda ev: ev.update(slices=5)),
    ("other", "eval.json", lambda ev: ev.update(verdict=None)),
    ("other", "eval.json", lambda ev: ev["models"]["student"].pop("cost_per_1k_calls_usd")),
])
def test_report_compare_with_a_hand_broken_file_is_one_line(evaluated, tmp_path, monkeypatch, capsys, broken):
    import sys

    from potstill.cli import main

    which, name, edit = broken
    for d in ("run", "other"):
        shutil.copytree(evaluated / "run", tmp_path / d, ignore=shutil.ignore_patterns("student", "*.sqlite"))
    path = tmp_path / which / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    page = (tmp_path / "run" / "report.html").read_bytes()
    monkeypatch.setattr(sys, "argv", ["potstill", "report", str(tmp_path / "run"), "--compare", str(tmp_path / "other")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and str(path) in err, err
    assert (tmp_path / "run" / "report.html").read_bytes() == page  # nothing rewritten


def test_the_report_gives_the_break_even_on_both_cost_bases(evaluated):
    """evaluate.cost_basis: batched makes the headline break-even the batched one; the page must then
    also give the one-call-at-a-time figure (not the batched one twice), and the champion vs
    challenger table must not show the one-at-a-time cost beside the batched break-even."""
    from potstill.evaluate import break_even

    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    s = {**ev["models"]["student"], "cost_per_1k_calls_usd": 2.0, "cost_per_1k_calls_batched_usd": 0.5}
    one, batched = break_even(0.01, 0.002, 10.0, 1000), break_even(0.01, 0.0005, 10.0, 1000)
    assert (round(one["calls"]), round(batched["calls"])) == (1250, 1053)
    be = {**ev["break_even"], **batched, "cost_basis": "batched", "student_cost_per_call_usd": 0.0005,
          "teacher_cost_per_call_usd": 0.01, "batch1": {"student_cost_per_call_usd": 0.002, **one},
          "batched": {"batch_size": 4, "student_cost_per_call_usd": 0.0005, **batched}}
    ev = {**ev, "models": {**ev["models"], "student": s}, "break_even": be}
    section = render(ev).split("<section id='break-even'>", 1)[1].split("</section>", 1)[0]
    text = section.split("<svg", 1)[0]
    assert text.count("1,053 calls") == 1 and "1,250 calls" in text and "1.25 months" in text, text
    assert "$0.00200 per call" in text and "$0.000500 per call" in text, text
    table = render(ev, [("run2", ev)]).split("<section id='compare'>", 1)[1].split("</table>", 1)[0]
    assert "$0.50" in table and "$2.00" in table and "1.05" in table and "1.25" in table, table


def _cell_text(row: str) -> str:
    """A row's first cell, a slice's name, without the <bdi> that isolates it."""
    return row.split("</td>", 1)[0].removeprefix("<bdi>").removesuffix("</bdi>")


def test_compare_shows_the_slices_only_a_challenger_has(evaluated, tmp_path, monkeypatch, capsys):
    """`potstill report RUN --compare OTHER` listed the champion's slices only: a challenger evaluated on a
    test split with other tags (a new source, say) lost its own slices from the table without a word."""
    import sys

    from potstill.cli import main

    for d in ("run", "other"):
        shutil.copytree(evaluated / "run", tmp_path / d, ignore=shutil.ignore_patterns("student", "*.sqlite"))
    path = tmp_path / "other" / "eval.json"
    ev = json.loads(path.read_text())
    extra = {**ev["slices"][1], "slice": "tag:only-in-other", "verdict": "fail"}
    ev["slices"] = [s for s in ev["slices"] if s["slice"] != "tag:short-form"] + [extra]
    path.write_text(json.dumps(ev))
    monkeypatch.setattr(sys, "argv", ["potstill", "report", str(tmp_path / "run"), "--compare", str(tmp_path / "other"),
                                      "--out", str(tmp_path / "cmp.html")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0, capsys.readouterr().err
    table = (tmp_path / "cmp.html").read_text().split("<section id='compare'>", 1)[1].split("</table>", 2)[1]
    rows = {_cell_text(r): r for r in table.split("<tr><td class='l'>")[1:]}
    assert "tag:only-in-other" in rows and "tag:short-form" in rows, list(rows)
    # Each run's own cell: the champion has no such slice ("-"), the challenger's verdict shows.
    cells = rows["tag:only-in-other"].split("<td")
    assert cells[1] == " class=''>-</td>" and "<b>fail</b>" in cells[2], cells
    assert rows["tag:short-form"].split("<td")[2] == " class=''>-</td></tr>", rows["tag:short-form"]


def test_report_fits_a_375px_phone_screen(evaluated, tmp_path):
    """At 375 px (a phone) the page was 1,038 px wide: no viewport meta, fixed-size SVG plots and wide
    tables pushed the whole page sideways, the verdict scrolled off with it. Now the page is the
    screen's width: plots scale down, and each wide table scrolls inside its own box."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (scripts/install.sh --test installs it)")
    shutil.copytree(evaluated / "run", tmp_path / "other", ignore=shutil.ignore_patterns("student", "*.sqlite"))
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    page_path = tmp_path / "phone.html"
    page_path.write_text(render(ev, [(str(tmp_path / "other"), ev)]))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 375, "height": 800}, is_mobile=True, device_scale_factor=2)
        page.goto(page_path.as_uri())
        width = page.evaluate("document.documentElement.scrollWidth")
        inner = page.evaluate("window.innerWidth")
        plots = page.evaluate("[...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().right)")
        # A table wider than the screen sits in a box that scrolls sideways (overflow-x auto), so
        # none of its columns is cut off or out of reach.
        tables = page.evaluate("""[...document.querySelectorAll('table')].map(t => {
            const box = t.parentElement, style = getComputedStyle(box);
            return [t.getBoundingClientRect().width, box.getBoundingClientRect().right, style.overflowX];})""")
        section = page.evaluate("document.querySelector('#compare').getBoundingClientRect().width")
        browser.close()
    assert inner == 375 and width <= 375, width
    assert len(plots) >= 4 and max(plots) <= 375, plots
    assert len(tables) >= 10 and all(right <= 375 for _, right, _ in tables), tables
    assert all(ox == "auto" for w, _, ox in tables if w > 375), tables
    assert section <= 375


def test_a_long_slice_name_keeps_its_n_on_the_plot():
    """The plots cut each row's label at 40 characters after escaping it: a 36-character label name lost
    the end of its '(n=45)' and read 'n=4', and a name with '&' lost more to '&amp;' or was cut inside it."""
    import re

    from potstill.evaluate.plots import interval_plot

    rows = [{"label": "label:environment_and_sustainability (n=45)", "value": 0.9, "lo": 0.8, "hi": 1.0},
            {"label": "tag:R&D & M&A & Q&A & P&L & S&P news (n=31)", "value": 0.5, "lo": 0.4, "hi": 0.6},
            {"label": "all (n=120)", "value": 0.7, "lo": 0.6, "hi": 0.8}]
    svg = interval_plot(rows, 0.0, 1.0)
    shown = re.findall(r'text-anchor="end">([^<]*)</text>', svg)
    assert len(shown) == 3 and shown[2] == "all (n=120)", shown
    assert shown[0].endswith("(n=45)") and shown[1].endswith("(n=31)"), shown
    assert all(len(re.sub(r"&\w+;", "x", s)) <= 40 for s in shown), shown
    assert all(re.fullmatch(r"([^&]|&(amp|lt|gt|quot|#x27);)*", s) for s in shown), shown  # no entity cut in two


def test_report_takes_the_runs_eval_json_and_refuses_a_folder_as_out(tmp_path, tiny_model, monkeypatch, capsys):
    """`potstill report RUN/eval.json` (the form --compare takes) failed with "File exists: RUN/eval.json"
    (it wrote to eval.json/report.html); it writes RUN/report.html now. An --out that is a folder
    failed naming a temp file the user never made; it is named itself."""
    from potstill.cli import main

    run = tmp_path / "run"
    run.mkdir()
    texts = ["the team won the match", "new phone software", "a vote in the election", "the film star"]
    (run / "test.jsonl").write_text("".join(json.dumps({"input": t, "output": LABELS[i % 3], "label": LABELS[i % 3]}) + "\n"
                                            for i, t in enumerate(texts)))
    shutil.copytree(tiny_model, run / "student")
    evaluate_stage(load_config(overrides={
        "run_dir": str(run), "task": {"type": "classification", "labels": LABELS, "instruction": "classify"},
        "student.model": str(tiny_model), "teacher.price.usd_per_call": 0.001,
        "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False},
        "report": {"min_slice_n": 2, "bootstrap_samples": 100}}))
    (run / "report.html").unlink()
    capsys.readouterr()  # evaluate's table

    monkeypatch.setattr(sys, "argv", ["potstill", "report", str(run / "eval.json")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"wrote {run / 'report.html'}"
    assert "<html" in (run / "report.html").read_text()

    (tmp_path / "pages").mkdir()
    monkeypatch.setattr(sys, "argv", ["potstill", "report", str(run), "--out", str(tmp_path / "pages")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == (f"error: {tmp_path / 'pages'} is a directory: name the page's file (for "
                                         f"example {tmp_path / 'pages' / 'report.html'})"), err
    assert list((tmp_path / "pages").iterdir()) == []


def test_the_batched_break_even_names_where_its_cost_came_from(evaluated):
    """With a local teacher the student's batched cost comes from the batches timed in turns with the
    teacher's calls (batched_in_turns), but the break-even called it "(the throughput pass)"."""
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    turns = ev["models"]["student"]["batched_in_turns"]  # the fixture's teacher is local
    text = render(ev).split("<section id='break-even'>", 1)[1].split("<svg", 1)[0]
    assert f"({turns['n']} batches timed in turns with the teacher's calls)" in text and "throughput" not in text, text
    s = {k: v for k, v in ev["models"]["student"].items() if k != "batched_in_turns"}  # an API teacher's run
    text = render({**ev, "models": {**ev["models"], "student": s}}).split("<section id='break-even'>", 1)[1]
    assert "(the throughput pass over the test split)" in text.split("<svg", 1)[0]


def test_compare_shows_the_interval_each_verdict_was_judged_on(evaluated):
    """`report --compare` put each slice's verdict beside its agreement interval, also where the gold ratio
    had decided it: "64.3% [35.7%, 92.9%] pass" read as a pass straddling the 85% bar."""
    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    agreement = {"value": 0.643, "lo": 0.357, "hi": 0.929, "n": 14}
    gold = {"n": 14, "student": 1.0, "teacher": 1.0, "gap": {"value": 0.0, "lo": -0.2, "hi": 0.2, "n": 14},
            "relative": {"value": 1.0, "lo": 0.968, "hi": 1.032, "n": 14, "teacher_zero": 0}}
    judged = {"value": 0.5, "lo": 0.46, "hi": 0.54, "n": 40}
    slices = [{**ev["slices"][0], "slice": "g", "agreement": agreement, "gold": gold, "judged_on": "gold", "verdict": "pass"},
              {**ev["slices"][0], "slice": "j", "agreement": agreement, "judge_score": judged, "judged_on": "judge",
               "verdict": "pass"},
              {**ev["slices"][0], "slice": "a", "agreement": agreement, "judged_on": "agreement", "verdict": "inconclusive"}]
    ev = {**ev, "slices": slices}
    table = render(ev, [("run2", ev)]).split("<section id='compare'>", 1)[1].split("</table>", 2)[1]
    rows = {_cell_text(r): r for r in table.split("<tr><td class='l'>")[1:]}
    assert "gold ratio 100.0% <span class='small'>[96.8%, 103.2%]</span> <b>pass</b>" in rows["g"], rows["g"]
    assert "judge score 0.50 <span class='small'>[0.46, 0.54]</span> <b>pass</b>" in rows["j"], rows["j"]
    assert "agreement 64.3% <span class='small'>[35.7%, 92.9%]</span> <b>inconclusive</b>" in rows["a"], rows["a"]
    assert "35.7%" not in rows["g"] + rows["j"]


def test_a_right_to_left_override_in_a_name_stays_inside_it(evaluated):
    """A slice named 'x\\u202eevil' reversed what followed it on report.html: the verdict box read
    'tag:ok, tag:x.live' and the slice plot's label 'tag:x(4=n) live', a count the slice does not
    hold. Every name the user gave is isolated now: <bdi> in the page, U+2068 ... U+2069 in the SVG."""
    from potstill.evaluate.html import render

    ev = json.loads((evaluated / "run" / "eval.json").read_text())
    evil = "tag:x\u202eevil"
    row = {**ev["slices"][1], "slice": evil}
    v = {**ev["verdict"], "fail_slices": [evil, "tag:ok"]}
    page = render({**ev, "slices": [ev["slices"][0], row, *ev["slices"][2:]], "verdict": v})
    assert f"<bdi>{evil}</bdi>, <bdi>tag:ok</bdi>." in page  # the verdict's list
    assert f"<td class='l'><bdi>{evil}</bdi></td>" in page  # the per-slice table
    assert f'text-anchor="end">\u2068{evil}\u2069 (n={row["n"]})</text>' in page  # the plot's label
    assert page.count("\u202e") == page.count(f"\u2068{evil}\u2069") + page.count(f"<bdi>{evil}</bdi>")
