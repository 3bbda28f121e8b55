"""Self-consistency: the majority answer over n samples."""

from potstill.generate.consistency import majority


def test_majority_votes_on_parsed_answers():
    parse = lambda s: s.strip(" .").lower()  # noqa: E731
    assert majority(["Sports.", "tech", "sports", "film"], parse) == ("Sports.", 0.5)
    assert majority(["a", "b"], parse) == ("a", 0.5) and majority([], parse) == (None, 0.0)
