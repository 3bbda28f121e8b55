"""A JSON-extraction run on the quickstart's BBC articles, for the engine benchmark's generation part.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/extraction_run.py RUN
    potstill run -c RUN/potstill.yaml          # about 5 minutes on 2 cores
    python benchmarks/engine.py --run QUICKSTART_RUN --extract-run RUN --only extraction

Issue 17 asks for greedy generation through the int8 engine to give the fp32 engine's outputs.
The bundled student untrained answers an extraction prompt with free prose, where any two
precisions part ways within a few tokens, so that comparison says little about a distilled
extraction student. This builds one: 950 articles (headline + first sentence) whose answers come
from a fixed rule, imported as logged traffic (teacher ``replay``, no model calls), and a
student fine-tuned on 600 of them (``sft``, the top 20 of its 30 layers, 2 epochs).

The rule (the "teacher"): every run of capitalised words that does not open a sentence is a
name, every number a figure, each listed once in reading order:
``{"names": ["Apple Powerbook", "US", "Mobile PC"], "figures": ["100"]}``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from potstill.quickstart import build

INSTRUCTION = ("List the names (runs of capitalised words that do not start a sentence) and the figures "
               "in this BBC News text, as JSON: {\"names\": [...], \"figures\": [...]}.")
SCHEMA = {"type": "object", "properties": {"names": {"type": "array", "items": {"type": "string"}},
                                           "figures": {"type": "array", "items": {"type": "string"}}},
          "required": ["names", "figures"], "additionalProperties": False}
_WORD = re.compile(r"[£$]?\d[\d,.]*(?:%|bn|m|p)?|[A-Za-z][A-Za-z'&-]*|[.!?]")


def extract(text: str) -> dict[str, list[str]]:
    """The rule: names and figures of ``text``, each once, in reading order."""
    names: list[str] = []
    figures: list[str] = []
    run: list[str] = []
    start = True  # the next word opens a sentence

    def close() -> None:
        if run and " ".join(run) not in names:
            names.append(" ".join(run))
        run.clear()

    for tok in _WORD.findall(text):
        if tok in ".!?":
            close()
            start = True
            continue
        if tok[0].isdigit() or tok[0] in "£$":
            close()
            fig = tok.rstrip(".,")
            if fig not in figures:
                figures.append(fig)
        elif tok[0].isupper() and not start:
            run.append(tok)
        else:
            close()
        start = False
    close()
    return {"names": names, "figures": figures}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    run = args.run.resolve()
    cfg_path = build(run / "qs")  # the quickstart's 950 articles, read from the installed corpus
    inputs = [json.loads(line) for line in (run / "qs" / "data" / "inputs.jsonl").read_text().splitlines()]
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "inputs.jsonl").open("w") as f, (data / "traffic.jsonl").open("w") as g:
        for r in inputs:
            msgs = [{"role": "user", "content": r["input"]}]
            f.write(json.dumps({"id": r["id"], "messages": msgs}) + "\n")
            answer = json.dumps(extract(r["input"]), ensure_ascii=False)
            g.write(json.dumps({"messages": [*msgs, {"role": "assistant", "content": answer}]}) + "\n")
    student = yaml.safe_load(cfg_path.read_text())["student"]["model"]
    cfg = {
        "run_dir": ".",
        "task": {"type": "extraction", "instruction": INSTRUCTION, "json_schema": SCHEMA, "max_output_tokens": 64},
        "data": {"inputs": "data/inputs.jsonl"},
        "teacher": {"type": "replay", "replay_path": "data/traffic.jsonl", "terms": "a fixed rule (benchmarks/extraction_run.py)"},
        "student": {"model": student, "max_length": 192},
        "pilot": {"n": 20},
        "curate": {"val": 50, "test": 100, "near_dup": False, "review": False, "max_train": 600},
        "train": {"objective": "sft", "trainable_layers": 20, "epochs": 2, "lr": 2.0e-4, "batch_size": 8},
        "evaluate": {"include_untrained": False, "latency_samples": 10},
    }
    (run / "potstill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote {run / 'potstill.yaml'}: {len(inputs)} inputs; now `potstill run -c {run / 'potstill.yaml'}`")


if __name__ == "__main__":
    main()
