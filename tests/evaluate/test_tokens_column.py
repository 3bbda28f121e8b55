"""The tokens per call that pilot and evaluate print and write are input and output tokens, each
named: the column once showed the input tokens alone under "tokens/call", so a teacher writing long
answers looked as cheap in tokens as one answering a label."""


from tests.evaluate.test_teacher_price import _run


def test_tokens_per_call_shows_input_and_output(tmp_path, tiny_model, capsys):
    rows = [{"model": "gpt-4.1", "input_tokens": 300, "output_tokens": 120, "cost_usd": 0.001} for _ in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "openai", "model": "gpt-4.1"}, rows)
    t, s = ev["models"]["teacher"], ev["models"]["student"]
    assert (t["input_tokens_per_call"], t["output_tokens_per_call"]) == (300, 120)
    assert s["input_tokens_per_call"] > 0 and 0 < s["output_tokens_per_call"] <= 2  # task.max_output_tokens
    assert "tokens_per_call" not in t and "tokens_per_call" not in s  # the old, input-only figure
    table = capsys.readouterr().out
    assert "in + out" in table and "300 + 120" in table
    assert f"{s['input_tokens_per_call']:.0f} + {s['output_tokens_per_call']:.0f}" in table
