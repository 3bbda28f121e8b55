"""A rerun of synthesize after curate split its inputs writes them again, as they were: synthesize,
generate, curate and synthesize again against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter

import yaml
from fastapi import FastAPI

from potstill.config import load_config
from potstill.curate.split import rank
from potstill.curate.stage import curate_stage
from potstill.generate.stage import generate_stage
from potstill.records import read_records
from potstill.synthesize.stage import synthesize_stage
from tests.helpers.live_server import LiveServer

# Two siblings at Jaccard 0.79: not duplicates (0.8), both kept; well above the test bar (0.5).
A = "The central bank raised interest rates by half a point on Tuesday, citing stubborn inflation in services."
B = "The central bank raised interest rates by half a point on Tuesday, citing stubborn inflation in wages and rents."


def writer(seen: Counter) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        plan = re.search(r"\(request (\w+)#(\d+)\)", body["messages"][-1]["content"])
        if plan is None:  # generate's label request
            text = "business"
        else:
            cell, k = plan.group(1), int(plan.group(2))
            seen[f"{cell}#{k}"] += 1
            rng = random.Random(f"{cell}{k}")
            text = "<input>" + ([A, B][k] if cell == "business" and k < 2 else " ".join(
                rng.choice("alpha beta gamma delta omega sigma kappa lambda theta".split()) + str(rng.randrange(999))
                for _ in range(15))) + "</input>"
        return {"id": "w", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 50, "total_tokens": 250}}

    return app


def test_a_rerun_keeps_an_input_whose_sibling_curate_put_in_test(tmp_path):
    """Test inputs an earlier synthesize wrote were screened at the test bar (0.5) on the rerun, so B,
    kept beside A at 0.79 and put in train by curate, was rejected as near a test input: the rerun
    paid for a new input and synthetic.jsonl changed. They stand at the bar they were written under."""
    seed = next(s for s in range(1000) if rank(A, s) < 0.2 and rank(B, s) >= 0.3)  # A to test, B to train
    seen: Counter = Counter()
    with LiveServer(writer(seen)) as srv:
        cfg = {"run_dir": "run", "task": {"type": "classification", "labels": ["business", "sports"],
                                          "instruction": "Topic."},
               "data": {"inputs": "run/synthetic.jsonl"},
               "teacher": {"type": "openai", "model": "writer-1", "base_url": srv.url + "/v1", "api_key_env": "",
                           "max_retries": 0, "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}},
               "curate": {"seed": seed, "val": 0.1, "test": 0.2},
               "synthesize": {"quotas": {"business": 2, "sports": 2}, "max_rounds": 3}}
        (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        c = load_config(tmp_path / "potstill.yaml")
        synthesize_stage(c)
        first = (tmp_path / "run" / "synthetic.jsonl").read_text()
        asked = sum(seen.values())
        generate_stage(c)
        curate_stage(c)
        assert A in [r.text for r in read_records(tmp_path / "run" / "test.jsonl")]
        assert B in [r.text for r in read_records(tmp_path / "run" / "train.jsonl")]
        synthesize_stage(c, force=True)
    card = json.loads((tmp_path / "run" / "synthesize.json").read_text())
    assert card["rejected_by_reason"] == {} and sum(seen.values()) == asked
    assert (tmp_path / "run" / "synthetic.jsonl").read_text() == first
