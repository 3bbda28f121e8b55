"""`potstill review RUN`: a local page to accept, reject, relabel or edit teacher outputs by keyboard.

Decisions go to ``review.sqlite`` in the run directory; the next `potstill curate` applies them
and records them in the dataset card.
"""

from potstill.review.store import DECISIONS, ReviewStore, error_rate, load_decisions

__all__ = ["DECISIONS", "ReviewStore", "error_rate", "load_decisions"]
