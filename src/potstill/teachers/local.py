"""A local transformers model as teacher (hub id, directory, GGUF file, or bundled).

For classification it scores the label set instead of generating: one forward pass per input
over the input's tokens only, with the few-shot prefix run once and its KV cache reused. The
softmax over the label logits is the teacher's soft label. Its cost is wall time at the
configured hardware price (``teacher.price.usd_per_hour``). ``teacher.engine`` picks what runs
the model (``potstill.engines``: transformers, or ctranslate2 int8 with the prefix cached once).

``teacher.calibrate`` applies contextual calibration (Zhao et al. 2021, "Calibrate Before Use"):
small few-shot models carry a strong prior towards some labels (gemma-3-270m on BBC News calls
a quarter of sports articles "business"); scoring content-free inputs ("N/A", "", "[MASK]")
measures that prior, and dividing by it removes it. On the quickstart's 900 articles this took
the teacher from 79.3% to 86.3% accuracy for three extra forward passes.

An int8 teacher (``teacher.quantization: int8``, or another engine than transformers) with a
``recheck_margin`` is re-checked on its *answer*: the label distribution after calibration and
the average over shot orders. Where that answer's top two labels are closer than the margin, the
input is scored again, under every order, by the unquantized transformers engine, whose priors
calibrate both. Re-checking each order's raw label scores instead (``engines.recheck``, right for
a single prompt) missed the flips: the priors and the average move the margin, so an input can
be far from a tie in every order and near one in the answer (int8 quickstart teacher, 250 test
articles: 96.4% of the unquantized teacher's labels with 39% of the orders re-checked, as
without any re-check; ``benchmarks/teacher_int8.json``). On its answer: 100%, with 31-33% of the
articles re-checked (``benchmarks/teacher_int8_answer_recheck.json``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from potstill.config import GenerateConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_obj
from potstill.engines import Engine, section_engine
from potstill.engines.base import generate_takes, past_context
from potstill.engines.recheck import rechecking, with_recheck_time
from potstill.models.loading import _pick_device, model_identity, resolve
from potstill.models.prompting import PromptFormat, label_token_ids
from potstill.models.scoring import Scored
from potstill.records import read_records
from potstill.serve.formats import format_schema
from potstill.tasks import Task
from potstill.teachers.base import Delta, OnDelta, OnResult, Response, RunStats, Teacher


def choose_shots(path: str, k: int, seed: int, labels: list[str]) -> list[tuple[str, str]]:
    """k shots from a labelled file; for classification, round-robin over labels so each is shown."""
    if k == 0:
        return []
    recs = [r for r in read_records(path) if (r.label or r.output)]
    rng = random.Random(seed)
    rng.shuffle(recs)
    if labels:
        by_label: dict[str, list] = {lab: [r for r in recs if r.label == lab] for lab in labels}
        picked = []
        while len(picked) < k and any(by_label.values()):
            for lab in labels:
                if by_label[lab] and len(picked) < k:
                    picked.append(by_label[lab].pop())
        rng.shuffle(picked)
    else:
        picked = recs[:k]
    if len(picked) < k:
        raise PotstillError(f"{path}: only {len(picked)} labelled examples for teacher.few_shot.k={k}")
    return [(r.text, str(r.label if r.label is not None else r.output)) for r in picked]


class LocalTeacher(Teacher):
    type = "local"
    writes_label_probs = True  # from its logits at the labels' first tokens
    logprobs_refusal = ("a local teacher stores no per-token log-probabilities (train.kd_signal logits with "
                        "train.teacher_model distils its full logits)")

    def __init__(self, cfg: TeacherConfig, task: Task):
        super().__init__(cfg, task)
        if not cfg.model:
            raise PotstillError("teacher.model is required for a local teacher")
        shots = []
        if cfg.few_shot.path and cfg.few_shot.k:
            shots = choose_shots(cfg.few_shot.path, cfg.few_shot.k, cfg.few_shot.seed, task.labels)
        # Self-consistency over shot orders: the same shots in N seeded orders, one cached prefix each.
        rng = random.Random(cfg.few_shot.seed)
        self.fmts = []
        for i in range(cfg.few_shot.orders if shots else 1):
            order = list(shots)
            if i:
                rng.shuffle(order)
            self.fmts.append(PromptFormat(kind=cfg.prompt_format, instruction=task.cfg.instruction,
                                          answer_prefix=cfg.answer_prefix, shots=order,
                                          calls_as_list=task.cfg.parallel_tool_calls))
        self.fmt = self.fmts[0]
        self._engine: Engine | None = None
        self._priors: list[torch.Tensor] = []

    CONTENT_FREE = ("N/A", "", "[MASK]")

    def _label_prior(self, lm: Engine, fmt: PromptFormat, ids: list[int]) -> torch.Tensor:
        """Mean label distribution over content-free inputs: the prompt's own label bias."""
        s = lm.score_labels(fmt, [[{"role": "user", "content": c}] for c in self.CONTENT_FREE], ids, batch_size=1)
        return torch.softmax(s.logits, -1).mean(0)

    def _classify(self, lm: Engine, ids: list[int], messages: list[list[dict]]) -> tuple[torch.Tensor, list]:
        """Label distribution per input, averaged over shot orders; (probs, scored per order).
        The engine computes each order's few-shot prefix once and reuses it; the transformers
        engine scores an input under all orders in one forward (``score_labels_formats``).
        A re-checking engine (``engines.recheck.rechecking``) is re-checked on this answer (module
        docstring)."""
        rechecked = rechecking(lm)
        if self.cfg.calibrate and not self._priors:
            exact = lm.reference if rechecked else lm
            self._priors = [self._label_prior(exact, f, ids) for f in self.fmts]
        scored = (lm.fast if rechecked else lm).score_labels_formats(self.fmts, messages, ids,
                                                                      batch_size=self.batch_size)
        probs = self._answer(scored)
        if rechecked:
            near = lm.near_ties(probs.log())
            if near:
                lm.rechecked += len(near)
                ref = lm.reference.score_labels_formats(self.fmts, [messages[i] for i in near], ids,
                                                        batch_size=self.batch_size)
                probs[near] = self._answer(ref)
                scored = [with_recheck_time(s, r, near) for s, r in zip(scored, ref)]
        return probs, scored

    def _answer(self, scored: list[Scored]) -> torch.Tensor:
        """(N, K) the teacher's label distribution: each order's softmax over the label scores,
        divided by that order's prior when calibrating, averaged over the orders."""
        total = None
        for i, s in enumerate(scored):
            probs = torch.softmax(s.logits, -1)
            if self.cfg.calibrate:
                probs = probs / self._priors[i]
                probs = probs / probs.sum(-1, keepdim=True)
            total = probs if total is None else total + probs
        return total / len(scored)

    def identity(self) -> dict[str, Any]:
        _, where = resolve(self.cfg.model)
        if self._on_disk(where):
            # A folder or GGUF file by its content alone: keyed by the path as written, `-c /abs/potstill.yaml`
            # and `-c potstill.yaml` (or ./teacher and /abs/teacher) missed each other's answers and asked
            # the teacher everything again. ``former_identity`` still finds answers cached so.
            return self._identity(None, model_identity("", where))
        # A hub id (``id@<commit>``) or a bundled model names itself wherever it is run from.
        return self._identity(self.cfg.model, model_identity(self.cfg.model, where))

    def former_identity(self) -> dict[str, Any] | None:
        """The identity a model on disk was keyed by before (its path as written), whose answers
        answer for it still (``generate.cached_answers``)."""
        _, where = resolve(self.cfg.model)
        return self._identity(self.cfg.model, model_identity(self.cfg.model, where)) if self._on_disk(where) else None

    def _on_disk(self, where: Any) -> bool:
        return not isinstance(where, str) and not self.cfg.model.startswith("bundled:")

    def _identity(self, model: str | None, weights: str) -> dict[str, Any]:
        return {
            "type": "local",
            **({"model": model} if model is not None else {}),
            # By content, not by path: weights saved over the old ones in the same folder are another
            # teacher, and a hub id's new revision another too.
            "weights": weights,
            "prompt": hash_obj([[f.kind, f.instruction, f.answer_prefix, f.shots] for f in self.fmts]),
            "labels": self.task.labels,
            "max_tokens": self.cfg.max_tokens,
            "calibrate": self.cfg.calibrate,
            # Only when set, so greedy answers cached before sampling existed keep their keys.
            **({"temperature": self.cfg.temperature} if self.cfg.temperature > 0 and not self.task.labels else {}),
            **({"stop": self.cfg.stop} if self.cfg.stop and not self.task.labels else {}),
            # Another engine's numbers differ slightly: its answers are cached apart (transformers keeps old keys).
            **({"engine": self.cfg.engine} if self.cfg.engine != "transformers" else {}),
            **({"dtype": self.cfg.dtype} if self.cfg.dtype != "auto" else {}),
            **({"quantization": self.cfg.quantization} if self.cfg.quantization != "auto" else {}),
            **({"compile": True} if self.cfg.compile else {}),  # compiled kernels round differently
            **({"recheck_margin": self.cfg.recheck_margin} if self.cfg.engine != "transformers" else {}),
        }

    # Unset, teacher.batch_size is 1 on a CPU, as it always was there (the quickstart teacher's three
    # shot orders in batches of 8 took 0.102 s per article against 0.115 s one at a time,
    # benchmarks/engine.json), and 16 on a GPU, where one input at a time leaves it waiting on the
    # host: a Gemma-3-270M-shaped teacher's three orders took 4.50 ms per input at batch 1 and 1.86 ms
    # in batches of 16 on an H200 (benchmarks/teacher_graphs.json; 32 and 64, in parts of 16 per
    # order: 1.43 and 1.38 ms, teacher_graphs_parts*.json).
    GPU_BATCH = 16

    @property
    def batch_size(self) -> int:
        """``teacher.batch_size``, or its default on the device the teacher loads on."""
        if self.cfg.batch_size is not None:
            return self.cfg.batch_size
        return self.GPU_BATCH if _pick_device("auto").type == "cuda" else 1

    def request(self, record: Any) -> dict[str, Any]:
        return self.structured(super().request(record))

    def with_response_format(self, request: dict[str, Any], response_format: dict[str, Any]) -> dict[str, Any] | None:
        # Greedy generation decodes under the schema (models.json_constraint, as guided_json does for a
        # student; engine llamacpp: llama.cpp's grammar sampler); a label is scored, not generated,
        # and sampling is not guided.
        if self.task.labels or self.cfg.temperature > 0 or self.cfg.engine == "ctranslate2":
            return None
        return {**request, "json_schema": format_schema(response_format)}

    def lm(self) -> Engine:
        # Loaded lazily: a fully cached rerun never pays the load.
        if self._engine is None:
            self._engine = section_engine(self.cfg, self.cfg.model, compile=self.cfg.compile)
        return self._engine

    def _cost(self, seconds: float) -> float:
        return seconds * self.cfg.price.usd_per_hour / 3600

    def run(self, requests: list[dict[str, Any]], on_result: OnResult, stats: RunStats | None = None,
            gcfg: GenerateConfig | None = None) -> None:
        if not requests:
            return
        lm = self.lm()
        bs = self.batch_size
        if self.task.labels:
            ids = label_token_ids(lm.tokenizer, self.fmt, self.task.labels)
            # Chunks of a few batches: each chunk's answers reach the ledger before the next starts.
            for start in range(0, len(requests), bs * 4):
                chunk = self._fitting(requests[start : start + bs * 4], 0, start, on_result)
                if not chunk:
                    continue
                probs, scored = self._classify(lm, ids, [r["messages"] for _, r in chunk])
                for j, (i, _) in enumerate(chunk):
                    secs = sum(s.seconds[j] for s in scored)
                    on_result(i, Response(
                        output=self.task.labels[int(probs[j].argmax())],
                        label_probs=dict(zip(self.task.labels, probs[j].tolist())),
                        input_tokens=sum(s.prompt_tokens[j] for s in scored),
                        cached_input_tokens=sum(s.cached_tokens[j] for s in scored), output_tokens=1,
                        # A caller waits for its whole batch; the bill is shared evenly within it.
                        latency_s=sum(s.batch_seconds[j] for s in scored), cost_usd=self._cost(secs),
                    ))
            return
        for start in range(0, len(requests), bs * 4):
            chunk = requests[start : start + bs * 4]
            # A request may carry a smaller budget of its own (a served client's max_tokens).
            # ... and a schema to decode under (teacher.structured_outputs, or a served client's format).
            kinds = [(int(r.get("max_tokens", self.cfg.max_tokens)), json.dumps(r.get("json_schema"), sort_keys=True))
                     for r in chunk]
            for budget, schema in sorted(set(kinds)):
                same = [(start + j, chunk[j]) for j, kind in enumerate(kinds) if kind == (budget, schema)]
                part = self._fitting(same, budget, None, on_result)
                if not part:
                    continue
                # The schema as the request gave it, not re-read from its sorted JSON: engine llamacpp
                # writes an object's keys in the order its schema lists them.
                for (i, _), response in zip(part, self._generated([r["messages"] for _, r in part], budget,
                                                                  part[0][1].get("json_schema"))):
                    on_result(i, response)

    def _fitting(self, requests: list, budget: int, start: int | None, on_result: OnResult) -> list[tuple[int, dict]]:
        """(index, request) of the ``requests`` (numbered from ``start``, or already (index, request)
        pairs) whose prompt and answer ``budget`` fit the teacher's context; each other one is answered
        at once with the error an API teacher gives it (a 400, ``context_length_exceeded``): a model
        with learned positions (GPT-2) fails on it with an IndexError that took the whole batch and the
        command with it, and a rotary one would answer past what it was trained on."""
        pairs = list(enumerate(requests, start)) if start is not None else requests
        over = dict(past_context(self.lm(), self.fmt, [r["messages"] for _, r in pairs], budget))
        for k, (i, _) in enumerate(pairs):
            if k in over:
                on_result(i, Response(output=None, error=f"context_length_exceeded: {over[k]} of the local teacher's "
                                      "context", error_status=400, error_code="context_length_exceeded"))
        return [p for k, p in enumerate(pairs) if k not in over]

    def _generated(self, msgs: list[list[dict]], budget: int, guide: dict | None,
                   on_text: Callable[[str], None] | None = None) -> list[Response]:
        """The answers to ``msgs`` generated at one token budget, under one JSON schema (``guide``)
        or none; ``on_text`` (one message): its text handed on as it is decoded."""
        lm = self.lm()
        # An engine that cannot decode under a schema (a plugin's) answers as it would without one.
        more: dict[str, Any] = {"json_schemas": [guide] * len(msgs)} if guide is not None and \
            generate_takes(lm, "json_schemas") else {}
        if on_text is not None:
            more["on_text"] = on_text
        # Sampling is seeded by the requests themselves: a rerun of the same requests samples the same texts.
        g = lm.generate(self.fmt, msgs, budget, batch_size=self.batch_size, temperature=self.cfg.temperature,
                        stop=self.cfg.stop, seed=int(hash_obj(msgs)[:8], 16), **more)
        return [Response(output=g.texts[k], input_tokens=g.prompt_tokens[k], output_tokens=g.output_tokens[k],
                         latency_s=g.seconds[k], cost_usd=self._cost(g.seconds[k]),
                         stop_reason="length" if g.output_tokens[k] >= budget else "stop")
                for k in range(len(msgs))]

    @property
    def streams(self) -> bool:  # type: ignore[override]
        """A generating teacher hands its answer on as it decodes it (``submit``'s ``on_delta``), on an
        engine whose ``generate`` takes ``on_text`` (the built-in ones); a label is scored, not written."""
        return not self.task.labels

    def submit(self, request: dict[str, Any], on_delta: OnDelta | None = None) -> "Future[Response]":
        if on_delta is None or self.task.labels:
            return super().submit(request)
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"potstill-{self.type}")
        return self._worker.submit(self._streamed, request, on_delta)

    def _streamed(self, request: dict[str, Any], on_delta: OnDelta) -> Response:
        """One request answered with its text handed to ``on_delta`` as it is decoded; an engine
        whose ``generate`` takes no ``on_text`` (a plugin's written before it) answers whole."""
        on_text = (lambda text: on_delta(Delta(text))) if generate_takes(self.lm(), "on_text") else None
        budget = int(request.get("max_tokens", self.cfg.max_tokens))
        over: list[Response] = []
        if not self._fitting([request], budget, 0, lambda i, resp: over.append(resp)):
            return over[0]
        return self._generated([request["messages"]], budget, request.get("json_schema"), on_text)[0]

