"""A classifying student served on a GPU with its label scoring replayed from CUDA graphs
(``models.score_graphs``, what ``serve.compile`` does on CUDA since 2026-12-03) against the same
compiled engine scoring packed batches without them (the engine before).

    PYTHONPATH=src:. python benchmarks/score_graphs.py --texts texts.jsonl --n 32 --out score_graphs.json
    PYTHONPATH=src:. python benchmarks/score_graphs.py --tiny                 # CPU smoke run (no recording there)
    PYTHONPATH=src:. python benchmarks/score_graphs.py --tiny --break-graphs  # the gate failing
    PYTHONPATH=src:. python benchmarks/score_graphs.py --teacher --texts texts.jsonl --n 16 --out teacher_graphs.json

(texts.jsonl: ``gpu_generation.bbc_texts(96)``.) A SmolLM2-135M-shaped model with random bf16
weights (``--tiny``: a tiny random Llama in fp32 on the CPU), loaded twice and served as ``potstill
serve`` serves a classification student with ``serve.compile`` (the quickstart's 5 topics, the
system turn cached, projections fused), taking turns in one process (``served_turns.score_turns``):
each text alone and all ``--n`` as one batch, ms per input.

Correctness (exit 1 past it, after writing the JSON): the graphs' label probabilities within
``serve_gpu.PROB_TOL`` of the packed path's, and each input's embedding (what serve's
out-of-distribution check reads) at a cosine of at least ``MIN_COSINE`` to it. ``--break-graphs``
reads each row's hidden state one token before its last, which the gate must catch; the JSON's
``label_prob_spread`` (the largest minus the smallest probability of a label across the inputs)
shows how far apart inputs score, i.e. what a wrong position moves.

``--teacher``: a local teacher's scoring instead (``teachers.local``, ``generate`` with
``teacher.compile``): a Gemma-3-270M-shaped model with random bf16 weights (sliding-window layers of
512 tokens under a longer prefix; ``--tiny``: a tiny Gemma 3 with an 8-token window), ``--shots``
few-shot examples cut from the texts after them, in ``--orders`` shuffled orders whose prefixes
are stacked as rows (``scoring.stack_prefixes``), each input scored under all of them in one
forward and the orders' probabilities averaged, as the teacher does. 32 texts of 150 words under
three orders need 3 x 32 x 193 slots, past ``score_graphs.MAX_SLOTS``: since 2026-12-03 such a
batch replays in parts of 16 per order (``--n 32``, ``teacher_graphs_parts.json``); before, it ran
packed.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.checks import finish
from benchmarks.fused_decode import lively_model
from benchmarks.gpu_generation import load_texts
from benchmarks.serve_gpu import LABELS, PROB_TOL
from benchmarks.served_turns import add_args, compare_scores, header, model_and_texts, score_results, score_turns

VARIANTS = ("packed", "graphs")
MIN_COSINE = 0.99  # bf16 body: the embeddings of one input by two paths


def served(spec: str, device: str, graphs: bool):
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.models.score_graphs import ScoreGraphs
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task

    engine = load_engine("transformers", spec, device=device)
    engine.compile()
    engine.score_graphs = ScoreGraphs(engine.lm.model) if graphs else None  # compile() sets them on CUDA only
    task = get_task(load_config(overrides={"task": {"type": "classification", "labels": LABELS}}).task)
    return ServedStudent(engine, task)


def break_graphs() -> None:
    """From now on each replay reads every row's hidden state one token before its last."""
    from potstill.models import score_graphs

    real = score_graphs._Graph._forward

    def wrong(self) -> None:
        self.ends.sub_(1).clamp_(min=0)  # recorded with the forward: each replay moves the ends it was given
        real(self)

    score_graphs._Graph._forward = wrong


def cosines(students: dict, msgs: list, teacher: bool) -> float:
    """The smallest cosine between the two variants' embeddings of each input (scored as one batch;
    ``teacher``: a teacher's first shot order)."""
    embs = [s.engine.score_labels_formats(s.fmts, msgs, s.label_ids, batch_size=len(msgs))[0].embeddings
            if teacher else s.engine.score_labels(s.fmt, msgs, s.label_ids, batch_size=len(msgs)).embeddings
            for s in students.values()]
    return float((embs[0] * embs[1]).sum(-1).min())


def gemma3_shaped(path: Path, tiny: bool) -> str:
    """A random Gemma-3-270M-shaped model (bf16; ``tiny``: a tiny fp32 Gemma 3 whose window is 8
    tokens) with the tests' word-level tokenizer."""
    import sys

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    shape = (dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=8, sliding_window=8, max_position_embeddings=4096) if tiny else
             dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                  max_position_embeddings=32768, rope_theta=1000000.0))
    cfg = Gemma3TextConfig(**shape, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = Gemma3ForCausalLM(cfg)
    (model if tiny else model.to(torch.bfloat16)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def teacher(spec: str, device: str, graphs: bool, texts: list[str], shots: int, orders: int):
    """A compiled engine scoring as a local teacher with ``orders`` shot orders does."""
    from potstill.engines import load_engine
    from potstill.models.prompting import PromptFormat, label_token_ids
    from potstill.models.score_graphs import ScoreGraphs

    engine = load_engine("transformers", spec, device=device)
    engine.compile()
    engine.score_graphs = ScoreGraphs(engine.lm.model) if graphs else None
    examples = [(" ".join(t.split()[:40]), LABELS[i % len(LABELS)]) for i, t in enumerate(texts[:shots])]
    fmts = [PromptFormat(kind="completion", instruction="Classify the BBC News article by its topic.",
                         answer_prefix="Topic:", shots=random.Random(k).sample(examples, len(examples)))
            for k in range(orders)]
    return SimpleNamespace(engine=engine, fmts=fmts, label_ids=label_token_ids(engine.tokenizer, fmts[0], LABELS))


def teacher_probs(s, batch: list) -> torch.Tensor:
    """The label probabilities of ``batch`` averaged over the shot orders, as ``teachers.local`` does."""
    scored = s.engine.score_labels_formats(s.fmts, batch, s.label_ids, batch_size=len(batch))
    return torch.stack([torch.softmax(x.logits, -1) for x in scored]).mean(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, "a tiny random Llama on the CPU (smoke run)")
    ap.add_argument("--break-graphs", action="store_true", help="replays read the wrong position (the gate must fail)")
    ap.add_argument("--teacher", action="store_true", help="a local teacher's stacked shot orders (Gemma 3 shape)")
    ap.add_argument("--shots", type=int, default=48, help="--teacher: few-shot examples in the prefix")
    ap.add_argument("--orders", type=int, default=3, help="--teacher: shot orders, stacked")
    a = ap.parse_args(argv)
    if a.break_graphs:
        break_graphs()
    if a.teacher:
        device, a.rounds = ("cpu", min(a.rounds, 2)) if a.tiny else ("cuda", a.rounds)
        texts = load_texts(a.tiny, a.texts)
        msgs = [[{"role": "user", "content": t}] for t in texts[: a.n]]
        spec = gemma3_shaped(Path(tempfile.mkdtemp()) / "gemma3", a.tiny)
        # The shots come from the texts after the scored ones.
        students = {v: teacher(spec, device, v == "graphs", texts[a.n:] or texts, a.shots, a.orders) for v in VARIANTS}
        prefix = students["graphs"].engine.prefix(students["graphs"].fmts[0])
        print(f"few-shot prefix: {prefix.length} tokens, {a.orders} orders", flush=True)
        run = score_turns(students, msgs, a.rounds, teacher_probs)
    else:
        spec, device, msgs = model_and_texts(a, lively_model)
        students = {v: served(spec, device, v == "graphs") for v in VARIANTS}
        run = score_turns(students, msgs, a.rounds)
    compared, failures = compare_scores(run, "packed", "graphs", PROB_TOL)
    cos = cosines(students, msgs, a.teacher)
    print(f"smallest embedding cosine {cos:.5f}")
    if cos < MIN_COSINE:
        failures.append(f"an embedding's cosine to the packed path's is {cos:.4f} (< {MIN_COSINE})")
    p = run["probs"]["packed"]
    if a.teacher:
        stacks = {g.stacks for g in students["graphs"].engine.score_graphs._graphs.values()}
        if stacks != {a.orders}:
            failures.append(f"the teacher's graphs held {sorted(stacks)} prefix rows, not the {a.orders} orders stacked")
    out = {**header(a, device), "identities": {v: s.engine.identity for v, s in students.items()},
           **score_results(run, compared), "min_embedding_cosine": cos,
           "label_prob_spread": float((p.max(0).values - p.min(0).values).max()),
           "graphs_recorded": len(students["graphs"].engine.score_graphs),
           "graph_buckets": sorted([g.stacks, g.block, g.length] for g in students["graphs"].engine.score_graphs._graphs.values())}
    if a.teacher:
        out.update(model="random Gemma-3-270M shape" if not a.tiny else "tiny Gemma 3", shots=a.shots,
                   orders=a.orders, prefix_tokens=prefix.length)
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
