"""`potstill watch --since 24h` on a busy server: the input check takes a seeded sample of the range.

The MMD test holds (N + reference)^2 kernel entries in float64, several copies at once: a day of
30,000 requests was ~7 GB per matrix and a matmul of 250 x N x N per 250 permutations, so the cron
line the README suggests ran the machine out of memory instead of printing a verdict. Real parts: a
tiny student on disk, its real ledger rows as `potstill serve` writes them."""

from __future__ import annotations

from potstill.config import Config
from potstill.ledger import Ledger, ServedCall
from potstill.watch import watch_run
from tests.watch.test_watch_after_swap import LABELS, _run


def test_a_time_range_larger_than_max_sample_is_sampled_for_the_input_check_only(tmp_path, tiny_model):
    run, texts, current = _run(tmp_path, tiny_model)
    n = 1100  # over the default watch.max_sample of 1000
    with Ledger(run / "calls.sqlite") as ledger:
        for i in range(n):
            escalated = i % 10 == 0
            ledger.record_served(ServedCall(
                request={"model": "potstill", "messages": [{"role": "user", "content": texts[i % len(texts)]}]},
                answered_by="teacher" if escalated else "student", model="m", content=LABELS[i % 4],
                reason="low_confidence" if escalated else "", student=current, created_at=1000.0 + i))
    cfg = Config(task={"labels": LABELS, "instruction": "classify"},
                 watch={"min_requests": 30, "reference_size": 40, "permutations": 299})
    report = watch_run(run, cfg, since=0.0, device="cpu")
    assert report["traffic"]["n"] == n
    assert report["checks"]["input"]["n_live"] == 1000  # a seeded sample: the kernel stays (1040)^2
    # The label mix and the escalation share are counts: they read every request in the range.
    assert report["checks"]["labels"]["n_live"] == n
    esc = report["checks"]["escalation"]
    assert esc["n"] == n and esc["share"] == 110 / n
    assert any("sample of 1000 of the 1100" in note for note in report["notes"])
    # Seeded: the same range gives the same verdict.
    again = watch_run(run, cfg, since=0.0, device="cpu")
    assert again["checks"]["input"]["mmd2"] == report["checks"]["input"]["mmd2"]
