"""Teacher as judge, against a real judge server on 127.0.0.1 reached through the official openai client.

The loopback judge reads the prompt the way a model would: it finds answers A and B in the user
message and applies a rule (fair: prefer the answer that mentions "good"; biased: always "A";
garbled: an unreadable reply for marked inputs; failing: HTTP 400 for marked inputs).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from potstill.config import load_config
from potstill.evaluate.judge import combine, parse_choice, run_judge
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.tasks import get_task
from tests.helpers.live_server import LiveServer

PROMPT_TOKENS, PRICE_IN = 100, 2.0  # USD per million input tokens: 100 tokens -> $0.0002 a call


def judge_app(mode: str, seen: list[dict[str, str]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        user = body["messages"][-1]["content"]
        a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", user, re.S).group(1)
        b = re.search(r"Answer B:\n(.*?)\n\nWhich answer", user, re.S).group(1)
        seen.append({"A": a, "B": b})
        if mode == "failing" and "FAIL" in user:
            return JSONResponse({"error": {"message": "bad request", "type": "invalid_request_error"}}, status_code=400)
        if mode == "biased":
            text = "A"
        elif mode == "tie":
            text = "TIE"
        elif mode == "teacher":  # prefers the teacher's answer ("summary N", judged_run's) wherever it stands
            text = "A" if re.fullmatch(r"summary \d+", a) else "B"
        elif mode == "garbled" and "GARBLE" in user:
            text = "Both answers have merit, hard to say."
        else:
            text = "TIE" if ("good" in a) == ("good" in b) else ("A" if "good" in a else "B")
        return {"id": "j", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": PROMPT_TOKENS + 1}}

    return app


def config(run_dir, url: str, **judge: Any):
    teacher = {"type": "openai", "model": "judge-1", "base_url": url + "/v1", "api_key_env": "", "max_retries": 0,
               "price": {"input_per_mtok": PRICE_IN}}
    return load_config(overrides={
        "run_dir": str(run_dir), "task": {"type": "freetext", "instruction": "Summarise."},
        "evaluate": {"judge": {"enabled": True, "teacher": teacher, "rubric": "Prefer the accurate summary.", **judge}},
        "report": {"bootstrap_samples": 100}})


# student output, teacher output, slice; the fair judge's verdict for the student follows from "good".
CASES = [("a good summary", "a summary", "news", "win"), ("a summary", "a good summary", "news", "loss"),
         ("a summary", "another summary", "sport", "tie"), ("good one", "good two", "sport", "tie")]


def judge_once(tmp_path, mode: str, cases=CASES):
    seen: list[dict[str, str]] = []
    test = [Record(messages=[{"role": "user", "content": f"article {i}"}], output=t, slice=[s])
            for i, (_, t, s, _) in enumerate(cases)]
    student = [c[0] for c in cases]
    metric = [float(c[0] == c[1]) for c in cases]
    names = [[f"tag:{r.slice[0]}"] for r in test]
    with LiveServer(judge_app(mode, seen)) as srv:
        cfg = config(tmp_path / "run", srv.url)
        task = get_task(cfg.task)
        with Ledger(tmp_path / "calls.sqlite") as ledger:
            out = run_judge(cfg, task, test, student, metric, names, ledger)
            again = run_judge(cfg, task, test, student, metric, names, ledger)
            rows = ledger.rows(role="judge")
    return out, again, rows, seen


def test_both_orders_asked_verdicts_and_costs_in_ledger(tmp_path):
    out, again, rows, seen = judge_once(tmp_path, "fair")
    # Two calls per input, the student once as A and once as B, the teacher opposite.
    # (requests run concurrently, so compare the set of pairs, not their arrival order)
    assert sorted((x["A"], x["B"]) for x in seen) == sorted([(s, t) for s, t, _, _ in CASES] + [(t, s) for s, t, _, _ in CASES])
    assert [e["verdict"] for e in out["examples"]] == [c[3] for c in CASES]
    assert out["counts"] == {"win": 1, "tie": 2, "loss": 1, "inconsistent": 0, "bad": 0}
    allrow = out["slices"][0]
    assert allrow["slice"] == "all" and allrow["win"]["value"] == 0.25 and allrow["tie"]["value"] == 0.5
    assert allrow["win"]["lo"] <= 0.25 <= allrow["win"]["hi"]
    sport = next(r for r in out["slices"] if r["slice"] == "tag:sport")
    assert sport["tie"]["value"] == 1.0 and sport["judged"] == 2
    # Every call is one ledger row with role judge, priced from the usage the server reported.
    assert len(rows) == 8 and {r["stage"] for r in rows} == {"evaluate"} and {r["model"] for r in rows} == {"judge-1"}
    assert out["cost"]["calls"] == 8
    assert out["cost"]["cost_usd"] == pytest.approx(8 * PROMPT_TOKENS * PRICE_IN / 1e6)
    # The ledger is the cache: judging again sent nothing and paid nothing.
    assert again["cost"]["calls"] == 0 and again["counts"] == out["counts"]
    # Automatic metric (exact match) against the verdicts: both ties with unequal outputs score 0.
    assert out["agreement_with_metric"]["n"] == 4


def test_varied_verdicts_beside_a_varied_metric_are_correlated_without_scipy(tmp_path):
    """evaluate imported scipy.stats.spearmanr, which potstill does not depend on, wherever three or more
    consistent verdicts and the metric both varied (a real free-text run with the judge, almost always):
    ModuleNotFoundError after the judge's calls were paid, no eval.json, and every rerun the same. The
    fixtures above miss it: their exact-match metric is 0 on every case. Free text is set beside chrF."""
    from potstill.evaluate.judge import automatic_metric

    test = [Record(messages=[{"role": "user", "content": f"article {i}"}], output=t, slice=[s])
            for i, (_, t, s, _) in enumerate(CASES)]
    student = [c[0] for c in CASES]
    with LiveServer(judge_app("fair", [])) as srv:
        cfg = config(tmp_path / "run", srv.url)
        task = get_task(cfg.task)
        name, metric = automatic_metric(task, student, [c[1] for c in CASES], [0.0] * len(CASES))
        with Ledger(tmp_path / "calls.sqlite") as ledger:
            out = run_judge(cfg, task, test, student, metric, [["tag:x"]] * len(CASES), ledger, name)
    assert [e["verdict"] for e in out["examples"]] == ["win", "loss", "tie", "tie"]
    agr = out["agreement_with_metric"]
    # chrF 0.712, 0.513, 0.435, 0.311: ranks 4, 3, 2, 1; the verdicts 1, 0, 0.5, 0.5: ranks 4, 1, 2.5, 2.5.
    # Deviations (1.5, -1.5, 0, 0) and (1.5, 0.5, -0.5, -1.5): 1.5 / sqrt(4.5 x 5) = 1 / sqrt(10).
    assert (agr["metric"], agr["n"]) == ("chrF", 4)
    assert agr["spearman"] == pytest.approx(1 / 10 ** 0.5)
    assert agr["metric_mean_by_verdict"]["tie"] == pytest.approx((metric[2] + metric[3]) / 2)


def test_position_biased_judge_is_reported_inconsistent(tmp_path):
    out, _, _, seen = judge_once(tmp_path, "biased")
    assert len(seen) == 8
    assert out["counts"]["inconsistent"] == len(CASES) and out["counts"]["win"] == 0
    assert out["first_position_rate"] == 1.0
    assert out["slices"][0]["inconsistent"]["value"] == 1.0


def test_bad_judge_output_is_counted_not_fatal(tmp_path):
    cases = [("good GARBLE", "plain", "news", None), ("FAIL good", "plain", "news", None), *CASES]
    out, _, rows, _ = judge_once(tmp_path, "garbled", cases)
    assert [e["verdict"] for e in out["examples"]][:2] == ["bad", "win"]
    assert out["counts"]["bad"] == 1 and out["choices"]["bad"] == 2
    assert out["slices"][0]["judged"] == len(cases) - 1
    out, _, rows, _ = judge_once(tmp_path / "f", "failing", cases)
    assert [e["verdict"] for e in out["examples"]][:2] == ["win", "bad"]
    assert sum(r["status"] == "error" for r in rows) >= 2  # the failed calls are in the ledger too


def test_parse_and_combine():
    assert [parse_choice(x) for x in ["A", " b.", "TIE", "Tie!", "Answer A", "", None]] == ["A", "B", "TIE", "TIE", None, None, None]
    assert combine("A", "B") == "win" and combine("B", "A") == "loss" and combine("TIE", "TIE") == "tie"
    assert combine("A", "A") == "inconsistent" and combine("A", None) == "bad"


def judged_run(tmp_path, tiny_model, text: str = "text", n: int = 4):
    """A run directory with ``n`` free-text test records and the tiny model as its student."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"input": f"{text} {i}", "output": f"summary {i}", "slice": ["s"]} for i in range(n)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, run / "student")
    return run


def stage_config(run, url: str, tiny_model):
    """``config`` for the evaluate stage on ``judged_run``: a fast student pass, slices of 2."""
    cfg = config(run, url)
    cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": str(tiny_model)})})
    cfg.task.max_output_tokens = 4
    cfg.evaluate.latency_samples, cfg.evaluate.batch_size, cfg.evaluate.include_untrained = 2, 2, False
    cfg.report.min_slice_n = 2
    return cfg


def test_evaluate_stage_reports_the_judge(tmp_path, tiny_model):
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model)
    seen: list[dict[str, str]] = []
    with LiveServer(judge_app("fair", seen)) as srv:
        evaluate_stage(stage_config(run, srv.url, tiny_model))
    ev = json.loads((run / "eval.json").read_text())
    assert len(seen) == 8 and ev["judge"]["n"] == 4 and ev["judge"]["cost"]["calls"] == 8
    assert "judge" in ev["sources"]
    assert "id='judge'" in (run / "report.html").read_text()


def test_identical_answers_are_a_tie_without_asking(tmp_path):
    """A student that writes exactly the teacher's answer (common for JSON and short answers) gives the
    judge the same prompt twice: its one reply, read in both orders, made the input "inconsistent"
    (A: a win, then a loss) and paid for it. The same text is a tie, and nothing needs asking."""
    cases = [("the same summary", "the same summary", "news", "tie"), *CASES]
    out, _, rows, seen = judge_once(tmp_path, "biased", cases)
    assert out["examples"][0]["verdict"] == "tie"
    assert out["counts"]["tie"] == 1 and out["counts"]["inconsistent"] == len(CASES)
    assert ("the same summary", "the same summary") not in {(x["A"], x["B"]) for x in seen}
    assert len(seen) == len(rows) == 2 * len(CASES) and out["cost"]["calls"] == 2 * len(CASES)
    assert out["first_position_rate"] == 1.0 and out["choices"]["A"] == 2 * len(CASES)


def test_a_judge_key_not_set_names_the_judges_setting(tmp_path, monkeypatch):
    """The judge's own teacher section names its key variable: the error pointed at
    teacher.api_key_env, a setting that did not hold it."""
    from potstill.errors import PotstillError

    monkeypatch.delenv("JUDGE_KEY_T", raising=False)
    test = [Record(messages=[{"role": "user", "content": "article"}], output="a summary")]
    cfg = config(tmp_path / "run", "http://127.0.0.1:9")
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"judge": cfg.evaluate.judge.model_copy(
        update={"teacher": cfg.evaluate.judge.teacher.model_copy(update={"api_key_env": "JUDGE_KEY_T"})})})})
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        with pytest.raises(PotstillError, match=r"JUDGE_KEY_T is not set .*see evaluate\.judge\.teacher\.api_key_env\)"):
            run_judge(cfg, get_task(cfg.task), test, ["another summary"], [0.0], [[]], ledger)


def test_failed_judge_calls_leave_evaluate_not_done_so_a_rerun_asks_them_again(tmp_path, tiny_model):
    """A judge down for every call (a 400 here) left evaluate done with every input 'bad', and a plain
    rerun skipped it. Now eval.json is written, one line says the calls failed, and the rerun asks."""
    from potstill.errors import PotstillError
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model, "text FAIL")
    seen: list[dict[str, str]] = []
    with LiveServer(judge_app("failing", seen)) as srv:
        cfg = stage_config(run, srv.url, tiny_model)
        for _ in range(2):
            with pytest.raises(PotstillError, match=r"evaluate: 8 judge calls failed \(.*400.*Rerun to retry"):
                evaluate_stage(cfg)
            assert json.loads((run / "eval.json").read_text())["judge"]["counts"]["bad"] == 4
        assert len(seen) == 16  # the second evaluate was not skipped: it asked the 8 calls again


def test_cost_lists_the_judges_calls_and_spend(tmp_path):
    """The judge's calls are paid API calls: `potstill cost RUN` lists them beside the teacher's and the student's."""
    import subprocess
    import sys

    cases = [("good GARBLE", "plain", "news", None), ("FAIL good", "plain", "news", None), *CASES]
    _, _, rows, _ = judge_once(tmp_path, "failing", cases)
    ok = [r for r in rows if r["status"] == "ok"]
    assert 0 < len(ok) < len(rows)  # failed calls are rows too (asked again by the second judging)
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "cost", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    spend = sum(r["cost_usd"] for r in ok)
    assert spend == pytest.approx(len(ok) * PROMPT_TOKENS * PRICE_IN / 1e6)
    assert (f"judge judge-1 (evaluate): {len(rows)} calls ({len(rows) - len(ok)} errors), {len(ok) * PROMPT_TOKENS} input + "
            f"{len(ok)} output tokens, ${spend:.4f}") in out.stdout.splitlines()


def test_free_text_verdicts_are_set_beside_chrf_not_exact_match(tmp_path, tiny_model):
    """Free text is scored by chrF (README, Evaluate): the judge's verdicts were set beside exact match,
    which a student almost never reaches on a summary, so every verdict's mean was 0 and the Spearman
    correlation null. Each example now carries its chrF against the teacher's answer."""
    from potstill.evaluate.metrics import chrf
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model)
    seen: list[dict[str, str]] = []
    with LiveServer(judge_app("fair", seen)) as srv:
        evaluate_stage(stage_config(run, srv.url, tiny_model))
    judge = json.loads((run / "eval.json").read_text())["judge"]
    from potstill.records import read_records

    teacher = {r.id: r.output for r in read_records(run / "test.jsonl")}
    student = {x["B"]: x["A"] for x in seen if x["B"] in teacher.values()}  # the order with the student as A
    assert judge["agreement_with_metric"]["metric"] == "chrF"
    for e in judge["examples"]:
        out = " ".join(student[teacher[e["id"]]].split())
        assert e["metric"] == pytest.approx(chrf(out, teacher[e["id"]]))
    assert any(e["metric"] > 0 for e in judge["examples"])  # exact match gave 0 for every one of them
    assert "chrF" in (run / "report.html").read_text()
    # and the report's three-way table has each model's chrF, as the terminal's does (it had none)
    html = (run / "report.html").read_text()
    models = html[html.index("<section id='models'>"):html.index("</section>", html.index("<section id='models'>"))]
    ev = json.loads((run / "eval.json").read_text())
    assert "chrF with teacher" in models
    assert f"{ev['models']['student']['chrf_with_teacher']:.3f}" in models


def test_evaluate_says_what_the_judge_found(tmp_path, tiny_model, capsys):
    """With the judge on, evaluate printed the table and the verdict and nothing of the judge: its 8 paid
    calls showed only in eval.json and report.html. One line now says what it found and what it cost."""
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model)
    with LiveServer(judge_app("biased", [])) as srv:
        evaluate_stage(stage_config(run, srv.url, tiny_model))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("evaluate: judge")]
    assert lines == ["evaluate: judge judge-1 on 4 test inputs: the student won 0, tied 0, lost 0; 4 inconsistent "
                     "(the two orders disagreed), 0 unreadable; it named position A in 100.0% of its answers; "
                     "$0.0016 (recorded over 8 calls; 8 new calls, $0.0016)"], lines


def test_a_rerun_shows_what_judging_cost_not_0(tmp_path, tiny_model, capsys):
    """A rerun (what evaluate asks for after failed judge calls) read "0 new calls, $0.0000" in the terminal and
    "$0.00" in the report: the cost shown was this run's new calls only, while the ledger held what the judge had
    cost for these inputs. Both now show that recorded total, this run's new calls beside it; and calls that failed
    again are new calls too (only the answered ones were counted)."""
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model)
    with LiveServer(judge_app("fair", [])) as srv:
        cfg = stage_config(run, srv.url, tiny_model)
        evaluate_stage(cfg)
        evaluate_stage(cfg, force=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("evaluate: judge")]
    assert [ln.split("answers; ")[1] for ln in lines] == [  # 8 calls x 100 tokens x $2 per million: $0.0016
        "$0.0016 (recorded over 8 calls; 8 new calls, $0.0016)", "$0.0016 (recorded over 8 calls; 0 new calls)"]
    cost = json.loads((run / "eval.json").read_text())["judge"]["cost"]
    assert (cost["calls"], cost["cost_usd"], cost["recorded_calls"]) == (0, 0.0, 8)
    assert cost["recorded_usd"] == pytest.approx(8 * PROMPT_TOKENS * PRICE_IN / 1e6)
    assert "asked in both orders, at $0.00160 (recorded over 8 calls; 0 new calls)." in (run / "report.html").read_text()
    # The two calls that fail are asked again on the second judging: new calls, in the recorded count too.
    cases = [("FAIL good", "plain", "news", None), *CASES]
    out, again, rows, _ = judge_once(tmp_path / "f", "failing", cases)
    assert (out["cost"]["calls"], again["cost"]["calls"]) == (10, 2)
    assert again["cost"]["recorded_calls"] == len(rows) == 12
    assert again["cost"]["recorded_usd"] == pytest.approx(8 * PROMPT_TOKENS * PRICE_IN / 1e6)  # failures billed $0


@pytest.mark.parametrize("mode, verdict, score", [("tie", "pass", 0.5), ("teacher", "fail", 0.0)])
def test_on_free_text_the_judge_decides_the_verdict_not_exact_match(tmp_path, tiny_model, mode, verdict, score):
    """A free-text slice without gold was judged on exact-match agreement with the teacher (bar 0.85),
    which a summary almost never reaches, so any summariser got NO-GO, even one the judge found as good
    as the teacher. Where the judge ran, its score (win 1, tie 0.5, loss 0) decides against
    quality_bar.min_judge_score; agreement stays in the row, reported only."""
    from potstill.evaluate.stage import evaluate_stage

    # 40 inputs: 40 ties of 40 are [0.456, 0.544], above a 0.45 bar (8 are [0.316, 0.684]: too few);
    # 40 losses are [0, 0.088]
    run = judged_run(tmp_path, tiny_model, n=40)
    with LiveServer(judge_app(mode, [])) as srv:
        evaluate_stage(stage_config(run, srv.url, tiny_model))
    ev = json.loads((run / "eval.json").read_text())
    whole = ev["slices"][0]
    assert whole["slice"] == "all" and whole["agreement"]["value"] == 0.0  # never the teacher's very words
    assert whole["judged_on"] == "judge" and whole["n_judged"] == 40
    assert whole["judge_score"]["value"] == score and whole["verdict"] == verdict, whole["reason"]
    assert "judge score against the teacher" in whole["reason"] and "reported only" in whole["reason"]
    assert ev["judge"]["slices"][0]["score"]["value"] == score
    assert "judge score of the trained student against the teacher" in (run / "report.html").read_text()


def test_a_judge_that_always_names_one_position_decides_nothing(tmp_path, tiny_model):
    """Each flip of a verdict with the answers' order counts as a tie (0.5), so a judge that always says
    "A" scored every student 0.5, as good as the teacher, and passed it against min_judge_score 0.45,
    however bad its answers. Past quality_bar.max_judge_inconsistency (0.5) the slice is inconclusive.
    40 inputs: 40 ties are [0.456, 0.544], enough to pass the bar without that bound."""
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model, n=40)
    with LiveServer(judge_app("biased", [])) as srv:
        evaluate_stage(stage_config(run, srv.url, tiny_model))
    ev = json.loads((run / "eval.json").read_text())
    whole = ev["slices"][0]
    assert whole["judge_score"]["value"] == 0.5 and whole["judge_score"]["inconsistent"] == 1.0
    assert whole["judged_on"] == "judge" and whole["verdict"] == "inconclusive", whole["reason"]
    assert "the judge's verdict flipped with the answers' order on 100% of its 40 examples" in whole["reason"]
    assert ev["verdict"]["decision"] != "GO"
    # With no bound (any share), the rule before it: the position-biased judge passes the student.
    cfg = stage_config(run, "http://127.0.0.1:9", tiny_model)
    cfg.evaluate.quality_bar.max_judge_inconsistency = None
    with LiveServer(judge_app("biased", [])) as srv:
        cfg.evaluate.judge.teacher = cfg.evaluate.judge.teacher.model_copy(update={"base_url": srv.url + "/v1"})
        evaluate_stage(cfg, force=True)
    assert json.loads((run / "eval.json").read_text())["slices"][0]["verdict"] == "pass"


def test_a_judge_model_without_a_price_says_its_calls_count_nothing(tmp_path, capsys):
    """A judge model that neither evaluate.judge.teacher.price nor generate.prices prices cost $0 in the
    ledger, eval.json and the report without a word, though its provider bills every call."""
    cfg = config(tmp_path / "run", "http://127.0.0.1:9")
    cfg.evaluate.judge.teacher.price.input_per_mtok = 0.0
    with LiveServer(judge_app("fair", [])) as srv:
        cfg.evaluate.judge.teacher.base_url = srv.url + "/v1"
        test = [Record(messages=[{"role": "user", "content": "article"}], output="a summary")]
        with Ledger(tmp_path / "calls.sqlite") as ledger:
            out = run_judge(cfg, get_task(cfg.task), test, ["a good summary"], [0.0], [["tag:x"]], ledger)
    assert out["cost"]["calls"] == 2 and out["cost"]["cost_usd"] == 0.0
    err = capsys.readouterr().err
    assert "no price is known for the judge model 'judge-1'" in err and "evaluate.judge.teacher.price" in err, err


def test_a_slice_the_judge_judged_none_of_is_too_small_not_failed_on_exact_match(tmp_path, tiny_model):
    """With the judge on, a free-text slice whose examples all lay past judge.max_examples fell back to
    exact-match agreement, the measure the judge replaces, and failed ("agreement 0.0%, wholly below the
    85% bar"), to be kept on the teacher under GO. It has 0 judged examples: too small to judge."""
    from potstill.evaluate.stage import evaluate_stage

    run = judged_run(tmp_path, tiny_model, n=8)
    rows = [{"input": f"text {i}", "output": f"summary {i}", "slice": ["a" if i < 4 else "b"]} for i in range(8)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = stage_config(run, "http://127.0.0.1:9", tiny_model)
    with LiveServer(judge_app("tie", [])) as srv:
        cfg.evaluate.judge.teacher = cfg.evaluate.judge.teacher.model_copy(update={"base_url": srv.url + "/v1"})
        cfg.evaluate.judge.max_examples = 4  # tag:a only
        evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())
    by = {r["slice"]: r for r in ev["slices"]}
    assert (by["tag:a"]["judged_on"], by["tag:a"]["n_judged"]) == ("judge", 4)
    b = by["tag:b"]
    assert b["agreement"]["value"] == 0.0
    assert (b["judged_on"], b["n_judged"], b["verdict"]) == ("judge", 0, "too small"), b["reason"]
    assert "judged none of them" in b["reason"] and "tag:b" in (run / "report.html").read_text()
