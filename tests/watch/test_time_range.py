"""`potstill watch --since/--until` with odd values: each is one clear line and exit 2, never a
silently empty or silently different selection."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from potstill.errors import PotstillError
from potstill.ledger import Ledger
from potstill.watch import parse_time, watch_run
from tests.watch.test_watch_after_swap import _cfg, _run, _served


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_a_time_that_is_no_time_is_refused(value):
    # Before: float() took them, and `created_at >= nan` matched nothing ("0 requests in that time range").
    with pytest.raises(PotstillError, match=f"cannot read time '{value}'"):
        parse_time(value)


def test_a_range_that_ends_before_it_starts_is_refused(tmp_path):
    with pytest.raises(PotstillError, match=r"--since .* is after --until"):
        watch_run(tmp_path, _cfg(), since=parse_time("2h"), until=parse_time("3h"))


def test_an_empty_since_is_an_error_not_the_latest_window(tmp_path, tiny_model):
    run, texts, current = _run(tmp_path, tiny_model)
    with Ledger(run / "calls.sqlite") as ledger:
        _served(ledger, texts[:60], current, False, 1000.0)
    (run / "potstill.yaml").write_text(yaml.safe_dump({"run_dir": ".", **_cfg().model_dump(
        mode="json", include={"task", "watch"})}))
    env = {**os.environ, "POTSTILL_PROGRESS": "never", "OMP_NUM_THREADS": "1"}
    # A cron line `--since "$SINCE"` with SINCE unset: before, the flag was dropped and the latest window
    # judged (exit 0), as if the range had been asked for and found calm.
    p = subprocess.run([sys.executable, "-m", "potstill.cli", "watch", str(run), "--since", ""],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, (p.returncode, p.stderr)
    assert "cannot read time ''" in p.stderr
    assert not (run / "watch" / "report.json").exists()


def test_a_year_or_a_basic_date_is_not_read_as_seconds_after_1970():
    """`--since 2026` was unix second 2026 (00:33 on 1 January 1970), so the range held all traffic, and
    `--since 20261124` (ISO 8601's basic date) was 23 August 1970."""
    with pytest.raises(PotstillError, match=r"cannot read time '2026': as unix seconds it is 1970-01-01T00:33.*date"):
        parse_time("2026")
    assert parse_time("20261124") == parse_time("2026-11-24")
    assert parse_time("1732406400") == 1732406400  # unix seconds of a time traffic is served at still read so
