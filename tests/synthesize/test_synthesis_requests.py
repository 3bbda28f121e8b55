"""What a synthesis request asks of the teacher, against a loopback teacher on 127.0.0.1 that honours
a request's constraints as OpenAI and vLLM do: ``tool_choice: required`` gets a tool call back
(content null), a ``response_format`` json_schema a JSON object, anything else an <input> block."""

from __future__ import annotations

import json
import random
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from potstill.config import load_config
from potstill.pipeline import SYNTHESIZE
from potstill.records import Record
from potstill.synthesize import Slot, prompt
from potstill.synthesize.stage import synthesis_teacher, synthesize_stage
from tests.helpers.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}},
         {"type": "function", "function": {"name": "set_timer", "description": "Start a countdown timer.",
                                           "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}},
                                                          "required": ["minutes"]}}}]
SCHEMA = {"type": "object", "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
          "required": ["vendor", "total"], "additionalProperties": False}
TOOLS_TASK = {"type": "tools", "instruction": "Call the one tool the user's request needs.", "tools": TOOLS}
EXTRACTION_TASK = {"type": "extraction", "instruction": "Extract vendor and total as JSON.", "json_schema": SCHEMA}


def compliant_app(bodies: list[dict[str, Any]], refuse: str | None = None) -> FastAPI:
    """``refuse``: a cell whose requests get OpenAI's ``message.refusal`` (content null)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        bodies.append(body)
        tag = re.search(r"\(request (\S+)#(\d+)\)", body["messages"][-1]["content"])
        msg: dict[str, Any] = {"role": "assistant"}
        finish = "stop"
        if refuse and tag and tag.group(1) == refuse:
            msg.update(content=None, refusal="I can't help with that.")
        elif body.get("tool_choice") == "required" and body.get("tools"):
            msg.update(content=None, tool_calls=[{"id": "call_1", "type": "function", "function": {
                "name": body["tools"][0]["function"]["name"], "arguments": '{"city": "Rome"}'}}])
            finish = "tool_calls"
        elif (body.get("response_format") or {}).get("type") == "json_schema":
            msg["content"] = json.dumps({"vendor": "ACME", "total": 12.5})
        else:
            rng = random.Random(tag.group(0) if tag else "")
            words = " ".join(f"{rng.choice(['alpha', 'bravo', 'delta', 'kilo', 'lima'])}{rng.randrange(1000)}"
                             for _ in range(20))
            msg["content"] = f"<input>Please handle this: {words}.</input>"
        n = body.get("n", 1)
        return {"id": "c", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": i, "message": msg, "finish_reason": finish} for i in range(n)],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40 * n, "total_tokens": 100 + 40 * n}}

    return app


def project(tmp: Path, url: str, task: dict[str, Any], teacher: dict[str, Any] | None = None,
            generate: dict[str, Any] | None = None, **synth: Any) -> Path:
    cfg = {"run_dir": "run", "task": task,
           "teacher": {"type": "openai", "model": "writer-1", "base_url": url + "/v1", "api_key_env": "",
                       "max_retries": 0, "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}, **(teacher or {})},
           "generate": generate or {}, "synthesize": {"n": 4, "max_rounds": 2, **synth}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "potstill.yaml"


@pytest.mark.parametrize("task, teacher", [(TOOLS_TASK, {}), (EXTRACTION_TASK, {"structured_outputs": "on"})],
                         ids=["tools", "extraction-structured"])
def test_a_tools_or_structured_task_gets_inputs_not_its_own_calls_or_json(tmp_path, task, teacher):
    """The synthesis request carried the task's tools (a call required) or its json_schema response
    format, so a compliant teacher answered a call or a JSON object and the stage always failed with
    "no usable input"; the tools and the schema are described in the prompt's text instead."""
    bodies: list[dict[str, Any]] = []
    with LiveServer(compliant_app(bodies)) as srv:
        synthesize_stage(load_config(project(tmp_path, srv.url, task, teacher)))
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["quotas_met"] and card["written"] == 4
    assert bodies and not any({"tools", "tool_choice", "parallel_tool_calls", "response_format"} & set(b) for b in bodies)
    text = bodies[0]["messages"][-1]["content"]
    assert ("get_weather" in text) if task["type"] == "tools" else ('"vendor"' in text)


GRAMMAR_TASK = {"type": "freetext", "instruction": "Answer yes or no.", "grammar": 'root ::= "yes" | "no"'}


@pytest.mark.parametrize("kind, task", [("anthropic", TOOLS_TASK), ("anthropic", EXTRACTION_TASK), ("local", GRAMMAR_TASK)],
                         ids=["anthropic-tools", "anthropic-extraction-structured", "local-grammar-structured"])
def test_anthropic_and_local_synthesis_requests_carry_no_tools_or_format(tmp_path, kind, task):
    """The Anthropic and local teachers build their requests through the same task_tools/structured
    path as the OpenAI one (a local teacher decodes under a free-text task's grammar when
    structured_outputs is on and it samples greedily, which would hold it to "yes" or "no"; above
    temperature 0 it cannot, and synthesize was refused outright). A request is built, not sent:
    the local model is never loaded."""
    so = "off" if task["type"] == "tools" else "on"
    model = str(tmp_path / "model") if kind == "local" else "claude-haiku-4-5-20251001"
    cfg = load_config(project(tmp_path, "http://127.0.0.1:9", task, {"type": kind, "model": model, "structured_outputs": so},
                                  temperature=0))
    teacher, _ = synthesis_teacher(cfg)
    req = teacher.request(Record(messages=prompt(cfg.task, Slot("all", 0, None, None, None, None, []))))
    assert not {"tools", "tool_choice", "response_format", "output_config", "json_schema"} & set(req), sorted(req)


def test_a_refused_cell_is_rejections_and_the_stage_ends(tmp_path, capsys):
    """Refusals counted as failed calls: the stage stopped with "Rerun to retry them", but the ledger
    never sends a refused request again (unless generate.retry_refusals), so every rerun sent nothing
    and failed the same way. They are rejections now: what was kept is written, the quotas unmet."""
    bodies: list[dict[str, Any]] = []
    task = {"type": "classification", "labels": ["sports", "tech", "politics"], "instruction": "Topic."}
    with LiveServer(compliant_app(bodies, refuse="politics")) as srv:
        cfg = load_config(project(tmp_path, srv.url, task, n=6))
        synthesize_stage(cfg)
        sent = len(bodies)
        synthesize_stage(cfg)  # done: nothing asked again
    assert len(bodies) == sent == 8  # 6 in round one, then politics' 2 again in round two
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["rejected_by_reason"] == {"teacher refused": 4} and card["written"] == 4 and not card["quotas_met"]
    assert card["cells"]["politics"]["kept"] == 0
    assert "I can't help with that." in card["rejected_examples"][0]["text"]
    said = " ".join(capsys.readouterr().err.split())
    assert "the teacher refused 4 requests" in said and "generate.retry_refusals" in said and "QUOTAS NOT MET" in said


def test_generate_n_does_not_multiply_synthesis_requests(tmp_path):
    """generate.n (samples voted on for a label) went into every synthesis request: each asked and paid
    for n inputs and kept one."""
    bodies: list[dict[str, Any]] = []
    task = {"type": "classification", "labels": ["sports", "tech"], "instruction": "Topic."}
    with LiveServer(compliant_app(bodies)) as srv:
        synthesize_stage(load_config(project(tmp_path, srv.url, task, generate={"n": 5}, n=4)))
    assert len(bodies) == 4 and all(b.get("n", 1) == 1 for b in bodies)
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    # 100 prompt + 40 completion tokens a request at $1 and $4 per Mtok: $0.00026 each.
    assert card["written"] == 4 and card["cost_usd_this_run"] == pytest.approx(4 * (100 * 1.0 + 40 * 4.0) / 1e6)


@pytest.mark.parametrize("synth, said", [
    ({"quotas": {"sports": -3, "tech": 2}}, "synthesize.quotas.sports: Input should be greater than or equal to 0"),
    ({"cells": ["sports", "sports", "tech"]}, "synthesize.cells: cell 'sports' is named twice"),
])
def test_a_negative_quota_or_a_cell_named_twice_is_one_line(tmp_path, synth, said):
    """A negative quota was accepted (the card reported it, "quotas met"), and cells [sports, sports,
    tech] with n 9 split n into two cells and wrote 6 under "quotas met"."""
    task = {"type": "classification", "labels": ["sports", "tech"], "instruction": "Topic."}
    project(tmp_path, "http://127.0.0.1:9", task, n=9, **synth)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    p = subprocess.run([sys.executable, "-m", "potstill.cli", "synthesize", "-c", "potstill.yaml"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and said in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [
    ("generate.n", 5), ("generate.tool_rounds", 2),
    # Replaced in every synthesis request by synthesize.temperature / max_tokens, no logprobs, no format.
    ("teacher.temperature", 0.7), ("teacher.max_tokens", 64), ("teacher.logprobs", 5),
    ("teacher.structured_outputs", "on"),
    # What a call costs is the ledger's record of it, as for generate; the terms go to the dataset card.
    ("teacher.price.output_per_mtok", 8.0), ("teacher.terms", "no competing models"),
])
def test_a_setting_synthesis_requests_do_not_carry_leaves_synthesize_up_to_date(tmp_path, key, value):
    """generate.n (no longer in a synthesis request) and the teacher's own sampling settings (replaced
    by synthesize's) were in synthesize's fingerprint: changing one reran the stage, whose new card
    (0 calls this run) then reran curate."""
    bodies: list[dict[str, Any]] = []
    task = {"type": "classification", "labels": ["sports", "tech"], "instruction": "Topic."}
    with LiveServer(compliant_app(bodies)) as srv:
        path = project(tmp_path, srv.url, task, n=4)
        synthesize_stage(load_config(path))
        cfg = yaml.safe_load(path.read_text())
        section, *rest = key.split(".")
        node = cfg.setdefault(section, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
        path.write_text(yaml.safe_dump(cfg))
        again = synthesize_stage(load_config(path))
    assert again["skipped"] and len(bodies) == 4
    # What a synthesis request does carry still counts.
    cfg["synthesize"]["temperature"] = 0.3
    path.write_text(yaml.safe_dump(cfg))
    assert not SYNTHESIZE.up_to_date(load_config(path))



def _unquoted(task: Any, sl: Slot, completion: bool = False) -> list[dict[str, str]]:
    """The synthesis prompt as potstill wrote it up to 2026-12-06: labels joined by ", " as written."""
    msgs = prompt(task, sl, completion)
    for lab in task.labels:
        msgs = [{**m, "content": m["content"].replace(json.dumps(lab), lab)} for m in msgs]
    return msgs


def test_answers_cached_under_the_earlier_unquoted_labels_are_not_paid_again(tmp_path, monkeypatch):
    """Quoting the labels (30d7322) gave every classification synthesis request a new ledger key: a
    finished synthesize, run again after the upgrade, asked and paid for every request a second time
    and replaced synthetic.jsonl with new inputs. Where no label holds a comma the earlier words
    meant the same, and their answers are used."""
    import potstill.synthesize.stage as stage

    bodies: list[dict[str, Any]] = []
    task = {"type": "classification", "labels": ["sports", "tech"], "instruction": "Topic."}
    with LiveServer(compliant_app(bodies)) as srv:
        cfg = load_config(project(tmp_path, srv.url, task, n=4))
        with monkeypatch.context() as m:
            m.setattr(stage, "prompt", _unquoted)
            synthesize_stage(cfg)
        assert len(bodies) == 4 and "Possible labels: sports, tech." in bodies[0]["messages"][-1]["content"]
        before = (tmp_path / "run" / "synthetic.jsonl").read_text()
        again = synthesize_stage(cfg, force=True)
    assert len(bodies) == 4 and again["calls_this_run"] == 0
    assert (tmp_path / "run" / "synthetic.jsonl").read_text() == before


def test_a_label_holding_a_comma_has_no_earlier_prompt(tmp_path):
    """"crash, bug" read as two labels in the earlier words: their answers are not to the same request."""
    from potstill.synthesize import former_prompt

    task = {"type": "classification", "labels": ["crash, bug", "ok"], "instruction": "Topic."}
    cfg = load_config(project(tmp_path, "http://127.0.0.1:9", task))
    sl = Slot("ok", 0, None, None, None, None, [])
    assert former_prompt(cfg.task, sl) is None
    assert former_prompt(cfg.task.model_copy(update={"labels": ["crash", "ok"]}), sl) == _unquoted(
        cfg.task.model_copy(update={"labels": ["crash", "ok"]}), sl)
