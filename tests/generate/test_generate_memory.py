"""`potstill generate` holds one hash an input: not its inputs, nor every request, answer and record copy.

Found by reviews: generate built every request, kept every answer and wrote a deep copy of every
record at the end, ~4.3 KB an input beyond the inputs (818 MB of RSS at 100k inputs, ~4.5 GB
projected at a million; benchmarks/generate_memory.json); then it still read its inputs whole
(``load_inputs``), and grew 2,023 bytes an input at 40 words, 3,285 at 200. Python's own allocations
(tracemalloc) measure it here, with no timing: the growth in peak between 2,000 and 4,000 inputs,
per input (multiples of the 1,000-input window: the windows alive at once cost the same in both).
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


def _project(tmp: Path, n: int, words: int = 40) -> Path:
    """``n`` inputs of ``words`` words (~7 characters each) and a replay teacher's recording of an
    answer to each (an in-process teacher: no server, no timing)."""
    tmp.mkdir()
    with open(tmp / "inputs.jsonl", "w") as f, open(tmp / "replay.jsonl", "w") as g:
        for i in range(n):
            text = f"ticket {i}: " + " ".join(f"word{(i * 7 + k) % 997}" for k in range(words))
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


def test_memory_per_input_is_a_hash_not_the_input(tmp_path):
    _peak(_project(tmp_path / "warm", 50))  # what the first run loads once (modules, the console)
    # Inputs of 200 words (~1.6 KB of JSONL each): held, each costs several times that.
    small, large = _project(tmp_path / "small", 2000, 200), _project(tmp_path / "large", 4000, 200)
    per_input = (_peak(large) - _peak(small)) / 2000
    out = read_records(tmp_path / "large" / "run" / "teacher.jsonl")
    assert len(out) == 4000 and out[-1].output == LABELS[3999 % 5] and out[-1].id == "r3999"
    assert out[-1].text.startswith("ticket 3999: ") and len(out[-1].text.split()) == 202
    # Measured: 3,285 bytes an input while load_inputs held them (2,023 at 40 words), 513 since the file
    # is read again at each pass (517 at 40 words): the input's hash (~150 bytes with the plan's set)
    # and the replay teacher's recording of its answer.
    assert per_input < 1000, f"generate grew {per_input:.0f} bytes an input"
