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


def test_answers_cut_at_the_token_budget_are_counted_and_said(tmp_path, tiny_model, capsys):
    """A generated answer that ran to ``task.max_output_tokens`` (2 here) without ending is counted
    per student in eval.json, said in one line and in the report: serve sends the trained student's
    to the teacher. The random tiny student never ends its answer within two tokens."""
    rows = [{"model": "gpt-4.1", "input_tokens": 300, "output_tokens": 120, "cost_usd": 0.001} for _ in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "openai", "model": "gpt-4.1"}, rows)
    s, t = ev["models"]["student"], ev["models"]["teacher"]
    assert s["cut_at_budget"] == 1.0 and s["output_tokens_per_call"] == 2
    assert "cut_at_budget" not in t  # the teacher's recorded answers: curate keeps whole ones only
    said = capsys.readouterr().err
    assert "the student ran to its 2-token budget without ending on 4 of 4 test inputs (100.0%)" in said
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Cut at the token budget" in html and "student 100.0%" in html
