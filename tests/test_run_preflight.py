"""`potstill run` refuses what `potstill generate` refuses before a request is sent (preflight's
generate checks: a projected cost over generate.budget_usd): it ran them only in the generate
command, so `run` paid the pilot's calls and then generate's until the budget stopped it part-way."""

import json

import yaml

from tests.helpers.chat_server import ChatServer
from tests.test_pipeline import potstill, write_inputs


def test_run_refuses_a_projected_cost_over_the_budget_before_any_teacher_call(tmp_path, tiny_model, tiny_model_b):
    write_inputs(tmp_path / "inputs.jsonl", 4)
    env = {"TEACHER_KEY": "unused"}
    with ChatServer(str(tiny_model_b)) as teacher:
        cfg = {
            "run_dir": "run",
            "task": {"type": "freetext", "instruction": "summarise the text"},
            "data": {"inputs": "inputs.jsonl"},
            "teacher": {"type": "openai", "model": "tiny", "base_url": teacher.base_url, "api_key_env": "TEACHER_KEY",
                        # about 45 tokens a request at $15,000 per million: ~$0.6 each, so the pilot's 3
                        # fit in the budget and generate's 12 do not
                        "max_tokens": 16, "price": {"input_per_mtok": 15000.0, "output_per_mtok": 15000.0}},
            "student": {"model": str(tiny_model), "max_length": 64},
            "pilot": {"n": 3},
            "curate": {"val": 2, "test": 3},
            "generate": {"budget_usd": 5.0},
        }
        (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        alone = potstill("generate", "-c", "potstill.yaml", cwd=tmp_path, env=env)
        assert alone.returncode == 2 and "preflight budget:" in alone.stderr, alone.stderr
        out = potstill("run", "-c", "potstill.yaml", cwd=tmp_path, env=env)
        assert out.returncode == 2, out.stderr
        err = [ln for ln in out.stderr.splitlines() if ln.startswith(("error", "pilot", "generate"))]
        assert len(err) == 1 and err[0].startswith("error: preflight budget:") and "above generate.budget_usd" in err[0], err
        assert "Traceback" not in out.stderr
        assert sum(teacher.requests.values()) == 0
        assert not (tmp_path / "run").exists()  # nothing written, not even an empty run directory

        # Within the budget the run goes ahead; once generate is done, a lower budget refuses nothing
        # (nothing is left to pay for).
        cfg["teacher"]["price"] = {"input_per_mtok": 0.01, "output_per_mtok": 0.01}
        (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        ok = potstill("run", "-c", "potstill.yaml", cwd=tmp_path, env=env)
        assert ok.returncode == 0, ok.stderr
        asked = sum(teacher.requests.values())
        again = potstill("run", "-c", "potstill.yaml", "--generate.budget_usd", "0", cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr
        assert sum(teacher.requests.values()) == asked
        assert all(t["skipped"] for t in json.loads((tmp_path / "run" / "timings.json").read_text()).values())
