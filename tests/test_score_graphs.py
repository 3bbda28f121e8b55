"""Label scoring replayed from CUDA graphs (``potstill.models.score_graphs``): a batch padded to its
bucket scores as the packed path does, on the CPU (the same forward, not recorded) and on CUDA
(recorded once per bucket, replayed with each batch's tokens)."""

import pytest
import torch

from potstill.engines import load_engine
from potstill.models import score_graphs
from potstill.models.prompting import label_token_ids
from potstill.models.score_graphs import ScoreGraphs, bucket
from tests.helpers.tiny import make_model_dir
from tests.test_packing import CHAT, LABELS, MSGS

LONG = [[{"role": "user", "content": " ".join(["the team won the game"] * 110)}]]  # past the longest bucket


def test_buckets_round_rows_to_powers_of_two_and_keys_to_multiples_of_eight():
    assert bucket(1, 5, 0) == (1, 16)
    assert bucket(3, 16, 0) == (4, 16)
    assert bucket(3, 17, 0) == (4, 32)
    assert bucket(5, 20, 13) == (8, 35)  # 13 + 35 = 48 keys
    assert bucket(1, 513, 0) is None  # longer than LENGTHS: the packed path
    assert bucket(64, 512, 0) is None  # more slots than MAX_SLOTS


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
