"""redistill's comparison (step 4) on inputs longer than a student's context.

Found by a review: pilot and evaluate set such inputs aside (``students.readable``), but redistill
asked both students every frozen-test and new-traffic record, so a GPT-2 student (learned
positions) failed with an IndexError traceback, after the challenger had been trained. Real parts:
tiny GPT-2 students built from a config and saved to disk, loaded as redistill loads them."""

from __future__ import annotations

import random

from potstill.config import load_config
from potstill.records import Record
from potstill.redistill import _comparison_step
from potstill.tasks import get_task
from tests.serve.test_context import gpt2_dir
from tests.test_student_context import FILLER, KEYWORDS, LABELS


def records(n: int, words: int, seed: int) -> list[Record]:
    """``n`` inputs of 2 topic words and ``words`` filler words, each with the teacher's label."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        text = rng.sample(KEYWORDS[label], 2) + [rng.choice(FILLER) for _ in range(words)]
        out.append(Record(messages=[{"role": "user", "content": " ".join(text)}], output=label))
    return out


def test_inputs_past_either_students_context_are_left_out_for_both(tmp_path, capsys):
    # The word-level tiny tokenizer: a word is a token, plus the chat template's few.
    champion, challenger = gpt2_dir(tmp_path / "champion", 128), gpt2_dir(tmp_path / "challenger", 96)
    cfg = load_config(overrides={"run_dir": str(tmp_path / "run"),
                                 "task": {"type": "classification", "labels": LABELS, "instruction": "classify"},
                                 "report": {"bootstrap_samples": 100}, "evaluate": {"batch_size": 4}})
    # frozen: 6 both read, 2 only the champion reads (~100 tokens), 3 neither (~150); new traffic: 5 + 1 neither
    sets = {"frozen test": records(6, 6, 0) + records(2, 90, 1) + records(3, 150, 2),
            "new traffic": records(1, 150, 3) + records(5, 6, 4)}

    results, left_out = _comparison_step(champion, challenger, get_task(cfg.task), sets, cfg)

    assert left_out == {"frozen test": 5, "new traffic": 1}
    for name, n in (("frozen test", 6), ("new traffic", 5)):
        m = results[name]["teacher"]
        assert m["champion"]["n"] == m["challenger"]["n"] == n
    err = " ".join(capsys.readouterr().err.split())
    assert ("redistill: 5 of 11 frozen test and 1 of 6 new traffic inputs are longer than the champion's or the "
            "challenger's context and left out of the comparison, both students alike") in err
