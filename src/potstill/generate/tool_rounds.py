"""An agent's later turns, generated (``generate.tool_rounds``): the teacher plays the functions it calls.

A tools task under ``task.tool_choice: auto`` learns what to say after a tool's result only from
inputs that hold such results, and most inputs (written, synthesized) are first requests. Each
round: every answer of the round before that calls functions gets each call's result written by
the teacher itself, asked as the function (its declaration and the call's arguments; ``SIMULATE``),
and the chat with the calls and those results becomes a new input the teacher answers as any other
(a reply in words, or more calls for the next round). Every request goes through ``label_records``,
so each is in the ledger: a rerun pays for none twice, and a crash loses nothing. A result the
teacher could not write (an error, an empty answer) ends that chat there. Any ``generate.engine``
runs them: each round's two steps (the functions played, then the chats answered) go through it in
turn, so under ``batch`` a round is two batches, each waited for (at the batch price, up to the
provider's window each), and a rerun after a kill resumes the open one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from potstill.config import Config, TaskConfig
from potstill.errors import PotstillError
from potstill.records import Record
from potstill.tool_calls import calls_of, has_tool_turns

SIMULATE = ("You play a function that an assistant has just called, given its declaration and the call's arguments. "
            "Reply with only what the function returns, as JSON: specific, plausible values that fit the "
            "arguments, no commentary.")


def check_rounds(cfg: Config) -> None:
    """One line where ``generate.tool_rounds`` cannot run with this task."""
    if not cfg.generate.tool_rounds:
        return
    if cfg.task.type != "tools" or cfg.task.tool_choice != "auto":
        raise PotstillError("generate.tool_rounds: needs task.type tools with task.tool_choice auto (a task whose "
                            "answers may follow a tool's result)")


def first_calls_only(cfg: Config, records: Sequence[Record]) -> str | None:
    """What is paid for and never learnt among ``records`` (inputs), under a tools task's
    ``task.tool_choice: required``, whose student learns first calls only: inputs that already hold
    tool calls or results (the teacher is made to call again after a result, and serve sends such
    chats to the teacher, never the student); None where there are none, or the task learns them."""
    if cfg.task.type != "tools" or cfg.task.tool_choice != "required":
        return None
    held = [r for r in records if has_tool_turns(r.messages)]
    if not held:
        return None
    ending = sum(1 for r in held if r.messages[-1].get("role") == "tool")
    return (f"{len(held)} of {len(records)} inputs already hold tool calls or results ({ending} end with a tool "
            "result): under task.tool_choice required the student learns first calls only, so the teacher would "
            "be paid for them and the student never answers such chats (serve sends them to the teacher); set "
            "task.tool_choice: auto to learn the turns after tool results, or leave them out of data.inputs")


def add_rounds(cfg: Config, labelled: list[Record], ledger: Any, stats: Any, make_teacher: Any) -> list[Record]:
    """``labelled`` plus the records of up to ``generate.tool_rounds`` later turns; ``stats`` (a
    ``RunStats``) gains their calls. ``make_teacher(task)``: a teacher from ``cfg.teacher`` for a task."""
    from potstill.generate import label_records
    from potstill.tasks import get_task

    task = get_task(cfg.task)
    player = get_task(TaskConfig(type="freetext", instruction=SIMULATE, max_output_tokens=cfg.task.max_output_tokens))
    functions = {t["function"]["name"]: t["function"] for t in cfg.task.tools or []}
    out, frontier = list(labelled), labelled
    for n in range(1, cfg.generate.tool_rounds + 1):
        called = [(r, calls_of(task.parse(r.output))) for r in frontier if r.valid and r.output is not None]
        called = [(r, cs) for r, cs in called if cs]
        if not called:
            break
        asks = [Record(id=f"{r.id}.call{j}", messages=[{"role": "user", "content": _asked(functions, c)}],
                       meta={"source": "tool_rounds", "round": n})
                for r, cs in called for j, c in enumerate(cs)]
        played = _labelled(label_records, asks, player, make_teacher, ledger, cfg, stats)
        results = {r.id: r.output for r in played if r.valid and r.output}
        nxt = []
        for r, cs in called:
            outs = [results.get(f"{r.id}.call{j}") for j in range(len(cs))]
            if any(o is None for o in outs):
                continue
            ids = [f"call_{n}_{j}" for j in range(len(cs))]
            turn = {"role": "assistant", "content": None, "tool_calls": [
                {"id": i, "type": "function", "function": {"name": c["name"], "arguments": json.dumps(
                    c["arguments"], ensure_ascii=False)}} for i, c in zip(ids, cs)]}
            nxt.append(Record(id=f"{r.id}.r{n}", messages=[*r.messages, turn, *(
                {"role": "tool", "tool_call_id": i, "content": o} for i, o in zip(ids, outs))],
                label=None, slice=[*r.slice, f"tool_round:{n}"],
                meta={"source": "tool_rounds", "round": n, "from": r.id, "results_written_by_teacher": True}))
        if not nxt:
            break
        frontier = _labelled(label_records, nxt, task, make_teacher, ledger, cfg, stats)
        out += frontier
    return out


def _asked(functions: dict[str, Any], call: dict[str, Any]) -> str:
    declared = functions.get(call["name"], {"name": call["name"]})
    return (f"Function: {json.dumps(declared, ensure_ascii=False)}\n"
            f"Arguments: {json.dumps(call['arguments'], ensure_ascii=False)}")


def _labelled(label_records: Any, records: list[Record], task: Any, make_teacher: Any, ledger: Any, cfg: Config,
              stats: Any) -> list[Record]:
    """``label_records`` on one round's requests, within what is left of ``generate.budget_usd``."""
    gcfg = cfg.generate
    if gcfg.budget_usd is not None:
        gcfg = gcfg.model_copy(update={"budget_usd": max(0.0, gcfg.budget_usd - stats.cost_usd)})
    teacher = make_teacher(task)
    try:
        done, more = label_records(records, task, teacher, ledger, "generate", gcfg, parent=stats.run_id)
    finally:
        teacher.close()
    stats.add_run(more)
    from potstill.generate import unsent

    return [r for r in done if not unsent(r)]
