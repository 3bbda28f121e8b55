"""The transformers engine: the model as ``load_lm`` loads it (``dtype`` auto: fp32 on CPU, bf16 on GPU;
``bfloat16`` on a CPU with AMX runs 1.4-2x faster, see ``benchmarks/engine.json``).

Classification is one forward pass per batch that gives both signals routing needs:
- the label logits at the last position, read through the K label rows of the LM head only
  (``potstill.models.scoring``);
- the input embedding for the out-of-distribution check: the mean of the last hidden states over
  the input's tokens, L2-normalised.
The fixed start of every prompt is run once per format and its KV cache reused by each batch:
a completion format's few-shot prefix (``PromptFormat.prefix``), or a chat's system turn (and any
chat shots), found as ``engines.base.static_ids`` and split off each prompt's token ids. The
quickstart student's system turn is 26 of its ~67 prompt tokens (``benchmarks/engine.json``).
The input embedding stays the mean over the whole prompt: the system turn's hidden states are
summed once with its cache. A batch runs packed, its queries end to end with no padding through
the layers (``potstill.models.packing``), where the model allows; so does a single query after a
cached prefix, which reads the prefix's keys without copying them. Generation copies the same
prefix cache: a batch runs through ``model.generate``, a single greedy prompt through
``models.generation.greedy_lookup`` (drafts from the prompt, checked in one forward); asked with
``embed=True``, it pools each prompt's embedding from the prefill it runs anyway (``embed`` alone
costs a forward over the prompt).

``quantization`` int8 (CPU only, with ``compile``): the decoder's linear layers in int8
(``quantize_int8``, ``potstill.models.int8``); on a 2-core CPU without AMX,
3.94x the fp32 padded engine's throughput at batch 16 and 10.8 vs 32.4 ms p50 at batch 1, each
engine in a process of its own (``benchmarks/engine_int8.json``). Greedy JSON extraction by a
30-layer student there: 0.363 s mean, 2.74x transformers' fp32 ``model.generate``, with 60% of the
outputs identical (CTranslate2 int8: 1.02x, 55%; ``benchmarks/extraction_alone.json``).

On a GPU this is the serving path (bf16); CTranslate2 on CUDA has not been measured here.
Compiled (``compile``) on CUDA, generation decodes on static KV caches through CUDA graphs
(``static`` below; per input on an H200 7.1x the dynamic cache and 2.1x transformers' own static-cache
``generate`` at batch 1, 9.5x and 1.6x at 16, ``benchmarks/gpu_generation.json`` run_6); uncompiled,
it keeps transformers' dynamic cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from potstill.engines.base import static_ids
from potstill.errors import PotstillError, compile_failed
from potstill.models.loading import LM, load_lm
from potstill.models.prompting import PromptFormat, encode_prompt
from potstill.models.generation import Generated, generate
from potstill.models.scoring import (PrefixCache, Scored, build_prefix, decoder, score_labels, score_labels_formats,
                                    stack_prefixes)
from potstill.models.static_decode import StaticCaches


class TransformersEngine:
    name = "transformers"

    def __init__(self, lm: LM):
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.identity = lm.identity
        self._prefixes: dict[tuple, PrefixCache | None] = {}
        self._stacks: dict[tuple, PrefixCache | None] = {}
        self.reuse_prefix = True  # False: a chat's system turn is recomputed per call (to measure what reuse saves)
        self.pack = True  # False: batches run padded (to measure what packing saves)
        # Greedy generation at batch 1 drafts up to this many tokens from the prompt and checks
        # them in one forward (``models.generation.greedy_lookup``); 0: one token per forward.
        self.draft_tokens = 2  # the fastest of 2, 4 and 8 on the 2-core CPU (benchmarks/generation.json)
        self.json_schema: dict | None = None  # guided_json: greedy generations decode under it (``engines.guide``)
        self.compiled = False  # set by compile(): a caller warms it before timing (``warm_compiled``)
        # Static KV caches for generation (``models.static_decode``): set by compile() on CUDA, for
        # models without sliding-window layers; None: the dynamic cache. In bf16 its outputs part from
        # the dynamic path's only at near ties (largest gap 0.125 / 0.188 nats at batch 1 / 16 on an
        # H100, ``benchmarks/gpu_generation.py``'s gate).
        self.static: StaticCaches | None = None
        self.int8 = False  # set by quantize_int8()
        # compile() on CUDA fuses each layer's q/k/v and gate/up into one product each
        # (``models.fused_linear``: 90 fewer GEMM launches per decoding step of SmolLM2-135M); False keeps them.
        self.fuse_projections = True
        # Label scoring replayed from CUDA graphs (``models.score_graphs``): set by compile() on CUDA.
        self.score_graphs: Any = None

    @classmethod
    def load(cls, spec: str, device: str = "auto", num_layers: int | None = None,
             dtype: str = "auto", quantization: str = "auto", compile: bool = False,
             draft_tokens: int = 2) -> "TransformersEngine":
        if quantization == "int8" and not compile:
            raise PotstillError("quantization int8 with engine transformers runs only under torch.compile (eager, "
                                "int8 layers were slower than fp32: benchmarks/engine_int8.json); "
                                "set compile: true beside it (serve.compile, evaluate.compile, teacher.compile)")
        if quantization not in ("auto", "none", "int8"):
            raise PotstillError(f"engine transformers runs unquantized weights (dtype float32 or bfloat16) or "
                                f"int8 ones; quantization '{quantization}' is not one of its"
                                + (" (GGUF mixes are for engine llamacpp)" if quantization.startswith("q") else ""))
        engine = cls(load_lm(spec, device=device, num_layers=num_layers, dtype=dtype))
        engine.draft_tokens = draft_tokens
        if quantization == "int8":
            if engine.lm.device.type != "cpu":
                raise PotstillError(f"quantization int8 with engine transformers runs on a CPU only, not "
                                    f"{engine.lm.device.type} (torch's int8 matrix product on CUDA needs more "
                                    "than 16 rows, so a single short prompt or a decoding step fails); on a GPU "
                                    "use dtype bfloat16")
            from potstill.engines import calibration

            engine.quantize_int8(calibration.load(spec))
        if compile:
            engine.compile()
        return engine

    def quantize_int8(self, calibration: Any = None) -> None:
        """The decoder's linear layers to int8 weights (one scale per output row) that multiply int8
        activations quantized per token as they come (``potstill.models.int8``: torchao's
        ``Int8DynamicActivationInt8Weight`` arithmetic, bit for bit, and CTranslate2's int8), under
        torch.compile's kernels. The embedding and LM head stay as loaded: label scores read the
        head's K rows. ``calibration`` (``engines.calibration.Calibration``, the student's own):
        inputs smoothed by its activation ranges, the MLP output layers' largest input channels multiplied
        in float (``models.int8.OUTLIERS``)."""
        import hashlib

        from potstill.models.int8 import OUTLIERS, quantize_linears

        absmax = calibration.absmax if calibration is not None else None
        if calibration is not None:
            from potstill.engines.calibration import misfit

            layers = {n for n, m in decoder(self.lm.model).named_modules() if isinstance(m, torch.nn.Linear)}
            why = misfit(calibration, self.lm.identity, layers)
            if why:
                raise PotstillError(f"{self.lm.identity}: its int8 calibration does not fit the model ({why}); "
                                    "delete int8_calibration.safetensors or run `potstill train` again")
        try:
            quantize_linears(decoder(self.lm.model), absmax, calibration.alpha if calibration is not None else 0.0)
        except ValueError as e:  # a calibration of another model's shapes
            raise PotstillError(f"{self.lm.identity}: its int8 calibration does not fit the model ({e}); delete "
                                "int8_calibration.safetensors or run `potstill train` again") from None
        tag = "#int8"
        if calibration is not None:
            h = hashlib.sha256()
            for k in sorted(absmax):
                h.update(k.encode())
                h.update(absmax[k].float().numpy().tobytes())
            out = f"-outliers{OUTLIERS}" if OUTLIERS else ""  # their float product changed the numbers
            tag += f"-smooth{calibration.alpha:g}{out}-{h.hexdigest()[:12]}"
        self.lm.identity += tag
        self.int8 = True
        self.identity = self.lm.identity

    def compile(self) -> None:
        """Run the decoder under ``torch.compile`` (inductor, default mode) from now on. Each new kind
        of call (batch 1, a batch, another length) compiles on first use, for a minute or more on a
        small CPU, so a server warms it before taking requests (``serve.engine.ServedStudent.warm``).
        The weights are inputs of the compiled graphs, not constants, so torch's on-disk caches
        serve every later model of the same shape: on the 2-core CPU, the quickstart's int8 student
        compiled and warmed in 104 s on an empty cache and in 19-20 s once any model of its
        architecture had been (the untrained student for the trained one, or the reverse). On CUDA,
        generation also gets static KV caches (``models.static_decode``): each bucket of rows and
        length records its step on first use (one compile for every bucket of rows above one and
        every length, 15-25 s for SmolLM2-135M on an H200)
        and keeps its cache allocated for later batches it holds; a server warms them and freezes
        them (``serve.engine.ServedStudent.warm``). On CUDA each layer's sibling projections also
        become one product each (``fuse_projections``, ``models.fused_linear``), and label scoring
        replays CUDA graphs by bucket (``models.score_graphs``). The identity is tagged: numbers
        may differ slightly."""
        model = self.lm.model
        if self.lm.device.type == "cuda" and self.fuse_projections:
            from potstill.models.fused_linear import fuse_projections

            if fuse_projections(model):
                self.lm.identity += "+fused"
        # Each model compiled keeps a few graphs (the prefix, batch 1, padded and packed batches) under
        # one code object, transformers' forward wrapper; past torch's default limit of 8 entries,
        # a process with two or three compiled models would silently run the rest eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # Not frozen (inductor's ``freezing``, the weights as constants): with the int8 layers of
        # ``models.int8`` frozen graphs ran no faster (trained quickstart student, 2-core CPU, runs one
        # after another: 10.4-12.1 ms p50 at batch 1 frozen vs 9.4-11.5 not; 5.6-6.2 ms per input at
        # batch 16 either way) and their compiled code was not reused across processes (74 s to
        # compile and warm again on a warm cache, against 20 s not frozen).
        setattr(model, model.base_model_prefix, torch.compile(decoder(model)))
        if self.lm.device.type == "cuda":  # decoding on static caches replays CUDA graphs (None: windowed)
            self.static = StaticCaches.for_model(model)
            from potstill.models.score_graphs import ScoreGraphs

            self.score_graphs = ScoreGraphs(model)  # and so does label scoring
        self.lm.identity += "+compiled"
        self.identity = self.lm.identity
        self.compiled = True

    def warm_compiled(self, section: str, run: Callable[[], Any]) -> float:
        """``run`` (calls of each kind the caller will time), so that compiling happens now; the
        seconds. A failure of inductor's (no C++ compiler, ...) is one line naming ``section``."""
        t0 = time.perf_counter()
        try:
            run()
        except PotstillError:
            raise
        except Exception as e:  # noqa: BLE001 - inductor's failures are pages long
            raise compile_failed(section, e) from None
        return time.perf_counter() - t0

    @property
    def num_parameters(self) -> int:
        return self.lm.num_parameters

    def prefix(self, fmt: PromptFormat) -> PrefixCache | None:
        """The KV cache of ``fmt``'s fixed start (few-shot prefix or chat system turn), computed on first use."""
        key = (*fmt.key(), self.reuse_prefix)
        if key not in self._prefixes:
            if fmt.kind != "chat":  # a completion format's few-shot prefix (a chat format has none)
                self._prefixes[key] = build_prefix(self.lm, fmt)
            else:
                ids = static_ids(self.tokenizer, fmt) if self.reuse_prefix else []
                self._prefixes[key] = build_prefix(self.lm, fmt, ids=ids)
        return self._prefixes[key]

    def score_labels(self, fmt: PromptFormat, messages: list[list[dict]], label_ids: list[int],
                     batch_size: int = 16, progress: Any = None, max_length: int | None = None) -> Scored:
        return score_labels(self.lm, fmt, messages, label_ids, batch_size=batch_size, prefix=self.prefix(fmt),
                            progress=progress, max_length=max_length, pack=self.pack, graphs=self.score_graphs)

    def score_labels_formats(self, fmts: list[PromptFormat], messages: list[list[dict]], label_ids: list[int],
                             batch_size: int = 16) -> list[Scored]:
        """Formats whose few-shot prefixes have one length (shot orders) in one forward per batch."""
        prefixes = [self.prefix(f) for f in fmts]
        key = tuple(id(p) for p in prefixes)
        if key not in self._stacks:  # stacked once, like each prefix
            self._stacks[key] = stack_prefixes(prefixes) if len(fmts) > 1 and all(prefixes) else None
        return score_labels_formats(self.lm, fmts, messages, label_ids, prefixes, self._stacks[key],
                                    batch_size=batch_size, pack=self.pack, graphs=self.score_graphs)

    def generate(self, fmt: PromptFormat, messages: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 16, progress: Any = None, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, embed: bool = False,
                 json_schemas: Sequence[dict | None] | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generated:
        """``json_schemas``: a JSON Schema per message to decode it under greedily (a served
        client's ``response_format``); None entries, and every message without it, decode under
        ``json_schema`` (``guided_json``), or unguided where that is unset. ``on_text`` (one
        message): each piece of its answer's text as it is decoded (a served escalation streamed)."""
        schema: Any = self.json_schema
        if json_schemas is not None:
            schema = [s if s is not None else self.json_schema for s in json_schemas]
        return generate(self.lm, fmt, messages, max_new_tokens, batch_size=batch_size, progress=progress,
                        temperature=temperature, stop=stop, seed=seed, prefix=self.prefix(fmt),
                        lookup=self.draft_tokens, static=self.static, embed=embed,
                        json_schema=schema if temperature <= 0 else None, on_text=on_text)

    @torch.inference_mode()
    def embed(self, fmt: PromptFormat, messages: list[list[dict]], max_length: int = 2048) -> torch.Tensor:
        """(N, H): mean last hidden state over each whole prompt (left-padded batch), L2-normalised."""
        tok = self.tokenizer
        prompts = [encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True)[-max_length:]
                   for m in messages]
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            mask[i, T - len(p) :] = 1
        dev = self.lm.device
        h = decoder(self.lm.model)(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
        m = mask.to(dev).unsqueeze(-1).float()
        pooled = (h.float() * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()
