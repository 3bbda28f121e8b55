"""Names and messages from the user's data printed as they are: slice tags and a teacher's error text
went through rich markup, so a tag written "[en] news" printed as "tag: news" and one written "[/en]"
(or a provider's error naming a JSON path, "[/messages/1/content]") ended evaluate or the pilot in a
MarkupError traceback, after eval.json was written and before the stage was marked done."""

from __future__ import annotations

import json
import shutil
from typing import Any

import yaml
from fastapi import Header
from fastapi.responses import JSONResponse

from potstill.config import load_config
from potstill.evaluate.stage import evaluate_stage
from potstill.pilot.stage import pilot_stage
from potstill.pipeline import STAGES
from tests.helpers.chat_server import ChatServer

LABELS = ["sports", "tech", "politics"]


def test_evaluate_prints_bracketed_slice_tags_as_written(tmp_path, tiny_model, capsys):
    run = tmp_path / "run"
    run.mkdir()
    texts = ["the team won the match", "new phone software", "a vote in the election", "the film star",
             "bank profit and market shares", "the internet and computer"]
    rows = [{"input": t, "output": LABELS[i % 3], "label": LABELS[i % 3], "slice": ["[en] news" if i % 2 else "[/en]"]}
            for i, t in enumerate(texts)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, run / "student")
    cfg = load_config(overrides={
        "run_dir": str(run), "task": {"type": "classification", "labels": LABELS, "instruction": "classify"},
        "student.model": str(tiny_model), "teacher.price.usd_per_call": 0.001,
        "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False},
        "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "tag:[en] news" in text and "tag:[/en]" in text, text
    assert STAGES["evaluate"].up_to_date(cfg)
    names = [r["slice"] for r in json.loads((run / "eval.json").read_text())["slices"]]
    assert {"tag:[en] news", "tag:[/en]"} <= set(names)


class JsonPathErrorServer(ChatServer):
    """Refuses inputs that mention "phone" with a 400 naming a JSON path in brackets, as providers do."""

    def chat(self, body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
        if "phone" in str(body["messages"]):
            return JSONResponse({"error": {"message": "Invalid value at [/messages/1/content]",
                                           "type": "invalid_request_error"}}, status_code=400)
        return super().chat(body, authorization)


def test_pilot_prints_a_teacher_error_with_brackets_as_written(tmp_path, tiny_model, tiny_model_b, capsys):
    texts = ["the team won the match", "new phone software", "a vote in the election", "the film star"]
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in texts))
    with JsonPathErrorServer(str(tiny_model_b)) as srv:
        cfg = {"run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "summarise"},
               "data": {"inputs": str(tmp_path / "inputs.jsonl")},
               "teacher": {"type": "openai", "model": "tiny-teacher", "base_url": srv.base_url, "api_key_env": "",
                           "max_tokens": 4, "max_retries": 0},
               "student": {"model": str(tiny_model), "max_length": 64}, "pilot": {"n": len(texts)},
               "evaluate": {"latency_samples": 2, "batch_size": 2}}
        (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        out = pilot_stage(load_config(tmp_path / "potstill.yaml"))
    assert out["skipped"] is False
    line = [ln for ln in capsys.readouterr().err.splitlines() if "teacher calls failed" in ln]
    assert len(line) == 1 and "[/messages/1/content]" in line[0], line
