"""A tools task (``task.type: tools``) in serve: which requests its student answers with a call,
and an escalation's answer in the form the client asked for (``potstill.tool_calls`` holds the
call's own forms)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from potstill.tasks import Task
from potstill.teachers import Response, Teacher
from potstill.tool_calls import as_tool_calls, call_text, calls_of, has_tool_turns, same_tools, text_of


def served_tools(task: Task, teacher: Teacher, tools: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's tools as routed: with tool_choice 'none' the model may call none, so it is a
    request without them; except in a tools task, whose student only calls: its teacher answers
    it (reason ``tools``), told to call none."""
    if tools is not None and tools.get("tool_choice") == "none" \
            and not (task.cfg.type == "tools" and teacher.supports_tools):
        return None
    return tools


def student_calls(task: Task, tools: dict[str, Any] | None, teacher_messages: list[dict] | None = None) -> bool:
    """Whether the student answers a request offering ``tools`` (with a call, or under
    ``task.tool_choice: auto`` a call or a reply in words): a tools task's student, asked with the
    task's own tools (``same_tools``), a call not refused ('none'), at the start of a chat (no tool
    turns yet: under ``required`` it learnt first calls, not what to say after one) or anywhere in
    one under ``auto``, whose student learnt the turns after tool results too."""
    if task.cfg.type != "tools" or tools is None or tools.get("tool_choice") == "none" \
            or not same_tools(tools["tools"], task.cfg.tools):
        return False
    return task.cfg.tool_choice == "auto" or not has_tool_turns(teacher_messages)


def student_tools_answer(task: Task, tools: dict[str, Any] | None, calls: bool, parsed: Any, who: str,
                         reason: str) -> tuple[str, str, str | None]:
    """(who, reason, reply) once the route chose ``who``: a tools task's student answer ``parsed``
    goes to the teacher where it is no call (``calls``: the student answers the request's tools) nor
    a reply, where it replied and the client requires a call, where it called another function than
    the client forces, or several where the client allows one. ``reply``: its text where it is a reply
    in words (``task.tool_choice: auto``), to a client offering the task's tools or none (then its text)."""
    named, made = named_tool(tools), calls_of(parsed) if calls else []
    reply = text_of(parsed) if calls or tools is None and task.cfg.type == "tools" else None
    if who != "student":
        return who, reason, reply
    if calls and not made and reply is None:  # (judged by a client's format)
        return "teacher", "invalid_output", reply
    if calls and reply is not None and (named is not None or tools.get("tool_choice") == "required"):
        return "teacher", "tools", reply
    if calls and named is not None and any(c.get("name") != named for c in made):
        return "teacher", "tools", reply
    if len(made) > 1 and tools.get("parallel_tool_calls") is False:
        return "teacher", "tools", reply
    return who, reason, reply


def named_tool(tools: dict[str, Any] | None) -> str | None:
    """The function a request's ``tool_choice`` forces, or None."""
    choice = (tools or {}).get("tool_choice")
    return (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None


def reshaped(task: Task, teacher: Teacher, tools: dict[str, Any] | None, calls: bool) -> bool:
    """Whether an escalation's answer changes form on the way (``as_asked``): a call the client
    offered the task's tools for from a teacher that writes it as text, or a call for a client that
    offered none. Such an answer goes to the client whole, not streamed as the teacher writes it."""
    return task.cfg.type == "tools" and (calls and not teacher.supports_tools
                                         or tools is None and teacher.supports_tools)


def as_asked(task: Task, r: Response, finish: str, calls: bool, offered: bool) -> tuple[str, str, Response]:
    """A tools task's escalation (content, finish_reason, answer) in the form the client asked: a
    client that offered the task's tools gets a call, a teacher's text call (a local teacher writes
    it as JSON) made one; a client that offered none gets the call as the text the student would write."""
    if calls and not r.tool_calls:
        parsed = task.parse(r.output)
        if task.validate(parsed) is None:
            reply = text_of(parsed)  # a local teacher's reply in words, written as the student writes it
            if reply is not None:
                return reply, finish, r
            return "", "tool_calls", replace(r, tool_calls=as_tool_calls(parsed))
    if not offered and r.tool_calls:
        return call_text(r.tool_calls, task.cfg.parallel_tool_calls), "stop", replace(r, tool_calls=None)
    return r.output, finish, r
