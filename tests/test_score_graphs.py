"""Label scoring replayed from CUDA graphs (``potstill.models.score_graphs``): a batch padded to its
bucket scores as the packed path does, on the CPU (the same forward, not recorded) and on CUDA
(recorded once per bucket, replayed with each batch's tokens)."""

import pytest
import torch

from potstill.engines import load_engine
from potstill.models import score_graphs
from potstill.models.prompting import PromptFormat, label_token_ids
from potstill.models.score_graphs import ScoreGraphs, bucket
from tests.helpers.tiny import make_model_dir, make_tokenizer
from tests.test_packing import CHAT, LABELS, MSGS

LONG = [[{"role": "user", "content": " ".join(["the team won the game"] * 110)}]]  # past the longest bucket


def test_buckets_round_rows_to_powers_of_two_and_keys_to_multiples_of_eight():
    assert bucket(1, 5, 0) == (1, 16)
    assert bucket(3, 16, 0) == (4, 16)
    assert bucket(3, 17, 0) == (4, 32)
    assert bucket(5, 20, 13) == (8, 35)  # 13 + 35 = 48 keys
    assert bucket(1, 513, 0) is None  # longer than LENGTHS: the packed path
    assert bucket(64, 512, 0) is None  # more slots than MAX_SLOTS
    # Under 3 stacked shot orders every order's block counts: 3 x 16 x 193 fits, 3 x 32 x 193 does not.
    assert bucket(16, 169, 2223, stacks=3) == (16, 193)  # 2223 + 193 = 2416 keys
    assert bucket(32, 169, 2223, stacks=3) is None


def _scores(engine, msgs, batch_size):
    ids = label_token_ids(engine.tokenizer, CHAT, LABELS)
    return engine.score_labels(CHAT, msgs, ids, batch_size=batch_size)


@pytest.mark.parametrize("reuse_prefix", [True, False], ids=["system_turn_cached", "no_prefix"])
def test_bucketed_batches_score_as_the_packed_path(tiny_model, reuse_prefix, monkeypatch):
    """Batches of 1, 2 (of 5: 2, 2, 1) and 5 (padded to 8 rows) with the chat's system turn cached
    or not: the packed path's label logits and embeddings; a query past the longest bucket runs
    packed. Each bucket is made once and reused by later batches of its shape."""
    plain = load_engine("transformers", str(tiny_model), device="cpu")
    engine = load_engine("transformers", str(tiny_model), device="cpu")
    plain.reuse_prefix = engine.reuse_prefix = reuse_prefix
    engine.score_graphs = ScoreGraphs(engine.lm.model)  # what compile() sets on CUDA
    for batch_size in (1, 2, 5, 2):
        want, got = _scores(plain, MSGS, batch_size), _scores(engine, MSGS, batch_size)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.embeddings, want.embeddings, rtol=1e-5, atol=1e-5)
        assert got.prompt_tokens == want.prompt_tokens
    assert sorted(rows for _, rows, _ in engine.score_graphs._graphs) == [1, 2, 8]  # every query under 16 tokens
    made = len(engine.score_graphs)
    monkeypatch.setattr(score_graphs, "_Graph", None)  # nothing more is made: a long query runs packed
    torch.testing.assert_close(_scores(engine, LONG, 1).logits, _scores(plain, LONG, 1).logits, rtol=1e-5, atol=1e-5)
    assert len(engine.score_graphs) == made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_scoring_on_a_gpu_replays_a_graph_per_bucket(tmp_path):
    """A compiled engine on CUDA (float32) records a graph per bucket and replays it with each batch's
    tokens: the plain engine's label logits and embeddings, batches in both orders (the same
    buckets, other tokens in them), and nothing compiled after the first pass."""
    from torch._dynamo.utils import counters

    path = make_model_dir(tmp_path)
    plain = load_engine("transformers", str(path), device="cuda", dtype="float32")
    engine = load_engine("transformers", str(path), device="cuda", dtype="float32", compile=True)
    assert plain.score_graphs is None and engine.score_graphs is not None
    for i, msgs in enumerate((MSGS, MSGS[::-1])):
        if i:
            before = counters["stats"]["unique_graphs"]
        for batch_size in (1, 2, 5):
            want, got = _scores(plain, msgs, batch_size), _scores(engine, msgs, batch_size)
            torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.embeddings, want.embeddings, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == before
    assert len(engine.score_graphs) == 3
    assert all(g.graph is not None for g in engine.score_graphs._graphs.values())


def test_a_recording_that_fails_leaves_scoring_to_the_packed_path(tiny_model, monkeypatch, caplog):
    """Where a bucket cannot be recorded (here: making it raises, as a forward that synchronises
    does while recording on CUDA), one warning names the reason and every batch from then on
    scores through the packed path, with its results."""
    plain = load_engine("transformers", str(tiny_model), device="cpu")
    engine = load_engine("transformers", str(tiny_model), device="cpu")
    engine.score_graphs = ScoreGraphs(engine.lm.model)

    def fails(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(score_graphs._Graph, "__init__", fails)
    with caplog.at_level("WARNING", logger="potstill.models.score_graphs"):
        for batch_size in (1, 5):
            torch.testing.assert_close(_scores(engine, MSGS, batch_size).logits, _scores(plain, MSGS, batch_size).logits,
                                       rtol=1e-5, atol=1e-5)
    assert engine.score_graphs.off == "RuntimeError: operation not permitted when stream is capturing"
    assert len(engine.score_graphs) == 0
    assert [r.getMessage().count("batches run packed") for r in caplog.records] == [1]


ORDERS = [PromptFormat(kind="completion", instruction="classify the text", answer_prefix="topic:", shots=shots)
          for shots in ([("the match", "sports"), ("the phone", "tech"), ("a vote", "politics")],
                        [("a vote", "politics"), ("the match", "sports"), ("the phone", "tech")])]


def _gemma3_dir(path):
    """A tiny Gemma 3: a sliding-window layer (8 tokens, shorter than the few-shot prefix) and a full one."""
    import transformers as T

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = T.Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                             sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    T.Gemma3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_stacked_shot_orders_score_from_buckets_as_without_them(tmp_path, kind):
    """A teacher's two shot orders stacked as prefix rows: batches of 1, then of 3 (a bucket of 4
    rows per order, the last row of each block empty) and 2, give the label logits and embeddings
    of the engine without graphs, on a Llama and on a Gemma 3 whose sliding window is shorter than
    the prefix; every bucket holds both orders' blocks."""
    path = make_model_dir(tmp_path / "m") if kind == "llama" else _gemma3_dir(tmp_path / "m")
    plain = load_engine("transformers", str(path), device="cpu")
    engine = load_engine("transformers", str(path), device="cpu")
    engine.score_graphs = ScoreGraphs(engine.lm.model)
    assert plain.prefix(ORDERS[0]).length == plain.prefix(ORDERS[1]).length
    _orders_match(plain, engine, 1e-5)


def _orders_match(plain, engine, tol: float) -> None:
    """``engine`` (with score graphs) scores ``ORDERS`` stacked as ``plain`` does, in batches of 1 and
    of 3, and made one bucket per batch shape, each with a block of rows per order."""
    ids = label_token_ids(plain.tokenizer, ORDERS[0], LABELS)
    for batch_size in (1, 3):
        want = plain.score_labels_formats(ORDERS, MSGS, ids, batch_size=batch_size)
        got = engine.score_labels_formats(ORDERS, MSGS, ids, batch_size=batch_size)
        for w, g in zip(want, got):
            torch.testing.assert_close(g.logits, w.logits, rtol=tol, atol=tol)
            torch.testing.assert_close(g.embeddings, w.embeddings, rtol=tol, atol=tol)
            assert g.prompt_tokens == w.prompt_tokens
    graphs = engine.score_graphs._graphs.values()
    assert sorted((g.stacks, g.block) for g in graphs) == [(2, 1), (2, 2), (2, 4)]


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
@pytest.mark.parametrize("stacked", [False, True], ids=["one_prefix", "two_orders"])
def test_a_batch_past_the_slots_replays_in_parts_that_fit(tmp_path, stacked, device, monkeypatch):
    """With room for two rows per order (``MAX_SLOTS`` cut to 48 per order: queries here pad to 16-23
    slots), a batch of 5 replays as parts of 2, 2 and 1 (3 under 2 orders: 2 and 1), each part's
    outputs put back in the batch's order: the label logits and embeddings of the engine without
    graphs, and no bucket of more than two rows per order was made. On CUDA (compiled, float32)
    the 2-row graph replays twice in one batch: its first part's outputs must be kept apart."""
    monkeypatch.setattr(score_graphs, "MAX_SLOTS", 48 * (2 if stacked else 1))
    path = make_model_dir(tmp_path / "m")
    plain = load_engine("transformers", str(path), device=device, dtype="float32")
    engine = load_engine("transformers", str(path), device=device, dtype="float32", compile=device == "cuda")
    if device == "cpu":
        engine.score_graphs = ScoreGraphs(engine.lm.model)  # what compile() sets on CUDA
    tol = 1e-5 if device == "cpu" else 1e-4
    if stacked:
        ids = label_token_ids(plain.tokenizer, ORDERS[0], LABELS)
        want = plain.score_labels_formats(ORDERS, MSGS, ids, batch_size=3)
        got = engine.score_labels_formats(ORDERS, MSGS, ids, batch_size=3)
    else:
        want, got = [_scores(plain, MSGS, 5)], [_scores(engine, MSGS, 5)]
    for w, g in zip(want, got):
        torch.testing.assert_close(g.logits, w.logits, rtol=tol, atol=tol)
        torch.testing.assert_close(g.embeddings, w.embeddings, rtol=tol, atol=tol)
    made = sorted((g.stacks, g.block) for g in engine.score_graphs._graphs.values())
    assert made == ([(2, 1), (2, 2)] if stacked else [(1, 1), (1, 2)])
    assert device == "cpu" or all(g.graph is not None for g in engine.score_graphs._graphs.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_teacher_orders_on_a_gpu_replay_stacked_graphs(tmp_path):
    """A compiled engine on CUDA (float32) scoring a Gemma 3's two stacked shot orders records a
    graph per bucket, each holding both orders, with the plain engine's label logits and embeddings."""
    path = _gemma3_dir(tmp_path / "m")
    plain = load_engine("transformers", str(path), device="cuda", dtype="float32")
    engine = load_engine("transformers", str(path), device="cuda", dtype="float32", compile=True)
    _orders_match(plain, engine, 1e-4)
    assert all(g.graph is not None for g in engine.score_graphs._graphs.values())


@GPU
def test_a_compiled_local_teacher_on_a_gpu_labels_in_its_default_batches_as_one_at_a_time(tmp_path):
    """On CUDA, a compiled calibrated local teacher with two shot orders (its batches replayed from
    score graphs) gives the label probabilities of batch 1 in its default batches of 16."""
    import json

    from potstill.config import load_config
    from potstill.records import Record
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    path = make_model_dir(tmp_path / "m")
    shots = tmp_path / "shots.jsonl"
    shots.write_text("".join(json.dumps({"input": t, "output": lab, "label": lab}) + "\n"
                             for t, lab in [("the match", "sports"), ("the phone", "tech"), ("a vote", "politics"),
                                            ("a goal", "sports"), ("the laptop", "tech")]))
    task = {"type": "classification", "labels": LABELS, "instruction": "classify the text"}
    got = {}
    for batch_size in (1, None):
        cfg = load_config(overrides={"task": task, "teacher": {
            "type": "local", "model": str(path), "prompt_format": "completion", "answer_prefix": "topic:",
            "calibrate": True, "compile": True, "dtype": "float32", "few_shot": {"path": str(shots), "k": 5, "orders": 2},
            **({"batch_size": batch_size} if batch_size else {})}})
        teacher = get_teacher(cfg.teacher, get_task(cfg.task))
        assert teacher.batch_size == (batch_size or 16)
        out: dict[int, object] = {}
        teacher.run([teacher.request(Record(messages=m)) for m in MSGS], lambda i, r: out.__setitem__(i, r))
        got[batch_size] = [out[i] for i in range(len(MSGS))]
        assert len(teacher.lm().score_graphs) > 0
    assert [r.output for r in got[None]] == [r.output for r in got[1]]
    for a, b in zip(got[None], got[1]):
        assert a.label_probs == pytest.approx(b.label_probs, abs=1e-4)
