"""The transformers serving engine: the student's answer, its confidence and an input embedding.

One forward pass over a classification prompt gives both routing signals:
- the label margin (top-1 minus top-2 label probability) from the last position, read through
  the K label rows of the LM head only (as ``potstill.models.scoring`` does);
- the embedding used for the out-of-distribution check: the mean of the last hidden states over
  the prompt's tokens, L2-normalised.
Other tasks generate greedily (``scoring.generate``: confidence is the mean token log-prob) and
pay one extra prefill for the embedding.

Concurrent requests are gathered into batches by one worker thread (``Batcher``), so the model
runs one forward pass at a time and a burst of 32 callers costs ~2 batches of 16, not 32 calls.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from potstill.models.loading import LM
from potstill.models.prompting import encode_prompt, label_token_ids
from potstill.models.scoring import apply_head, decoder, generate
from potstill.progress import bar
from potstill.students import student_format
from potstill.tasks import Task


@dataclass
class StudentAnswer:
    output: str  # the text a client receives
    parsed: Any
    invalid: str | None  # the task's validation failure, None when valid
    confidence: float  # label margin (classification) or mean token log-prob (generation)
    embedding: torch.Tensor  # (H,) unit vector
    prompt_tokens: int
    output_tokens: int
    seconds: float  # this input's share of its batch's wall time


class TransformersEngine:
    """The student through transformers, on CPU or GPU (whatever ``load_lm`` put it on)."""

    name = "transformers"

    def __init__(self, lm: LM, task: Task, max_length: int = 2048):
        self.lm = lm
        self.task = task
        self.fmt = student_format(lm, task)
        self.max_length = max_length
        self.label_ids = label_token_ids(lm.tokenizer, self.fmt, task.labels) if task.labels else None

    def _encode(self, messages: list[list[dict]]) -> list[list[int]]:
        tok = self.lm.tokenizer
        out = []
        for m in messages:
            ids = encode_prompt(tok, self.fmt, self.fmt.prefix() + self.fmt.query(tok, m), first=True)
            # Keep the end of an over-long prompt: the generation prompt (where the answer starts) is there.
            out.append(ids[-self.max_length :])
        return out

    def _forward(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state per prompt (B, H), mean-pooled unit embedding (B, H)), left-padded batch."""
        pad = self.lm.tokenizer.pad_token_id
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            mask[i, T - len(p) :] = 1
        dev = self.lm.device
        out = decoder(self.lm.model)(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
        h = out.last_hidden_state.float()
        m = mask.to(dev).unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        return h[:, -1], torch.nn.functional.normalize(pooled, dim=-1).cpu()

    @torch.inference_mode()
    def embed(self, messages: list[list[dict]]) -> torch.Tensor:
        """(N, H) unit embeddings of the prompts, in input order."""
        return self._forward(self._encode(messages))[1]

    @torch.inference_mode()
    def answer(self, messages: list[list[dict]]) -> list[StudentAnswer]:
        """The student's answers to a batch of chats (no task instruction: the engine adds it)."""
        t0 = time.perf_counter()
        prompts = self._encode(messages)
        if self.label_ids is not None:
            last, emb = self._forward(prompts)
            probs = torch.softmax(apply_head(self.lm.model, last.to(self.lm.model.dtype), self.label_ids).float(), -1)
            top = probs.topk(2, -1).values.cpu()
            labels = [self.task.labels[i] for i in probs.argmax(-1).tolist()]
            dt = (time.perf_counter() - t0) / len(prompts)
            return [
                StudentAnswer(output=lab, parsed=lab, invalid=self.task.validate(lab),
                              confidence=float(top[i, 0] - top[i, 1]), embedding=emb[i],
                              prompt_tokens=len(prompts[i]), output_tokens=1, seconds=dt)
                for i, lab in enumerate(labels)
            ]
        _, emb = self._forward(prompts)
        g = generate(self.lm, self.fmt, messages, self.task.cfg.max_output_tokens, batch_size=len(messages))
        dt = (time.perf_counter() - t0) / len(prompts)
        answers = []
        for i, text in enumerate(g.texts):
            parsed = self.task.parse(text)
            answers.append(StudentAnswer(output=text, parsed=parsed, invalid=self.task.validate(parsed),
                                         confidence=g.mean_logprob[i], embedding=emb[i],
                                         prompt_tokens=g.prompt_tokens[i], output_tokens=g.output_tokens[i], seconds=dt))
        return answers


class Batcher:
    """Gathers concurrent ``submit`` calls into batches answered by one worker thread."""

    def __init__(self, engine: TransformersEngine, batch_size: int = 16, wait_ms: float = 2.0):
        self.engine = engine
        self.batch_size = batch_size
        self.wait_s = wait_ms / 1000
        self._q: queue.Queue[tuple[list[dict], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="potstill-batcher", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict]) -> Future:
        fut: Future = Future()
        self._q.put((messages, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                answers = self.engine.answer([m for m, _ in batch])
                for (_, fut), a in zip(batch, answers):
                    fut.set_result(a)
            except Exception as e:  # noqa: BLE001 - each waiting request gets the failure, the loop lives on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)


def embed_all(engine: TransformersEngine, messages: list[list[dict]], batch_size: int, desc: str) -> torch.Tensor:
    """(N, H) unit embeddings through ``engine.embed``, batch by batch, with a progress bar."""
    parts = []
    with bar(desc, len(messages)) as advance:
        for i in range(0, len(messages), batch_size):
            parts.append(engine.embed(messages[i : i + batch_size]))
            advance(min(batch_size, len(messages) - i))
    return torch.cat(parts) if parts else torch.zeros(0)
