"""Labels made only of punctuation (sentiment as "+", "-", "0"): their normal form is empty, as is
that of an empty answer, "..." or "?", so each of those was read as the label "+" (a reasoning
teacher that ran out of tokens answers ""), kept as valid and trained on; a gold label "" or "?"
became "+". Such a label is named by its own text; an answer or gold with no text names none."""

import json

import pytest

from potstill.config import Config, TaskConfig
from potstill.errors import PotstillError
from potstill.records import read_records
from potstill.rundir import RunDir
from potstill.stage import load_inputs
from potstill.tasks import get_task

LABELS = ["+", "-", "0"]
TEXTS = ["great match", "awful film", "the vote was held", "new phone", "bank profit", "star award", "the team"]
ANSWERS = ["+", "-", "", "...", "0", "?", "+ (positive)"]
GOLD = ["+", "-", "", "?", " + ", "0", "0"]


def test_an_empty_or_punctuation_answer_or_gold_names_no_label(tmp_path):
    from potstill.generate.stage import generate_body

    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": t, "label": g}) + "\n"
                                                   for t, g in zip(TEXTS, GOLD)))
    (tmp_path / "recorded.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": t}], "output": a}) + "\n" for t, a in zip(TEXTS, ANSWERS)))
    cfg = Config.model_validate({
        "run_dir": str(tmp_path / "run"), "data": {"inputs": str(tmp_path / "inputs.jsonl"), "max_unknown_gold": 0.5},
        "task": {"type": "classification", "labels": LABELS, "instruction": "sentiment: +, - or 0"},
        "teacher": {"type": "replay", "replay_path": str(tmp_path / "recorded.jsonl")}})

    gold = {r.text: (r.label, r.meta.get("unknown_label")) for r in load_inputs(cfg)}
    assert gold["the vote was held"] == (None, "") and gold["new phone"] == (None, "?")  # both were "+"
    assert gold["bank profit"] == ("+", None) and gold["great match"] == ("+", None)

    generate_body(cfg, RunDir(cfg.run_dir))
    got = {r.text: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
    task = get_task(cfg.task)
    for text, answer in zip(TEXTS, ANSWERS):
        r = got[text]
        if answer in ("", "...", "?"):  # were valid, read as "+"
            assert not r.valid and r.invalid_reason == "answer outside the label set", r
        else:
            assert r.valid, r
    assert task.target(got["the team"]) == "+" and task.target(got["bank profit"]) == "0"


def test_punctuation_labels_are_named_by_their_text_and_an_empty_label_is_refused():
    t = get_task(TaskConfig(type="classification", labels=["+", "*", "ok"]))  # both normalise to ""
    assert [t.parse(a) for a in ("+", " * ", "*\nbecause", "OK.", "", "!!!")] == ["+", "*", "*", "ok", None, None]
    with pytest.raises(PotstillError, match="an empty label"):
        get_task(TaskConfig(type="classification", labels=["ok", " "]))


def test_labels_that_share_a_normal_form_are_named_by_their_text(tmp_path):
    """C, C++ and C# (or A, A+, A-) all normalise to "c": the set was refused with a line naming no
    label. Each is named by its own text now, teacher answers and gold labels alike, and only labels
    that differ in case, spaces or invisible characters are refused, named in the line."""
    from potstill.generate.stage import generate_body

    labels = ["C", "C++", "C#", "Java"]
    texts = ["pointers and malloc", "templates and RAII", "LINQ and async", "the JVM", "a vtable", "printf"]
    answers = ["C", "C++", '"C#"', "java", "**C++** because of the templates", "C--"]
    gold = ["c", "c++", "C#", "JAVA", "C++", "c#"]
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"input": t, "label": g}) + "\n"
                                                   for t, g in zip(texts, gold)))
    (tmp_path / "recorded.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": t}], "output": a}) + "\n" for t, a in zip(texts, answers)))
    cfg = Config.model_validate({
        "run_dir": str(tmp_path / "run"), "data": {"inputs": str(tmp_path / "inputs.jsonl")},
        "task": {"type": "classification", "labels": labels, "instruction": "which language?"},
        "teacher": {"type": "replay", "replay_path": str(tmp_path / "recorded.jsonl")}})

    assert [r.label for r in load_inputs(cfg)] == ["C", "C++", "C#", "Java", "C++", "C#"]  # were all refused
    generate_body(cfg, RunDir(cfg.run_dir))
    got = {r.text: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
    task = get_task(cfg.task)
    assert [task.target(got[t]) for t in texts[:5]] == ["C", "C++", "C#", "Java", "C++"]
    assert not got["printf"].valid  # "C--" is none of them, not "C"

    t = get_task(TaskConfig(type="classification", labels=["A", "A+", "A-", "B"]))
    assert [t.parse(a) for a in ("a", "A+", "a-.", "`A`", "B+", "A++")] == ["A", "A+", "A-", "A", "B", None]
    for same, named in ((["Spam", "spam", "ham"], "'Spam', 'spam'"),
                        (["yes", "yes\u200b", "no"], r"'yes', 'yes\u200b'")):
        with pytest.raises(PotstillError) as e:
            get_task(TaskConfig(type="classification", labels=same))
        assert named in str(e.value), e.value


def test_a_label_named_by_its_text_takes_the_punctuation_a_sentence_puts_around_it():
    """ "Java: ..." read as Java, "C++: ..." as nothing (answer outside the label set), as did "C#,", "C++!",
    "(C#)" and "C;": a label named by its normal form loses that punctuation there, one named by its text
    did not. It is now looked up without enclosing brackets and trailing :,;!?. too, where that names
    one label only: "+" and "-" are never trimmed, so "C++" is not "C" and "C--" stays nothing."""
    t = get_task(TaskConfig(type="classification", labels=["C", "C++", "C#", "Java"]))
    answers = {"Java: it uses a JVM": "Java", "C++: it uses templates": "C++", "C#, since it runs on .NET": "C#",
               "C++!": "C++", "(C#)": "C#", "C;": "C", "[C++]?": "C++", '("C#"),': "C#", "(C++) is my answer.": "C++",
               "C--": None, "C+": None, "(": None, "()": None}
    assert {a: t.parse(a) for a in answers} == answers
    # Two labels the trimming could each stand for: "Yes!," is "Yes!" less a "," or "Yes" less "!,", so
    # neither; "(Yes!)" likewise. Written as the label is, each is its own.
    t = get_task(TaskConfig(type="classification", labels=["Yes", "Yes!", "No"]))
    assert [t.parse(a) for a in ("Yes!", "Yes", "Yes,", "Yes!,", "(Yes!)")] == ["Yes!", "Yes", "Yes", None, None]
