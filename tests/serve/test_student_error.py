"""The teacher is the fallback when the student fails: a chat whose student engine raises is
answered by the teacher (reason student_error), not a 500. Real parts: the served run of
``conftest.served`` (a tiny student, the real teacher server on loopback), the official openai client."""

from __future__ import annotations

import json

from tests.serve.conftest import MSG, answered_by_teacher, client, rows


def test_a_request_the_student_fails_on_is_answered_by_the_teacher(served, force, monkeypatch, capfd):
    """The teacher is the fallback: a chat the student's engine fails on (an exception in it, such as a
    compile that broke at a new shape: a 500 before) is answered by the teacher, reason student_error,
    streamed or not, with the exception and its traceback in the server's log; the student answers the
    others as before."""
    service, live = served
    force("student")
    real = service.engine.answer

    def answer(messages, *more):
        if any("poison" in m[-1]["content"] for m in messages):
            raise AssertionError("Unexpected type <class 'dict'> at G['x'][0] [/x]")  # rich markup, escaped
        return real(messages, *more)

    monkeypatch.setattr(service.engine, "answer", answer)
    before = len(rows(service))
    c = client(live)
    for stream in (False, True):
        raw = c.chat.completions.with_raw_response.create(
            model="potstill", messages=[{"role": "user", "content": f"poison {stream}"}], stream=stream)
        completion = answered_by_teacher(raw, "student_error", stream)
        if completion is not None:
            route = completion.model_extra["potstill"]
            assert route["confidence"] is None and route["student_output"] == "" and completion.model == "tiny-teacher"
    ok = c.chat.completions.with_raw_response.create(model="potstill", messages=MSG)
    assert ok.headers["x-potstill-answered-by"] == "student"
    new = rows(service)[before:]
    assert [(r["role"], r["status"], json.loads(r["response"])["reason"]) for r in new] == [
        ("teacher", "ok", "student_error")] * 2 + [("student", "ok", "confident")]
    err = capfd.readouterr().err
    assert err.count("failed on a request (AssertionError: Unexpected type <class 'dict'> at G['x'][0] [/x]); the "
                     "teacher answers it") == 2
    assert "Traceback (most recent call last)" in err and "in answer" in err


def test_the_failure_line_is_cut_after_the_teacher_key_is_blanked(served, force, monkeypatch, capfd):
    """The line naming the student's failure is cut to 300 characters: cut before the teacher's key
    was blanked, a key across the cut was no longer found and its head was printed."""
    from tests.serve.conftest import TEACHER_KEY

    service, live = served
    force("student")

    def answer(messages, *more):
        raise RuntimeError("x" * 290 + f" {TEACHER_KEY} echoed by the engine")

    monkeypatch.setattr(service.engine, "answer", answer)
    raw = client(live).chat.completions.with_raw_response.create(
        model="potstill", messages=[{"role": "user", "content": "a request the engine fails on"}])
    answered_by_teacher(raw, "student_error", False)
    err = capfd.readouterr().err
    assert "failed on a request (RuntimeError: xxx" in err
    assert TEACHER_KEY[:8] not in err, err[-3000:]


def test_a_teacher_without_a_key_is_the_fallback_too(served, force, monkeypatch, tmp_path):
    """The failure line blanks the teacher's secrets (``Teacher.secrets``), which only the API teachers
    had: under a local or replay teacher (the quickstart's gemma) a student's failure ended in
    AttributeError: 'LocalTeacher' object has no attribute 'secrets', a 500, not the teacher's answer."""
    from potstill.config import TeacherConfig
    from potstill.teachers.replay import ReplayTeacher

    service, live = served
    force("student")
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text(json.dumps({"messages": [{"role": "user", "content": "poison"},
                                                 {"role": "assistant", "content": "a recorded answer"}]}) + "\n")
    monkeypatch.setattr(service, "teacher", ReplayTeacher(TeacherConfig(type="replay", replay_path=str(recorded)),
                                                          service.teacher.task))

    def answer(messages, *more):
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(service.engine, "answer", answer)
    raw = client(live).chat.completions.with_raw_response.create(
        model="potstill", messages=[{"role": "user", "content": "poison"}])
    completion = answered_by_teacher(raw, "student_error", False)
    assert completion.choices[0].message.content == "a recorded answer"
