"""Student export on the quickstart run: sizes, export time, and how faithful each export is.

Measured through transformers (the llama.cpp check is benchmarks/export.py). The numbers in
export_transformers.json were taken with potstill's own GGUF writer, before llama.cpp's
converter replaced it.

Copies a finished quickstart run (never touches the source), then:

- exports ``hf`` (merged safetensors, f32) and ``gguf`` (f16 and q8_0 + Modelfiles), timing each;
- loads each export back through transformers (``from_pretrained(dir)``, ``gguf_file=``), with
  the GGUF's own tokenizer, timing the load;
- predicts the whole test split with ``potstill.students.predict`` for the PyTorch student and for
  each export, and reports agreement (share of identical predicted labels), the largest label
  probability change, accuracy against the gold labels, and the largest absolute logit
  difference over every position and vocabulary entry of a few prompts;
- checks that the GGUF tokenizer gives the same ids as the student's on every test prompt.

    POTSTILL_CACHE=... python benchmarks/export_transformers.py --run RUN --out benchmarks/export_transformers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from potstill.config import load_config
from potstill.export import export
from potstill.models.loading import LM, load_lm
from potstill.records import read_records
from potstill.students import predict, student_format
from potstill.tasks import get_task

N_LOGIT_PROMPTS = 5


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_gguf(path: Path) -> LM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LM(model=model, tokenizer=tok, name=path.name, identity=path.name, device=torch.device("cpu"))


def prompts(lm: LM, task, records) -> list[str]:
    fmt = student_format(lm, task)
    """The prompt text ``predict`` scores (the chat template with the task instruction)."""
    return [fmt.query(lm.tokenizer, r.messages) for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished quickstart run (copied, never modified)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/export_transformers.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="potstill-export-bench-"))
    run = work / "run"
    shutil.copytree(args.run, run)
    cfg = load_config(run / "potstill.yaml")
    task = get_task(cfg.task)
    test = read_records(run / "test.jsonl")

    exports: dict[str, dict] = {}
    t0 = time.perf_counter()
    export(cfg, "hf")
    exports["hf"] = {"export_s": round(time.perf_counter() - t0, 2), "path": "export/hf",
                     "bytes": size(run / "export" / "hf" / "model.safetensors")}
    t0 = time.perf_counter()
    export(cfg, "gguf")
    gguf_total = time.perf_counter() - t0
    written = json.loads((run / "export" / "gguf" / "export.json").read_text())["files"]
    for f in written:
        exports[f"gguf-{f['type']}"] = {"export_s": f["seconds"], "path": f"export/gguf/{f['file']}", "bytes": f["bytes"],
                                        "tensor_types": f["tensor_types"], "pre_tokenizer": f["pre_tokenizer"]}

    t0 = time.perf_counter()
    student = load_lm(str(run / "student"), device="cpu", dtype=torch.float32)
    student_load = time.perf_counter() - t0
    base = predict(student, task, test, batch_size=8, desc="student (pytorch)")
    gold = [task.gold(r) for r in test]

    def accuracy(labels: list) -> float:
        pairs = [(p, g) for p, g in zip(labels, gold) if g is not None]
        return round(sum(p == g for p, g in pairs) / len(pairs), 4)

    student_ids = [student.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts(student, task, test)]
    with torch.no_grad():
        ref_logits = [student.model(torch.tensor([ids])).logits[0] for ids in student_ids[:N_LOGIT_PROMPTS]]

    results = {"pytorch": {"bytes": size(run / "student" / "model.safetensors"), "load_s": round(student_load, 2),
                           "predict_s": round(base.wall_s, 1), "gold_accuracy": accuracy(base.parsed)}}
    for name, info in exports.items():
        t0 = time.perf_counter()
        lm = load_lm(str(run / info["path"]), device="cpu", dtype=torch.float32) if name == "hf" \
            else load_gguf(run / info["path"])
        info["load_s"] = round(time.perf_counter() - t0, 2)
        ids = [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts(lm, task, test)]
        info["same_token_ids"] = round(sum(a == b for a, b in zip(ids, student_ids)) / len(ids), 4)
        p = predict(lm, task, test, batch_size=8, desc=name)
        info["predict_s"] = round(p.wall_s, 1)
        info["agreement_with_pytorch"] = round(sum(a == b for a, b in zip(p.parsed, base.parsed)) / len(test), 4)
        info["disagreements"] = sum(a != b for a, b in zip(p.parsed, base.parsed))
        info["max_abs_label_prob_diff"] = round(max(
            abs(a[k] - b[k]) for a, b in zip(p.label_probs, base.label_probs) for k in task.labels), 6)
        info["gold_accuracy"] = accuracy(p.parsed)
        with torch.no_grad():
            diffs = [float((lm.model(torch.tensor([i])).logits[0] - r).abs().max())
                     for i, r in zip(student_ids[:N_LOGIT_PROMPTS], ref_logits)]
        info["max_abs_logit_diff"] = round(max(diffs), 5)
        info["logit_scale"] = round(max(float(r.abs().max()) for r in ref_logits), 3)
        results[name] = info
        del lm

    out = {
        "what": "potstill export of the quickstart student (SmolLM2-135M, full fine-tune, f32) to hf and GGUF; "
                "each export loaded back through transformers and compared with the PyTorch student on the "
                f"whole test split ({len(test)} BBC News articles, 5 labels)",
        "command": "POTSTILL_CACHE=<quickstart cache> python benchmarks/export_transformers.py --run <quickstart run>",
        "test_n": len(test),
        "logit_prompts": N_LOGIT_PROMPTS,
        "gguf_export_total_s": round(gguf_total, 2),
        "results": results,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "shared": "2 CPU cores shared with 3 other developers' jobs: "
                    "times are indicative only"},
        "notes": [
            "agreement_with_pytorch: share of test articles whose predicted label equals the PyTorch student's",
            "max_abs_logit_diff: over every position and vocabulary entry of the first "
            f"{N_LOGIT_PROMPTS} test prompts, tokenized by the student's tokenizer",
            "same_token_ids: share of test prompts the export's own tokenizer turns into the student's ids",
            "predictions use the export's own tokenizer (the GGUF's, rebuilt by transformers)",
            "llama.cpp / Ollama were not run: no llama-cpp-python wheel is available offline",
        ],
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
