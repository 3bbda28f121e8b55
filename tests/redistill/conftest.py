"""The served run the redistill tests share (``served_run``), built from ``test_redistill``'s parts."""

from __future__ import annotations

import pytest

from potstill.records import read_records
from tests.redistill.test_redistill import NEW, build_run, sentences, serve_traffic


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, tiny_model):
    """The served run, built once a module; every test works on a copy (``_copy_original``), so
    none depends on which others ran before it in the same process (pytest-xdist splits a module)."""
    run = build_run(tmp_path_factory.mktemp("redistill"), tiny_model)
    frozen = [(r.text, r.output) for r in read_records(run / "test.jsonl")]
    # Shifted traffic (new words), a few repeats, and three inputs copied from the frozen test set.
    new = sentences(NEW, 110, 1)
    serve_traffic(run, new + new[:10] + frozen[:3])
    return run
