"""The pilot prices the teacher as evaluate does: a replay teacher's recorded traffic cost $0 to
replay, so teacher.price (usd_per_call, or a token price over the recorded tokens) is its cost per
call, and a new teacher.price reruns the pilot so pilot.json follows it."""

import json

import pytest
import yaml

from potstill.config import load_config
from potstill.pilot.stage import pilot_stage

TEXTS = ["the team won the match", "new phone software", "a vote in the election", "the film star"]


def test_the_pilot_prices_a_replay_teacher_and_follows_a_new_price(tmp_path, tiny_model):
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in TEXTS))
    (tmp_path / "recorded.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": f"about {t}"}]}) + "\n"
        for t in TEXTS))
    cfg = {"run_dir": "run", "task": {"type": "freetext", "instruction": "summarise", "max_output_tokens": 2},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": "replay", "model": "gpt-4o", "replay_path": "recorded.jsonl",
                       "price": {"usd_per_call": 0.02}},
           "student": {"model": str(tiny_model), "max_length": 64}, "pilot": {"n": len(TEXTS)},
           "evaluate": {"latency_samples": 2, "batch_size": 4}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))

    def teacher_cost() -> float:
        pilot = json.loads((tmp_path / "run" / "pilot.json").read_text())
        assert pilot["valid"] == len(TEXTS), pilot
        return pilot["models"]["teacher"]["cost_per_1k_calls_usd"]

    assert pilot_stage(load_config(tmp_path / "potstill.yaml"))["skipped"] is False
    assert teacher_cost() == pytest.approx(20.0)  # before: $0, the replay rows' recorded cost
    out = pilot_stage(load_config(tmp_path / "potstill.yaml", {"teacher.price.usd_per_call": 0.05}))
    assert out["skipped"] is False  # before: "up to date", pilot.json still at the old price
    assert teacher_cost() == pytest.approx(50.0)
    assert pilot_stage(load_config(tmp_path / "potstill.yaml", {"teacher.price.usd_per_call": 0.05}))["skipped"] is True
