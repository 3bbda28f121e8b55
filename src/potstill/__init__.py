"""potstill: distil a large teacher LLM into a small student, and prove the trade on your data."""

__version__ = "0.1.0"
