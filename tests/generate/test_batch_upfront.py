"""Settings ``generate.engine: batch`` cannot run are refused before anything starts."""

from __future__ import annotations

from tests.generate.test_batch import SECRET, cli, project
from tests.helpers.batch_server import BatchLoopback


def test_anthropic_batches_with_n_samples_are_refused_before_anything_starts(tmp_path):
    """Anthropic's batches take one sample per request: generate.n 2 was refused only while the
    batch lines were built, after the ledger was made, a run row started and open batches resumed."""
    with BatchLoopback(key=SECRET) as srv:
        cfg_path = project(tmp_path, srv, "anthropic", 5, {"n": 2})
        run = cli(["generate", "-c", str(cfg_path)], tmp_path)
        stats = srv.stats()
    err = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode == 2 and len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "generate.n 2 with generate.engine batch: Anthropic batches take one sample per request" in err[0]
    assert stats["created"] == {} and not (tmp_path / "run" / "calls.sqlite").exists()
