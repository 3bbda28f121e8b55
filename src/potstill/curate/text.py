"""Text hygiene: encoding damage in inputs and teacher outputs, counted always and repaired on request.

Exports from CRMs and spreadsheets often carry text decoded with the wrong codec ("Â£5" for
"£5", "donâ€™t" for "don’t"), terminal escapes or C1 control characters. ftfy finds and undoes
them; here it runs with only its repairs of *damage* switched on, so legitimate text is never
rewritten: curly quotes, ligatures, full-width letters, HTML entities, line breaks and Unicode
normalisation are left as they are.

Counted per field kind (``inputs``: the user-side messages; ``outputs``: the teacher's output
and samples), by kind of damage: ``mojibake`` (a re-encode/decode fix) or the name of the ftfy
fixer that applied (``remove_terminal_escapes``, ``fix_c1_controls``, ...).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from potstill.records import Record

EXAMPLES = 5  # before/after pairs kept for the dataset card


def _config() -> Any:
    import ftfy

    return ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False, fix_latin_ligatures=False,
                                fix_character_width=False, fix_line_breaks=False, normalization=None)


def _kinds(explanation: list[Any]) -> set[str]:
    return {"mojibake" if action in ("encode", "decode", "transcode") else str(param)
            for action, param in explanation}


class Hygiene:
    """Checks (and with ``fix`` repairs) every record's text, keeping the counts for the card."""

    def __init__(self, fix: bool):
        import ftfy

        self._fix_and_explain = ftfy.fix_and_explain
        self._cfg = _config()
        self.fix = fix
        self.records: Counter[str] = Counter()  # records with damage, per field kind
        self.kinds: Counter[str] = Counter()  # damaged strings, per kind of damage
        self.examples: list[dict[str, str]] = []

    def _text(self, rid: str, where: str, text: str, hit: set[str]) -> str:
        fixed, explanation = self._fix_and_explain(text, self._cfg)
        if fixed == text:
            return text
        hit.add(where)
        self.kinds.update(_kinds(explanation or []))
        if len(self.examples) < EXAMPLES:
            self.examples.append({"id": rid, "field": where, "before": text[:160], "after": fixed[:160]})
        return fixed if self.fix else text

    def _content(self, rid: str, content: str | list, hit: set[str]) -> str | list:
        """A message's content repaired: a string, or each text part of a list of parts."""
        if isinstance(content, str):
            return self._text(rid, "inputs", content, hit)
        return [{**p, "text": self._text(rid, "inputs", p["text"], hit)} if isinstance(p, dict) and isinstance(p.get("text"), str)
                else p for p in content]

    def record(self, r: Record) -> Record:
        """``r`` with damaged text repaired (when ``fix``), counted either way; untouched records are returned as is."""
        hit: set[str] = set()
        messages = [{**m, "content": self._content(r.id, m["content"], hit)} if isinstance(m.get("content"), (str, list))
                    else m for m in r.messages]
        output = self._text(r.id, "outputs", r.output, hit) if r.output is not None else None
        samples = [self._text(r.id, "outputs", s, hit) for s in r.samples] if r.samples else r.samples
        self.records.update(hit)
        if not hit or not self.fix:
            return r
        # The id stays the record's (the ledger and review decisions key on it).
        return r.model_copy(update={"messages": messages, "output": output, "samples": samples,
                                    "meta": {**r.meta, "text_fixed": sorted(hit)}})

    def card(self, n: int) -> dict[str, Any]:
        return {"fix_text": self.fix, "records": n, "damaged_inputs": self.records["inputs"],
                "damaged_outputs": self.records["outputs"], "kinds": dict(sorted(self.kinds.items())),
                "repaired": self.fix and bool(self.records), "examples": self.examples}


def markdown(h: dict[str, Any]) -> list[str]:
    """The dataset card's section on encoding damage."""
    lines = ["## Text encoding damage (ftfy)", ""]
    if not h["damaged_inputs"] and not h["damaged_outputs"]:
        return lines + [f"None found in {h['records']} records.", ""]
    action = "repaired (curate.fix_text on)" if h["fix_text"] else "left as found (set curate.fix_text to repair)"
    lines += [f"{h['damaged_inputs']} records with damaged inputs and {h['damaged_outputs']} with damaged teacher "
              f"outputs, of {h['records']}; {action}.", "",
              *[f"- {k}: {v} strings" for k, v in h["kinds"].items()], ""]
    for e in h["examples"]:
        lines.append(f"- `{e['id']}` {e['field']}: {e['before']!r} -> {e['after']!r}")
    return lines + [""]
