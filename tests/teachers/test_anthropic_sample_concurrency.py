"""teacher.concurrency bounds the requests the server has in flight. Anthropic has no ``n``:
generate.n samples are n Messages requests, which all went out at once for each input in flight,
so the server saw n x concurrency of them (and a kill -9 made the rerun pay for as many again)."""

from __future__ import annotations

import pytest

from potstill.config import load_config
from potstill.generate.stage import generate_stage
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, check_output, project


@pytest.mark.parametrize("concurrency,n", [(2, 3), (4, 3), (2, 5)])
def test_anthropic_samples_count_against_the_concurrency(tmp_path, monkeypatch, concurrency, n):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET, pslow=1.0, slow_s=0.15) as srv:  # every answer takes a while: requests overlap
        cfg = project(tmp_path, srv.root_url, 8, {"type": "anthropic", "model": "claude-haiku-4-5-20251001",
                                                   "concurrency": concurrency}, {"n": n})
        summary = generate_stage(load_config(cfg))
        stats = srv.stats()
    recs = check_output(tmp_path / "run" / "teacher.jsonl", 8)
    assert all(len(r.samples) == n for r in recs) and summary["errors"] == 0 and summary["retries"] == 0
    assert sum(stats["answered"].values()) == 8 * n
    # Never more in flight; an input's samples go together, as many inputs at once as fit.
    assert stats["slow_peak"] == max(n * (concurrency // n), min(n, concurrency)) <= concurrency
