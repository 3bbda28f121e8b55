"""Synthesize: the teacher writes new *inputs* when the user has only a task and a few seeds.

A diversity plan fixes, before any call, what each request asks for: a plan cell (a label, or a
named slice) with its quota, and a topic, length, style and difficulty rotated from the config's
lists, with a different window of seed exemplars each time, so the answers do not collapse onto
one template. A request is an ordinary teacher request whose answer is a new input, so it goes
through ``potstill.generate.label_records``: the ledger caches it, prices it, and a rerun after
``kill -9`` sends only what was in flight.

Every candidate is screened: unusable text (no ``<input>`` block, too short), near-duplicates of
an earlier candidate, of a seed or of a real input, and anything near a test input are rejected
with the reason, and counted in ``synthesize.json``.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


from potstill.config import SynthesizeConfig, TaskConfig
from potstill.errors import PotstillError
from potstill.curate.dedup import fingerprint, normalise
from potstill.curate.near import NearIndex
from potstill.records import Record
from potstill.tasks import Task
from potstill.tasks.classification import quoted
from potstill.tool_calls import tool_names as names

_INPUT = re.compile(r"<input>\s*(.*?)\s*</input>", re.S | re.I)


class PromptTask(Task):
    """Sends a record's messages as they are: the synthesis prompt carries its own instruction."""

    name = "prompt"

    def messages(self, record: Record) -> list[dict[str, Any]]:
        return list(record.messages)


@dataclass
class Slot:
    """One request of the plan: which cell it fills and how the input should vary."""

    cell: str
    attempt: int
    topic: str | None
    length: str | None
    style: str | None
    difficulty: str | None
    exemplars: list[str] = field(default_factory=list)

    def plan(self) -> dict[str, Any]:
        return {"cell": self.cell, "topic": self.topic, "length": self.length, "style": self.style,
                "difficulty": self.difficulty}


def quotas(s: SynthesizeConfig, task: TaskConfig) -> dict[str, int]:
    """Inputs to keep per cell: the configured quotas, else ``n`` split evenly (remainder to the first cells)."""
    if s.quotas:
        return dict(s.quotas)
    cells = s.cells or (task.labels if task.type == "classification" else tool_names(task)) or ["all"]
    base, extra = divmod(s.n, len(cells))
    return {c: base + (i < extra) for i, c in enumerate(cells)}


def tool_names(task: TaskConfig) -> list[str]:
    """A tools task's functions (its default cells: inputs split evenly over the tools); [] otherwise."""
    return names(task.tools) if task.type == "tools" else []


def check_cells(s: SynthesizeConfig, task: TaskConfig) -> None:
    """Refuse a classification cell that is not a label: its prompt asks for an input "whose correct
    label is" the cell, so the teacher would write to a label the task does not have."""
    if task.type != "classification":
        return
    for cell in s.quotas or s.cells:
        if cell not in task.labels:
            close = [lab for lab in task.labels if lab.lower() == cell.lower()] or \
                difflib.get_close_matches(cell, task.labels, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            field = "quotas" if s.quotas else "cells"
            raise PotstillError(f"synthesize: cell '{cell}' (synthesize.{field}) is not one of task.labels "
                                f"({quoted(task.labels)}); a classification cell is the label to write "
                                f"inputs for{hint}")


def slot(s: SynthesizeConfig, cell: str, attempt: int, seeds: list[str]) -> Slot:
    """The plan for the ``attempt``-th request of ``cell``: the same every run, so reruns hit the cache.

    The variation axes count like the digits of a mixed-radix number (topic fastest, then style,
    length, difficulty), each from a seeded start, so consecutive requests cover every combination
    before one repeats: 2 topics x 2 styles x 3 lengths x 2 difficulties = 24 distinct prompts.
    """
    picked: dict[str, str | None] = {}
    stride = 1
    for name in ("topic", "style", "length", "difficulty"):
        options: list[str] = getattr(s, name + "s" if name != "difficulty" else "difficulties")
        if not options:
            picked[name] = None
            continue
        start = random.Random(f"{s.seed}:{cell}:{name}").randrange(len(options))
        picked[name] = options[(attempt // stride + start) % len(options)]
        stride *= len(options)
    rng = random.Random(f"{s.seed}:{cell}:{attempt}")
    shown = rng.sample(seeds, min(s.exemplars, len(seeds))) if seeds else []
    return Slot(cell, attempt, picked["topic"], picked["length"], picked["style"], picked["difficulty"], shown)


def prompt(task: TaskConfig, sl: Slot, completion: bool = False,
           listed: Callable[[list[str]], str] = quoted) -> list[dict[str, str]]:
    """The chat that asks the teacher for one new input.

    ``listed``: how labels are written out (``former_prompt`` passes the earlier rendering).

    ``completion``: for a base model, one plain-text document instead: a header naming the task,
    the cell and the plan, then the exemplars one per ``<input>...</input>`` line. The stage ends it
    with an open ``<input>`` (the answer prefix), so the model continues the list with a new input
    and stops at ``</input>``; a base model follows a pattern, not an instruction.
    """
    plan = [f"{name.capitalize()}: {getattr(sl, name)}." for name in ("topic", "length", "style", "difficulty")
            if getattr(sl, name)]
    # The request number makes each request distinct (its own cache entry) even when the rest repeats.
    tag = f"(request {sl.cell}#{sl.attempt})"
    if completion:
        head = [task.instruction] if task.instruction else []
        if task.type == "classification":
            head.append(f"Inputs whose correct label is {listed([sl.cell])}, each new and different from the others. "
                        f"{tag}")
        elif sl.cell in tool_names(task):
            head.append(f"Requests that need the tool {sl.cell}, each new and different from the others. {tag}")
        else:
            head.append(f"Inputs of the kind {sl.cell}, each new and different from the others. {tag}"
                        if sl.cell != "all" else f"Inputs for this task, each new and different from the others. {tag}")
        body = "\n".join([*head, *plan, ""] + [f"<input>{e}</input>" for e in sl.exemplars])
        return [{"role": "user", "content": body}]
    system = ("You write new, realistic example inputs for a task, to build a dataset. Write ONE new input that "
              "differs from the examples in wording and content. Reply with the input only, "
              "between <input> and </input>.")
    lines = [f"The task the input will be given to: {task.instruction}"]
    if task.type == "classification":
        # Quoted: a label may hold a comma ("crash, bug"), and the teacher must read the set back.
        lines.append(f"Possible labels: {listed(task.labels)}. Write an input whose correct label is: "
                     f"{listed([sl.cell])}.")
    elif task.type == "tools":
        how = "one or more of these tools at once" if task.parallel_tool_calls else "one of these tools"
        lines.append(f"The assistant answers each input by calling {how}: " + "; ".join(
            f"{t['function']['name']}" + (f" ({t['function']['description']})" if t["function"].get("description") else "")
            + f", arguments: {json.dumps(t['function'].get('parameters') or {'type': 'object'})}" for t in task.tools or []))
        if sl.cell in tool_names(task):
            lines.append(f"Write a request that needs the tool: {sl.cell}.")
    elif task.json_schema is not None:
        lines.append("Answers must follow this JSON Schema, so the input should contain what it asks for: "
                     + json.dumps(task.json_schema, ensure_ascii=False))
    elif task.grammar is not None:
        lines.append("Answers must follow this grammar (GBNF from its rule root, or Lark from start), so the input "
                     f"should ask for what it derives:\n{task.grammar.strip()}")
    if sl.cell != "all" and task.type != "classification" and sl.cell not in tool_names(task):
        lines.append(f"Kind of input: {sl.cell}.")
    lines += plan
    if sl.exemplars:
        lines.append("Examples of real inputs (do not copy or paraphrase them):")
        lines += [f"<input>{e}</input>" for e in sl.exemplars]
    lines.append(tag)
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def former_prompt(task: TaskConfig, sl: Slot, completion: bool = False) -> list[dict[str, str]] | None:
    """The chat potstill asked for this input before labels were quoted (2026-12-06 and earlier:
    joined by ", " as written), whose cached answer answers for it still; None where there is none.

    Only a classification prompt changed, and only where no label holds a comma does the earlier
    text say what this one says: "crash, bug" read as two labels there, and is the reason for the
    quotes. Without this, the upgrade gave every synthesis request a new ledger key, and a finished
    synthesize asked and paid for all of them again (new inputs at temperature 1.0, so a new
    synthetic.jsonl for generate to label)."""
    if task.type != "classification" or any("," in lab for lab in task.labels):
        return None
    return prompt(task, sl, completion, ", ".join)


def extract(output: str | None, opened: bool = False) -> str | None:
    """The input between <input> tags, or None when the answer has none.

    ``opened``: the prompt already ended with ``<input>`` (completion format), so the answer is
    the text up to ``</input>`` (or up to a new ``<input>``, when the model opened the next one
    without closing its own), or all of it when the model stopped before either tag.
    """
    if opened:
        text = re.split(r"</?input>", output or "", maxsplit=1)[0].strip()
        return text or None
    m = _INPUT.search(output or "")
    return m.group(1).strip() if m and m.group(1).strip() else None


class Screen:
    """Remembers every kept text and rejects a candidate near one of them, or near a test input.

    The exact Jaccard of character 5-gram sets decides, and every pair at the bar is found, as in
    curate's dedup (``NearIndex``), on compact fingerprints: 8 bytes a 5-gram where a set of strings
    cost ~160. Future candidates are unknown here, so the index orders 5-grams by id, not by rarity.
    """

    def __init__(self, references: list[tuple[str, str]], tests: list[str], dup: float, test_bar: float,
                 own_tests: Sequence[str] = ()):
        self.dup, self.test_bar = dup, test_bar
        # Test inputs an earlier run wrote (curate split them into RUN/test.jsonl) stand as the synthetic
        # inputs they were, at the near-duplicate bar they were kept under: at the test bar, a sibling
        # kept beside one (Jaccard 0.5-0.8) that curate put in train was rejected by the rerun, which
        # paid for a new input and changed synthetic.jsonl. The same text again is that test input, not
        # a duplicate (curate's split hashes the text, so it lands in test again; dropping it would
        # empty test).
        self.own_tests = {normalise(t) for t in own_tests}
        self.rewritten: set[str] = set()
        self.exact: dict[str, str] = {}
        self.kept = NearIndex(dup)
        self.tests = NearIndex(test_bar)
        for t in tests:
            self.tests.add(fingerprint(t))
        for kind, text in [*references, *(("a test input an earlier run wrote", t) for t in own_tests)]:
            self._keep(kind, text, fingerprint(text))

    def _keep(self, kind: str, text: str, fp) -> None:
        self.exact.setdefault(normalise(text), kind)
        self.kept.add(fp, kind)

    def near_test(self, text: str) -> float:
        """The Jaccard similarity of ``text`` to its nearest test input (0.0 below the test bar)."""
        return self._near_test(fingerprint(text))

    def _near_test(self, fp) -> float:
        return max((sim for sim, _ in self.tests.query(fp)), default=0.0)

    def check(self, text: str) -> str | None:
        """None if the text may be kept (and then it is remembered), else the reason it may not."""
        fp = fingerprint(text)
        near_test = self._near_test(fp)
        if near_test >= self.test_bar:
            return f"near a test input (Jaccard {near_test:.2f} >= {self.test_bar})"
        key = normalise(text)
        if key in self.own_tests and key not in self.rewritten:
            self.rewritten.add(key)  # among the references already
            return None
        if key in self.exact:
            return f"duplicates {self.exact[normalise(text)]} (exact)"
        best = max(((sim, self.kept.names[y]) for sim, y in self.kept.query(fp)), default=(0.0, ""))
        if best[0] >= self.dup:
            return f"duplicates {best[1]} (Jaccard {best[0]:.2f} >= {self.dup})"
        self._keep("a synthetic input", text, fp)
        return None
