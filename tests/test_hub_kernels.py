"""A model compiling in one thread while another runs eagerly in a second: serve's compiled student
meeting a new shape while a local teacher answers an escalation. transformers' hub-kernel routing
(the ``kernels`` package) kept one process-wide variable that both threads wrote while any traced,
and dynamo failed building the compiled model's guards (a 500 for that request, seen in a
benchmark's server log). ``models.hub_kernels`` puts a stateless stand-in in its place."""

from __future__ import annotations

import threading
import time

import pytest

from potstill.engines import load_engine
from potstill.models.prompting import PromptFormat, label_token_ids

CHAT = PromptFormat(kind="chat", instruction="classify the text as sports tech or politics")
WORDS = "the match was won by the team in a late goal while markets fell on news".split()


def test_a_model_compiles_while_another_runs_eagerly_in_another_thread(tiny_model):
    pytest.importorskip("kernels")
    compiled = load_engine("transformers", str(tiny_model), device="cpu", compile=True)
    eager = load_engine("transformers", str(tiny_model), device="cpu")
    # The eager model spends its time inside its layers' forward (between the routing's set and reset),
    # so the compiling thread's trace meets it there whenever it reads the routing.
    for layer in eager.lm.model.model.layers:
        layer.self_attn.q_proj.register_forward_hook(lambda *_: time.sleep(0.002))
    ids = label_token_ids(compiled.tokenizer, CHAT, ["sports", "tech", "politics"])
    stop, calls, crashed = threading.Event(), [], []

    def run_eagerly() -> None:
        try:
            while not stop.is_set():
                eager.score_labels(CHAT, [[{"role": "user", "content": " ".join(WORDS)}]], ids)
                calls.append(1)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            crashed.append(e)

    thread = threading.Thread(target=run_eagerly)
    thread.start()
    try:
        while not calls:
            time.sleep(0.01)
        # Three batches of new shapes: three traces, each while the other thread is mid-forward.
        for n, words in ((1, 7), (3, 23), (5, 41)):
            msgs = [[{"role": "user", "content": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))}]
                    for i in range(n)]
            got = compiled.score_labels(CHAT, msgs, ids, batch_size=8)
            assert got.logits.shape[0] == n
    finally:
        stop.set()
        thread.join()
    assert not crashed and len(calls) > 3
