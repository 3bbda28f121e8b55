"""What ``guided_json`` costs: greedy JSON extraction with and without decoding under the task's
schema, side by side in one process on the same student, prompts and budget.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/guided_json.py [--student bundled:smollm2-135m-instruct]
    PYTHONPATH=src:. python benchmarks/guided_json.py --student /tmp/m/smol.gguf --device cuda --out gpu.json

The student is the bundled SmolLM2-135M-Instruct, untrained (so many of its free answers are not
the JSON asked for: the case guided decoding is for), on the 8 invoices of
``examples/data/invoices.jsonl`` with ``examples/vllm-extraction.yaml``'s task and schema, each
prompt asked ``--repeat`` times. Both ways run ``model.generate`` through potstill's
``generation.generate`` (``lookup=0``: no drafts, so the unguided baseline is the same decoding loop
without the processor), at batch 1 and in one batch of 8, taking turns input by input; at batch 1
also the engine's unguided default, drafts of 2 (its fastest batch-1 path, which guidance forgoes),
compared per generated token.

Reported per way: seconds per input and per decoding step (a batch's step decodes all its rows,
until its longest ends), for guided ways the guide's own host time per guided row and step and its
share of the wall time (``GuideClock``: what a faster step on a GPU cannot shrink), the share of
answers that parse as
JSON and that pass the task's validation (the schema, ``pattern`` included) and that ran to the
budget, and the overhead of guidance per step. Correctness (exit 1): every guided answer is a start
of a document the guide accepts, and one that ended before the budget parses as JSON; and where an
unguided answer is itself a whole document the guide accepts, the guided answer is the same text
(the guide then never had to move a token). ``--break-guide`` runs the guided way unguided: exit 1
("8 guided answers are not a start the guide accepts" with ``--repeat 1``).

``--device cuda``: the same in the GPU's dtype (bf16), plus the engine's own paths there, ``static``:
a compiled engine (``compile: true``, what ``serve.compile`` gives) decoding on static KV caches,
unguided (CUDA graphs of 8 steps: the fastest unguided path) and guided (one step a call, replayed
from each cache's guided CUDA graph; the host picks each token from the step's likeliest 32, or
from its whole log-probabilities where none fits), warmed once before the timed rounds, at batch 1
and 8, compared per decoding step and per input; ``guided-static-ungraphed``: the same guided step
called as a compiled function without the graph (the path before 2026-12-05, less its second
forward where none of the 32 fitted), in the same rounds.
Guided on static caches must pass the same checks, both ways must give the same answers (exit 1),
and its share of answers identical to ``model.generate``'s guided ones is reported (bf16 kernels
part at near ties). ``--static`` on a CPU runs those rows uncompiled (a smoke run of the same
code).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from potstill.config import TaskConfig
from potstill.models.generation import generate
from potstill.models.json_constraint import JsonPrefix
from potstill.models.loading import load_lm
from potstill.students import student_format
from potstill.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--static", action="store_true", help="on a CPU too: the static-cache rows, uncompiled")
    ap.add_argument("--break-guide", action="store_true",
                    help="run the 'guided' way unguided, to see the correctness section fail (exit 1)")
    args = ap.parse_args()

    preset = yaml.safe_load((ROOT / "examples" / "vllm-extraction.yaml").read_text())
    task = get_task(TaskConfig.model_validate(preset["task"]))
    schema = task.cfg.json_schema
    inputs = [json.loads(line)["input"] for line in (ROOT / "examples" / "data" / "invoices.jsonl").read_text().splitlines()]
    messages = [[{"role": "user", "content": t}] for t in inputs]
    t0 = time.perf_counter()
    lm = load_lm(args.student, device=args.device)
    load_s = time.perf_counter() - t0
    fmt = student_format(lm, task)
    n = args.max_new_tokens
    engine = None
    if lm.device.type == "cuda" or args.static:  # the engine's static caches (CUDA graphs on a GPU)
        from potstill.engines import load_engine
        from potstill.models.static_decode import StaticCaches

        on_gpu = lm.device.type == "cuda"
        engine = load_engine("transformers", args.student, device=args.device, compile=on_gpu)
        if not on_gpu:
            engine.static = StaticCaches.for_model(engine.lm.model)
        t = time.perf_counter()
        for guided, graphs in ((False, True), (True, True), (True, False)):
            engine.json_schema = schema if guided else None
            with contextlib.nullcontext() if graphs else ungraphed(engine.static):
                for m in messages:
                    engine.generate(fmt, [m], n, batch_size=1)
                engine.generate(fmt, messages, n, batch_size=len(messages))
        engine.static.frozen = True
        print(f"  static caches warmed in {time.perf_counter() - t:.1f} s", flush=True)

    def run(batch: int, guided: bool, msgs: list, lookup: int = 0) -> tuple[float, object]:
        t = time.perf_counter()
        g = generate(lm, fmt, msgs, n, batch_size=batch, lookup=lookup,
                     json_schema=schema if guided and not args.break_guide else None)
        return time.perf_counter() - t, g

    run(1, True, messages[:1])  # warm both paths (first calls allocate)
    run(1, False, messages[:1])
    answers: dict[str, list[str]] = {"unguided": [], "guided": []}
    tokens: dict[str, list[int]] = {"unguided": [], "guided": []}
    # The engine's own unguided default at batch 1: drafts of 2 (guided decoding takes none), its
    # fastest batch-1 path; a forward may keep several tokens, so it is compared per token.
    keys = [f"{way}@{b}" for way in ("unguided", "guided") for b in ("b1", "b8")] + ["unguided-drafts@b1"]
    statics = ("unguided-static", "guided-static", "guided-static-ungraphed")
    if engine is not None:
        keys += [f"{way}@{b}" for way in statics for b in ("b1", "b8")]
        for way in statics[1:]:
            answers[way], tokens[way] = [], []
    rows: dict[str, dict] = {k: {"seconds": [], "tokens": 0, "steps": 0, "wall": 0.0, "guide_s": 0.0,
                                 "guide_row_steps": 0, "guide_beyond_top": 0} for k in keys}
    clock = GuideClock()
    clock.take()  # the warm-up's

    def record(key: str, dt: float, g: Any) -> None:
        """One timed call of ``key``'s way: seconds per input, tokens, and steps (a batch decodes until
        its longest row ends; at batch 1 a step is a token, with drafts too: tokens, not forwards)."""
        r = rows[key]
        r["seconds"].append(dt / len(g.texts))
        r["tokens"] += sum(g.output_tokens)
        r["steps"] += max(g.output_tokens)
        r["wall"] += dt
        spent, row_steps, beyond = clock.take()
        r["guide_s"] += spent
        r["guide_row_steps"] += row_steps
        r["guide_beyond_top"] += beyond

    def static_run(msgs: list, way: str) -> tuple[float, object]:
        engine.json_schema = schema if way.startswith("guided") and not args.break_guide else None
        with ungraphed(engine.static) if way.endswith("ungraphed") else contextlib.nullcontext():
            t = time.perf_counter()
            g = engine.generate(fmt, msgs, n, batch_size=len(msgs))
            return time.perf_counter() - t, g

    for _ in range(args.repeat):
        for m in messages:  # batch 1, taking turns
            for way in ("unguided", "guided"):
                dt, g = run(1, way == "guided", [m])
                record(f"{way}@b1", dt, g)
                answers[way].append(g.texts[0])
                tokens[way].append(g.output_tokens[0])
            record("unguided-drafts@b1", *run(1, False, [m], lookup=2))
            for way in statics if engine is not None else ():
                dt, g = static_run([m], way)
                record(f"{way}@b1", dt, g)
                if way in answers:
                    answers[way].append(g.texts[0])
                    tokens[way].append(g.output_tokens[0])
        for way in statics if engine is not None else ():
            record(f"{way}@b8", *static_run(messages, way))
        for way in ("unguided", "guided"):  # one batch of all 8
            record(f"{way}@b8", *run(8, way == "guided", messages))
    for key, r in rows.items():
        secs, wall = r.pop("seconds"), r.pop("wall")
        guide_s, guide_rows, beyond = r.pop("guide_s"), r.pop("guide_row_steps"), r.pop("guide_beyond_top")
        if guide_rows:  # the guide's host work per guided row and step (GuideClock)
            r["guide_ms_per_row_step"] = round(1000 * guide_s / guide_rows, 3)
            r["guide_share_of_step"] = round(guide_s / wall, 3)
            # Row-steps where none of the likeliest 32 tokens fitted (model.generate's path; on static
            # caches such a step brings its whole log-probabilities to the host): counted where _pick ran.
            r["guide_row_steps_beyond_top32"] = beyond
        inputs_timed = len(secs) * (1 if key.endswith("b1") else len(messages))
        r.update(seconds_per_input_median=round(statistics.median(secs), 4),
                 ms_per_step=round(1000 * wall / r["steps"], 2), mean_tokens=round(r["tokens"] / inputs_timed, 1))

    def parses(t: str) -> bool:
        try:
            json.loads(t)
        except ValueError:
            return False
        return True

    def valid(t: str) -> bool:
        return task.validate(task.parse(t)) is None

    quality = {way: {"json": sum(map(parses, a)) / len(a), "valid": sum(map(valid, a)) / len(a)}
               for way, a in answers.items()}
    failures = []
    # An answer that ran to the token budget is cut mid-document, guided or not: counted apart.
    for way in tokens:
        quality[way]["at_budget"] = sum(k >= n for k in tokens[way]) / len(tokens[way])
    for way in [w for w in answers if w.startswith("guided")]:
        unfinished = [t for t, k in zip(answers[way], tokens[way]) if not parses(t) and k < n]
        if unfinished:
            failures.append(f"{len(unfinished)} {way} answers ended before the budget and are not JSON")
        off = [t for t in answers[way] if not JsonPrefix(schema).feed(t)]
        if off:
            failures.append(f"{len(off)} {way} answers are not a start the guide accepts (first: {off[0]!r})")
    if "guided-static" in answers:  # bf16 kernels part at near ties: reported, not a failure
        same = sum(a == b for a, b in zip(answers["guided"], answers["guided-static"]))
        quality["guided-static"]["identical_to_guided"] = same / len(answers["guided"])
        # The graph replays the same compiled step's kernels: the same answers, or the graph is wrong.
        differ = sum(a != b for a, b in zip(answers["guided-static"], answers["guided-static-ungraphed"]))
        if differ:
            failures.append(f"{differ} guided answers differ between the guided step's graph and the step alone")
    moved = 0
    for free, guided in zip(answers["unguided"], answers["guided"]):
        p = JsonPrefix(schema)
        if p.feed(free) and p.can_end() and free != guided:
            moved += 1
    if moved:
        failures.append(f"{moved} guided answers differ from an unguided answer the guide accepts whole")
    # Per decoding step, not per answer: guided answers end sooner (unguided ones mostly run to the budget).
    overhead = {b: round(rows[f"guided@{b}"]["ms_per_step"] / rows[f"unguided@{b}"]["ms_per_step"], 3)
                for b in ("b1", "b8")}
    # Against the fastest unguided batch-1 path (drafts), per generated token.
    overhead["b1_vs_drafts_per_token"] = round(rows["guided@b1"]["ms_per_step"]
                                               / rows["unguided-drafts@b1"]["ms_per_step"], 3)
    if engine is not None:  # against the engine's unguided static path (CUDA graphs on a GPU), per step
        for b in ("b1", "b8"):
            base = rows[f"unguided-static@{b}"]["ms_per_step"]
            overhead[f"{b}_generate_vs_static"] = round(rows[f"guided@{b}"]["ms_per_step"] / base, 3)
            overhead[f"{b}_static_vs_static"] = round(rows[f"guided-static@{b}"]["ms_per_step"] / base, 3)
            overhead[f"{b}_static_ungraphed_vs_static"] = round(
                rows[f"guided-static-ungraphed@{b}"]["ms_per_step"] / base, 3)
    result = {"student": lm.identity, "load_s": round(load_s, 1), "inputs": len(messages), "repeat": args.repeat,
              "max_new_tokens": n, "rows": rows, "quality": quality, "guided_over_unguided_ms_per_step": overhead,
              "example": {"unguided": answers["unguided"][0], "guided": answers["guided"][0]},
              "failures": failures, "machine": _machine()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rows", "quality", "guided_over_unguided_ms_per_step", "failures")},
                     indent=2))
    return 1 if failures else 0


@contextlib.contextmanager
def ungraphed(static: Any) -> Any:
    """Guided decoding on ``static`` as it ran before each cache had a guided graph: its guided
    ``Steps`` hidden and none made, so ``greedy`` calls the compiled ``step_top`` itself."""
    plain_get, own = static.get, static._guided
    static.get = lambda rows, length, greedy=False, guided=False: plain_get(rows, length, greedy)
    static._guided = {}
    try:
        yield
    finally:
        del static.get
        static._guided = own


class GuideClock:
    """The host time the guide (``json_guide.JsonSchemaLogits``) spends, per guided row and step:
    its entry points wrapped (``__call__`` in ``model.generate``; ``pick``, and ``choose`` where pick
    found no fit, on static caches), the GPU drained before each so that its queued work is not
    counted, rows counted once a step (the live guided rows of ``__call__`` and ``pick``)."""

    def __init__(self) -> None:
        from potstill.models import json_guide

        self.seconds, self.row_steps, self.inside, self.beyond = 0.0, 0, False, 0
        cls = json_guide.JsonSchemaLogits
        for name, counts in (("__call__", True), ("pick", True), ("choose", False)):
            setattr(cls, name, self._timed(getattr(cls, name), counts))
        first_pick = cls._pick

        def counted(guide: Any, gen: Any, text: Any, state: Any, scores: Any, first: list[int]) -> Any:
            t = first_pick(guide, gen, text, state, scores, first)
            self.beyond += t not in first  # none of the likeliest tries[0] fitted: the logits searched further
            return t

        cls._pick = counted

    def _timed(self, fn: Any, counts: bool) -> Any:
        import torch

        def wrapper(guide: Any, gens: Any, arg: Any) -> Any:
            if self.inside:  # choose inside __call__: already on the clock
                return fn(guide, gens, arg)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.inside, t = True, time.perf_counter()
            try:
                return fn(guide, gens, arg)
            finally:
                self.seconds += time.perf_counter() - t
                self.inside = False
                if counts:  # __call__ gets the whole ids (prompt first), pick the answers' tokens
                    answers = [g[guide.start:] for g in gens.tolist()] if hasattr(gens, "tolist") else gens
                    self.row_steps += sum(1 for r, g in enumerate(answers) if guide._schema(r) is not None
                                          and not any(x in guide.ends for x in g))

        return wrapper

    def take(self) -> tuple[float, int, int]:
        out = (self.seconds, self.row_steps, self.beyond)
        self.seconds, self.row_steps, self.beyond = 0.0, 0, 0
        return out


def _machine() -> dict:
    import os
    import platform

    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__}


if __name__ == "__main__":
    sys.exit(main())
