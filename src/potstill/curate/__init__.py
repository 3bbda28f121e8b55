"""Curate: decide which teacher outputs the student may learn from, split them, and say why.

In order, each step counted in the dataset card:

0. Text hygiene: encoding damage (mojibake) in inputs and teacher outputs, counted, and
   repaired when ``curate.fix_text`` is on (see ``potstill.curate.text``).
1. Review: a reviewer's reject removes a record, a relabel or an edit replaces the teacher's
   answer (decisions from ``potstill review``, in ``review.sqlite``); a decision also holds for the
   exact duplicates of its input, whichever copy dedup keeps.
2. Validation: the task's check (label set; JSON Schema with the failing path) and the length
   and format rules of ``curate``, no special token of the student's in the answer (``specials``:
   its tokenizer reads ``<|im_end|>`` there as its turn end), and a chat the student's chat template
   takes (``refuses``: train, evaluate, pilot and preflight stop on one it refuses, serve answers it
   with a 400). Invalid records go to ``rejected.jsonl`` with the reason.
3. Self-consistency: with n samples, the majority answer becomes the output; records whose
   majority holds less than ``curate.min_agreement`` of the samples are set aside.
4. Deduplication of inputs, exact and near (every pair whose 5-gram sets reach the Jaccard
   threshold), keeping one of each cluster, so no input and none of its near-duplicates sit on
   both sides of the train/test border: the one whose input text has the lowest sha256 (teacher
   records before real examples), so the order of the lines does not pick it.
5. Stratified, hash-based train/val/test split (see ``potstill.curate.split``); train capped at
   ``curate.max_train``, the records over it counted as ``over_max_train``.
6. Mixing: real labelled examples added to train at ``curate.real_ratio``, tagged by source;
   any that duplicate a teacher input (train, val or test) are dropped first. A person's label
   for the very input the teacher answered (an exact duplicate) is not lost: the teacher's copy
   keeps its place in the split and takes the real label as gold, and in train as its answer. Where
   that copy was dropped as a near duplicate, the example is one of the kept record, set aside.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from potstill.config import Config
from potstill.curate.card import card_markdown
from potstill.curate.checks import Specials, invalid_reason, majority, teacher_accuracy
from potstill.curate.dedup import conversation, dedup_key, find_duplicates, normalise
from potstill.curate.split import rank, split
from potstill.curate.text import Hygiene
from potstill.hashing import hash_obj
from potstill.hub_files import provenance
from potstill.records import Record
from potstill.review.store import error_rate
from potstill.tasks import get_task

__all__ = ["Curated", "card_markdown", "curate", "normalise", "split"]


@dataclass
class Curated:
    train: list[Record]
    val: list[Record]
    test: list[Record]
    rejected: list[Record]
    card: dict[str, Any]


def _reject(rec: Record, reason: str) -> Record:
    out = rec.model_copy(deep=True)
    out.valid, out.invalid_reason = False, reason
    return out


def _apply_review(rec: Record, d: dict[str, Any], labels: list[str], task) -> Record:
    """A relabel puts the reviewer's label in place of the teacher's answer, an edit their
    corrected text (the validation step then checks it as it checks a teacher's)."""
    rec = rec.model_copy(deep=True)
    rec.meta["review"] = d["decision"]
    if d["decision"] in ("relabel", "edit"):
        answer = d["label"] if d["decision"] == "relabel" else d["output"]
        rec.meta["teacher_output"] = rec.output
        # The token log-probs are the teacher's for its own answer: token-level KD would pull the
        # student back to the answer the reviewer corrected.
        rec.output, rec.samples, rec.logprobs = answer, None, None
        label = answer if d["decision"] == "relabel" else task.parse(answer)
        if rec.label_probs is not None and labels and label in labels:
            # The reviewer is certain: the soft label becomes one-hot, so KD does not pull back
            # towards the teacher's mistake.
            rec.label_probs = {lab: float(lab == label) for lab in labels}
    return rec


def _train_on_real_answer(rec: Record, labels: list[str], task) -> Record:
    """A train record whose input a person labelled (``curate.real_data``) learns that label.

    As a reviewer's relabel: the teacher's answer moves to ``meta.teacher_output``, the soft
    label becomes one-hot, and the teacher's token log-probs (of its own answer) are dropped. A
    reviewer's relabel or edit of this very record outranks it.
    """
    answer = rec.meta.get("real_output")
    if answer is None or rec.meta.get("review") in ("relabel", "edit") or answer == rec.output:
        return rec
    rec = rec.model_copy(deep=True)
    rec.meta["teacher_output"] = rec.output
    rec.output, rec.samples, rec.logprobs = answer, None, None
    label = task.parse(answer)  # a person's "Politics" or "Tech." names the label set's spelling
    if rec.label_probs is not None and labels and label in labels:
        rec.label_probs = {lab: float(lab == label) for lab in labels}
    return rec


# Why the student's chat template refuses a record's chat (its reason in rejected.jsonl), or None.
Refuses = Callable[[Record], str | None]


def curate(cfg: Config, records: list[Record], decisions: dict[str, dict[str, Any]] | None = None,
           real: list[Record] | None = None, specials: Sequence[str] = (), refuses: Refuses | None = None) -> Curated:
    c = cfg.curate
    task = get_task(cfg.task)
    specials = specials if isinstance(specials, Specials) else Specials(specials)  # one pass an answer
    decisions = decisions if c.review else {}
    decisions = decisions or {}
    counts: dict[str, int] = {"input": len(records)}
    rejected: list[Record] = []
    shown = {r.id: r.output for r in records}  # teacher.jsonl's answers, as the review page showed them
    # 0. encoding damage, before anything compares texts (a mis-decoded copy is still a duplicate)
    hygiene = Hygiene(c.fix_text)
    records = [hygiene.record(r) for r in records]
    real = [hygiene.record(r) for r in real or []]
    accuracy = teacher_accuracy(records, task)

    kept, stale = _review_step(records, _share_decisions(records, decisions), shown, task, cfg.task.labels, rejected)
    counts["review_rejected"] = len(records) - len(kept)
    valid = _validate_step(kept, task, c, rejected, specials, refuses)
    counts["invalid"] = len(kept) - len(valid)
    consistent = _consistency_step(valid, task, c, rejected, specials)
    counts["inconsistent"] = len(valid) - len(consistent)

    real_ok, real_rejected = _prepare_real(real or [], task, c, specials, refuses)
    teacher_kept, real_kept = _dedup_step(consistent, real_ok, c, counts, rejected, bool(real))
    train, val, test = _split_step(cfg, task, teacher_kept)
    if c.max_train is not None:  # counted, so that what was kept and what was set aside add up to the input
        counts["over_max_train"] = max(0, len(train) - c.max_train)
        train = train[: c.max_train]
    train = [_train_on_real_answer(r, cfg.task.labels, task) for r in train]

    # 6. mixing
    n_real = min(len(real_kept), round(c.real_ratio * len(train)))
    real_kept.sort(key=lambda r: rank(r.text, c.seed))
    train = train + real_kept[:n_real]
    counts.update(real_added=n_real, train=len(train), val=len(val), test=len(test))
    rejected += real_rejected

    # The card reports the decisions applied: a stale one judged another teacher's answer, a
    # missing one a record teacher.jsonl no longer holds (regenerated on other inputs).
    present = set(shown)
    applied = {k: v for k, v in decisions.items() if k not in stale and k in present}
    card = _card(cfg, counts, rejected, train, val, test, applied, accuracy, len(real or []), real_rejected,
                 stale=sum(k in stale for k in decisions), missing=sum(k not in present for k in decisions))
    card["text_hygiene"] = hygiene.card(len(records) + len(real))
    return Curated(train=train, val=val, test=test, rejected=rejected, card=card)


def _share_decisions(records: list[Record], decisions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The decisions extended to the exact duplicates of each reviewed input.

    Records keyed by their own ids (a CRM's) can hold one input twice; the page shows both, and
    dedup keeps only one. A decision about either copy is about that input, so it holds for
    the other (where the copy gives another answer, ``_review_step`` finds an accept or reject
    stale). The first decision of an input wins.
    """
    if not decisions:
        return decisions
    by_input: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.id in decisions:
            by_input.setdefault(dedup_key(conversation(r.messages)), decisions[r.id])
    shared = dict(decisions)
    for r in records:
        d = by_input.get(dedup_key(conversation(r.messages)))
        if r.id not in shared and d is not None:
            shared[r.id] = d
    return shared


def _review_step(records: list[Record], decisions: dict[str, dict[str, Any]], shown: dict[str, str | None], task,
                 labels: list[str], rejected: list[Record]) -> tuple[list[Record], set[str]]:
    """1. A reviewer's reject removes a record; a relabel or an edit replaces the teacher's answer.

    An accept or reject judged one answer: when the record now gives another (teacher.jsonl was
    generated again, by another teacher), it is stale and not applied; a relabel names the
    input's label and an edit the input's answer, and they always hold. ``shown``: each record's answer before ``fix_text`` repaired
    it, the one the reviewer saw. Returns the kept records and the ids of stale decisions.
    """
    kept, stale = [], set()
    for r in records:
        d = decisions.get(r.id)
        if d is not None and d["decision"] not in ("relabel", "edit") and d.get("teacher_output") is not None \
                and task.parse(d["teacher_output"]) != task.parse(shown.get(r.id) or ""):
            d = None
            stale.add(r.id)
        if d is None:
            kept.append(r)
        elif d["decision"] == "reject":
            rejected.append(_reject(r, "review: rejected by a reviewer"))
        else:
            kept.append(_apply_review(r, d, labels, task))
    return kept, stale


def _validate_step(kept: list[Record], task, c, rejected: list[Record], specials: Sequence[str],
                   refuses: Refuses | None = None) -> list[Record]:
    """2. The task's check, curate's length and format rules, the student's special tokens and chat template."""
    valid = []
    for r in kept:
        reason = invalid_reason(r, task, c, specials) or (refuses(r) if refuses else None)
        if reason is None:
            r = r.model_copy(deep=True)
            r.valid, r.invalid_reason = True, None
            valid.append(r)
        else:
            rejected.append(_reject(r, reason))
    return valid


def _consistency_step(valid: list[Record], task, c, rejected: list[Record], specials: Sequence[str]) -> list[Record]:
    """3. Self-consistency; a reviewer's decision outranks the vote."""
    consistent = []
    for r in valid:
        vote = None if "review" in r.meta else majority(r, task, c, specials)
        if vote is not None:
            text, agreement, stop = vote
            r.meta["agreement"] = round(agreement, 4)
            if agreement < c.min_agreement:
                rejected.append(_reject(r, f"self-consistency: agreement {agreement:.2f} < {c.min_agreement:.2f}"))
                continue
            if text != r.output:
                r.meta["first_output"] = r.output
                # The token log-probs are the teacher's for the replaced text (the record holds no
                # other sample's): top-k KD would teach it under the new output.
                r.output, r.logprobs = text, None
                # The replaced output's stop reason is not the new one's (unknown, and left out, in a
                # record from before generate kept one per sample).
                r.meta.pop("stop_reason", None)
                if stop is not None:
                    r.meta["stop_reason"] = stop
        consistent.append(r)
    return consistent


def _dedup_step(consistent: list[Record], real_ok: list[Record], c, counts: dict[str, int],
                rejected: list[Record], has_real: bool) -> tuple[list[Record], list[Record]]:
    """4. Duplicates, teacher records first so a real example never evicts one.

    Compared in an order fixed by content (``_content_order``): in the lines' order, which of two near
    duplicates survived, and so which split their input took, changed when the inputs file was only
    reordered. A real example with exactly a teacher record's input lends it its label instead (gold
    everywhere, the answer in train: ``_train_on_real_answer``); the first such example in that order wins.
    """
    pool = consistent + real_ok
    order = _content_order(pool, len(consistent))
    dups = find_duplicates([conversation(pool[i].messages) for i in order], near=c.near_dup,
                           threshold=c.near_dup_threshold).renamed(order) if c.dedup else None
    lender: dict[int, int] = {}  # teacher record -> the real example that lends it its label
    for i in order if dups is not None else ():
        j = dups.of.get(i)
        if i >= len(consistent) and j is not None and j < len(consistent) and dups.kind[i] == "exact":
            lender.setdefault(j, i)
    survivors, applied = [], 0
    for i, r in enumerate(pool):
        if dups is not None and i in dups.of:
            j = dups.of[i]
            twin = pool[j]
            if lender.get(j) == i:
                twin.meta.update(real_label=r.id, real_output=r.output)
                if twin.label is None and twin.reference is None:
                    if r.label is None and r.reference is not None:
                        twin.reference = r.reference
                    else:
                        twin.label = r.label if r.label is not None else r.output
                applied += 1
                continue
            rejected.append(_reject(r, f"{dups.kind[i]} duplicate input: of {twin.id} (similarity "
                                       f"{dups.similarity[i]:.2f})"))
            continue
        survivors.append(r)
    teacher_kept = [r for r in survivors if r.meta.get("source") != "real"]
    real_kept = [r for r in survivors if r.meta.get("source") == "real"]
    kinds = Counter(dups.kind[i] for i in dups.of if i < len(consistent)) if dups else Counter()
    counts["duplicates_exact"], counts["duplicates_near"] = kinds["exact"], kinds["near"]
    counts["duplicates"] = kinds["exact"] + kinds["near"]
    if has_real:
        counts["real_duplicates"] = sum(1 for i in (dups.of if dups else {}) if i >= len(consistent))
        counts["real_labels_applied"] = applied
    return teacher_kept, real_kept


def _content_order(pool: list[Record], n_teacher: int) -> list[int]:
    """Indices of ``pool`` with its first ``n_teacher`` (teacher records) first, each part by the sha256
    of its input text as dedup compares it, then, for one text given twice, of the answer and the id.

    Not the split's seeded rank: the survivor of a cluster would then be its member nearest the test
    cut, and duplicated inputs would land in test more often than others."""
    def key(i: int) -> tuple[bool, str, str]:
        r = pool[i]
        return i >= n_teacher, hashlib.sha256(conversation(r.messages).encode()).hexdigest(), hash_obj([r.output, r.id])

    return sorted(range(len(pool)), key=key)


def _split_step(cfg: Config, task, teacher_kept: list[Record]) -> tuple[list[Record], list[Record], list[Record]]:
    """5. Stratified, hash-based split."""
    c = cfg.curate

    def stratum(r: Record) -> str:
        # The teacher's own answer, even after a relabel: a review decision never changes a stratum.
        lab = task.parse(r.meta.get("teacher_output") or r.output or "") if cfg.task.labels else ""
        return f"{lab}|{','.join(sorted(r.slice))}"

    for r in teacher_kept:
        r.meta.setdefault("source", "teacher")
    return split(teacher_kept, c.val, c.test, c.seed, stratum)


def _prepare_real(real: list[Record], task, c, specials: Sequence[str],
                  refuses: Refuses | None = None) -> tuple[list[Record], list[Record]]:
    ok, bad = [], []
    for r in real:
        r = r.model_copy(deep=True)
        if r.output is None and r.label is not None:
            r.output = r.label
        elif r.output is None and r.reference is not None:
            # The gold answer (Task.gold reads it where there is no label): an extraction's object,
            # a free-text answer. Trained on as its text, validated as any answer is.
            r.output = r.reference if isinstance(r.reference, str) else json.dumps(r.reference, ensure_ascii=False)
        if r.meta.get("source") not in (None, "real"):  # `potstill import`'s file: where the example came from
            r.meta["imported_from"] = r.meta["source"]
        r.meta.update(source="real", dataset=c.real_source)
        if r.meta.get("stop_reason") is None and r.meta.get("finish_reason") is not None:
            # An imported log's answer (`potstill import` keeps the log's own name): one cut at its
            # max_tokens is set aside as truncated, as a teacher's is.
            r.meta["stop_reason"] = r.meta["finish_reason"]
        reason = invalid_reason(r, task, c, specials, logged=True) if r.output is not None else "no label, output or reference"
        reason = reason or (refuses(r) if refuses else None)
        if reason is None:
            r.valid = True
            labels = getattr(task, "labels", None)
            if labels and (named := task.parse(r.output)) in labels:
                # A person's "Politics" or "Tech." is written in the label set's spelling, as a
                # teacher's label is, so every split and the dataset's label counts read one way.
                r.output = named
                if r.label is not None and task.parse(r.label) == named:
                    r.label = named
            ok.append(r)
        else:
            bad.append(_reject(r, f"real example: {reason}"))
    return ok, bad


def _card(cfg: Config, counts: dict[str, int], rejected: list[Record], train: list[Record], val: list[Record],
          test: list[Record], decisions: dict[str, dict[str, Any]], accuracy: dict[str, Any] | None,
          n_real: int, real_rejected: list[Record], stale: int = 0, missing: int = 0) -> dict[str, Any]:
    task = get_task(cfg.task)
    reasons = Counter((r.invalid_reason or "").split(":")[0] for r in rejected)

    def dist(rs: list[Record]) -> dict[str, int]:
        return dict(sorted(Counter(str(task.parse(r.output or "")) for r in rs).items()))

    labels = None
    if cfg.task.labels:
        labels = {"train": dist(train), "val": dist(val), "test": dist(test)}
    hub = provenance(cfg.data.inputs)  # the commit a hf:// file was read at
    sources = [{"name": "inputs", "path": cfg.data.inputs, **hub, "source": cfg.data.source,
                "license": cfg.data.license, "labelled_by": "teacher", "records": counts["input"]}]
    if cfg.curate.real_data or n_real:
        # Imported model traffic (`potstill import`: meta.teacher is the logged model) mixed in as real
        # data was carded "labelled by people"; its answers are that model's.
        real = [r for r in train + val + test if r.meta.get("source") == "real"]
        logged = Counter(r.meta["teacher"] for r in real if r.meta.get("teacher"))
        labelled_by = "people (real labels)" if not logged else (
            "answers logged from " + ", ".join(f"`{m}` ({n} kept, imported; terms of use: not given)"
                                               for m, n in logged.items())
            + (", people for the rest" if sum(logged.values()) < len(real) else ""))
        sources.append({"name": "real", "path": cfg.curate.real_data, **provenance(cfg.curate.real_data),
                        "source": cfg.curate.real_source,
                        "license": cfg.curate.real_license, "labelled_by": labelled_by,
                        "records": n_real, "added_to_train": counts["real_added"]})
    review = None
    if decisions or stale or missing:
        kinds = Counter(d["decision"] for d in decisions.values())
        review = {"decisions": len(decisions), **{k: kinds.get(k, 0) for k in ("accept", "reject", "relabel", "edit")},
                  "teacher_error_rate": round(error_rate(decisions, task.parse) or 0.0, 4)}
        if stale:  # accepts and rejects of answers teacher.jsonl no longer holds: not applied
            review["stale"] = stale
        if missing:  # decisions about records teacher.jsonl no longer holds: not applied
            review["missing"] = missing
    c = cfg.curate
    return {
        "counts": counts,
        "rejected_reasons": dict(reasons),
        # The teacher's own answers: a reviewer's relabel or edit, or a person's label, keeps it in meta.teacher_output.
        "teacher_label_distribution": dict(Counter(str(task.parse(r.meta.get("teacher_output", r.output) or ""))
                                                   for r in train + val + test
                                                   if r.meta.get("source") != "real")) if cfg.task.labels else None,
        "label_distribution": labels,
        "teacher_accuracy": accuracy,
        "teacher": {"type": cfg.teacher.type, "model": cfg.teacher.model, "terms_of_use": cfg.teacher.terms or "not given",
                    # Who wrote the kept answers (generate's meta.teacher): the config may name another
                    # teacher since, and the terms above are then that one's, not the data's.
                    # Imported traffic's logged model counts too: it wrote those answers.
                    "records_by_model": dict(Counter(r.meta["teacher"] for r in train + val + test
                                                     if r.meta.get("teacher")))},
        "inputs": {"path": cfg.data.inputs, **hub, "source": cfg.data.source, "license": cfg.data.license},
        "sources": sources,
        # json_schema: what the data was validated against, and what `potstill review` checks an edit by.
        "task": {"type": cfg.task.type, "labels": cfg.task.labels, "instruction": cfg.task.instruction,
                 "json_schema": cfg.task.json_schema,
                 **({"tools": cfg.task.tools, "parallel_tool_calls": cfg.task.parallel_tool_calls,
                     "tool_choice": cfg.task.tool_choice} if cfg.task.tools else {})},
        "filters": {"dedup": c.dedup, "near_dup": c.near_dup, "near_dup_threshold": c.near_dup_threshold,
                    "min_agreement": c.min_agreement, "min_output_chars": c.min_output_chars,
                    "max_output_chars": c.max_output_chars, "output_regex": c.output_regex},
        "split": {"val": c.val, "test": c.test, "seed": c.seed,
                  "method": "seeded hash of the normalised input, stratified by teacher label and slice"},
        "review_decisions": review,
    }
