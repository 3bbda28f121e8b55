"""Self-consistency: the majority answer over n samples."""

from potstill.generate.consistency import majority


def test_majority_votes_on_parsed_answers():
    parse = lambda s: s.strip(" .").lower()  # noqa: E731
    assert majority(["Sports.", "tech", "sports", "film"], parse) == ("Sports.", 0.5)
    assert majority(["a", "b"], parse) == ("a", 0.5) and majority([], parse) == (None, 0.0)


def test_a_ledger_row_without_per_sample_logprobs_lends_choice_0s_only_to_a_sample_of_the_same_text():
    from potstill.generate.consistency import sample_logprobs

    lp = [{"token": "b", "logprob": -0.1, "top": []}]
    assert sample_logprobs({"samples": ["a", "b", "b"], "logprobs": lp}, 1) is None
    assert sample_logprobs({"samples": ["b", "a", "b"], "logprobs": lp}, 2) == lp
    assert sample_logprobs({"samples": ["a", "b"], "logprobs": lp, "sample_logprobs": [lp, None]}, 1) is None
