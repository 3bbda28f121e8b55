"""`potstill redistill RUN`: a challenger student from served traffic, promoted only if it wins.

In order (each step timed in the decision record):

1. Traffic: the ``stage='serve'`` rows of RUN/calls.sqlite (``traffic.py``): escalated requests
   with the teacher's answer from the ledger, plus a seeded sample of student-answered requests
   asked anew from the teacher through the ledger cache (a rerun pays nothing).
2. Curation: new inputs that duplicate (exactly or nearly, ``curate.dedup``) the frozen test set
   or the old train/val splits are dropped; the rest go through ``potstill.curate.curate`` (the
   task's validation, self-consistency, dedup) with a hash split holding ``redistill.new_test``
   of them out as the *new-traffic test*.
3. Training: old train + new train (repeated to ``redistill.new_share`` of it, where set), the run's
   ``train`` settings and base student spec, into RUN/students/<id>/ (``id`` hashes the data and
   settings: a rerun reuses a trained challenger).
4. Comparison on the frozen RUN/test.jsonl and on the new-traffic test (``compare.py``).
5. Promotion when the challenger wins on new traffic and holds on the frozen test
   (``promote.py``: RUN/student becomes an atomically swapped symlink; the old champion stays
   in RUN/students/ for rollback). A running ``potstill serve`` picks it up without a restart.

Each run writes a decision record RUN/redistill/<time>-<id>.json: what was compared, the numbers
and why the challenger was or was not promoted; its data and training log are in RUN/redistill/<id>/.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from potstill import tracking, tracking_live
from potstill.config import Config
from potstill.curate import Curated, curate
from potstill.curate.dedup import conversation, dedup_key, find_duplicates
from potstill.errors import PotstillError, cannot_load
from potstill.hashing import hash_obj
from potstill.ledger import Ledger
from potstill.models.loading import load_lm
from potstill.progress import out, say
from potstill.records import Record, read_json, read_records, write_json, write_jsonl
from potstill.rundir import CHALLENGER_TRAIN, RunDir, check_trained_task, exclusive, student_train_path
from potstill.redistill.compare import compare, decide, frozen_origin, measure, scores
from potstill.redistill.loadable import why_unloadable
from potstill.redistill.promote import current, finish_interrupted, switch
from potstill.redistill.traffic import check_traffic, label_sample, read_traffic
from potstill.students import predict, student_format, unreadable
from potstill.tasks import Task, get_task

__all__ = ["EXIT_KEPT", "redistill", "rollback", "switch"]

EXIT_KEPT = 3  # `potstill redistill --fail-on-keep`: the champion stays (0: promoted; 2: an error)


def _is_student(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "adapter_config.json").exists()


def drop_overlap(old: list[Record], new: list[Record], cfg: Config) -> tuple[list[Record], dict[str, int]]:
    """New records that duplicate no old one (frozen test first, then train/val); counts of the rest."""
    c = cfg.curate
    texts = [conversation(r.messages) for r in old] + [conversation(r.messages) for r in new]
    dups = find_duplicates(texts, near=c.dedup and c.near_dup, threshold=c.near_dup_threshold)
    n_old = len(old)
    kept, counts = [], {"overlap_frozen_test": 0, "overlap_train_val": 0}
    for i, r in enumerate(new, n_old):
        j = dups.of.get(i)
        if j is not None and j < n_old:
            counts["overlap_frozen_test" if old[j].meta.get("_split") == "test" else "overlap_train_val"] += 1
            continue
        kept.append(r)
    return kept, counts


def _answers(path: Path, task: Task, sets: dict[str, list[Record]], batch_size: int,
             who: str) -> dict[str, tuple[list[int], list[Any]]]:
    """Per set, the positions of the records the student at ``path`` reads (``students.unreadable``:
    serve sends a longer one to the teacher, and a GPT-2 student fails on it with an IndexError) and
    its parsed answers to them."""
    try:
        lm = load_lm(str(path))
    except PotstillError:
        raise
    except Exception as e:  # noqa: BLE001 - what _check_run's header check cannot see (as serve's hot swap says it)
        raise cannot_load(f"the {who} {path}", e) from None
    try:
        out = {}
        for name, rs in sets.items():
            over = {i for i, _ in unreadable(lm, task, rs)}
            kept = [i for i in range(len(rs)) if i not in over]
            out[name] = (kept, predict(lm, task, [rs[i] for i in kept], batch_size=batch_size,
                                       desc=f"redistill: {who} on {name}").parsed if kept else [])
        return out
    finally:
        del lm
        gc.collect()


def _comparison_step(champion: Path, challenger: Path, task: Task, sets: dict[str, list[Record]],
                     cfg: Config) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """4. Both students' scores on each set's records that both read, and how many of each set were
    left out as longer than a student's context: both are compared on the same records."""
    bs = cfg.evaluate.batch_size
    a_champ = _answers(champion, task, sets, bs, "champion")
    # The challenger is asked what the champion read; of those, the ones it reads too are compared.
    read = {name: [rs[i] for i in a_champ[name][0]] for name, rs in sets.items()}
    a_chall = _answers(challenger, task, read, bs, "challenger")
    n_boot, seed = cfg.report.bootstrap_samples, cfg.report.seed
    results, left_out = {}, {}
    for name, rs in read.items():
        both, chall = a_chall[name]  # positions in ``rs``, the records the champion read
        champ = [a_champ[name][1][j] for j in both]
        kept = [rs[j] for j in both]
        left_out[name] = len(sets[name]) - len(kept)
        if not kept:
            raise PotstillError(f"redistill: every one of the {len(sets[name])} {name} inputs is longer than the "
                                "champion's or the challenger's context, so they can be compared on none: pick a "
                                "student with a longer context or shorten the inputs")
        results[name] = compare(scores(task, champ, kept), scores(task, chall, kept), n_boot, seed, measure(task))
    if any(left_out.values()):
        counts = " and ".join(f"{n} of {len(sets[name])} {name}" for name, n in left_out.items() if n)
        say(f"redistill: {counts} inputs are longer than the champion's or the challenger's context and left out "
            "of the comparison, both students alike: served, they go to the teacher unread (reason too_long)")
    return results, left_out


def _pct(m: dict[str, Any]) -> str:
    return f"{m['value']:.1%} [{m['lo']:.1%}, {m['hi']:.1%}]"


def print_comparison(results: dict[str, dict[str, Any]], decision: dict[str, Any]) -> None:
    t = Table(title="redistill: champion vs challenger (95% bootstrap intervals)")
    for col in ("test set", "n", "against", "champion", "challenger", "gain"):
        t.add_column(col, justify="left" if col in ("test set", "against") else "right")
    for name, res in results.items():
        for metric, m in res.items():
            g = m["gain"]
            t.add_row(name, str(m["champion"]["n"]), f"{metric} ({m.get('measure', 'agreement')})", _pct(m["champion"]),
                      _pct(m["challenger"]),
                      f"{g['value']:+.1%} [{g['lo']:+.1%}, {g['hi']:+.1%}]")
    out.print(t)
    out.print(("[bold green]promoted[/bold green]: " if decision["promote"] else "[bold]not promoted[/bold]: ")
              + decision["reason"])


@dataclass
class _NewData:
    """What step 2 hands on: the run's old splits, the curated new traffic, and the challenger's data."""
    old_train: list[Record]
    old_val: list[Record]
    frozen: list[Record]
    cur: Curated
    overlap: dict[str, int]
    data: list[Record]  # old train + new train, each once: what the challenger learnt (CHALLENGER_TRAIN)
    trained: list[Record]  # the same with the new records repeated to redistill.new_share: what it trains on
    cid: str
    work: Path


def redistill(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Run the five steps above; returns the decision record (also written to RUN/redistill/<id>.json).

    The run directory is held throughout, as a stage holds it (``rundir.exclusive``): a second
    redistill, or a `potstill run` retraining RUN/student, is refused at once rather than training
    into the same RUN/redistill/<id>/ or rewriting the manifest under this one."""
    run_dir = Path(run_dir)
    tracking.check(cfg)
    with exclusive(run_dir) if run_dir.is_dir() else contextlib.nullcontext():  # none: _check_run says so
        return _redistill(run_dir, cfg)


def _redistill(run_dir: Path, cfg: Config) -> dict[str, Any]:
    # The challenger's training is followed live in the trackers (tracking_live); the runs it opens
    # get the decision in _publish, or end failed if a later step fails.
    live = tracking_live.Live.main(cfg, "redistill", _tracked_params(cfg), run_dir)
    with tracking_live.following(live):
        return _run_steps(run_dir, cfg, live)


def _tracked_params(cfg: Config) -> dict[str, Any]:
    return {"redistill": cfg.redistill.model_dump(), "train": cfg.train.model_dump()}


def _run_steps(run_dir: Path, cfg: Config, live: tracking_live.Live | None) -> dict[str, Any]:
    rc, task = cfg.redistill, get_task(cfg.task)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    champion, ledger_path = _check_run(run_dir, cfg)
    traffic, sampled, gstats = _traffic_step(ledger_path, cfg, task, timings)
    nd = _curation_step(run_dir, cfg, traffic, sampled, timings)
    challenger, train_summary = _challenger_step(run_dir, cfg, task, nd, timings, live)

    # 4. comparison
    t0 = time.perf_counter()
    results, too_long = _comparison_step(champion, challenger, task,
                                         {"frozen test": nd.frozen, "new traffic": nd.cur.test}, cfg)
    timings["evaluate_s"] = time.perf_counter() - t0
    origin = frozen_origin(_decision_records(run_dir), run_path(run_dir, champion), results["frozen test"],
                           hash_obj([r.model_dump(mode="json", exclude_none=True) for r in nd.frozen])[:16])
    decision = decide(results["new traffic"], results["frozen test"], rc, same_student=champion == challenger.resolve(),
                      origin=origin)

    # 5. promotion
    t0 = time.perf_counter()
    promotion = switch(run_dir, challenger) if decision["promote"] else None
    timings["promote_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    rel = lambda p: run_path(run_dir, p)  # noqa: E731
    now = time.gmtime()
    rid = _record_id(run_dir, nd.cid, now)
    record = {
        "id": rid, "challenger_id": nd.cid, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
        "champion": rel(champion), "challenger": rel(challenger),
        "data": {**traffic.counts, "teacher_labelled_sample": len(sampled), **nd.overlap,
                 "curate": nd.cur.card["counts"], "old_train": len(nd.old_train), "new_train": len(nd.cur.train),
                 "new_test": len(nd.cur.test), "challenger_train": len(nd.data), "trained_examples": len(nd.trained),
                 "new_share": new_share(len(nd.old_train), len(nd.trained)), "frozen_test": len(nd.frozen),
                 # Inputs longer than a student's context, out of the comparison (its n): served, the teacher's.
                 "frozen_test_too_long": too_long["frozen test"], "new_test_too_long": too_long["new traffic"],
                 "files": {k: rel(nd.work / f"{k}.jsonl") for k in ("new_train", "new_test", "rejected")}},
        "teacher": _teacher_summary(gstats, traffic),
        "results": {"frozen_test": results["frozen test"], "new_traffic_test": results["new traffic"]},
        "decision": decision, "promotion": promotion, "frozen_origin": {**origin, "measured_in": origin["measured_in"] or rid},
        "rollback": None if promotion is None else f"potstill redistill {run_dir} --rollback {promotion['previous']}",
        "settings": rc.model_dump(), "train": train_summary, "timings_s": timings,
    }
    _publish(run_dir, cfg, rid, record, results, decision, nd.work, train_summary, promotion, live)
    return record


def run_path(run_dir: Path, path: Path) -> str:
    """``path`` as the decision record names it: relative to the run, or whole where it lies outside
    (a champion RUN/student linked to a student trained elsewhere)."""
    p, root = Path(path).resolve(), Path(run_dir).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _check_run(run_dir: Path, cfg: Config) -> tuple[Path, Path]:
    """The run's splits, trained champion and served-traffic ledger, or one clear error."""
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        if not (run_dir / name).exists():
            raise PotstillError(f"{run_dir / name} not found: redistill needs the run's splits (run `potstill curate` first)")
    # Checked before any teacher call or training: with no frozen examples there is no frozen gain to judge.
    if not read_records(run_dir / "test.jsonl"):
        raise PotstillError(f"{run_dir / 'test.jsonl'} is empty: redistill compares champion and challenger on the "
                            "frozen test (curate with curate.test above 0)")
    champion = current(run_dir)
    if not _is_student(champion):
        raise PotstillError(f"{run_dir / 'student'}: no trained student to challenge (run `potstill train` first)")
    # The champion is loaded for the comparison only after the teacher's labels and the challenger's
    # training: one that cannot load (a rollback of an older version pointed RUN/student at it) is said now.
    if (why := why_unloadable(champion)) is not None:
        raise PotstillError(f"cannot load the champion {champion}: {why}; roll RUN/student back to a kept student "
                            f"(`potstill redistill {run_dir} --rollback ID`) or train again")
    # Before the teacher is paid for the traffic, as everything here.
    base = read_json(run_dir / "train.json").get("base_model") if (run_dir / "train.json").exists() else None
    if base is not None and not same_model(base, cfg.student.model):
        raise PotstillError(f"redistill: the champion was trained from {base} but student.model is {cfg.student.model}: "
                            "a challenger must start from the champion's base (pass -c with the run's config)")
    check_trained_task(run_dir, cfg.task, "redistill")
    ledger_path = run_dir / "calls.sqlite"
    if not ledger_path.exists():
        raise PotstillError(f"{ledger_path} not found: no served traffic (serve the student with `potstill serve` first)")
    if cfg.redistill.promote:
        # A promotion records the new student in the manifest (promote.switch): one that cannot be read
        # is refused there anyway, so say so before the teacher and the challenger's training are paid for.
        RunDir(run_dir).manifest()
    return champion, ledger_path


def same_model(a: Any, b: str) -> bool:
    """Whether two model references name one model: the same text, or two spellings of one folder
    (``/a/./b``, a symlink: RUN/potstill.yaml is saved with the path resolved, RUN/train.json keeps
    it as it was given). A hub id is its text."""
    if a == b:
        return True
    if not isinstance(a, str) or not (Path(a).exists() and Path(b).exists()):
        return False
    return Path(a).resolve() == Path(b).resolve()


def _traffic_step(ledger_path: Path, cfg: Config, task: Task, timings: dict[str, float]):
    """1. Served traffic, and the teacher's labels for a sample of student-answered requests."""
    t0 = time.perf_counter()
    with Ledger(ledger_path) as ledger:
        traffic = read_traffic(ledger, task, cfg.teacher.max_tokens)
        check_traffic(traffic, cfg)
        timings["traffic_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampled, gstats = label_sample(cfg, traffic, task, ledger)
    timings["teacher_s"] = time.perf_counter() - t0
    cut, formatted = traffic.counts["escalated_cut"], traffic.counts["escalated_response_format"]
    cut_note = f"{cut} escalations left out as the client cut them short, " if cut else ""
    cut_note += f"{formatted} left out as asked in a client's response_format, " if formatted else ""
    say(f"redistill: {traffic.counts['distinct']} distinct served requests ({traffic.counts['escalated']} escalated, "
        f"{cut_note}{traffic.counts['student_answered']} answered by the student); teacher asked about {len(sampled)} of the "
        f"latter: {gstats.calls} calls, {gstats.cache_hits} from the ledger cache, ${gstats.cost_usd:.4f}")
    return traffic, sampled, gstats


def _curation_step(run_dir: Path, cfg: Config, traffic, sampled: list[Record], timings: dict[str, float]) -> _NewData:
    """2. New records clear of the old splits, curated and split into new train / new-traffic test."""
    rc = cfg.redistill
    t0 = time.perf_counter()
    # The champion's own training records: a promoted challenger's include the traffic it learnt, which
    # the next challenger builds on rather than forgets (and which is not new data again).
    old_train = read_records(student_train_path(run_dir))
    old_val, frozen = (read_records(run_dir / f"{s}.jsonl") for s in ("val", "test"))
    tagged = [r.model_copy(update={"meta": {**r.meta, "_split": "test"}}) for r in frozen] + old_train + old_val
    kept, overlap = drop_overlap(tagged, traffic.escalated + sampled, cfg)
    ccfg = cfg.model_copy(update={"curate": cfg.curate.model_copy(update={
        "val": 0.0, "test": rc.new_test, "seed": rc.seed, "real_data": None, "real_ratio": 0.0, "review": False,
        "max_train": None})})
    cur = curate(ccfg, kept)
    overlap["test_trained_by_earlier_round"] = _train_earlier_rounds_trained_on(run_dir, cur)
    if not cur.train:
        raise PotstillError(f"redistill: no new training records left after curation ({overlap['overlap_frozen_test']} "
                            f"overlap the frozen test, {overlap['overlap_train_val']} the champion's training set or "
                            f"val, {len(cur.test)} held out as the new-traffic test, {len(cur.rejected)} rejected); "
                            "serve more traffic")
    if not cur.test:
        raise PotstillError(f"redistill: the new-traffic test is empty ({len(cur.train)} new records, "
                            f"redistill.new_test={rc.new_test:g}); serve more traffic or raise --new-test")
    if rc.promote and len(cur.test) < rc.min_new_test:
        # Such a challenger can never be promoted (compare.decide): stop before paying for its training.
        # With --no-promote the comparison is all that is asked for, and it is made and recorded.
        raise PotstillError(f"redistill: the new-traffic test holds {len(cur.test)} examples, under "
                            f"redistill.min_new_test {rc.min_new_test}, so no challenger could be promoted: serve "
                            "more traffic, lower --min-new-test, or compare only with --no-promote")
    data = old_train + cur.train
    trained = old_train + weighted(cur.train, len(old_train), rc.new_share, rc.seed)
    cid = challenger_id(cfg, trained)
    work = run_dir / "redistill" / cid
    write_jsonl(work / "new_train.jsonl", cur.train)
    write_jsonl(work / CHALLENGER_TRAIN, data)
    write_jsonl(work / "new_test.jsonl", cur.test)
    write_jsonl(work / "rejected.jsonl", cur.rejected)
    write_json(work / "card.json", cur.card)
    timings["curate_s"] = time.perf_counter() - t0
    say(f"redistill: new data {len(cur.train)} train + {len(cur.test)} new-traffic test "
        f"({overlap['overlap_frozen_test']} dropped as overlapping the frozen test, {overlap['overlap_train_val']} "
        f"as already in train/val, {len(cur.rejected)} rejected by curation"
        + (f", {moved} kept out of the test as an earlier round trained on them" if (moved := overlap[
            "test_trained_by_earlier_round"]) else "") + ")"
        + (f"; the challenger trains on {len(trained)} examples, the new ones repeated to "
           f"{new_share(len(old_train), len(trained)):.0%} of them (redistill.new_share)" if trained != data else ""))
    return _NewData(old_train, old_val, frozen, cur, overlap, data, trained, cid, work)


def weighted(new: list[Record], old_n: int, share: float | None, seed: int) -> list[Record]:
    """``new`` repeated until it makes at least ``share`` of ``old_n`` old records and itself: whole
    copies, then a seeded sample of the rest. Unchanged where it already does (or ``share`` is None)."""
    if share is None or not new:
        return list(new)
    want = math.ceil(share * old_n / (1 - share) - 1e-9)
    if want <= len(new):
        return list(new)
    whole, rest = divmod(want, len(new))
    return new * whole + random.Random(seed).sample(new, rest)


def new_share(old_n: int, total: int) -> float:
    """The new records' share of a training set of ``total`` examples, ``old_n`` of them old."""
    return (total - old_n) / total if total else 0.0


def challenger_id(cfg: Config, data: list[Record]) -> str:
    """The challenger's id (RUN/students/<id>): its training data and settings, with the base model
    and train.teacher_model as the manifest counts them (``stage.by_content``: a local directory by
    its files, a hub id by its pinned commit). By name, a hub student's new upstream revision (or a
    base retrained in place) found the challenger trained on the old base and reused it."""
    from potstill.stage import by_content

    return hash_obj({"data": [r.model_dump(mode="json", exclude_none=True) for r in data],
                     "train": by_content("train", cfg.train, cfg), "student": by_content("student", cfg.student, cfg),
                     "task": cfg.task.model_dump()})[:12]


def _train_earlier_rounds_trained_on(run_dir: Path, cur: Curated) -> int:
    """Move to the new train split each new-traffic test input that an earlier round's challenger
    trained on (any RUN/redistill/<id>/challenger_train.jsonl); how many moved. The hash split keeps
    an input on its side only under the same ``redistill.seed`` and ``new_test``: with others an input
    one round trained on fell in the next round's test, which was then not new to every student (a
    champion whose training file is not found, one copied out of RUN/students/, a later rollback)."""
    seen: set[str] = set()
    for path in sorted((run_dir / "redistill").glob(f"*/{CHALLENGER_TRAIN}")):
        seen.update(dedup_key(conversation(r.messages)) for r in read_records(path))
    moved = [r for r in cur.test if dedup_key(conversation(r.messages)) in seen]
    if moved:
        cur.test = [r for r in cur.test if dedup_key(conversation(r.messages)) not in seen]
        cur.train = cur.train + moved
        cur.card["counts"].update(train=len(cur.train), test=len(cur.test), test_trained_by_earlier_round=len(moved))
    return len(moved)


def _challenger_step(run_dir: Path, cfg: Config, task: Task, nd: _NewData, timings: dict[str, float],
                     live: tracking_live.Live | None = None) -> tuple[Path, dict[str, Any]]:
    """3. Train the challenger from the champion's base, or reuse one trained on the same data
    (``live``: the trackers that follow a training)."""
    t0 = time.perf_counter()
    challenger = run_dir / "students" / nd.cid
    train_summary: dict[str, Any]
    # Whole only with its train.json, written once trained and calibrated (by this version before the
    # move into students/, by versions that trained in place after the calibration): a directory
    # without it was left half-calibrated by such a version and is trained again. The champion is
    # whole whatever is left beside it: it was promoted.
    # Trained and calibrated in RUN/redistill/<id>/, moved into students/ once whole: a challenger
    # stopped half-way (in its calibration, say) is then neither reused by the rerun as "already
    # trained" nor a student to roll back to. The path is fixed, so train.resume finds its checkpoints.
    staging = nd.work / "student.training"
    if ((nd.work / "train.json").exists() and _is_student(staging)
            and not (challenger.exists() and challenger.resolve() == current(run_dir))):
        # train.json beside the staging directory: whole (it is written last, and removed before a
        # training starts), stopped before the move. Finish the move rather than train it again.
        say(f"redistill: challenger {nd.cid} was trained whole by a run stopped before moving it into students/; "
            "moved")
        train_summary = read_json(nd.work / "train.json")
        _install(staging, challenger)
    elif _is_student(challenger) and ((nd.work / "train.json").exists() or challenger.resolve() == current(run_dir)):
        say(f"redistill: challenger {nd.cid} already trained on this data, reused ({challenger})")
        train_summary = read_json(nd.work / "train.json") if (nd.work / "train.json").exists() else {}
        train_summary["reused"] = True
    else:
        from potstill.train.trainer import train

        # A train.json of an earlier training of this id (its challenger since deleted from students/)
        # would mark the staging directory whole while this training is under way in it.
        (nd.work / "train.json").unlink(missing_ok=True)
        lm = load_lm(cfg.student.model, device=cfg.train.device, num_layers=cfg.student.num_layers)
        train_summary = train(lm, student_format(lm, task), task, nd.trained, nd.old_val, cfg.train,
                              cfg.student.max_length, staging, nd.work / "metrics.jsonl",
                              on_row=live.start() if live else None)
        train_summary["base_model"] = cfg.student.model
        if cfg.train.int8_calibration:  # as `potstill train` does for the champion
            from potstill.train.stage import calibrate_int8

            train_summary["int8_calibration"] = calibrate_int8(cfg, staging, lm, task, nd.data)
        write_json(nd.work / "train.json", train_summary)
        del lm
        gc.collect()
        _install(staging, challenger)
    # Kept by train() until the challenger is whole (a kill in its calibration then resumes as trained).
    from potstill.train import checkpoint

    checkpoint.drop(staging)
    timings["train_s"] = time.perf_counter() - t0
    return challenger, train_summary


def _install(staging: Path, challenger: Path) -> None:
    """Move a whole staged challenger to RUN/students/<id>/, over any leftover there (an empty or
    half-calibrated one, or one half-deleted by a run stopped here)."""
    if challenger.exists():
        shutil.rmtree(challenger)
    challenger.parent.mkdir(exist_ok=True)
    os.rename(staging, challenger)


def _record_id(run_dir: Path, cid: str, now: time.struct_time) -> str:
    # One record per decision (a rerun on the same data adds one, never overwrites a promotion's).
    rid = f"{time.strftime('%Y%m%dT%H%M%SZ', now)}-{cid}"
    n = 1
    while (run_dir / "redistill" / f"{rid}.json").exists():  # two decisions within one second
        n += 1
        rid = f"{time.strftime('%Y%m%dT%H%M%SZ', now)}-{cid}-{n}"
    return rid


def _teacher_summary(gstats, traffic) -> dict[str, Any]:
    return {"calls": gstats.calls, "cache_hits": gstats.cache_hits, "errors": gstats.errors,
            "cost_usd": gstats.cost_usd, "input_tokens": gstats.input_tokens,
            "output_tokens": gstats.output_tokens,
            "escalations_reused": traffic.counts["escalated"],
            "escalations_cost_usd_paid_while_serving": traffic.served_teacher_cost_usd}


def _publish(run_dir: Path, cfg: Config, rid: str, record: dict[str, Any], results, decision, work: Path,
             train_summary: dict[str, Any], promotion: dict[str, str] | None,
             live: tracking_live.Live | None = None) -> None:
    """Write the decision record, print the comparison, log to tracking (the runs ``live`` opened
    for the challenger's training get the rest) and say where it went."""
    write_json(run_dir / "redistill" / f"{rid}.json", record)
    print_comparison(results, decision)
    tracking.log_stage(cfg, "redistill", _tracked_params(cfg),
                       tracking.numbers({k: record[k] for k in ("data", "teacher", "results", "decision", "timings_s")}),
                       [] if train_summary.get("reused") else tracking.read_steps(work / "metrics.jsonl"),
                       [run_dir / "redistill" / f"{rid}.json", work / "metrics.jsonl"], run_dir=run_dir, live=live)
    say(f"redistill: decision record {run_dir / 'redistill' / (rid + '.json')}"
        + (f"; RUN/student -> {promotion['current']} (previous {promotion['previous']} kept for rollback)"
           if promotion else ""))


def rollback(run_dir: Path, to: str, force: bool = False) -> dict[str, str]:
    """Point RUN/student back at a kept student (a path relative to the run, or an id under RUN/students/).

    A challenger that lost its comparison and was never promoted is refused unless ``force``: that
    is the student the decision record turned down, not one that served."""
    run_dir = Path(run_dir)
    held = run_dir.is_dir()  # none: the lookup below says so
    with exclusive(run_dir) if held else contextlib.nullcontext():
        if held:
            # A first promotion stopped right after its exchange left the old champion in
            # RUN/.student.promote, where no lookup finds it, and only a later promotion moved it on:
            # the rollback it was kept for was refused. Moved into RUN/students/ first.
            finish_interrupted(run_dir)
        target = run_dir / to
        if not target.exists() and len(Path(to).parts) == 1:  # an id: RUN/students/<id>
            target = run_dir / "students" / to
        if not _is_student(target):
            raise PotstillError(f"{target}: no student there to roll back to (see RUN/students/)")
        # A server refuses such a student and keeps serving the old one: RUN/student would then name
        # a model that no server runs, and the next redistill's champion.
        if (why := why_unloadable(target)) is not None:
            raise PotstillError(f"cannot load {target}: {why}; RUN/student left as it was")
        lost = None if force else _lost_comparison(run_dir, target)
        if lost is not None:
            rid, reason = lost
            name = os.path.join("students", target.name)
            raise PotstillError(f"{name} lost its comparison with the champion (redistill/{rid}.json: {reason}) and was "
                                "never promoted; pass --force to point RUN/student at it anyway")
        return switch(run_dir, target)


def _decision_records(run_dir: Path) -> list[dict[str, Any]]:
    """RUN/redistill/*.json in the order they were written (a record that cannot be read is passed over)."""
    recs = []
    for path in sorted((run_dir / "redistill").glob("*.json")):
        with contextlib.suppress(PotstillError):
            if isinstance(rec := read_json(path), dict):
                recs.append({"id": path.stem, **rec})
    return recs


def _lost_comparison(run_dir: Path, target: Path) -> tuple[str, str] | None:
    """(record id, reason) of the last decision record in which ``target`` lost as the challenger, when
    no record has it winning, promoted, or replaced as a champion; else None (a record that cannot be
    read is passed over: they guard a rollback, they do not stop one)."""
    name = os.path.join("students", target.name)
    lost = None
    for rec in _decision_records(run_dir):
        promotion, decision = (x if isinstance(x, dict) else {} for x in (rec.get("promotion"), rec.get("decision")))
        if name in (promotion.get("previous"), promotion.get("current")):
            return None
        if rec.get("challenger") == name:
            if decision.get("challenger_wins"):
                return None
            lost = (rec["id"], str(decision.get("reason", "")))
    return lost
