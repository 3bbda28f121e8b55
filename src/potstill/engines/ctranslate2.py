"""The CTranslate2 engine: int8 weights, the prompt's fixed part cached once, batched calls.

``quantization`` none converts float32 weights instead (float16 compute on a GPU): slower than
int8, but greedy generations come out as transformers fp32's, where int8 rounding changes some
(benchmarks/engine.py, part extraction). CTranslate2's int16 is not offered: on the extraction
student it changed more outputs than int8 did.

At batch 1 a small model on a CPU is memory-bound: SmolLM2-135M streams 430 MB of fp32 weights
per forward (~80 ms at ~5 GB/s here), int8 streams ~110 MB. The fixed part of every prompt
(a chat's system turn, about a third of the quickstart student's prompt; a teacher's 2,000-token
few-shot prefix) is passed as CTranslate2's ``static_prompt``, whose KV cache is computed once
per distinct prefix and reused by every later call.

Label scores: one decoding step (``max_length=1``) returning the vocabulary logits at the answer
position, of which the K label rows are kept. Generation: greedy ``generate_batch``; its
confidence is CTranslate2's score, the generated tokens' summed log-prob over their number.
Served ``logprobs``: one ``forward_batch`` over prompt and answer (``token_logprobs``).

Measured limit: with gemma-3 (sliding attention over 512 tokens on 5 of every 6 layers),
CTranslate2 4.8.5 matches transformers up to a 508-token prompt but not beyond (the quickstart
teacher's 2,079-token prefix gave 24% accuracy against 80%), so prompts longer than a model's
sliding window are refused with one error instead of answered wrongly.

Input embedding (OOD check), a documented substitute: CTranslate2 exposes no hidden states, so
the embedding is the L2-normalised mean of the model's *input* token embeddings over the
input's own tokens (the fixed prefix excluded). It needs no forward pass at all; it sees which
words an input uses, not how the model reads them. Routing calibrates its threshold on the same
engine's embeddings, so the two kinds are never compared with each other.

CTranslate2 forwards a batch's prompts at once only up to the shortest prompt's length and
decodes the rest token by token, so inputs are sorted by length and a batch holds prompts whose
lengths differ by at most ``max_spread`` tokens (4): a batch of 16 arriving requests becomes a
few calls of similar length instead of one call with tens of one-token steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from potstill.engines.base import split_prompt, static_ids
from potstill.engines.convert import EMBEDDINGS, INFO, ctranslate2_model, embedding_mean, generation_config, require
from potstill.errors import PotstillError
from potstill.models.loading import _pick_device, resolve
from potstill.models.prompting import PromptFormat, encode_prompt, stop_token_ids
from potstill.models.generation import Generated, TextStream, read_logprobs
from potstill.models.scoring import Scored


WEIGHTS = {"auto": "int8", "int8": "int8", "none": "float32"}  # quantization -> converted weight type


def sliding_window(where: Path | str) -> int | None:
    """The model's sliding attention window, where some of its layers use one (gemma 2/3, mistral)."""
    cfg_path = Path(where) / "config.json" if isinstance(where, Path) else None
    if cfg_path is None or not cfg_path.exists():
        return None
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg = cfg.get("text_config", cfg)
    window = cfg.get("sliding_window")
    sliding = "sliding_attention" in (cfg.get("layer_types") or []) or cfg.get("use_sliding_window")
    return int(window) if window and sliding else None


class CT2Engine:
    name = "ctranslate2"

    def __init__(self, model_dir: Path, identity: str, device: str = "cpu", compute_type: str = "int8",
                 threads: int | None = None):
        ct2 = require("ctranslate2")
        from transformers import AutoTokenizer

        try:
            self.generator = ct2.Generator(str(model_dir), device=device, compute_type=compute_type,
                                           intra_threads=threads or torch.get_num_threads())
        except (RuntimeError, ValueError) as e:
            raise PotstillError(f"ctranslate2 cannot load {model_dir} ({str(e).splitlines()[0]}); delete that "
                                "directory to convert again") from None
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._generation_config = generation_config(model_dir)
        self.table = np.load(model_dir / EMBEDDINGS, mmap_mode="r")
        self.info = json.loads((model_dir / INFO).read_text(encoding="utf-8"))
        self.identity = identity
        self.device = device
        self.compute_type = compute_type
        self._static: dict[tuple, list[int]] = {}
        self.window: int | None = None  # sliding attention window, beyond which CTranslate2 4.8.5 is wrong
        self.version = ct2.__version__
        self.reuse_prefix = True  # False: every call recomputes the fixed part (to measure what reuse saves)
        self.max_spread = int(os.environ.get("POTSTILL_CT2_MAX_SPREAD", "4"))  # tokens; see _batches

    @classmethod
    def load(cls, spec: str, device: str = "auto", num_layers: int | None = None,
             quantization: str = "auto", dtype: str = "auto", compile: bool = False,
             draft_tokens: int = 2) -> "CT2Engine":
        if compile:
            raise PotstillError("engine ctranslate2 runs its own compiled kernels; compile is for engine transformers")
        if draft_tokens not in (0, 2):  # 2, the default, and 0 both mean none here
            raise PotstillError(f"engine ctranslate2 decodes one token per step; draft_tokens ({draft_tokens}) is "
                                "for engine transformers")
        if dtype != "auto":
            raise PotstillError(f"engine ctranslate2 runs int8 weights; dtype '{dtype}' is for engine transformers "
                                "(quantization none gives ctranslate2 float32 weights)")
        if quantization not in WEIGHTS:
            raise PotstillError(f"engine ctranslate2 takes quantization auto, int8 or none, not '{quantization}'"
                                + (" (GGUF mixes are for engine llamacpp)" if quantization.startswith("q") else ""))
        ct2 = require("ctranslate2")
        dev = _pick_device(device)
        on_gpu = dev.type == "cuda" and ct2.get_cuda_device_count() > 0
        weights = WEIGHTS[quantization]
        path, key = ctranslate2_model(spec, weights, num_layers)
        name, where = resolve(spec)
        compute = ("int8_float16" if weights == "int8" else "float16") if on_gpu else weights
        engine = cls(path, f"{name}@{key[:12]}#ct2-{weights}", "cuda" if on_gpu else "cpu", compute)
        engine.window = sliding_window(where)
        return engine

    @property
    def num_parameters(self) -> int:
        return int(self.info.get("parameters") or 0)  # counted from the source weights at conversion

    # ------------------------------------------------------------------ prompts
    def _fixed(self, fmt: PromptFormat) -> list[int]:
        key = fmt.key()
        if key not in self._static:
            self._static[key] = static_ids(self.tokenizer, fmt)
        return self._static[key]

    def _split(self, fmt: PromptFormat, messages: list[list[dict]], scoring: bool) -> list[tuple[list[int], list[int]]]:
        """(fixed part, own part) per chat, tokenised exactly as the transformers engine does."""
        tok, static = self.tokenizer, self._fixed(fmt)
        out = []
        for m in messages:
            if scoring and fmt.prefix():
                out.append((static, encode_prompt(tok, fmt, fmt.query(tok, m), first=False)))
            else:
                out.append(split_prompt(static, encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True)))
        longest = max((len(st) + len(own) for st, own in out), default=0)
        if self.window is not None and longest > self.window:
            raise PotstillError(
                f"ctranslate2 {self.version} gives wrong answers for prompts longer "
                f"than this model's {self.window}-token sliding attention window (this prompt: {longest} tokens; "
                "gemma-3 with the quickstart's 2,079-token few-shot prefix fell to chance); use engine 'transformers'")
        if not self.reuse_prefix:
            return [([], s + own) for s, own in out]
        return out

    def _embed_ids(self, own: list[list[int]]) -> torch.Tensor:
        return embedding_mean(self.table, own)

    def _batches(self, parts: list[tuple[list[int], list[int]]], batch_size: int) -> list[list[int]]:
        """Index batches sharing one fixed prefix, sorted by length, whose own parts differ in length
        by at most ``max_spread`` tokens (see the module docstring: the longer ones' extra tokens
        would be decoded one step at a time, each step paying the full-vocabulary head)."""
        order = sorted(range(len(parts)), key=lambda i: (len(parts[i][0]), len(parts[i][1])))
        batches, cur = [], []
        for i in order:
            if cur and (len(cur) == batch_size or parts[cur[0]][0] != parts[i][0]
                        or len(parts[i][1]) - len(parts[cur[0]][1]) > self.max_spread):
                batches.append(cur)
                cur = []
            cur.append(i)
        return batches + ([cur] if cur else [])

    def _call(self, parts: list[tuple[list[int], list[int]]], idx: list[int], **kw: Any) -> list[Any]:
        conv = self.tokenizer.convert_ids_to_tokens
        static = parts[idx[0]][0]
        return self.generator.generate_batch(
            [conv(parts[i][1]) for i in idx], static_prompt=conv(static) if static else None,
            include_prompt_in_result=False, beam_size=1, sampling_topk=1, **kw)

    # ------------------------------------------------------------------ protocol
    def score_labels(self, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int],
                     batch_size: int = 16, progress: Any = None, max_length: int | None = None) -> Scored:
        parts = [(s, own[-max_length:] if max_length else own) for s, own in self._split(fmt, messages, True)]
        n = len(parts)
        logits = torch.empty((n, len(label_ids)))
        secs, per_batch = [0.0] * n, [0.0] * n
        for idx in self._batches(parts, batch_size):
            t0 = time.perf_counter()
            res = self._call(parts, idx, max_length=1, return_logits_vocab=True)
            for r, i in zip(res, idx):
                # One entry per decoding step, the forced steps over a longer prompt's tail first:
                # the last is the answer position.
                logits[i] = torch.from_numpy(np.asarray(r.logits[0][-1])[label_ids].astype(np.float32))
            dt = time.perf_counter() - t0
            for i in idx:
                secs[i], per_batch[i] = dt / len(idx), dt
            if progress is not None:
                progress(len(idx))
        return Scored(logits=logits, prompt_tokens=[len(s) + len(o) for s, o in parts],
                      cached_tokens=[len(s) for s, _ in parts], seconds=secs, batch_seconds=per_batch,
                      embeddings=self._embed_ids([o for _, o in parts]))

    def score_labels_formats(self, fmts: list[PromptFormat], messages: list[list[dict]], label_ids: list[int],
                             batch_size: int = 16) -> list[Scored]:
        # One static prompt per call in CTranslate2: the formats run one after another.
        return [self.score_labels(f, messages, label_ids, batch_size=batch_size) for f in fmts]

    def generate(self, fmt: PromptFormat, messages: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 16, progress: Any = None, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, embed: bool = False,
                 on_text: Callable[[str], None] | None = None) -> Generated:
        """Greedy, to an end token. ``on_text`` (one message): each piece of its answer's text as it
        is decoded (CTranslate2's per-token callback, ``TextStream``)."""
        if temperature > 0 or stop:
            raise PotstillError("the ctranslate2 engine decodes greedily to EOS; sampling and stop strings "
                                "(e.g. for `potstill synthesize`) need engine: transformers")
        if on_text is not None and len(messages) != 1:
            raise ValueError(f"on_text streams one answer, not {len(messages)}")
        tok = self.tokenizer
        parts = self._split(fmt, messages, False)
        stop = stop_token_ids(tok, self._generation_config)
        stream = TextStream(tok, set(stop), (), on_text) if on_text is not None else None
        steps: list[int] = []

        def step(r: Any) -> bool:
            steps.append(r.token_id)
            stream(steps)
            return False  # go on: the end token and the budget end it

        n = len(parts)
        texts, n_out, secs, mlp = [""] * n, [0] * n, [0.0] * n, [0.0] * n
        out_ids: list[list[int]] = [[] for _ in range(n)]
        for idx in self._batches(parts, batch_size):
            t0 = time.perf_counter()
            res = self._call(parts, idx, max_length=max_new_tokens, return_scores=True, end_token=stop,
                             length_penalty=1.0, **({"callback": step} if stream is not None else {}))
            dt = (time.perf_counter() - t0) / len(idx)
            for r, i in zip(res, idx):
                ids = r.sequences_ids[0]
                out_ids[i] = list(ids)
                texts[i] = tok.decode(ids, skip_special_tokens=True)
                if stream is not None:
                    stream(ids, final=True)
                n_out[i] = len(ids)
                mlp[i] = float(r.scores[0])  # already the mean: the sum over length ** length_penalty (1)
                secs[i] = dt
            if progress is not None:
                progress(len(idx))
        return Generated(texts=texts, prompt_tokens=[len(s) + len(o) for s, o in parts], output_tokens=n_out,
                         seconds=secs, mean_logprob=mlp, tokens=out_ids,
                         embeddings=self.embed(fmt, messages) if embed else None)

    def embed(self, fmt: PromptFormat, messages: list[list[dict]]) -> torch.Tensor:
        return self._embed_ids([own for _, own in self._split(fmt, messages, True)])

    def token_logprobs(self, prompt: list[int], answer: list[int], top: int = 0) -> list[tuple[float, list[tuple[int, float]]]]:
        """Each ``answer`` token's log-probability after ``prompt`` and the ones before it, and the
        ``top`` likeliest tokens at its position (``models.generation.token_logprobs``'s contract, for
        serve's ``logprobs``): one ``forward_batch`` over prompt + answer, log-softmax over the whole
        vocabulary by CTranslate2 at the engine's own weights: float32 ones give transformers fp32's,
        int8 ones the numbers the engine's own generation reads, which int8 rounding moves from
        fp32's (up to 0.04 in probability on the tests' taught tiny model). CTranslate2 returns every
        position's row, (prompt + answer) x vocabulary floats: 98 MB for 500 tokens of SmolLM2's 49,152."""
        if not answer:
            return []
        ids = list(prompt) + list(answer)
        if self.window is not None and len(ids) > self.window:
            raise PotstillError(f"ctranslate2 {self.version} gives wrong log-probabilities past this model's "
                                f"{self.window}-token sliding attention window ({len(ids)} tokens)")
        out = self.generator.forward_batch([ids], return_log_probs=True)
        if self.device != "cpu":
            out = out.to_device(require("ctranslate2").Device.cpu)
        # Row j predicts token j + 1: the prompt's last row (predicting answer[0]) to the one before the end.
        return read_logprobs(torch.from_numpy(np.asarray(out)[0, len(prompt) - 1 : len(ids) - 1].astype(np.float32)),
                             answer, top)
