"""The pilot's inputs are drawn by content, not by line: the same inputs in another order give the same
seed the same sample (as curate's split does), and pilot.json names the seed and the ids it drew.
Before, ``random.Random(seed).sample`` over positions drew other inputs from a shuffled file, and
pilot.json said nothing of which. Real parts: a replay teacher, a tiny student, the run's ledger."""

import json
import sqlite3
from pathlib import Path

import yaml

from potstill.config import load_config
from potstill.pilot.stage import pilot_stage

TEXTS = [f"{w} number {i}" for i, w in enumerate(
    "the team won the match|new phone software|a vote in the election|the film star|bank profit rose"
    "|the minister resigned|a goal in extra time|the internet went down|music festival opens|shares fell".split("|"))]


def _pilot(root: Path, texts: list[str], student: Path) -> tuple[dict, list[str]]:
    root.mkdir()
    (root / "inputs.jsonl").write_text("".join(json.dumps({"input": t}) + "\n" for t in texts))
    (root / "recorded.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": f"about {t}"}]}) + "\n"
        for t in TEXTS))
    (root / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "run", "task": {"type": "freetext", "instruction": "summarise", "max_output_tokens": 2},
        "data": {"inputs": "inputs.jsonl"}, "teacher": {"type": "replay", "replay_path": "recorded.jsonl"},
        "student": {"model": str(student), "max_length": 64}, "pilot": {"n": 3, "seed": 7},
        "evaluate": {"latency_samples": 2, "batch_size": 4}}))
    assert pilot_stage(load_config(root / "potstill.yaml"))["skipped"] is False
    with sqlite3.connect(root / "run" / "calls.sqlite") as db:
        asked = sorted(r[0] for r in db.execute("SELECT request FROM calls WHERE role='teacher' AND stage='pilot'"))
    return json.loads((root / "run" / "pilot.json").read_text()), asked


def test_the_pilot_draws_the_same_inputs_from_a_reordered_file(tmp_path, tiny_model):
    pilot, asked = _pilot(tmp_path / "a", TEXTS, tiny_model)
    again, asked_again = _pilot(tmp_path / "b", TEXTS[::-1], tiny_model)
    assert len(asked) == 3 and asked == asked_again  # the teacher was asked the same three inputs
    assert pilot["seed"] == 7 and len(pilot["ids"]) == pilot["n"] == 3
    assert again["ids"] == pilot["ids"]
