"""`potstill run`: every stage in order, each skipped when its inputs and settings are unchanged.

The five stages are declared here, once each, in the order they run: what config they read, what
artifacts they read and write (names in the run directory), and where their body lives. The
fingerprint, the skip-if-done check, each command's flags and the run's saved potstill.yaml all
derive from these declarations (``potstill.stage``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from potstill.config import Config
from potstill.records import write_json
from potstill.rundir import RunDir
from potstill.stage import Stage, check_saved_config, held_run

# How the teacher is driven, not what it answers: a changed rate limit or budget reruns nothing
# (answers are cached in the ledger either way). generate.n and every other generate field count.
_GENERATE_TUNES = ("generate.rpm", "generate.tpm", "generate.budget_usd", "generate.engine", "generate.ray_workers",
                   "generate.ray_gpus_per_worker", "generate.ray_endpoints", "generate.prices", "generate.batch_price",
                   "generate.batch_poll_s", "generate.batch_max_requests", "generate.batch_resubmits")

# What the teacher asks and answers is unchanged by these: each call's cost is the ledger's record
# of it (teacher.price, like generate.prices, prices new calls and the budget), and its terms of
# use go to the dataset card (curate).
_TEACHER_BILLING = ("teacher.price", "teacher.terms")

# The inputs as pilot and generate read them; data.source and data.license are the card's (curate).
_INPUTS = ("data.inputs", "data.columns", "data.label_names", "data.limit", "data.max_unknown_gold")

# How an API teacher is reached: no answer, and no local teacher's timing, depends on these.
_TEACHER_TRANSPORT = ("teacher.base_url", "teacher.api_key_env", "teacher.concurrency", "teacher.timeout_s",
                      "teacher.max_retries", "teacher.terms")

# An API judge (evaluate.judge) runs on the teacher engine under generate's limits, budget and
# price table: how it is asked; its verdicts are cached in the ledger either way.
_JUDGE_ENGINE = ("generate.rpm", "generate.tpm", "generate.budget_usd", "generate.prices")

# tracking: where a finished train or evaluate is logged, never what it writes.
# Train's preflight compares the label tokens under the teacher's prompt: it can refuse, not change, a run.
_TRAIN_PREFLIGHT = ("teacher.type", "teacher.model", "teacher.prompt_format", "teacher.answer_prefix")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pilot", "Compare the untrained student with the teacher on ~100 inputs, before any training.",
          reads=("task", *_INPUTS, "teacher", "student", "pilot", "generate", "evaluate.batch_size", "evaluate.engine",
                 "evaluate.dtype", "evaluate.recheck_margin", "evaluate.quantization", "evaluate.latency_samples",
                 "evaluate.compile", "evaluate.draft_tokens", "evaluate.guided_json"),
          # teacher.price reprices the teacher's calls in pilot.json as in evaluate: a new one reruns the pilot.
          # Its usd_per_hour prices a local teacher timed beside the student, which only evaluate does.
          tunes=(*_GENERATE_TUNES, "teacher.price.usd_per_hour", "teacher.terms"), inputs=(), outputs=("pilot.json",),
          body="potstill.pilot.stage:pilot_body"),
    # `potstill generate` and `potstill run` run preflight's generate checks first (a projected cost
    # over the budget is refused before a request is sent); train runs its checks inside its body.
    Stage("generate", "Run the teacher over every input (cached in the ledger; a rerun sends nothing twice).",
          reads=("task", *_INPUTS, "teacher", "generate"), tunes=(*_GENERATE_TUNES, *_TEACHER_BILLING), inputs=(),
          outputs=("teacher.jsonl",),
          body="potstill.generate.stage:generate_body", preflight=True),
    # review.sqlite is an input: a new review decision reruns curate (and so train and evaluate). It is
    # migrated before it is hashed: hashed first and migrated by the body, the first curate after an
    # upgrade recorded the old file's digest, and the next one ran curate again for nothing.
    # The dataset card names the inputs, their licence and the teacher.
    Stage("curate", "Validate and deduplicate teacher outputs, split train/val/test, write the dataset card.",
          reads=("task", "curate", "data.inputs", "data.source", "data.license", "teacher.type", "teacher.model",
                 "teacher.terms"),
          inputs=("teacher.jsonl", "review.sqlite", "synthesize.json"),
          outputs=("train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl", "card.json", "card.md"),
          body="potstill.curate.stage:curate_body", before="potstill.review.store:migrate_in"),
    Stage("train", "Fine-tune the student on the teacher's outputs (full, LoRA or QLoRA; SFT or KD from labels, top-k or logits).",
          # student.usd_per_hour is a cost assumption of pilot and evaluate: a new one retrains nothing.
          # export.imatrix_inputs: the importance matrix kept beside the student for the GGUF mixes; a new
          # count retrains nothing (export measures again where the kept one used another count).
          reads=("task", "student.model", "student.num_layers", "student.max_length", "train", *_TRAIN_PREFLIGHT,
                 "tracking", "export.imatrix_inputs"), tunes=(*_TRAIN_PREFLIGHT, "tracking", "export.imatrix_inputs"),
          inputs=("train.jsonl", "val.jsonl"),
          # student.ckpt/: its checkpoints, and after the last step the record of the finished training
          # (train.checkpoint), so a kill in the calibration after it does not cost the training.
          outputs=("student", "metrics.jsonl", "train.json"), body="potstill.train.stage:train_body", tracked=True,
          scratch=("student.ckpt",)),
    # Evaluate also sums the teacher's spend from the ledger (calls.sqlite); the ledger is an
    # append-only log that serving keeps writing, not an artifact, so it is not an input.
    # A local teacher is loaded and timed beside the student (evaluate.teacher_latency_samples): the
    # teacher fields that shape its calls count; those of an API client's transport do not.
    Stage("evaluate", "Untrained student vs teacher vs trained student on the test split, with a go/no-go verdict.",
          reads=("task", "student", "evaluate", "report", "tracking", "teacher", "serve.escalate_truncated", *_JUDGE_ENGINE),
          tunes=("tracking", *_TEACHER_TRANSPORT, *_JUDGE_ENGINE),
          inputs=("test.jsonl", "student", "train.json"),
          outputs=("eval.json", "report.html"), body="potstill.evaluate.stage:evaluate_body", tracked=True),
)}


def run_all(cfg: Config, skip_pilot: bool = False, force: bool = False) -> dict[str, Any]:
    """Run the stages in order; write each stage's wall time to timings.json in the run directory."""
    results, timings = {}, {}
    check_saved_config(Path(cfg.run_dir))  # before the preflight loads a model, not at the pilot
    # Held from the first stage to the last: another command cannot slip in between two stages.
    with held_run(cfg):
        # What `potstill generate` refuses before a request is sent (a projected cost over the
        # budget), `run` refuses before the pilot's; a stage that has nothing left to do is not checked.
        for stage in STAGES.values():
            if stage.preflight and (force or not stage.up_to_date(cfg)):
                from potstill.preflight import require

                require(cfg, stage.name)
        for name, stage in STAGES.items():
            if name == "pilot" and skip_pilot:
                continue
            t0 = time.perf_counter()
            results[name] = stage.run(cfg, force)
            timings[name] = {"seconds": round(time.perf_counter() - t0, 2),
                             "skipped": results[name].get("skipped", False)}
        write_json(RunDir(cfg.run_dir) / "timings.json", timings)
    return {"results": results, "timings": timings}


# Settings no synthesis request carries (synthesize.stage.synthesis_teacher, synthesis_settings): each
# asks for one sample (generate.n votes on labels; a synthesis request keeps one input), under
# synthesize.temperature and max_tokens, without logprobs or a response format; tool_rounds is
# generate's. A changed one would rerun synthesize for the same requests, and its new card (0 calls
# this run) would rerun curate.
_NOT_SYNTHESIS = ("generate.n", "generate.tool_rounds", "teacher.temperature", "teacher.max_tokens",
                  "teacher.logprobs", "teacher.structured_outputs")

# Not one of `potstill run`'s stages: a user with few real inputs runs it first, then points
# data.inputs at RUN/synthetic.jsonl. test.jsonl, when a run already has one, is kept away from.
SYNTHESIZE = Stage(
    "synthesize", "Have the teacher write new inputs from the task, the labels and a few seeds (before generate).",
    reads=("task", "teacher", "generate", "synthesize"), tunes=(*_GENERATE_TUNES, *_TEACHER_BILLING, *_NOT_SYNTHESIS),
    inputs=("test.jsonl",),
    outputs=("synthetic.jsonl", "synthesize.json"), body="potstill.synthesize.stage:synthesize_body")
