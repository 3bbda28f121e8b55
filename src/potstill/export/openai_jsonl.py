"""OpenAI fine-tuning JSONL: one ``{"messages": [system, user..., assistant]}`` object per line.

The system message is the task instruction (none when it is empty, as in training) and the
last assistant message the training target, the same text the student is trained on (an input's
own assistant turns get ``weight: 0``: prompt, as in training), so a hosted fine-tune sees
exactly potstill's dataset. A tools task's target is its call: an assistant turn of
``tool_calls`` (the arguments as a JSON string; each call of a parallel task's answer), with the
task's ``tools`` and its ``parallel_tool_calls`` on the line, the format OpenAI fine-tunes function
calling on; a reply in words (``task.tool_choice: auto``) is an assistant turn of its text, after the
input's own calls and tool results as they were.
train.jsonl becomes ``train.jsonl`` (the training file), val.jsonl ``val.jsonl`` (the validation
file). Every row is built and checked before anything is written, so a bad record leaves no file
and an earlier export in the folder as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.export import register
from potstill.export.check import line_problems
from potstill.progress import say
from potstill.records import atomic_files, content_text, read_records
from potstill.tasks import get_task
from potstill.tool_calls import calls_of, has_tool_turns, text_of

MIN_EXAMPLES = 10  # OpenAI's fine-tuning API refuses a training file with fewer


def to_openai(messages: list[dict[str, Any]], target: str, tools: list[dict[str, Any]] | None = None,
              parallel: bool = False) -> dict[str, Any]:
    """One line: the input's messages, then ``target`` as the assistant's turn; with ``tools`` (a
    tools task), ``target`` is the call ``{name, arguments}`` (``parallel``: a list of them) and the
    turn its ``tool_calls``, or a reply in words ``{content}`` (``task.tool_choice: auto``) its text."""
    # An empty task.instruction is no system turn: the student was trained without one (PromptFormat
    # leaves it out), and OpenAI refuses a message with empty content; nor is an input's own blank
    # instruction turn (system, or developer: the same turn under OpenAI's newer name).
    msgs = [_message(m) for m in messages if not (m["role"] in ("system", "developer")
                                                  and isinstance(m.get("content"), str) and not m["content"].strip())]
    if tools is None:
        msgs.append({"role": "assistant", "content": target})
        return {"messages": msgs}
    parsed = json.loads(target)
    if text_of(parsed) is not None:
        msgs.append({"role": "assistant", "content": text_of(parsed)})
        return {"messages": msgs, "tools": tools, "parallel_tool_calls": parallel}
    # Ids apart from the input's own calls' where it has some: by the turn's place.
    at = f"{len(msgs)}_" if has_tool_turns(messages) else ""
    msgs.append({"role": "assistant", "tool_calls": [{"id": f"call_{at}{i}", "type": "function", "function": {
        "name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
        for i, c in enumerate(calls_of(parsed))]})
    return {"messages": msgs, "tools": tools, "parallel_tool_calls": parallel}


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """One input message as the fine-tuning format takes it.

    Text parts as their text (what the student read); a tool chat keeps its calls and the ids that
    pair each tool message with its call, or the upload refuses it; a tool-call turn logged with
    content "" (many clients do) is the format's turn without content. OpenAI's newer `developer`
    instruction turn is a system message in the format's roles. An assistant turn of the input is
    prompt, as in potstill's training (completion tokens only): weight 0, or OpenAI trains on every
    assistant message of the example."""
    content = content_text(m["content"]) if isinstance(m.get("content"), list) else m.get("content")
    if m["role"] == "assistant" and m.get("tool_calls") and isinstance(content, str) and not content.strip():
        content = None
    return {"role": "system" if m["role"] == "developer" else m["role"], "content": content,
            **{k: m[k] for k in ("tool_calls", "tool_call_id", "name") if m.get(k) is not None},
            **({"weight": 0} if m["role"] == "assistant" else {})}


@register("openai-jsonl")
def export_openai_jsonl(cfg: Config, run: Path, out_dir: Path) -> list[Path]:
    task = get_task(cfg.task)
    rows: dict[str, list[str]] = {}  # each split's lines, checked and encodable, before any file is written
    for split in ("train", "val"):
        path = run / f"{split}.jsonl"
        if not path.exists():
            raise PotstillError(f"{path} not found: run `potstill curate` first")
        rows[split] = []
        for lineno, rec in enumerate(read_records(path), 1):
            if rec.output is None:
                raise PotstillError(f"{path}:{lineno}: record {rec.id} has no output to train on; nothing was exported")
            # What `potstill train` checks: a hand-edited split may hold an answer that is no label (no
            # JSON), which task.target cannot make a target of. Such a row is checked with the answer as
            # written (the format check names an empty one in its terms) and never written.
            why = task.validate(task.parse(rec.output))
            tools = cfg.task.tools if cfg.task.type == "tools" and not why else None
            line = json.dumps(to_openai(task.messages(rec), rec.output if why else task.target(rec), tools,
                                        cfg.task.parallel_tool_calls), ensure_ascii=False)
            problems = line_problems(line) or ([why] if why else [])
            if problems:  # e.g. an empty teacher output: refused here, before any file is touched
                raise PotstillError(f"{path}:{lineno}: {problems[0]} (record {rec.id}); nothing was exported")
            rows[split].append(line)
    if not rows["train"]:  # a validation file alone is no fine-tuning job
        raise PotstillError(f"{run / 'train.jsonl'}: no records to export (run `potstill curate` first)")
    if len(rows["train"]) < MIN_EXAMPLES:
        say(f"[yellow]export: {len(rows['train'])} training examples; OpenAI fine-tuning needs at least {MIN_EXAMPLES}[/yellow]")
    written = [out_dir / f"{split}.jsonl" for split, lines in rows.items() if lines]
    # Both files are written to temp names before either is renamed into place: a failure leaves the
    # earlier export's pair, never a new train.jsonl beside an old val.jsonl.
    with atomic_files(written) as files:
        for path, f in files.items():
            f.writelines(line + "\n" for line in rows[path.stem])
    for split, lines in rows.items():
        if not lines:  # an earlier export's file of this split would be uploaded beside the new one
            (out_dir / f"{split}.jsonl").unlink(missing_ok=True)
    say("export: " + ", ".join(f"{p} ({len(rows[p.stem])} examples, format checked)" for p in written))
    return written
