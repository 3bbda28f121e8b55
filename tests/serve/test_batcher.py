"""The serve batcher (``serve.engine.Batcher``) with a tiny real student: a lone request goes at
once, whatever ``batch_wait_ms``; after a batch of several, a batch waits for company."""

import threading
import time

from potstill.config import load_config
from potstill.engines import load_engine
from potstill.serve.engine import Batcher, ServedStudent
from potstill.tasks import get_task

LABELS = ["business", "sports", "tech", "politics"]


class Gated(ServedStudent):
    """The tiny student, recording each batch's size; its first batch waits for ``go``."""

    def __init__(self, engine, task):
        super().__init__(engine, task)
        self.sizes: list[int] = []
        self.go = threading.Event()

    def answer(self, messages):
        self.sizes.append(len(messages))
        if len(self.sizes) == 1:
            assert self.go.wait(30)
        return super().answer(messages)


def _student(tiny_model) -> Gated:
    task = get_task(load_config(overrides={"task": {"type": "classification", "labels": LABELS}}).task)
    return Gated(load_engine("transformers", str(tiny_model), device="cpu"), task)


def _msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_lone_request_is_not_held_for_the_wait(tiny_model):
    """With a wait of ten minutes, a lone client still gets its answer (within the 30 s the test allows)."""
    student = _student(tiny_model)
    student.go.set()
    batcher = Batcher(student, batch_size=8, wait_ms=600_000)
    try:
        assert batcher.submit(_msg("the team won the match")).result(timeout=30).output in LABELS
        assert batcher.submit(_msg("new phone software")).result(timeout=30).output in LABELS
        assert student.sizes == [1, 1]
    finally:
        batcher.close()


def test_after_a_batch_of_several_a_batch_waits_for_company(tiny_model):
    """The first request goes alone and holds the engine; two more queue and go together (no
    wait: they were there); after that batch of two, a request waits and the one sent 0.2 s later
    joins it. Every request gets its answer."""
    student = _student(tiny_model)
    batcher = Batcher(student, batch_size=8, wait_ms=3_000)
    try:
        first = batcher.submit(_msg("the team won the match"))
        while not student.sizes:  # the first batch is in the engine
            time.sleep(0.01)
        queued = [batcher.submit(_msg(t)) for t in ("a vote in the election", "the film star")]
        student.go.set()
        for f in [first, *queued]:
            assert f.result(timeout=30).output in LABELS
        late = batcher.submit(_msg("bank profit"))
        time.sleep(0.2)
        later = batcher.submit(_msg("the internet and computer"))
        for f in (late, later):
            assert f.result(timeout=30).output in LABELS
        assert student.sizes == [1, 2, 2]
    finally:
        batcher.close()


def test_a_label_answer_counts_the_tokens_of_the_label(tiny_model):
    """Found by an audit: a served label's ``completion_tokens`` (and the ledger's output_tokens) was
    always 1, the one position scored, even for labels of several tokens; OpenAI's usage counts the
    tokens of the answer the client gets, as the teacher's does."""
    labels = ["market shares", "film star award", "phone", "vote"]  # 2, 3, 1 and 1 tokens
    task = get_task(load_config(overrides={"task": {"type": "classification", "labels": labels}}).task)
    student = ServedStudent(load_engine("transformers", str(tiny_model), device="cpu"), task)
    tok = student.engine.tokenizer
    answers = student.answer([_msg(t) for t in ("the team won", "new phone software", "a vote", "the film star")])
    for a in answers:
        assert a.output_tokens == len(tok(a.output, add_special_tokens=False)["input_ids"]), (a.output, a.output_tokens)
    counts = {lab: len(tok(lab, add_special_tokens=False)["input_ids"]) for lab in labels}
    assert counts == {"market shares": 2, "film star award": 3, "phone": 1, "vote": 1}
    assert any(counts[a.output] > 1 for a in answers)  # the tiny student picks a label of several tokens
    # the client's max_tokens never cuts a label (the service passes none): the count stays whole
    assert all(student.shorten(a, None)[1] == counts[a.output] for a in answers)
