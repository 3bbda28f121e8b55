"""The served student: an engine (``potstill.engines``) plus the task's prompt, behind a batcher.

For classification one engine call gives both routing signals, the label margin (top-1 minus
top-2 label probability) and the input embedding for the out-of-distribution check. Other tasks
generate greedily (confidence: the mean token log-prob) and take the embedding from the same
call (``generate(embed=True)``: pooled from the prefill in transformers), or from ``engine.embed``
where an engine's ``generate`` has no ``embed`` or returns none (another forward over the prompt).

Concurrent requests are gathered into batches by one worker thread (``Batcher``), so the model
runs one call at a time and a burst of 32 callers costs ~2 batches of 16, not 32 calls.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from potstill.engines import Engine
from potstill.engines.base import context_length, generate_takes, warm_batches
from potstill.engines.transformers import TransformersEngine as _Transformers
from potstill.models.generation import token_logprobs
from potstill.models.loading import LM
from potstill.models.prompting import encode_prompt, hand_over, label_token_ids
from potstill.models.scoring import label_margin
from potstill.models.utf8_tail import added_ids, byte_level, piece_bytes, split
from potstill.progress import bar
from potstill.students import student_format
from potstill.tasks import Task


def _utf8(raw: bytes | None) -> str | None:
    """``raw`` as text where it is whole UTF-8 characters, else None."""
    try:
        return raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        return None


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the first of a client's ``stop`` strings starts in ``text``; -1 where none is in it."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)


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
    truncated: bool = False  # generation stopped at the task's max_output_tokens, not at an end token
    tokens: list[int] | None = None  # the generated token ids (generation only)


class ServedStudent:
    """A student as served: ``answer`` a batch of chats, ``embed`` them for the OOD reference."""

    def __init__(self, engine: Engine, task: Task, max_length: int | None = None):
        self.engine = engine
        self.task = task
        self.fmt = student_format(engine, task)
        # A label is scored on the whole prompt, as evaluate scores it: one longer than the model's
        # positions is never scored (``over_context``: the teacher answers it). ``max_length`` keeps
        # only a query's last N tokens; serve sets none (a fixed 2048 scored only the end of a longer
        # chat that fits an 8,192-position student, its system turn cut first, and billed 2048 prompt tokens).
        self.max_length = max_length
        self.label_ids = label_token_ids(engine.tokenizer, self.fmt, task.labels) if task.labels else None
        # A label is scored at its first token, but the answer is the whole label: usage counts its
        # tokens as the student would write it (OpenAI's completion_tokens, the teacher's count).
        self.label_tokens = [len(engine.tokenizer(self.fmt.label_text(lab), add_special_tokens=False)["input_ids"])
                             for lab in task.labels] if task.labels else None
        # Engines (plugins too) written before generate's ``embed`` are served with engine.embed.
        self._embeds = generate_takes(engine, "embed")
        self._guides = generate_takes(engine, "json_schemas")
        self.context = context_length(engine)
        prefix = self.fmt.prefix()  # a completion format's instruction and shots (a chat format has none)
        self._prefix_tokens = len(encode_prompt(engine.tokenizer, self.fmt, prefix, first=True)) if prefix else 0
        # Whether the tokenizer's pieces spell bytes, and its added tokens: a served token's bytes (logprobs).
        self._byte_pieces = byte_level(engine.tokenizer), added_ids(engine.tokenizer)
        # One model call at a time: the batcher's thread answers, a request's log-probs run beside it.
        self._lock = threading.RLock()

    @property
    def identity(self) -> str:
        """The model's identity; other engines than transformers tag it (their embeddings differ)."""
        e = self.engine
        return e.identity if e.name == "transformers" or "#" in e.identity else f"{e.identity}#{e.name}"

    # The weights' digest of the student's folder (``calibration.weights_of`` of its ``model_identity``),
    # set by serve: engines llamacpp and ctranslate2 name their conversion's key instead.
    weights_digest: str | None = None

    @property
    def served_name(self) -> str:
        """The name serve answers as and logs: ``potstill-student@`` and the identity's digest, the
        student folder's weights digest first where the identity names a conversion, so that
        ``watch`` (``watch.traffic.served_name``) finds the traffic of any engine that served it."""
        tail, d = self.identity.rsplit("@", 1)[-1], self.weights_digest
        return f"potstill-student@{tail if d is None or tail.startswith(d) else f'{d}.{tail}'}"

    @property
    def lm(self) -> LM | None:
        return getattr(self.engine, "lm", None)

    def warm(self, messages: list[list[dict]], batch_size: int, guided: bool = False) -> float:
        """Answer once each kind of call serving makes (one input, at up to three lengths; two; a
        batch of up to ``batch_size``), so a compiled engine compiles now rather than while a client
        waits. Generating on static caches: a batch of every row bucket up to ``batch_size``, each
        holding the longest input, then the caches are frozen: a later batch uses the shortest
        cache of its rows that holds it, or a new one for a longer prompt where that compiles
        nothing and fits (``StaticCaches.get``), else the dynamic cache. ``guided`` (``serve.guided_json``):
        each batch also decodes under a schema (any object) where the student's own answers do
        not, since guided decoding has a compiled step of its own. Scoring from CUDA graphs
        (``models.score_graphs``): a batch of every row bucket too, each recording its graph (a
        later bucket records on first use, compiling nothing). The seconds it took."""
        t0 = time.perf_counter()
        static = getattr(self.engine, "static", None) if self.label_ids is None else None
        graphs = getattr(self.engine, "score_graphs", None) if self.label_ids is not None else None
        if static is not None:
            tok = self.engine.tokenizer
            messages = sorted(messages, key=lambda m: -sum(len(tok.encode(x["content"])) for x in m))
        own = getattr(getattr(self.engine, "fast", self.engine), "json_schema", None)  # already guided
        for batch in warm_batches(messages, batch_size, row_buckets=static is not None or graphs is not None):
            self.answer(batch)
            if guided and self.guides and own is None:
                self.answer(batch, [{"type": "object"}] * len(batch))
        if static is not None:
            static.frozen = True
        return time.perf_counter() - t0

    def over_context(self, messages: list[dict]) -> str | None:
        """Why the student cannot take this chat: its prompt, tokenised as the engine does, and the
        answer's budget (the task's ``max_output_tokens``; none for a label) run past the model's
        positions. A model with learned positions (GPT-2) fails there with an IndexError, a rotary
        one answers past what it was trained on. None when it fits or the context is unknown.
        Raises ``RefusedChat`` when the chat template refuses the chat."""
        tok = self.engine.tokenizer
        text = self.fmt.prefix() + self.fmt.query(tok, messages)
        if self.context is None:
            return None
        ids = encode_prompt(tok, self.fmt, text, first=True)
        n, budget = len(ids), 0
        if self.label_ids is not None:
            if self.max_length is not None:  # label scoring keeps the query's last max_length tokens
                n = min(n, self._prefix_tokens + self.max_length)
        else:
            budget = self.task.cfg.max_output_tokens
        if n + budget <= self.context:
            # The engine encodes this text next (a chat format's whole prompt, as here): it takes these ids.
            hand_over(tok, self.fmt, text, True, ids)
            return None
        return f"{n} prompt tokens{f' + {budget} to answer' if budget else ''} > the student's {self.context} positions"

    def embed(self, messages: list[list[dict]]) -> torch.Tensor:
        """(N, H) unit embeddings of the prompts, in input order."""
        return self.engine.embed(self.fmt, messages)

    def answer(self, messages: list[list[dict]], schemas: Sequence[dict | None] | None = None) -> list[StudentAnswer]:
        """The student's answers to a batch of chats (no task instruction: the engine adds it).
        ``schemas``: a JSON Schema per chat to decode its answer under (a client's
        ``response_format`` under ``serve.guided_json``; None: as configured); a label is scored,
        never decoded, and takes none."""
        with self._lock:
            return self._answer(messages, schemas)

    @property
    def guides(self) -> bool:
        """Whether this student's engine decodes under a client's JSON Schema (``json_schemas``)."""
        return self.label_ids is None and self._guides

    @property
    def logprobs_unavailable(self) -> str | None:
        """Why this student cannot give its tokens' log-probabilities, None where it can: they take
        a forward over the prompt and the answer, which the transformers engine runs (any dtype,
        int8 too), or the engine's own ``token_logprobs`` (ctranslate2, llamacpp); a plugin engine
        without one gives none."""
        return None if self._token_scorer() is not None else \
            f"the student's engine ({self.engine.name}) gives no token log-probabilities"

    def _scorer(self) -> LM | None:
        # A near-tie re-check wraps the fast engine (transformers int8): its model answered.
        return getattr(self.engine, "lm", None) or getattr(getattr(self.engine, "fast", None), "lm", None)

    def _token_scorer(self) -> Callable[[list[int], list[int], int], list] | None:
        """``token_logprobs(prompt, ids, top)`` for this student: a forward of its transformers model,
        or the engine's own (ctranslate2, llamacpp; the fast engine's under a near-tie re-check), else None."""
        lm = self._scorer()
        if lm is not None:
            return lambda prompt, ids, top: token_logprobs(lm, prompt, ids, top)
        for e in (self.engine, getattr(self.engine, "fast", None)):
            if e is not None and callable(getattr(e, "token_logprobs", None)):
                return e.token_logprobs
        return None

    def logprobs(self, messages: list[dict], a: StudentAnswer, content: str, n_tokens: int,
                 top: int) -> list[dict[str, Any]]:
        """OpenAI's ``logprobs.content`` for ``content``, the answer ``a`` as sent (``shorten``'s
        text and token count): each token's log-probability under the student after the prompt it
        answered and the tokens before it, and the ``top`` likeliest tokens there (full vocabulary,
        one teacher-forced forward). A label is its tokens as the student writes it (the label
        chosen among the labels' first tokens: its log-prob here is over every token, not the
        label probability routing reads). A text cut by a stop string keeps the tokens wholly in it."""
        tok = self.engine.tokenizer
        prompt = encode_prompt(tok, self.fmt, self.fmt.prefix() + self.fmt.query(tok, messages), first=True)
        if self.label_ids is not None:
            ids = tok(self.fmt.label_text(content), add_special_tokens=False)["input_ids"]
        else:
            ids = list(a.tokens if a.tokens is not None else tok.encode(a.output, add_special_tokens=False))[:n_tokens]
            while ids and not content.startswith(tok.decode(ids, skip_special_tokens=True)):
                ids.pop()
        with self._lock:
            scored = self._token_scorer()(prompt, ids, top)

        level, added = self._byte_pieces

        def entry(before: list[int], t: int, lp: float, inside: bool) -> dict[str, Any]:
            # A token holding part of a character (byte-level BPE and byte fallback write 要 as two or
            # three) decodes as U+FFFD or nothing: it keeps its own bytes, which joined rebuild the
            # text, and its token reads as OpenAI writes one ("bytes:\xe8\xa6"). ``inside``: the
            # tokens before it end part-way through a character, which this one goes on with.
            raw = piece_bytes(tok, t, level, added)
            text = _utf8(raw)
            if raw is not None and (inside or text is None):
                text = text if text is not None else "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
                return {"token": text, "logprob": lp, "bytes": list(raw)}
            # A token's text as it reads after the one before it (a leading space a lone decode drops);
            # an end token among the alternatives shows as itself ("<|im_end|>"), as OpenAI's do.
            text = tok.decode(before + [t])[len(tok.decode(before)):]
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        out = []
        tail = b""  # the bytes of a character the tokens so far leave unfinished
        for j, (t, (lp, best)) in enumerate(zip(ids, scored)):
            before, inside = ids[j - 1 : j], bool(tail)
            out.append({**entry(before, t, lp, inside),
                        "top_logprobs": [entry(before, b, v, inside) for b, v in best]})
            raw = piece_bytes(tok, t, level, added)
            rest = split(tail + raw) if raw is not None else None
            tail = rest[1] if rest else b""
        return out

    @torch.inference_mode()
    def _answer(self, messages: list[list[dict]], schemas: Sequence[dict | None] | None = None) -> list[StudentAnswer]:
        t0 = time.perf_counter()
        n = len(messages)
        if self.label_ids is not None:
            s = self.engine.score_labels(self.fmt, messages, self.label_ids, batch_size=n, max_length=self.max_length)
            margin = label_margin(s.logits)
            labels, picked = self.task.labels, s.logits.argmax(-1).tolist()
            dt = (time.perf_counter() - t0) / n
            return [
                StudentAnswer(output=labels[j], parsed=labels[j], invalid=self.task.validate(labels[j]),
                              confidence=float(margin[i]), embedding=s.embeddings[i],
                              prompt_tokens=s.prompt_tokens[i], output_tokens=self.label_tokens[j], seconds=dt)
                for i, j in enumerate(picked)
            ]
        more: dict[str, Any] = {"embed": True} if self._embeds else {}
        if schemas is not None and any(x is not None for x in schemas):
            if not self._guides:
                raise ValueError(f"the {self.engine.name} engine cannot decode under a JSON schema")
            more["json_schemas"] = list(schemas)
        g = self.engine.generate(self.fmt, messages, self.task.cfg.max_output_tokens, batch_size=n, **more)
        emb = g.embeddings if getattr(g, "embeddings", None) is not None else self.embed(messages)
        dt = (time.perf_counter() - t0) / n
        answers = []
        for i, text in enumerate(g.texts):
            parsed = self.task.parse(text)
            answers.append(StudentAnswer(output=text, parsed=parsed, invalid=self.task.validate(parsed),
                                         confidence=g.mean_logprob[i], embedding=emb[i],
                                         prompt_tokens=g.prompt_tokens[i], output_tokens=g.output_tokens[i], seconds=dt,
                                         truncated=g.output_tokens[i] >= self.task.cfg.max_output_tokens,
                                         tokens=g.tokens[i] if g.tokens is not None else None))
        return answers

    def shorten(self, a: StudentAnswer, max_tokens: int | None, stop: Sequence[str] = ()) -> tuple[str, int, str]:
        """(text, output tokens, finish_reason) of ``a`` as a client's ``stop`` strings and
        ``max_tokens`` end it: the text before the first stop string (the tokens generated up to
        its end counted, ``stop``), or the first ``max_tokens`` tokens if that comes first
        (``length``). What greedy decoding with those limits gives: a prefix of the longer answer."""
        text, n, finish = a.output, a.output_tokens, "length" if a.truncated else "stop"
        if not stop and (max_tokens is None or n <= max_tokens):
            return text, n, finish
        tok = self.engine.tokenizer
        ids = a.tokens if a.tokens is not None else tok.encode(a.output, add_special_tokens=False)
        return self._cut(text, n, finish, ids, max_tokens, stop)

    def shorten_reply(self, reply: str, max_tokens: int | None, stop: Sequence[str] = ()) -> tuple[str, int, str]:
        """``shorten`` for a tools task's reply in words, which the student wrote inside the JSON of
        its answers (``{"content": ...}``): the reply's own tokens, as the student's tokenizer reads them."""
        ids = self.engine.tokenizer.encode(reply, add_special_tokens=False)
        return self._cut(reply, len(ids), "stop", ids, max_tokens, stop)

    def _cut(self, text: str, n: int, finish: str, ids: list[int], max_tokens: int | None,
             stop: Sequence[str]) -> tuple[str, int, str]:
        tok = self.engine.tokenizer

        def upto(k: int) -> str:
            cut = tok.decode(ids[:k], skip_special_tokens=True)
            # Cut inside a character (byte-level BPE writes 約 as two or three tokens), its first bytes
            # decode as U+FFFD: left out, as vLLM's detokenizer holds back a character not yet whole
            # and OpenAI never sends one. A U+FFFD the whole answer has there is the student's own.
            while cut.endswith("\ufffd") and text[len(cut) - 1 : len(cut)] != "\ufffd":
                cut = cut[:-1]
            return cut

        at = first_stop(text, stop)
        if at >= 0:
            lo, hi = 1, len(ids)  # the fewest tokens whose text holds a stop string
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if any(s in upto(mid) for s in stop) else (mid + 1, hi)
            text, n, finish = text[:at], lo, "stop"
        if max_tokens is not None and n > max_tokens:
            text, n, finish = upto(max_tokens), max_tokens, "length"
        return text, n, finish


class TransformersEngine(ServedStudent):
    """A served student on the transformers engine (what ``watch`` embeds with: mean last hidden state)."""

    def __init__(self, lm: LM, task: Task, max_length: int | None = None):
        super().__init__(_Transformers(lm), task, max_length)


class Batcher:
    """Gathers concurrent ``submit`` calls into batches answered by one worker thread.

    A batch takes every request already queued, and waits up to ``wait_ms`` for more only under
    load: when the batch before it held more than one request. A lone client's request then goes
    at once instead of waiting for company that does not come: 2.1 ms of its p50 through the openai
    client with the quickstart student on the 2-core CPU (34.2 vs 36.3 ms; no wait at all: 33.7),
    with the same requests/s at concurrency 16 within the noise (``benchmarks/serve_overhead.json``);
    2.0 ms of a compiled SmolLM2-135M-shaped classifier's on an H200 (6.84 vs 8.84 ms,
    ``serve_overhead_gpu.json``)."""

    def __init__(self, engine: ServedStudent, batch_size: int = 16, wait_ms: float = 2.0):
        self.engine = engine
        self.batch_size = batch_size
        self.wait_s = wait_ms / 1000
        self.always_wait = False  # True: every batch waits, loaded or not (to measure what that costs)
        self._q: queue.Queue[tuple[list[dict], dict | None, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="potstill-batcher", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], schema: dict | None = None) -> Future:
        """A future of the student's answer to one chat; ``schema``: the JSON Schema to decode it
        under (``ServedStudent.answer``), None for the configured decoding."""
        fut: Future = Future()
        self._q.put((messages, schema, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        loaded = False  # the last batch held more than one request
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            deadline = time.perf_counter() + (self.wait_s if loaded or self.always_wait else 0.0)
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            loaded = len(batch) > 1
            try:
                schemas = [x for _, x, _ in batch]
                answers = self.engine.answer([m for m, _, _ in batch], schemas) \
                    if any(x is not None for x in schemas) else self.engine.answer([m for m, _, _ in batch])
                for (_, _, fut), a in zip(batch, answers):
                    fut.set_result(a)
            except Exception as e:  # noqa: BLE001 - the loop lives on
                # One request's failure must not fail the others batched with it (a client could fail
                # everyone's requests with one bad one): each is answered again alone.
                for m, x, fut in batch:
                    if fut.done():
                        continue
                    if len(batch) == 1:
                        fut.set_exception(e)
                        continue
                    try:
                        fut.set_result((self.engine.answer([m]) if x is None else self.engine.answer([m], [x]))[0])
                    except Exception as alone:  # noqa: BLE001 - this request's own failure
                        fut.set_exception(alone)


def embed_all(engine: ServedStudent, messages: list[list[dict]], batch_size: int, desc: str) -> torch.Tensor:
    """(N, H) unit embeddings through ``engine.embed``, batch by batch, with a progress bar."""
    parts = []
    with bar(desc, len(messages)) as advance:
        for i in range(0, len(messages), batch_size):
            parts.append(engine.embed(messages[i : i + batch_size]))
            advance(min(batch_size, len(messages) - i))
    return torch.cat(parts) if parts else torch.zeros(0)
