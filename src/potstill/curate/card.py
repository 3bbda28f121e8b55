"""The dataset card as Markdown (its JSON twin is ``card.json``, the dict itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from potstill.curate.text import markdown as text_markdown


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(map(str, r)) + " |" for r in rows], ""]


def configured_teacher(t: dict[str, Any]) -> str:
    """The name generate writes in each record's meta.teacher for the card's teacher: its model, or
    its type where it names none (a replay teacher)."""
    return t["model"] or t["type"]


def replays_logs(t: dict[str, Any]) -> bool:
    """Whether the card's teacher is a replay teacher named by no model: it wrote none of the answers it
    gives, the models its recording names did (generate's meta.teacher, ``records_by_model``)."""
    return t.get("type") == "replay" and not t.get("model")


def same_teacher(a: str | None, b: str | None) -> bool:
    """Whether two names are one teacher: equal, or one local folder spelled two ways (``models/t``
    from the project folder, ``/home/me/proj/models/t`` from a config named by its absolute path)."""
    if not a or not b:
        return False
    if a == b:
        return True
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):
        return False


def terms_of(teacher: dict[str, Any], model: str | None) -> str:
    """The terms of use the card knows for ``model``: the configured teacher's (``teacher``, the card's
    entry) where ``model`` is that teacher, else "not given" (the config records no other model's)."""
    if same_teacher(model, configured_teacher(teacher)):
        return teacher.get("terms_of_use") or "not given"
    return "not given"


def card_markdown(card: dict[str, Any]) -> str:
    c = card["counts"]
    lines = ["# Dataset card", "", "## Counts at each step", "", *_table(["step", "records"], [[k, v] for k, v in c.items()])]
    if card.get("rejected_reasons"):
        lines += ["## Set aside (never trained on)", "", *[f"- {k or 'unknown'}: {v}" for k, v in card["rejected_reasons"].items()], ""]
    dist = card.get("label_distribution")
    if dist:
        labels = sorted({k for split in dist.values() for k in split})
        lines += ["## Label distribution", "",
                  *_table(["label", "train", "val", "test"], [[lab, *(dist[s].get(lab, 0) for s in ("train", "val", "test"))] for lab in labels])]
    elif card.get("teacher_label_distribution"):
        lines += ["## Teacher label distribution (kept records)", "",
                  *[f"- {k}: {v}" for k, v in sorted(card["teacher_label_distribution"].items())], ""]
    acc = card.get("teacher_accuracy")
    if acc:
        lines += ["## Where the teacher is weak (vs gold labels)", "",
                  f"Teacher accuracy on {acc['n']} records with a gold label: {acc['accuracy']:.1%}. "
                  "Groups more than 10 points below that (at least 5 records) are marked weak.", ""]
        for name, key in (("gold label", "per_label"), ("slice", "per_slice")):
            if acc[key]:
                lines += _table([name, "records", "teacher accuracy", ""],
                                [[k, v["n"], f"{v['accuracy']:.1%}", "**weak**" if v["weak"] else ""] for k, v in acc[key].items()])
    if card.get("text_hygiene"):
        lines += text_markdown(card["text_hygiene"])
    syn = card.get("synthesis")
    t = card["teacher"]
    if syn:
        why = ", ".join(f"{k}: {v}" for k, v in syn["rejected_by_reason"].items()) or "none"
        # The model that wrote the inputs, with its terms as the teacher's are given below: its outputs are
        # in the data as much as the teacher's answers are.
        lines += ["## Synthetic inputs", "",
                  f"`potstill synthesize` ({syn['teacher']}, its terms of use: {terms_of(t, syn['teacher'])}; "
                  f"{syn['seeds']} seeds) wrote {syn['written']} inputs and "
                  f"rejected {syn['rejected']} ({why}). Synthetic records per split: "
                  + ", ".join(f"{k} {v}" for k, v in syn["synthetic_per_split"].items()) + ".", ""]
    replayed = replays_logs(t)
    lines += ["## Provenance", "",
              "- Teacher: replay of recorded answers (`teacher.replay_path`)" if replayed else f"- Teacher: {t['type']} `{t['model']}`",
              f"- Teacher terms of use: {terms_of(t, configured_teacher(t))}"]
    wrote, named = t.get("records_by_model") or {}, configured_teacher(t)
    if replayed and any(m != "replay" for m in wrote):  # the logged models wrote them; a replay writes nothing
        lines.append("- Answers written by: " + ", ".join(f"`{m}` ({n} records)" for m, n in wrote.items())
                     + ", imported from their logs (`potstill import`) and replayed; their terms of use: not given")
    elif wrote and not replayed and not all(same_teacher(m, named) for m in wrote):
        lines.append("- Answers written by: " + ", ".join(f"`{m}` ({n} records)" for m, n in wrote.items())
                     + ("" if any(same_teacher(m, named) for m in wrote) else f"; the configured teacher `{named}` wrote none of them, "
                        "so the terms of use above may not be the ones that apply to this data"))
    for s in card.get("sources") or [{"name": "inputs", **card["inputs"]}]:
        lines.append(f"- Source `{s['name']}` ({s.get('records', '?')} records, labelled by {s.get('labelled_by', 'teacher')}): "
                     f"{s['source']}; licence: {s['license']}"
                     + (f"; read from `{s['path']}` at commit `{s['hub_commit']}`" if s.get("hub_commit") else ""))
    sp = card["split"]
    lines += [f"- Split: {sp['method']} (val={sp['val']}, test={sp['test']}, seed={sp['seed']})", ""]
    r = card.get("review_decisions")
    lines += ["## Review decisions", ""]
    if r:
        lines += [f"{r['decisions']} records reviewed: {r['accept']} accepted, {r['reject']} rejected, "
                  f"{r['relabel']} relabelled, {r.get('edit', 0)} edited; teacher error rate on the reviewed sample: {r['teacher_error_rate']:.1%}."
                  + (f" {r['stale']} accepts or rejects not applied: they judged answers teacher.jsonl no longer "
                     "holds (generated again)." if r.get("stale") else "")
                  + (f" {r['missing']} decision{'s' if r['missing'] != 1 else ''} not applied: their records are not "
                     "in teacher.jsonl (generated again on other inputs)." if r.get("missing") else ""), ""]
    else:
        lines += ["none", ""]
    return "\n".join(lines)
