"""Watch a served run for drift: `potstill watch RUN` compares the latest served traffic in
RUN/calls.sqlite with the training inputs (input embeddings, label mix, escalation share) and
exits 3 when a check passes its threshold, so a cron job can act on it. See ``stage`` for the
checks and ``stats`` for the tests behind them."""

from potstill.watch.stage import EXIT_DRIFT, judge, watch_run
from potstill.watch.traffic import parse_time, read_traffic

__all__ = ["EXIT_DRIFT", "judge", "parse_time", "read_traffic", "watch_run"]
