"""`potstill synthesize` against a real loopback teacher on 127.0.0.1 that *writes inputs*.

The writer reads the plan from the prompt (label, request number) and answers the way a model
would, in an <input> block; it also misbehaves on purpose: every 4th request of a cell (k % 4 == 1)
repeats the cell's previous input, k % 4 == 2 returns a light edit of a held-out test input, and
k % 4 == 3 copies a seed. Mode ``unusable`` answers prose with no <input> block at all, and
``mostly_unusable`` too except to the first request of the sports cell.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.ledger import Ledger
from potstill.records import read_records
from potstill.synthesize.stage import synthesize_stage
from tests.generate.loopback import committed_answers
from tests.helpers.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["sports", "tech", "politics"]
VOCAB = [f"{a}{b}" for a in ("mar", "tel", "dov", "kin", "sur", "pal", "ver", "gon") for b in ("o", "ax", "ine", "um", "et")]
SEEDS = ["The home side won the cup final after extra time in front of a full stadium.",
         "A new phone chip promises twice the battery life, the maker said on Tuesday.",
         "Parliament voted late at night on the budget after a long and angry debate."]
TESTS = ["Shares in the carmaker fell sharply after it cut its profit forecast for the year."]


def written(cell: str, k: int) -> str:
    rng = random.Random(f"{cell}:{k}")
    return f"A {cell} story: " + " ".join(rng.choice(VOCAB) for _ in range(30)) + "."


def writer_app(mode: str, seen: Counter, delay: float = 0.0, down: set[str] | None = None) -> FastAPI:
    """``down``: cells whose requests get a 500 (``"*"``: every request), while the set holds them."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        user = body["messages"][-1]["content"]
        plan = re.search(r"\(request (\w+)#(\d+)\)", user)
        if plan is None:  # not a synthesis prompt: generate asks for the label, which the text names
            label = next((lab for lab in LABELS if lab in user), LABELS[0])
            return {"id": "l", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": label}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51}}
        cell, k = plan.groups()
        k = int(k)
        seen[f"{cell}#{k}"] += 1
        if down and ({"*", cell} & down):
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
        if delay:
            time.sleep(delay)
        if mode == "unusable" or (mode == "mostly_unusable" and (cell, k) != ("sports", 0)):
            text = "I would be glad to help you build a dataset! Here are some thoughts on news articles."
        elif k % 4 == 1:
            text = f"<input>{written(cell, k - 1)}</input>"
        elif k % 4 == 2:
            text = f"<input>{TESTS[0][:-1]}, analysts said.</input>"
        elif k % 4 == 3:
            text = f"Sure! <input>{SEEDS[0]}</input>"
        else:
            text = f"<input>{written(cell, k)}</input>"
        return {"id": "w", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 50, "total_tokens": 250}}

    return app


def project(tmp: Path, url: str, n: int = 12, **synth: Any) -> Path:
    (tmp / "seeds.jsonl").write_text("".join(json.dumps({"input": t, "label": lab}) + "\n" for t, lab in zip(SEEDS, LABELS)))
    (tmp / "test.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in TESTS))
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": LABELS, "instruction": "Topic of the article."},
           "teacher": {"type": "openai", "model": "writer-1", "base_url": url + "/v1", "api_key_env": "",
                       "concurrency": 4, "max_retries": 0, "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}},
           "synthesize": {"n": n, "seeds": "seeds.jsonl", "test_inputs": "test.jsonl", "topics": ["markets", "people"],
                          "styles": ["wire report", "blog post"], "max_rounds": 10, **synth}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "potstill.yaml"


def test_quotas_met_rejections_with_reasons_and_cache(tmp_path):
    seen: Counter = Counter()
    with LiveServer(writer_app("good", seen)) as srv:
        cfg = load_config(project(tmp_path, srv.url))
        synthesize_stage(cfg)
        sent = sum(seen.values())
        synthesize_stage(cfg, force=True)  # every request again: all answered from the ledger
        assert sum(seen.values()) == sent
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["quotas_met"] and card["written"] == 12
    assert {c: v["kept"] for c, v in card["cells"].items()} == {lab: 4 for lab in LABELS}
    reasons = card["rejected_by_reason"]
    assert reasons["near a test input"] > 0 and reasons["duplicates a synthetic input"] > 0
    assert reasons["duplicates a seed input"] > 0
    assert card["rejected"] == sum(reasons.values()) == card["requests"] - 12
    assert all(e["reason"] and e["plan"]["cell"] in LABELS for e in card["rejected_examples"])
    recs = read_records(tmp_path / "run" / "synthetic.jsonl")
    real, synth = recs[:3], recs[3:]
    assert [r.text for r in real] == SEEDS and all("real" in r.slice for r in real)
    for r in synth:
        assert r.slice[0] == "synthetic" and r.meta["synthetic"] and r.meta["teacher"] == "writer-1"
        assert r.slice[1] == f"cell:{r.meta['plan']['cell']}" and r.meta["plan"]["topic"] in ("markets", "people")
        assert r.text not in SEEDS and "analysts said" not in r.text
    assert len({r.text for r in synth}) == 12
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        rows = ledger.rows(role="teacher", stage="synthesize")
        assert len(rows) == card["requests"] == sent  # one paid row per request, no request sent twice
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(sent * (200 * 1.0 + 50 * 4.0) / 1e6)


def test_prompts_rotate_plan_and_exemplars(tmp_path):
    from potstill.synthesize import prompt, slot

    cfg = load_config(project(tmp_path, "http://127.0.0.1:9"))
    slots = [slot(cfg.synthesize, "tech", k, SEEDS) for k in range(24)]
    # 2 topics x 2 styles x 3 lengths x 2 difficulties: the first 24 requests cover every combination once.
    assert len({(s.topic, s.style, s.length, s.difficulty) for s in slots}) == 24
    assert len({tuple(s.exemplars) for s in slots}) > 1  # exemplars change from request to request
    text = prompt(cfg.task, slots[0])[1]["content"]
    assert 'correct label is: "tech"' in text and "(request tech#0)" in text
    assert slot(cfg.synthesize, "tech", 3, SEEDS) == slots[3]  # the plan is the same every run


def test_the_teacher_is_shown_the_json_schema_as_json():
    """It was the dict's Python repr (single quotes, False, a pattern's backslash doubled)."""
    from potstill.config import TaskConfig
    from potstill.synthesize import Slot, prompt

    schema = {"type": "object", "additionalProperties": False, "required": ["ref"],
              "properties": {"ref": {"type": "string", "pattern": r"^[A-Z]{2}-\d+$"}, "Straße": {"type": "boolean"}}}
    text = prompt(TaskConfig(type="extraction", json_schema=schema), Slot("all", 0, None, None, None, None, []))[1]["content"]
    line = next(x for x in text.splitlines() if "JSON Schema" in x)
    assert json.loads(line.split("what it asks for: ", 1)[1]) == schema
    assert "Straße" in line  # as written, not \u00df


def test_labels_holding_a_comma_are_listed_so_the_teacher_can_read_the_set_back():
    """``billing issue, crash, bug, other`` read as four labels; there are three."""
    from potstill.config import TaskConfig
    from potstill.synthesize import Slot, prompt

    labels = ["billing issue", "crash, bug", "Frage/Auskunft", "réclamation"]
    task = TaskConfig(type="classification", labels=labels)
    text = prompt(task, Slot("crash, bug", 0, None, None, None, None, []))[1]["content"]
    line = next(x for x in text.splitlines() if x.startswith("Possible labels: "))
    listed, asked = line.removeprefix("Possible labels: ").split(". Write an input whose correct label is: ")
    assert json.loads(f"[{listed}]") == labels and json.loads(asked.removesuffix(".")) == "crash, bug"
    head = prompt(task, Slot("crash, bug", 0, None, None, None, None, []), completion=True)[0]["content"]
    assert 'Inputs whose correct label is "crash, bug", each new' in head


def test_teacher_with_unusable_text_is_one_clear_error(tmp_path):
    seen: Counter = Counter()
    with LiveServer(writer_app("unusable", seen)) as srv:
        cfg = load_config(project(tmp_path, srv.url))
        with pytest.raises(PotstillError, match=r"returned no usable input in 12 answers .*<input>"):
            synthesize_stage(cfg)
    assert not (tmp_path / "run" / "synthetic.jsonl").exists()


def test_a_teacher_that_rarely_writes_an_input_gets_no_second_round(tmp_path, capsys):
    """1 of round one's 12 answers holds an input, under 10%: another round would ask again for 11
    inputs and pay for about as few, so there is none; the one kept is written, the quotas unmet."""
    seen: Counter = Counter()
    with LiveServer(writer_app("mostly_unusable", seen)) as srv:
        synthesize_stage(load_config(project(tmp_path, srv.url)))
    assert sum(seen.values()) == 12  # round one only (max_rounds is 10)
    said = capsys.readouterr().err
    assert "only 1 of 12 answers of the teacher writer-1 held an input" in said and "no further rounds" in said
    assert "I would be glad to help" in said
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["written"] == 1 and not card["quotas_met"] and card["cells"]["sports"]["kept"] == 1


def test_failed_teacher_calls_stop_the_stage_and_a_rerun_retries_them(tmp_path):
    seen: Counter = Counter()
    down = {"*"}
    with LiveServer(writer_app("good", seen, down=down)) as srv:
        cfg = load_config(project(tmp_path, srv.url))
        # Every call failed (a server down, a wrong key): one line after the first round, nothing written.
        with pytest.raises(PotstillError, match=r"synthesize: all 12 teacher calls failed \(.*500.*nothing written"):
            synthesize_stage(cfg)
        assert sum(seen.values()) == 12  # no further rounds of requests bound to fail
        assert not (tmp_path / "run" / "synthetic.jsonl").exists()
        # One cell's calls fail: the others are kept, but the stage is not done while its quota is unmet.
        down.clear()
        down.add("politics")
        with pytest.raises(PotstillError, match=r"synthesize: \d+ teacher calls failed .*politics: 0 of 4"):
            synthesize_stage(cfg)
        card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
        assert card["cells"]["sports"]["kept"] == 4 and card["cells"]["politics"]["kept"] == 0
        down.clear()
        synthesize_stage(cfg)  # not "up to date": the failed requests are asked again
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["quotas_met"] and card["written"] == 12


def test_the_budget_caps_all_rounds_together(tmp_path):
    # Each request costs 200 x $1 + 50 x $4 per Mtok = $0.0004; 1 answer in 4 is kept, so 12 inputs
    # take several rounds. $0.006 (15 requests) covers round one (12) but not round two as well
    # (max_tokens 50: the worst case priced before the first answer is the real cost).
    seen: Counter = Counter()
    with LiveServer(writer_app("good", seen)) as srv:
        cfg = load_config(project(tmp_path, srv.url, max_tokens=50), {"generate.budget_usd": 0.006})
        with pytest.raises(PotstillError, match=r"synthesize: budget of \$0.006 reached"):
            synthesize_stage(cfg)
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        spent = sum(r["cost_usd"] for r in ledger.rows(role="teacher", stage="synthesize"))
    assert 12 * 0.0004 <= spent <= 0.006 + 1e-12 and sum(seen.values()) <= 15
    # What was paid for and kept is written, as generate writes what was answered (it wrote nothing).
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    kept = read_records(tmp_path / "run" / "synthetic.jsonl")[3:]
    assert not card["quotas_met"] and 0 < card["written"] == len(kept) < 12
    assert card["requests"] == card["written"] + card["rejected"] and card["rejected_by_reason"]["not sent: budget reached"]


def test_kill_9_then_resume_pays_nothing_twice(tmp_path):
    seen: Counter = Counter()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    with LiveServer(writer_app("good", seen, delay=0.03)) as srv:
        cfg_path = project(tmp_path, srv.url, n=60, max_rounds=40)  # 1 in 4 answers is kept
        cmd = [sys.executable, "-m", "potstill.cli", "synthesize", "-c", str(cfg_path)]
        db = tmp_path / "run" / "calls.sqlite"
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while committed_answers(db) < 25 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = committed_answers(db)
        assert 25 <= before < 60 and not (tmp_path / "run" / "synthetic.jsonl").exists()
        final = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["quotas_met"] and card["written"] == 60
    # Only requests in flight at the kill (at most teacher.concurrency) were sent twice.
    assert sum(n - 1 for n in seen.values()) <= 4
    with Ledger(db) as ledger:
        ok = [r["request_hash"] for r in ledger.rows(role="teacher", stage="synthesize") if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == card["requests"]  # one paid answer per request, none twice


def test_synthetic_inputs_flow_through_generate_curate_and_evaluate_apart(tmp_path, tiny_model):
    from potstill.curate.stage import curate_stage
    from potstill.evaluate.stage import evaluate_stage
    from potstill.generate.stage import generate_stage
    from potstill.train.stage import train_stage

    seen: Counter = Counter()
    with LiveServer(writer_app("good", seen)) as srv:
        cfg_path = project(tmp_path, srv.url, n=24)
        raw = yaml.safe_load(cfg_path.read_text())
        raw.update({"data": {"inputs": "run/synthetic.jsonl"}, "student": {"model": str(tiny_model), "max_length": 64},
                    "curate": {"val": 3, "test": 10}, "train": {"epochs": 1, "batch_size": 4},
                    "evaluate": {"latency_samples": 2, "batch_size": 4, "include_untrained": False},
                    "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
        cfg_path.write_text(yaml.safe_dump(raw))
        cfg = load_config(cfg_path)
        for stage in (synthesize_stage, generate_stage, curate_stage, train_stage):
            stage(cfg)
        test = read_records(tmp_path / "run" / "test.jsonl")
        if not any("real" in r.slice for r in test):
            pytest.skip("the hash split put no real record in test")  # never seen with these seeds; kept honest
        evaluate_stage(cfg)
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["synthesis"]["written"] == 24 and card["synthesis"]["rejected"] > 0
    assert sum(card["synthesis"]["synthetic_per_split"].values()) == 24
    assert "## Synthetic inputs" in (tmp_path / "run" / "card.md").read_text()
    teacher = read_records(tmp_path / "run" / "teacher.jsonl")
    assert all(r.meta["teacher"] == "writer-1" for r in teacher) and sum(r.meta.get("synthetic", False) for r in teacher) == 24
    slices = {r["slice"]: r for r in json.loads((tmp_path / "run" / "eval.json").read_text())["slices"]}
    n_syn = sum("synthetic" in r.slice for r in test)
    assert slices["tag:synthetic"]["n"] == n_syn and slices["tag:real"]["n"] == len(test) - n_syn


def test_local_teacher_in_completion_format_samples_new_inputs_and_caches_them(tmp_path, tiny_model_b):
    """A base model gets a plain-text list of same-label seeds ending in an open <input> and samples a
    continuation (synthesize.temperature 1.0): every request its own text, each paid once, a rerun
    answered from the ledger with the same texts. The tiny random model writes word salad; the
    plumbing, not the prose, is under test here (benchmarks/synthesize.py measures the prose)."""
    cfg_path = project(tmp_path, "http://127.0.0.1:9", n=6, max_rounds=2, min_chars=1, max_tokens=12, exemplars=2)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["teacher"] = {"type": "local", "model": str(tiny_model_b), "prompt_format": "completion", "batch_size": 3}
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    synthesize_stage(cfg)
    first = [r.text for r in read_records(tmp_path / "run" / "synthetic.jsonl")][3:]
    assert len(first) == 6 and len(set(first)) == 6  # sampled: no two requests wrote the same input
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        rows = ledger.rows(role="teacher", stage="synthesize")
    assert len(rows) == 6
    for r in rows:
        (msg,) = json.loads(r["request"])["messages"]
        cell = re.search(r"\(request (\w+)#\d+\)", msg["content"]).group(1)
        # Only the seed with the cell's label is shown, as the last line of the list the model continues.
        assert msg["role"] == "user" and msg["content"].endswith(f"<input>{SEEDS[LABELS.index(cell)]}</input>")
        assert "New input" not in msg["content"]
    synthesize_stage(cfg, force=True)
    assert [r.text for r in read_records(tmp_path / "run" / "synthetic.jsonl")][3:] == first
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        assert len(ledger.rows(role="teacher", stage="synthesize")) == 6  # nothing paid twice


def test_local_teacher_that_writes_nothing_is_one_clear_error(tmp_path, tiny_model_b):
    """Greedy (temperature 0), the tiny random model stops at once: the unusable local teacher."""
    cfg_path = project(tmp_path, "http://127.0.0.1:9", n=6, max_rounds=2, min_chars=1, max_tokens=12, temperature=0.0)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["teacher"] = {"type": "local", "model": str(tiny_model_b), "prompt_format": "completion", "batch_size": 3}
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PotstillError, match=r"no usable input in 6 answers \(each must continue the prompt's <input>"):
        synthesize_stage(load_config(cfg_path))


def test_growing_the_plan_after_curate_keeps_its_own_inputs_in_test(tmp_path):
    """RUN/test.jsonl holds synthesize's own earlier inputs once curate has split them: a rerun with a
    larger n gets them back from the ledger and must keep them (they are those test inputs, not near
    one), or the next curate silently loses them from the test split."""
    from potstill.curate.stage import curate_stage
    from potstill.generate.stage import generate_stage

    seen: Counter = Counter()
    with LiveServer(writer_app("good", seen)) as srv:
        cfg_path = project(tmp_path, srv.url, n=12)
        raw = yaml.safe_load(cfg_path.read_text())
        raw.update({"data": {"inputs": "run/synthetic.jsonl"}, "curate": {"val": 2, "test": 6}})
        cfg_path.write_text(yaml.safe_dump(raw))
        cfg = load_config(cfg_path)
        for stage in (synthesize_stage, generate_stage, curate_stage):
            stage(cfg)
        in_test = [r.text for r in read_records(tmp_path / "run" / "test.jsonl") if "synthetic" in r.slice]
        assert in_test
        raw["synthesize"]["n"] = 15
        cfg_path.write_text(yaml.safe_dump(raw))
        synthesize_stage(load_config(cfg_path))
    texts = {r.text for r in read_records(tmp_path / "run" / "synthetic.jsonl")}
    assert [t for t in in_test if t not in texts] == []
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["written"] == 15 and card["quotas_met"]


@pytest.mark.parametrize("synth, named", [({"quotas": {"sports": 2, "weather": 2}}, r"'weather' \(synthesize.quotas\)"),
                                          ({"cells": ["Sports", "tech"]}, r"'Sports' \(synthesize.cells\)")])
def test_classification_cells_that_are_not_labels_are_refused_before_any_call(tmp_path, synth, named):
    """A classification prompt asks for an input 'whose correct label is' the cell: a cell outside
    task.labels would have the teacher write to a label the task does not have."""
    seen: Counter = Counter()
    with LiveServer(writer_app("good", seen)) as srv:
        cfg = load_config(project(tmp_path, srv.url, **synth))
        with pytest.raises(PotstillError, match=rf"synthesize: cell {named} is not one of task.labels") as err:
            synthesize_stage(cfg)
    assert ("did you mean 'sports'?" in str(err.value)) == ("Sports" in named)
    assert not seen and not (tmp_path / "run").exists()


def test_seed_labels_in_another_case_are_the_cells_labels(tmp_path):
    """Seeds exported as "Sports" or "TECH" are the labels sports and tech, as generate reads them:
    a cell's prompts show that label's seeds (not every seed), and synthetic.jsonl keeps the
    label set's spelling."""
    prompts: list[str] = []
    app = writer_app("good", Counter())

    @app.middleware("http")
    async def keep(request, call_next):
        prompts.append(json.loads(await request.body())["messages"][-1]["content"])
        return await call_next(request)

    with LiveServer(app) as srv:
        cfg_path = project(tmp_path, srv.url, n=3, exemplars=3, max_rounds=1)
        (tmp_path / "seeds.jsonl").write_text("".join(
            json.dumps({"input": t, "label": lab}) + "\n" for t, lab in zip(SEEDS, ["Sports", "TECH", "Politics"])))
        synthesize_stage(load_config(cfg_path))
    tech = [p for p in prompts if "(request tech#" in p]
    assert tech and all(SEEDS[1] in p and SEEDS[0] not in p and SEEDS[2] not in p for p in tech)
    seeds = read_records(tmp_path / "run" / "synthetic.jsonl")[:3]
    assert [r.label for r in seeds] == LABELS


def test_a_budget_that_cannot_cap_the_teacher_is_refused_before_the_ledger_exists(tmp_path):
    """generate refuses a budget no price can count (an unknown model, no teacher.price) before it makes
    the ledger; synthesize checked it only inside its first round, after RUN/calls.sqlite (and the
    run directory) were created for a run that never called anyone."""
    path = project(tmp_path, "http://127.0.0.1:9")
    cfg = load_config(path, {"generate.budget_usd": 1.0, "teacher.price.input_per_mtok": 0.0,
                             "teacher.price.output_per_mtok": 0.0})
    with pytest.raises(PotstillError, match=r"generate.budget_usd: no price is known for teacher.model 'writer-1'"):
        synthesize_stage(cfg)
    assert not (tmp_path / "run" / "calls.sqlite").exists()


def test_quotas_that_do_not_add_up_to_n_say_that_n_is_not_used(tmp_path, capsys):
    """With synthesize.quotas the written count is their sum, and an n set beside them was silently
    ignored: asking for n 100 with quotas of 4 wrote 4 without a word."""
    path = project(tmp_path, "http://127.0.0.1:9", n=100)
    cfg = load_config(path, {"synthesize.quotas": {"sports": 4}, "generate.budget_usd": 1.0,
                             "teacher.price.input_per_mtok": 0.0, "teacher.price.output_per_mtok": 0.0})
    with pytest.raises(PotstillError):  # stopped by the unpriced budget before any call: only the warning matters
        synthesize_stage(cfg)
    assert "synthesize.quotas ask for 4 inputs in all; synthesize.n (100) is not used" in capsys.readouterr().err


def test_a_seed_near_a_held_out_test_input_is_said(tmp_path, capsys):
    """Seeds go to synthetic.jsonl as real inputs: one that is (nearly) a held-out test input would be
    trained on and then tested on. The screen kept synthetic inputs from the test inputs, not seeds."""
    with LiveServer(writer_app("good", Counter())) as srv:
        cfg_path = project(tmp_path, srv.url)
        synthesize_stage(load_config(cfg_path))
        assert "seeds are near" not in capsys.readouterr().err
        with (tmp_path / "test.jsonl").open("a") as f:
            f.write(json.dumps({"input": SEEDS[1] + "!"}) + "\n")
        synthesize_stage(load_config(cfg_path), force=True)
    said = " ".join(capsys.readouterr().err.split())
    assert "1 of 3 seeds are near an input of synthesize.test_inputs" in said and "the first: id" in said
