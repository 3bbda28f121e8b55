"""evaluate's untrained student, asked with a longer prompt than the trained one, on inputs near the context.

Found by a review: evaluate set aside the inputs longer than the trained student's context, then asked
the untrained student the rest with its own prompt, which for a tools task spells out every tool's
schema (``untrained_task``); a GPT-2 student (learned positions) failed there with an IndexError
traceback. Real parts: a tiny GPT-2 built from a config, the run directory on disk, the real stage."""

import json
import shutil

from potstill.config import load_config
from potstill.evaluate.stage import evaluate_stage
from tests.serve.test_context import gpt2_dir
from tests.synthesize.test_synthesis_requests import TOOLS_TASK


def test_an_untrained_prompt_past_the_context_leaves_its_row_out_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    student = gpt2_dir(tmp_path / "gpt2", positions=256)
    shutil.copytree(student, run / "student")
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Rome"}})
    # Word-level tiny tokenizer, a token a word: 3 words fit both prompts; 90 fit the trained prompt
    # (~100 tokens + 16 to answer) and not the untrained one (the two tools' schemas add ~170).
    rows = [
        {"id": f"s{i}", "input": f"weather in Rome {i}", "output": call} for i in range(4)] + [
        {"id": f"l{i}", "input": " ".join(["weather"] * 90) + f" {i}", "output": call} for i in range(2)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(overrides={"run_dir": str(run), "task": {**TOOLS_TASK, "max_output_tokens": 16},
                                 "student": {"model": str(student), "max_length": 256},
                                 "evaluate": {"latency_samples": 2, "batch_size": 2},
                                 "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n_test"] == 6 and ev["n_too_long"] == 0  # the trained student reads them all
    assert "untrained student" not in ev["models"] and "untrained student" not in ev["metrics"]
    err = " ".join(capsys.readouterr().err.split())
    assert ("evaluate: the untrained student is left out: 2 of 6 test inputs are longer than its context as it is "
            "asked them (record l0:") in err
    assert "its instruction spells out every tool's schema" in err
