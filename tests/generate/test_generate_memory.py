"""`potstill generate` holds its inputs and one hash each, not every request, answer and record copy.

Found by a review: generate built every request, kept every answer and wrote a deep copy of every
record at the end, ~4.3 KB an input beyond the inputs (818 MB of RSS at 100k inputs, ~4.5 GB
projected at a million; benchmarks/generate_memory.json). Python's own allocations (tracemalloc)
measure it here, with no timing: the growth in peak between 1,000 and 4,000 inputs, per input.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import yaml

from potstill.config import load_config
from potstill.generate.stage import generate_stage
from potstill.records import read_records

LABELS = ["sports", "tech", "politics", "business", "film"]


def _project(tmp: Path, n: int) -> Path:
    """``n`` inputs of ~300 characters and a replay teacher's recording of an answer to each (an
    in-process teacher: no server, no timing)."""
    tmp.mkdir()
    with open(tmp / "inputs.jsonl", "w") as f, open(tmp / "replay.jsonl", "w") as g:
        for i in range(n):
            text = f"ticket {i}: " + " ".join(f"word{(i * 7 + k) % 997}" for k in range(40))
            f.write(json.dumps({"id": f"r{i}", "input": text}) + "\n")
            g.write(json.dumps({"messages": [{"role": "user", "content": text},
                                             {"role": "assistant", "content": LABELS[i % 5]}]}) + "\n")
    cfg = {"run_dir": str(tmp / "run"), "data": {"inputs": str(tmp / "inputs.jsonl")},
           "task": {"type": "classification", "labels": LABELS, "instruction": "Topic?"},
           "teacher": {"type": "replay", "replay_path": str(tmp / "replay.jsonl"), "max_tokens": 4}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "potstill.yaml"


def _peak(cfg_path: Path) -> int:
    cfg = load_config(cfg_path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        generate_stage(cfg)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_memory_per_input_is_the_input_and_a_hash(tmp_path):
    _peak(_project(tmp_path / "warm", 50))  # what the first run loads once (modules, the console)
    small, large = _project(tmp_path / "small", 1000), _project(tmp_path / "large", 4000)
    per_input = (_peak(large) - _peak(small)) / 3000
    out = read_records(tmp_path / "large" / "run" / "teacher.jsonl")
    assert len(out) == 4000 and out[-1].output == LABELS[3999 % 5] and out[-1].id == "r3999"
    # Measured: 4,429 bytes an input before, 2,028 after, nearly all of it the parsed input records
    # (load_inputs reads the file whole) and the replay teacher's recording of each; the rest is
    # the input's hash (~150 bytes with the plan's set).
    assert per_input < 3000, f"generate grew {per_input:.0f} bytes an input"
