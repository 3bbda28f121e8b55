"""Routing calibration of a served student: thresholds and the out-of-distribution reference.

``calibrate_run`` answers the run's val split with the student and embeds training inputs, sets the
confidence and OOD thresholds (``serve.routing.calibrate``), and caches both in ``RUN/serve/``
(``routing.json``, ``reference.pt``, each stamped with the key of what it was calibrated on), redone
when the student, the splits or the targets change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from potstill.atomic import atomic_write, write_text
from potstill.config import Config
from potstill.errors import PotstillError
from potstill.hashing import hash_file, hash_obj
from potstill.models.prompting import RefusedChat
from potstill.progress import bar, say
from potstill.records import Record, read_records
from potstill.rundir import student_train_path
from potstill.serve.engine import ServedStudent, StudentAnswer, embed_all
from potstill.serve.routing import Routing, calibrate, ood_distance
from potstill.tasks import Task


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def jsonable(obj: Any) -> Any:
    """Strict JSON: infinite thresholds ("escalate none/all") become the strings "inf"/"-inf"."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _answer_all(engine: ServedStudent, messages: list[list[dict]], batch_size: int, desc: str) -> list[StudentAnswer]:
    out: list[StudentAnswer] = []
    with bar(desc, len(messages)) as advance:
        for i in range(0, len(messages), batch_size):
            out += engine.answer(messages[i : i + batch_size])
            advance(min(batch_size, len(messages) - i))
    return out


def _spread_indices(count: int, n: int) -> list[int]:
    """n indices evenly spaced through range(count) (the training split is already shuffled by hash)."""
    if count <= n:
        return list(range(count))
    return [int(i * count / n) for i in range(n)]


def _spread(records: list[Record], n: int) -> list[Record]:
    return [records[i] for i in _spread_indices(len(records), n)]


def reference_and_holdout(records: list[Record], n: int) -> tuple[list[Record], list[Record]]:
    """The OOD reference (n training records spread through the split) and up to n of the others,
    which calibrate the OOD threshold as in-distribution inputs the reference does not hold."""
    chosen = set(_spread_indices(len(records), n))
    rest = [r for i, r in enumerate(records) if i not in chosen]
    return [records[i] for i in sorted(chosen)], _spread(rest, n)


def _cached_calibration(routing_path: Path, ref_path: Path, key: str) -> tuple[Routing, torch.Tensor] | None:
    """The saved calibration when both files are this key's; None where there is none, either is
    another's (a calibration stopped between its two renames leaves a pair of two keys), or it cannot
    be read (edited by hand, cut short): a cache, so it is calibrated again and rewritten."""
    if not (routing_path.exists() and ref_path.exists()):
        return None
    try:
        saved = json.loads(routing_path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None
        routing = Routing(float(saved["confidence_threshold"]), float(saved["ood_threshold"]), dict(saved["stats"]))
        ref = torch.load(ref_path)
        if not isinstance(ref, dict) or ref.get("key") != key:
            # Another calibration's (one stopped between the two writes, or under way as this reads),
            # or a reference.pt from before the key was stamped in it: redone as any other.
            return None
        reference = ref.get("reference")
        if not isinstance(reference, torch.Tensor):
            raise TypeError(f"{ref_path.name} holds a {type(reference).__name__}, not a tensor")
    except OSError:  # no permission, a folder: not a cache to redo, the CLI names it
        raise
    except Exception as e:  # noqa: BLE001 - json's and float's ValueError, KeyError, torch's RuntimeError or unpickling error
        say(f"serve: the saved calibration in {routing_path.parent} cannot be read ({type(e).__name__}); calibrating again")
        return None
    return routing, reference


def calibrate_run(run_dir: Path, cfg: Config, engine: ServedStudent, task: Task, force: bool = False) -> tuple[Routing, torch.Tensor]:
    """Routing thresholds and OOD reference embeddings for a run, cached in ``run_dir/serve/``."""
    s = cfg.serve
    val_path, train_path = run_dir / "val.jsonl", student_train_path(run_dir)  # a promoted challenger's, if so
    for p in (val_path, train_path):
        if not p.exists():
            raise PotstillError(f"{p} not found: serving calibrates on the run's splits (run `potstill curate` first)")
    key = hash_obj({
        "student": engine.identity, "val": hash_file(val_path), "train": hash_file(train_path),
        "targets": [s.target_escalation, s.target_agreement, s.ood_quantile, s.ood_reference, s.escalate_truncated],
        # 3: engine llamacpp's guided answers wrote an object's keys sorted, not in the schema's order
        # (fixed 2026-12-06): a calibration measured on them is measured again.
        "v": 3,
    })
    out_dir = run_dir / "serve"
    routing_path, ref_path = out_dir / "routing.json", out_dir / "reference.pt"
    cached = None if force else _cached_calibration(routing_path, ref_path, key)
    if cached is not None:
        return cached
    # Inputs longer than the student's context go to the teacher unread (Service.answer): the student
    # is neither calibrated on them nor embeds them (a GPT-2-style model would fail with IndexError).
    # Chats its template refuses are a client's 400 when served: left out the same way.
    fits, _, train_refused = _servable(engine, read_records(train_path), train_path)
    train, held = reference_and_holdout(fits, s.ood_reference)
    val_records = read_records(val_path)
    if not val_records:
        # curate's val split came out empty (curate.val 0, or a fraction of a few records).
        raise PotstillError(f"{val_path} is empty: curate kept no validation records, and serving calibrates its "
                            "threshold on them; set curate.val to a count (e.g. 2) and rerun `potstill curate`")
    answered = [r for r in val_records if r.output is not None]
    if not answered:
        raise PotstillError(f"{val_path}: no record has a teacher output to calibrate on")
    val, too_long, refused = _servable(engine, answered, val_path)
    if not val or not train:
        path, n_refused = (val_path, refused) if not val else (train_path, train_refused)
        raise PotstillError(f"{path}: every input is longer than the student's context ({engine.context} positions)"
                            f"{' or refused by its chat template' if n_refused else ''}, so it cannot be calibrated "
                            "to answer any")
    if too_long:
        say(f"serve: {too_long} of {len(answered)} val inputs are longer than the student's context "
            f"({engine.context} positions): left out of calibration, as serving leaves such inputs to the teacher")
    reference = embed_all(engine, [r.messages for r in train], s.batch_size, "serve: embed training inputs")
    held_dist = (ood_distance(embed_all(engine, [r.messages for r in held], s.batch_size,
                                        "serve: embed held-out training inputs"), reference) if held else [])
    answers = _answer_all(engine, [r.messages for r in val], s.batch_size, "serve: calibrate on val")
    agree = [task.agree(a.parsed, task.parse(r.output or "")) for a, r in zip(answers, val)]
    dist = ood_distance(torch.stack([a.embedding for a in answers]), reference)
    # An answer cut at the task's budget escalates when served (Routing.decide), so it is forced here too.
    cut = [a.truncated and s.escalate_truncated for a in answers]
    routing = calibrate([a.confidence for a in answers], agree, dist,
                        [a.invalid is not None or c for a, c in zip(answers, cut)],
                        s.target_escalation, s.target_agreement, s.ood_quantile, ood_sample=held_dist)
    routing.stats["n_val_truncated"] = sum(cut)
    routing.stats["n_reference"] = len(train)
    routing.stats["n_val_too_long"] = too_long
    routing.stats["n_val_refused"] = refused
    routing.stats["n_ood_holdout"] = len(held)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written to temp names and renamed, so a crash never leaves a half-written file; the pair is
    # two renames, so each file carries the key and is read only beside the other of its key. The
    # temp names are this process's own: two servers calibrating one run at once (started together,
    # or both hot-swapping one promoted student) shared RUN/serve/reference.tmp, and one's rename
    # took the file the other was about to rename (FileNotFoundError). Either one's pair is right:
    # both measure the same key on the same data.
    with atomic_write(ref_path) as f:
        torch.save({"key": key, "reference": reference}, f.buffer)  # bytes, through the text file's own stream
    write_text(routing_path, json.dumps({
        # Whom it was calibrated for: watch judges the served escalation share against it only for that student.
        "key": key, "student": engine.served_name, "confidence_threshold": _finite(routing.confidence_threshold),
        "ood_threshold": _finite(routing.ood_threshold), "stats": jsonable(routing.stats),
    }, indent=2))
    return routing, reference


def _servable(engine: ServedStudent, records: list[Record], path: Path,
              quiet: bool = False) -> tuple[list[Record], int, int]:
    """The records the student can take (they fit its context and its chat template takes them),
    how many are too long and how many the template refuses (one line says so, with the first why)."""
    fits, too_long, refused = [], 0, []
    for r in records:
        try:
            over = engine.over_context(r.messages)
        except RefusedChat as e:
            refused.append(e.why)
            continue
        if over is None:
            fits.append(r)
        else:
            too_long += 1
    if refused and not quiet:
        say(f"serve: {len(refused)} of {len(records)} {path.stem} inputs are refused by the student's chat template "
            f"({refused[0][:200]}): left out of calibration, as serving answers such chats with a 400")
    return fits, too_long, len(refused)
