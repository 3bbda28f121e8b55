"""Self-consistency: the majority answer over n samples."""

from potstill.generate.consistency import majority


def test_majority_votes_on_parsed_answers():
    parse = lambda s: s.strip(" .").lower()  # noqa: E731
    ok = lambda p: None  # noqa: E731
    assert majority(["Sports.", "tech", "sports", "film"], parse, ok) == ("Sports.", 0.5)
    assert majority(["a", "b"], parse, ok) == ("a", 0.5) and majority([], parse, ok) == (None, 0.0)


def test_invalid_samples_count_against_agreement_but_never_win():
    labels = {"sports", "tech"}
    parse = lambda s: s if s in labels else None  # noqa: E731
    valid = lambda p: None if p in labels else "answer outside the label set"  # noqa: E731
    assert majority(["x", "y", "tech", "z"], parse, valid) == ("tech", 0.25)
    assert majority(["x", "y"], parse, valid) == ("x", 0.0)  # none valid: the first, at agreement 0


def test_a_ledger_row_without_per_sample_logprobs_lends_choice_0s_only_to_a_sample_of_the_same_text():
    from potstill.generate.consistency import sample_logprobs

    lp = [{"token": "b", "logprob": -0.1, "top": []}]
    assert sample_logprobs({"samples": ["a", "b", "b"], "logprobs": lp}, 1) is None
    assert sample_logprobs({"samples": ["b", "a", "b"], "logprobs": lp}, 2) == lp
    assert sample_logprobs({"samples": ["a", "b"], "logprobs": lp, "sample_logprobs": [lp, None]}, 1) is None


def test_one_sample_of_an_anthropic_answer_is_billed_as_its_own_request():
    """Anthropic's n samples are n requests: the answer's tokens add up all n prompts and outputs."""
    from potstill.generate.consistency import one_sample

    ans = {"output": "a", "samples": ["a", "bb", "bb"], "input_tokens": 30, "output_tokens": 9, "cost_usd": 1.0,
           "sample_tokens": [[10, 1], [10, 4], [10, 4]], "stop_reason": ["end_turn", "max_tokens", "max_tokens"]}
    assert one_sample(ans, 1) == {"output": "bb", "logprobs": None, "input_tokens": 10, "output_tokens": 4,
                                  "cost_usd": 1.0, "stop_reason": "max_tokens"}
