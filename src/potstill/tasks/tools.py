"""Tool calling: each answer is one call of one of ``task.tools``, written ``{name, arguments}``, or
with ``task.parallel_tool_calls`` a list of one or more such calls; with ``task.tool_choice: auto``
it may be a reply in words instead, ``{content}``, and a chat may hold earlier calls and results.

An extraction task whose JSON Schema is derived from the tools (``potstill.tool_calls``): the
teacher is asked with the tools, a call required, and its calls become the record's output; the
student learns that text without the tools in its prompt, and serve answers a request carrying the
same tools with it as OpenAI ``tool_calls``.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from potstill.config import TaskConfig
from potstill.models.json_schema_parts import validator
from potstill.tasks.base import folded
from potstill.tasks.extraction import (ExtractionTask, _Invalid, composed, field_agreement, json_same, json_text,
                                       parse_json)
from potstill.tool_calls import call_text, text_of


def reply_text(output: str) -> str:
    """An answer's text as a tools task under ``tool_choice: auto`` learns it: plain text as written
    (``parse`` reads it as a reply), and JSON in the student's form (a call, a list of calls,
    ``{"content": ...}``: a local teacher writes them so, and serve writes a call so for a client that
    offered no tools) as written; any other text that starts as JSON is a reply in words that is data
    itself (an agent answering with it), kept as ``{"content": TEXT}``, not read as a broken call."""
    text = output.strip()
    if not text or text[0] not in "{[`":
        return output
    parsed = parse_json(output)
    one = parsed[0] if isinstance(parsed, list) and parsed else parsed
    if text_of(parsed) is not None or isinstance(one, dict) and {"name", "arguments"} <= set(one):
        return output
    return json.dumps({"content": text}, ensure_ascii=False)


class ToolsTask(ExtractionTask):
    """The config derived ``json_schema`` from ``task.tools`` (``TaskConfig``): extraction's parse,
    validation and target apply as they are."""

    name = "tools"

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        # Each function's parameters (any object where it declares none), for ``validate``'s reasons.
        self.params = {t["function"]["name"]: validator(composed(t["function"].get("parameters") or {"type": "object"}))
                       for t in cfg.tools or []}

    def answer_output(self, answer: dict[str, Any]) -> str | None:
        """A teacher's answer as the text to learn: its tool calls (``call_text``), else its text
        (which fails the schema under ``tool_choice: required``: the teacher answered without calling).
        Under ``auto`` that text is a reply in words, kept as ``{"content": TEXT}`` even where it is JSON
        itself (an agent answering with data), unless it is already in the student's form (a local
        teacher writes its calls, and may write its replies, as that JSON)."""
        calls = answer.get("tool_calls")
        if calls:
            return call_text(calls, self.cfg.parallel_tool_calls)
        output = answer.get("output")
        return reply_text(output) if self.cfg.tool_choice == "auto" and output else output

    def parse(self, output: str) -> Any:
        """Extraction's parse; a parallel task's calls in one order (by name, then arguments), since the
        order of parallel calls means nothing, so the student learns one and answers compare as sets.
        One call alone there counts as a list of one. Under ``tool_choice: auto`` a text that does not
        start as JSON does (``{``, ``[`` or a code fence) is a reply in words, ``{"content": TEXT}``:
        an API teacher's or a logged reply (imported, served) as it was written; under ``required``
        it is no call (``validate``: "no tool call")."""
        text = output.strip()
        if text[:1] not in ("{", "[", "`"):
            if self.cfg.tool_choice == "auto" and text:
                return {"content": text}
            if self.cfg.tool_choice != "auto":  # words where a call is required
                return _Invalid("no tool call: the answer is " + ("text, not a call" if text else "empty"))
        parsed = super().parse(output)
        if not self.cfg.parallel_tool_calls or isinstance(parsed, _Invalid):
            return parsed
        if isinstance(parsed, dict) and text_of(parsed) is None:
            parsed = [parsed]
        if isinstance(parsed, list):
            try:
                return sorted(parsed, key=_order)
            except TypeError:
                return parsed
        return parsed

    def validate(self, parsed: Any) -> str | None:
        """Extraction's validation, what a call got wrong said first, each as a reason of its own
        kind (the words before its first colon, which curate's card counts apart): ``no tool call``,
        ``too many calls`` (several where one is allowed), ``unknown function`` (one ``task.tools``
        does not declare), ``arguments not JSON``, ``extra property`` and ``missing property``
        (named, with the function); else a ``schema violation at`` the place in the arguments
        where they break their function's parameters, or in the answer."""
        if isinstance(parsed, _Invalid):
            return parsed.reason
        if isinstance(parsed, list):
            if not parsed:
                return "no tool call: an empty list of calls"
            if not self.cfg.parallel_tool_calls and len(parsed) > 1:
                return f"too many calls: {len(parsed)} calls, one allowed (task.parallel_tool_calls is false)"
        for i, call in enumerate(parsed if isinstance(parsed, list) else [parsed]):
            problem = self._call_problem(call, f"{i}/" if isinstance(parsed, list) else "")
            if problem is not None:
                return problem
        return super().validate(parsed)

    def _call_problem(self, call: Any, at: str) -> str | None:
        """What is wrong with one ``{name, arguments}`` call (``at``: its place in a list of them),
        None where nothing of a call's own is (a reply in words, or no call's shape, is the schema's)."""
        if not isinstance(call, dict) or "name" not in call:
            return None
        name, args = call["name"], call.get("arguments")
        if not isinstance(name, str) or name not in self.params:
            return f"unknown function: {name!r} is not one of task.tools ({', '.join(self.params)})"
        if isinstance(args, str):
            return f"arguments not JSON: {name}'s arguments are not a JSON object: {_clip(args)}"
        if not isinstance(args, dict):
            return None
        errors = list(self.params[name].iter_errors(composed(args)))
        for kind in ("additionalProperties", "required"):  # an extra property first: a name it made up
            for e in errors:
                if e.validator != kind or not isinstance(e.instance, dict):
                    continue
                if kind == "required":
                    names = [k for k in e.validator_value if k not in e.instance]
                else:
                    declared = (e.schema.get("properties") or {}) if isinstance(e.schema, dict) else {}
                    names = [k for k in e.instance if k not in declared]
                if names:
                    where = "/".join(str(p) for p in e.absolute_path)
                    return f"{'missing' if kind == 'required' else 'extra'} property: {', '.join(map(repr, names))} " \
                           f"in {name}'s arguments" + (f" at {where}" if where else "")
        err = jsonschema.exceptions.best_match(iter(errors))
        if err is None:
            return None
        path = "/".join(str(p) for p in err.absolute_path)
        return f"schema violation at {at}arguments{'/' + path if path else ''}: {err.message}"

    def agree(self, a: Any, b: Any) -> float:
        """One call against one: 0 for another function, else the share of argument fields (union)
        with equal values. Lists of calls: the calls paired one to one the way that agrees most
        (``best_pairing``; the same score whichever answer comes first, in any order), the sum
        over the longer's length (an extra or missing call counts 0)."""
        if isinstance(a, list) and isinstance(b, list):
            if not a and not b:
                return 1.0
            short, long = sorted((a, b), key=len)
            if not short:
                return 0.0
            return best_pairing([[self._one(c, d) for d in long] for c in short]) / len(long)
        return self._one(a, b)

    @staticmethod
    def _one(a: Any, b: Any) -> float:
        """One call against one; replies in words (``tool_choice: auto``) compare as free text does
        (equal after folding case and white space); a call against a reply, 0."""
        if isinstance(a, _Invalid) or isinstance(b, _Invalid) or not isinstance(a, dict) or not isinstance(b, dict):
            return 0.0
        ta, tb = text_of(a), text_of(b)
        if ta is not None or tb is not None:
            return float(ta is not None and tb is not None and folded(ta) == folded(tb))
        if a.get("name") != b.get("name"):
            return 0.0
        x, y = a.get("arguments"), b.get("arguments")
        if isinstance(x, dict) and isinstance(y, dict):
            return field_agreement(x, y)
        return float(json_same(x, y))


def _clip(text: str, most: int = 40) -> str:
    """``text`` as a reason quotes it: its repr, cut to about ``most`` characters."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."


def _order(call: Any) -> tuple[str, str]:
    """A parallel call's place: by function name, then by its whole JSON text."""
    return (str(call.get("name")) if isinstance(call, dict) else "", json_text(call))


def best_pairing(score: list[list[float]]) -> float:
    """The largest total of ``score[i][j]`` over a pairing of each row with its own column (rows no
    more than columns): the Hungarian method (Kuhn-Munkres, in Jonker and Volgenant's shortest
    augmenting paths, on the costs ``-score``), O(rows^2 x columns), so a student that writes many
    calls costs no more than a few milliseconds. 1-based below, column 0 the unpaired start."""
    n, m = len(score), len(score[0])
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)  # the dual potentials of rows and columns
    row_of, came = [0] * (m + 1), [0] * (m + 1)  # each column's row; the path that reached a column
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        least, done = [inf] * (m + 1), [False] * (m + 1)
        while row_of[j0]:
            done[j0] = True
            i0, delta, j1 = row_of[j0], inf, 0
            for j in range(1, m + 1):
                if not done[j]:
                    cur = -score[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < least[j]:
                        least[j], came[j] = cur, j0
                    if least[j] < delta:
                        delta, j1 = least[j], j
            for j in range(m + 1):
                if done[j]:
                    u[row_of[j]] += delta
                    v[j] -= delta
                else:
                    least[j] -= delta
            j0 = j1
        while j0:  # the augmenting path, walked back: each column on it takes its new row
            j1 = came[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    return sum(score[row_of[j] - 1][j - 1] for j in range(1, m + 1) if row_of[j])
