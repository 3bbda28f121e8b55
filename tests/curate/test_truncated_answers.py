"""A free-text answer the teacher cut at its token limit is half an answer: curate sets it aside.

Generate keeps the teacher's stop reason (``meta.stop_reason``: OpenAI's ``length``, Anthropic's
``max_tokens``); curate trained on a summary that ran into ``teacher.max_tokens`` as if it were whole,
so the student learnt to end mid-sentence. The teacher here is a real OpenAI-compatible server on
127.0.0.1 (a tiny model) reached through the official openai client.
"""

from __future__ import annotations

import json

import pytest

from potstill.config import load_config
from potstill.curate import curate
from potstill.curate.stage import curate_stage
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.records import Record, read_records
from tests.helpers.chat_server import ChatServer

WORDS = "the market film music team goal phone software minister party vote bank profit star award win".split()


def _config(tmp_path, url: str, max_tokens: int):
    rows = [{"input": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(7 + i % 4)) + f" {i}"} for i in range(12)]
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(overrides={
        "run_dir": str(tmp_path / "run"), "data": {"inputs": str(tmp_path / "inputs.jsonl")},
        "task": {"type": "freetext", "instruction": "Summarise the text."},
        "teacher": {"type": "openai", "model": "tiny", "base_url": url, "api_key_env": "", "max_tokens": max_tokens},
        "curate": {"val": 2, "test": 2, "near_dup": False}})


def test_answers_cut_at_the_teachers_token_limit_are_set_aside(tmp_path, tiny_model_b):
    with ChatServer(str(tiny_model_b)) as teacher:
        cfg = _config(tmp_path, teacher.base_url, max_tokens=3)
        generate_stage(cfg)
    records = read_records(tmp_path / "run" / "teacher.jsonl")
    cut = {r.id for r in records if r.meta.get("stop_reason") == "length"}
    assert cut, [r.meta.get("stop_reason") for r in records]  # the tiny teacher runs on past 3 tokens
    edited = sorted(cut)[0]  # a reviewer who wrote the whole answer keeps it
    out = curate(cfg, records, {edited: {"decision": "edit", "output": "a whole summary", "label": None,
                                         "teacher_output": None}})
    kept = {r.id for r in out.train + out.val + out.test}
    truncated = {r.id for r in out.rejected if (r.invalid_reason or "").startswith("truncated")}
    assert truncated == cut - {edited} and not (kept & truncated) and edited in kept
    assert out.card["counts"]["invalid"] == len(truncated)
    assert "teacher.max_tokens" in next(r.invalid_reason for r in out.rejected if r.id in truncated)
    if cut == {r.id for r in records}:  # every answer cut: the stage's one line says why nothing is left
        with pytest.raises(PotstillError, match=r"no training records left.*truncated"):
            curate_stage(cfg)


def test_imported_logged_answers_cut_at_their_token_limit_are_not_real_examples(tmp_path):
    """`potstill import` keeps a logged answer's stop reason as the log names it (``finish_reason``;
    Anthropic's ``stop_reason`` lands there too). Used as ``curate.real_data``, a logged answer that ran
    into its ``max_tokens`` was trained on whole: curate's check read only generate's ``meta.stop_reason``."""
    from potstill.importers import import_traffic

    def completion(text: str, finish: str) -> dict:
        return {"id": "c", "object": "chat.completion", "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}

    logs = [{"request": {"messages": [{"role": "user", "content": f"long text number {i}"}]},
             "response": completion(f"summary {i} of the whole text" if i % 2 else f"summary {i} of the", "stop" if i % 2 else "length")}
            for i in range(8)]
    logs.append({"request": {"messages": [{"role": "user", "content": "an anthropic text"}]},
                 "response": {"type": "message", "model": "claude-haiku-4-5", "stop_reason": "max_tokens",
                              "content": [{"type": "text", "text": "a summary cut"}]}})
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    assert import_traffic(tmp_path / "logs.jsonl", tmp_path / "real.jsonl") == 9
    cfg = load_config(overrides={
        "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Summarise the text."},
        "curate": {"val": 1, "test": 1, "near_dup": False, "real_ratio": 10.0}})
    teacher = [Record(messages=[{"role": "user", "content": f"teacher text {w}"}], output=f"about {w}", valid=True,
                      meta={"stop_reason": "stop"}) for w in WORDS[:6]]
    out = curate(cfg, teacher, real=read_records(tmp_path / "real.jsonl"))
    trained = {r.text for r in out.train if r.meta.get("source") == "real"}
    assert trained == {f"long text number {i}" for i in range(1, 8, 2)}
    cut = [r for r in out.rejected if (r.invalid_reason or "").startswith("real example: truncated")]
    assert len(cut) == 5 and out.card["counts"]["real_added"] == 4


def test_answers_stopped_as_a_refusal_or_at_the_context_window_are_set_aside(tmp_path):
    """Anthropic stops an answer with ``refusal`` (Claude 4 sends the words it wrote before) or
    ``model_context_window_exceeded`` (cut where the window filled), OpenAI with ``content_filter``
    (content withheld or cut): curate trained on all three as whole answers, real examples (an import's
    ``finish_reason``) and teacher records alike. A refusal is set aside whatever its text, a label
    answer's too; a reviewer's decision stands."""
    cfg = load_config(overrides={
        "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Summarise the text."},
        "curate": {"val": 0, "test": 0, "near_dup": False, "real_ratio": 10.0}})
    stops = ["end_turn", "refusal", "model_context_window_exceeded", "content_filter", "max_tokens"]
    real = [Record(messages=[{"role": "user", "content": f"logged text {s}"}], output=f"Sure, first you {s}",
                   meta={"finish_reason": s, "source": "logs.jsonl"}) for s in stops]
    teacher = [Record(messages=[{"role": "user", "content": f"teacher text {s}"}], output=f"The text says {s}",
                      meta={"stop_reason": s}) for s in ("stop", "content_filter", "refusal")]
    teacher[2].id = "reviewed"
    out = curate(cfg, teacher, {"reviewed": {"decision": "accept", "label": None, "output": None,
                                             "teacher_output": None}}, real)
    assert sorted(r.text for r in out.train) == ["logged text end_turn", "teacher text refusal", "teacher text stop"]
    why = {r.text: r.invalid_reason for r in out.rejected}
    assert why["teacher text content_filter"].startswith("teacher refused: the answer stopped for content_filter")
    assert why["logged text refusal"].startswith("real example: teacher refused: the answer stopped for refusal")
    assert why["logged text content_filter"].startswith("real example: teacher refused")
    # A logged answer was written where it was logged: no teacher.max_tokens of this run cut it (that
    # advice was given for it), no generate would write it again.
    assert why["logged text model_context_window_exceeded"] == (
        "real example: truncated: the logged answer was cut where the model's context window filled, half an "
        "answer; to learn this input, give it to the teacher in data.inputs")
    assert why["logged text max_tokens"] == (
        "real example: truncated: the logged answer was cut at its token limit, half an answer; to learn this "
        "input, give it to the teacher in data.inputs")
    assert out.card["rejected_reasons"]["teacher refused"] == 1

    # A label read whole from its first words is kept when cut, but not when the provider refused it.
    labels = load_config(overrides={
        "run_dir": str(tmp_path / "run2"), "task": {"type": "classification", "labels": ["pos", "neg"]},
        "curate": {"val": 0, "test": 0, "near_dup": False}})
    recs = [Record(messages=[{"role": "user", "content": f"review {s}"}], output="pos", meta={"stop_reason": s})
            for s in ("stop", "length", "content_filter")]
    out = curate(labels, recs)
    assert sorted(r.text for r in out.train) == ["review length", "review stop"]
    assert [r.text for r in out.rejected] == ["review content_filter"]


def test_a_claude_turn_paused_for_a_server_tool_is_no_answer(tmp_path, capsys):
    """Anthropic stops a turn of server tools (web search) with ``pause_turn``: its text ("I'll search for
    today's news in Paris.") is a preamble, the client to send the turn back for the rest. Import took
    it as a whole answer and curate trained on it; import skips and counts it as never completed, and
    curate sets a record that says pause_turn aside (a file imported before, a teacher's answer)."""
    from potstill.importers import import_traffic

    def message(content: list, stop: str) -> dict:
        return {"type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_reason": stop,
                "content": content}

    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "Paris news"}}
    logs = [{"request": {"messages": [{"role": "user", "content": "News in Paris today?"}]},
             "response": message([{"type": "text", "text": "I'll search for today's news in Paris."}, search],
                                 "pause_turn")},
            {"request": {"messages": [{"role": "user", "content": "And in Rome?"}]},
             "response": message([search], "pause_turn")},
            {"request": {"messages": [{"role": "user", "content": "Summarise: rain."}]},
             "response": message([{"type": "text", "text": "Rain."}], "end_turn")}]
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    assert import_traffic(tmp_path / "logs.jsonl", tmp_path / "real.jsonl") == 1
    assert (f"2 line(s) skipped, its response never completed (stop_reason pause_turn) with no text to distil "
            f"(first at {tmp_path / 'logs.jsonl'}:1)") in capsys.readouterr().err
    cfg = load_config(overrides={
        "run_dir": str(tmp_path / "run"), "task": {"type": "freetext", "instruction": "Summarise the text."},
        "curate": {"val": 0, "test": 0, "near_dup": False, "real_ratio": 10.0}})
    real = [Record(messages=[{"role": "user", "content": "News in Paris today?"}],
                   output="I'll search for today's news in Paris.", meta={"finish_reason": "pause_turn"})]
    teacher = [Record(messages=[{"role": "user", "content": f"teacher text {s}"}], output=f"The text says {s}",
                      meta={"stop_reason": s}) for s in ("end_turn", "pause_turn")]
    out = curate(cfg, teacher, real=real)
    assert [r.text for r in out.train] == ["teacher text end_turn"]
    why = {r.text: r.invalid_reason for r in out.rejected}
    assert why["teacher text pause_turn"].startswith("truncated: the answer stopped mid-turn (pause_turn")
    assert why["News in Paris today?"].startswith("real example: truncated: the answer stopped mid-turn (pause_turn")
