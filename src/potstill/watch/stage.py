"""`potstill watch RUN`: is the served traffic still the traffic the student was trained for?

Three checks over the latest window of answered requests in RUN/calls.sqlite:
1. input drift: the student's mean-pooled prompt embeddings (``TransformersEngine.embed``, the
   same vectors serving uses for its OOD rule) of the window vs a sample of the student's training
   records (RUN/train.jsonl, or a promoted challenger's: ``rundir.student_train_path``),
   by an MMD permutation test (``stats.mmd_test``); flagged when p <= alpha AND MMD's 95% lower bound
   >= min_effect (a permutation p-value, (1 + k) / (1 + permutations), rejects at p <= alpha with
   level alpha);
2. label-mix drift (classification; a tools task's mix of functions called): the labels served vs
   the teacher labels in train.jsonl,
   by a G-test (permutation p-value); flagged when p <= alpha AND total variation > label_tv_max;
3. escalation: the share answered by the teacher vs the share calibrated on val
   (RUN/serve/routing.json); flagged when it exceeds it by more than escalation_margin AND an exact
   one-sided test of the window's count against val's (``stats.escalation_p_value``) gives p <= alpha.
Each p is Holm-adjusted over the checks judged (``stats.holm``): a run flags under no drift at most
alpha of the time, not alpha per check.
The report goes to RUN/watch/report.json and report.md (each written atomically), and one line per
run to RUN/watch/history.jsonl, whose latest runs report.md tabulates; the CLI exits with
``EXIT_DRIFT`` when any check is flagged.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from potstill.config import Config, WatchConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_file, hash_obj
from potstill.models.loading import load_lm
from potstill.models.prompting import RefusedChat
from potstill.progress import out, say
from potstill.records import read_records, write_json, write_text
from potstill.rundir import check_trained_task, student_train_path
from potstill.serve.engine import TransformersEngine, embed_all
from potstill.tasks import get_task
from potstill.tool_calls import calls_of, text_of, tool_names
from potstill.watch.stats import escalation_p_value, escalation_trend, holm, label_test, mmd_test
from potstill.watch.traffic import read_traffic, served_name, served_name_of

EXIT_DRIFT = 3  # 0: within thresholds; 2: an error (one line on stderr); 3: drift flagged
INVALID = "(invalid)"  # a served answer that names no label
REPLY = "(reply)"  # a tools task's reply in words, no call (task.tool_choice auto)


def reference_sample(train: list, w: WatchConfig) -> list:
    """The training records watch compares traffic with: ``w.reference_size`` of them drawn with ``w.seed``."""
    return random.Random(w.seed).sample(train, min(w.reference_size, len(train)))


def reference_embeddings(run_dir: Path, engine: TransformersEngine, w: WatchConfig) -> tuple[torch.Tensor, list]:
    """Embeddings of ``w.reference_size`` training records drawn with ``w.seed``, and those
    records; cached in RUN/watch/reference.pt, redone when the student or train.jsonl changes."""
    train_path = student_train_path(run_dir)  # a promoted challenger's own training set, new traffic included
    if not train_path.exists():
        raise PotstillError(f"{train_path} not found: watch compares traffic with the training inputs (run `potstill curate` first)")
    train = read_records(train_path)
    if len(train) < 2:
        raise PotstillError(f"{train_path}: {len(train)} record(s); the reference sample needs at least 2")
    sample = reference_sample(train, w)
    # v2: only the inputs that fit the student's context are embedded (``fits``).
    key = hash_obj({"student": engine.lm.identity, "train": hash_file(train_path), "n": w.reference_size,
                    "seed": w.seed, "v": 2})
    cache = run_dir / "watch" / "reference.pt"
    saved = _read_cache(cache)
    if saved is not None and saved.get("key") == key and isinstance(saved.get("embeddings"), torch.Tensor):
        return saved["embeddings"], sample
    readable = [r.messages for r in sample if fits(engine, r.messages)]
    if len(readable) < 2:
        raise PotstillError(f"{train_path}: {len(readable)} of the {len(sample)} sampled training inputs fit the "
                            f"student's context ({engine.context} positions); the reference sample needs at least 2")
    emb = embed_all(engine, readable, w.batch_size, "watch: embed training inputs")
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Saved under a temp name and renamed, so a crash never leaves a half-written cache.
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        torch.save({"key": key, "embeddings": emb}, tmp)
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return emb, sample


def _read_cache(path: Path) -> dict | None:
    """A saved reference, or None where there is none or it cannot be read (cut short, edited by
    hand): a cache, so it is embedded again and rewritten."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path)
    except OSError:  # no permission, a folder: not a cache to redo, the CLI names it
        raise
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError or an unpickling error
        say(f"watch: {path} cannot be read ({type(e).__name__}); embedding the training inputs again")
        return None
    return saved if isinstance(saved, dict) else None


def fits(engine: TransformersEngine, messages: list[dict]) -> bool:
    """Whether the student reads this chat when served (``ServedStudent.over_context``): serve sends a
    longer one to the teacher unread (reason too_long), and a student with learned positions (GPT-2)
    cannot even embed it."""
    try:
        return engine.over_context(messages) is None
    except RefusedChat:  # its chat template refuses it: serve answers such a chat with a 400
        return False


def label_of(task: Any, text: str) -> str:
    parsed = task.parse(text or "")
    return parsed if isinstance(parsed, str) and parsed in task.labels else INVALID


def call_of(task: Any, text: str | None, calls: list[dict] | None = None, served: bool = False) -> str:
    """A tools task's answer as its "label": the function it calls (a served call's ``tool_calls``, else
    its ``{name, arguments}`` text), the functions of parallel calls sorted and joined by ``+``
    (``a+a+b``), ``REPLY`` for a reply in words (``task.tool_choice: auto``), ``INVALID`` where it calls
    none of the task's tools or one that is not. ``served``: a served answer's text (serve sends no
    answer that fails the task), which under ``auto`` is a reply unless it is written as calls: a reply
    that is JSON itself (an agent answering with data) was counted as a broken call."""
    if calls:
        names = [(c.get("function") or {}).get("name") for c in calls]
    else:
        parsed = task.parse(text or "")
        made = calls_of(parsed)
        if text_of(parsed) is not None or served and task.cfg.tool_choice == "auto" and not (
                made and all({"name", "arguments"} <= c.keys() for c in made)):
            return REPLY
        names = [c.get("name") for c in made]
    known = tool_names(task.cfg.tools)
    return "+".join(sorted(names)) if names and all(n in known for n in names) else INVALID


def judge(live_emb: torch.Tensor, ref_emb: torch.Tensor, live_labels: list[str] | None, ref_labels: list[str] | None,
          escalated: list[bool], expected: float | None, w: WatchConfig,
          n_expected: int | None = None) -> dict[str, Any]:
    """The three checks on already-embedded, already-labelled data; ``drift`` is True when any is flagged.

    ``expected``: the share of val escalated at calibration (None: the escalation share is reported, not judged),
    measured on ``n_expected`` val inputs (None: taken as exact).

    Everything ``watch_run`` decides goes through here (the benchmark calls it on windows sampled
    from a pre-embedded pool)."""
    checks: dict[str, Any] = {}
    # watch.min_requests holds for each check's own n, not for the window alone: of a window of 50, the
    # input check may read 10 (the rest past the context) and the escalation share 1 (the rest offered
    # tools), and one escalated request of one was "100% escalated", DRIFT. Fewer is "not judged".
    least = max(2, w.min_requests)
    if live_emb.shape[0] >= least:
        mmd = mmd_test(live_emb, ref_emb, w.permutations, w.seed)
    else:  # e.g. the window's inputs are (nearly) all past the student's context: the escalation share says so
        mmd = {"mmd2": None, "effect": None, "effect_lower": None, "p_value": None, "n_live": int(live_emb.shape[0]),
               "n_reference": int(ref_emb.shape[0]), "flagged": False}
    checks["input"] = mmd
    if live_labels and ref_labels:
        checks["labels"] = (label_test(live_labels, ref_labels, w.permutations, w.seed) if len(live_labels) >= least
                            else {"g": None, "df": None, "p_value": None, "tv": None, "n_live": len(live_labels),
                                  "n_reference": len(ref_labels), "flagged": False})
    esc = escalation_trend(escalated, w.escalation_bins)
    esc["expected"], esc["n_expected"] = expected, n_expected
    esc["max"] = None if expected is None else min(1.0, expected + w.escalation_margin)
    # Both the window and val's share are samples: flagged when the window escalates more than val by more
    # than the margin (the effect) AND an exact one-sided test says it is no chance, as the other checks
    # are flagged. The margin alone paged 13% of checks with no drift (20 val inputs, window 50).
    esc["p_value"] = None if expected is None or len(escalated) < least else escalation_p_value(
        sum(escalated), len(escalated), expected, n_expected)
    checks["escalation"] = esc
    # One run tests up to three checks: each at alpha paged 3% of runs with no drift (a cron job every hour
    # within days). Holm's adjustment over the checks judged keeps a run's false alarms at most alpha.
    adjusted = holm({k: c["p_value"] for k, c in checks.items() if c.get("p_value") is not None})
    for name, c in checks.items():
        c["p_adjusted"] = adjusted.get(name)
    # <=: a permutation p-value has level alpha at p <= alpha (its smallest is 1 / (1 + permutations)).
    significant = {k: c["p_adjusted"] is not None and c["p_adjusted"] <= w.alpha + 1e-12 for k, c in checks.items()}
    mmd["flagged"] = significant["input"] and mmd["effect_lower"] >= w.min_effect
    if "labels" in checks:
        checks["labels"]["flagged"] = significant["labels"] and checks["labels"]["tv"] > w.label_tv_max
    esc["flagged"] = significant["escalation"] and esc["share"] > esc["max"]
    return {"drift": any(c["flagged"] for c in checks.values()), "checks": checks, "checks_judged": len(adjusted)}


def expected_escalation(run_dir: Path, student: str | None = None) -> tuple[float | None, int | None, str]:
    """The share of val escalated at the calibrated thresholds (RUN/serve/routing.json) and the number
    of val inputs it was measured on (None where the file does not say), or None and why not. ``student``: the served name (``served_name``) of the student in RUN/student; a file
    serve calibrated for another (a server of a promoted student, then a rollback) is not used.

    Val's inputs longer than the student's context count as escalated, as serving sends them to the
    teacher (reason too_long) and the served share counts them: the calibration's val_escalation is
    measured on the inputs that fit, so 30% of long inputs in val and traffic alike read as 30 points
    of drift against a calibrated 0%."""
    path = run_dir / "serve" / "routing.json"
    if not path.exists():
        return None, None, f"{path} not found: the escalation share is reported but not judged"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        stats = saved.get("stats", {})
        share = float(stats["val_escalation"]) if "val_escalation" in stats else None
        # Older files hold no n_val_too_long: their val had none left out, or they say nothing of it.
        n_fit, too_long = int(stats.get("n_val", 0)), int(stats.get("n_val_too_long", 0))
        owner = saved.get("student")  # written since serve named it; older files are taken as the current student's
    except (ValueError, TypeError, AttributeError) as e:  # serve's cache, edited or cut short: serve redoes it
        why = e.msg if isinstance(e, json.JSONDecodeError) else f"{type(e).__name__}: {e}"
        return None, None, (f"{path} cannot be read ({why}): the escalation share is reported but not judged "
                      "(`potstill serve` calibrates it again)")
    if share is None:
        return None, None, f"{path}: no val_escalation in its stats: the escalation share is reported but not judged"
    if student is not None and isinstance(owner, str) and served_name_of(owner) != student:
        return None, None, (f"{path} was calibrated for another student than the one in RUN/student: the escalation share "
                      "is reported but not judged (`potstill serve` calibrates the current one)")
    if too_long > 0 and n_fit > 0:
        expected = (too_long + share * n_fit) / (too_long + n_fit)
        return expected, too_long + n_fit, (
            f"expected escalation share {expected:.1%}: val's {share:.1%} of "
            f"the {n_fit} inputs the student read, its {too_long} inputs past the student's context counted as "
            "escalated (too_long), as the served share counts them")
    return share, n_fit or None, ""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _when(t: float) -> str:
    """A time the user gave, as ISO where it is one (unix seconds past year 9999 are not)."""
    try:
        return _iso(t)
    except (ValueError, OverflowError, OSError):
        return f"{t:.0f}"


def watch_run(run_dir: Path, cfg: Config, since: float | None = None, until: float | None = None,
              device: str = "auto") -> dict[str, Any]:
    """Watch a served run: read its traffic, run the checks, write RUN/watch/report.{json,md},
    print a table, and return the report (``report["drift"]``: any check flagged)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    w = cfg.watch
    task = get_task(cfg.task)
    if since is not None and until is not None and since > until:
        raise PotstillError(f"--since {_when(since)} is after --until {_when(until)}: no request falls in that range "
                            "(a duration counts back from now: --since 3h --until 2h)")
    if since is None and until is None and w.window < w.min_requests:
        # Otherwise the count below is the window's, and reads as if the ledger held no more.
        raise PotstillError(f"watch.window {w.window} is under watch.min_requests {w.min_requests}: no window that "
                            "small is ever judged; raise --window or lower --min-requests")
    check_trained_task(run_dir, cfg.task, "watch")
    student_dir = run_dir / "student"
    trained = (student_dir / "config.json").exists() or (student_dir / "adapter_config.json").exists()
    # Only what the current student handled: before a promotion (a hot swap) the old champion answered and
    # escalated by its own thresholds, which say nothing of this student or of its routing.json.
    name = served_name(student_dir) if trained else None
    traffic = read_traffic(run_dir / "calls.sqlite", w.window, since, until, student=name)
    earlier = 0 if name is None else sum(1 for s in read_traffic(run_dir / "calls.sqlite", w.window, since, until)
                                         if s.student and not s.student.startswith(name))
    if len(traffic) < w.min_requests:
        scope = "in that time range" if since is not None or until is not None else "in the ledger"
        who = (f" handled by the current student ({earlier} more by an earlier student, before a promotion, left out)"
               if earlier else "")
        raise PotstillError(f"{run_dir / 'calls.sqlite'}: {len(traffic)} answered served request(s) {scope}{who}; "
                            f"watch needs at least {w.min_requests} (watch.min_requests) to judge drift")
    if not trained:
        raise PotstillError(f"{student_dir}: no trained student to embed the traffic with")
    lm = load_lm(str(student_dir), device=device)
    engine = TransformersEngine(lm, task)
    ref_emb, ref_records = reference_embeddings(run_dir, engine, w)
    # What the student never read (longer than its context; serve sent it to the teacher) is left out of
    # the input check and counted; it stays an escalation in the escalation share.
    readable = [c for c in (s.chat for s in traffic) if fits(engine, c)]  # tool turns as the student read them
    too_long = len(traffic) - len(readable)
    # A time range can hold a day of traffic: the MMD kernel of 30,000 requests is ~7 GB per (N, N)
    # float64 matrix, several held at once. A seeded uniform sample of max_sample keeps it ~10 MB.
    sampled = len(readable) > w.max_sample
    if sampled:
        readable = random.Random(w.seed).sample(readable, w.max_sample)
    live_emb = embed_all(engine, readable, w.batch_size, "watch: embed served inputs") if readable \
        else torch.zeros(0, ref_emb.shape[1])
    # An escalation answered with tool calls (a client's tools) holds no label: its empty text is
    # no answer to count as an invalid one in the label mix. Counted apart.
    tool_calls = sum(1 for s in traffic if s.extra.get("tool_calls"))
    # An escalation a client's response_format sent to the teacher is decided by the format, not by the
    # routing calibrated on val, and its answer is the client's JSON, not the task's: left out of both.
    formatted = [s for s in traffic if s.escalated and s.reason.startswith("response_format")]
    formatted_ids = {s.id for s in formatted}
    if task.labels:
        live_labels: list[str] | None = [label_of(task, s.content) for s in traffic
                                         if not s.extra.get("tool_calls") and s.id not in formatted_ids]
        ref_labels = [label_of(task, r.output) for r in ref_records if r.output is not None]
    elif task.cfg.type == "tools":  # the call mix: which function, as a classifier's label mix
        live_labels = [call_of(task, s.content, s.extra.get("tool_calls"), served=True) for s in traffic
                       if not s.reason.startswith("tools") and s.id not in formatted_ids]
        ref_labels = [call_of(task, r.output) for r in ref_records if r.output is not None]
    else:
        live_labels, ref_labels = None, None
    expected, n_expected, note = expected_escalation(run_dir, name)
    # A request whose tools the model may call goes to the teacher by design (reason tools), not by
    # the student's routing, which is what val's escalation share was calibrated on: left out of it.
    routed = [s.escalated for s in traffic if not s.reason.startswith(("tools", "response_format"))]
    if not routed:
        raise PotstillError(f"{run_dir / 'calls.sqlite'}: all {len(traffic)} requests in the window offered tools or "
                            "asked for a JSON format the student's answer did not fit, which go to the teacher by "
                            "design: no routing of the student's to judge")
    report = judge(live_emb, ref_emb, live_labels, ref_labels, routed, expected, w, n_expected)
    # Which rule sent them (serve.routing; "+cached": the teacher's answer came from the ledger), so that a
    # rising share says whether inputs moved away (out_of_distribution), the student lost its way
    # (low_confidence, invalid_output, truncated) or prompts grew (too_long).
    reasons = Counter(s.reason.split("+")[0] for s in traffic if s.escalated
                      and not s.reason.startswith(("tools", "response_format")))
    report["checks"]["escalation"]["by_reason"] = {k: v / len(routed) for k, v in reasons.most_common()}
    report.update({
        "run_dir": str(run_dir), "student": lm.identity, "created": _iso(time.time()),
        "traffic": {"n": len(traffic), "first": _iso(traffic[0].created_at), "last": _iso(traffic[-1].created_at),
                    "first_id": traffic[0].id, "last_id": traffic[-1].id,
                    "selection": "time range" if since is not None or until is not None else f"latest {w.window}",
                    "earlier_student": earlier, "tool_calls": tool_calls,
                    "tool_requests": len(traffic) - len(routed) - len(formatted),
                    "response_format_escalations": len(formatted),
                    "too_long": too_long},
        "thresholds": w.model_dump(), "notes": [n for n in [note] if n], "seconds": time.perf_counter() - t0,
    })
    if tool_calls and task.labels:
        report["notes"].append(f"{tool_calls} request(s) answered with tool calls, which hold no label, left out "
                               "of the label mix")
    if len(routed) + len(formatted) < len(traffic):
        report["notes"].append(f"{len(traffic) - len(routed) - len(formatted)} request(s) offering tools, sent to the "
                               "teacher by design, left out of the escalation share")
    if formatted:
        report["notes"].append(f"{len(formatted)} request(s) sent to the teacher because the student's answer was not "
                               "the JSON their response_format asked for, left out of the escalation share"
                               + (" and the label mix" if task.labels else ""))
    if sampled:
        report["notes"].append(f"input check on a seeded sample of {w.max_sample} of the {len(traffic) - too_long} "
                               "requests the student read (watch.max_sample)")
    if too_long:
        report["notes"].append(f"{too_long} request(s) longer than the student's context ({engine.context} positions), "
                               "which it never read, left out of the input check (escalations in the share)")
    if earlier:
        report["notes"].append(f"{earlier} request(s) served by an earlier student (before a promotion) left out")
    write_json(run_dir / "watch" / "report.json", report)
    history = run_dir / "watch" / "history.jsonl"
    append_history(history, history_row(report))
    rows, cut = read_history(history)
    write_text(run_dir / "watch" / "report.md", markdown(report, rows, cut))
    out.print(table(report))
    for note in report["notes"]:  # what each check left out: the table's n say how many it read
        say(f"watch: {note}")
    say(f"watch: report in {run_dir / 'watch' / 'report.json'} and report.md ({report['seconds']:.1f} s)")
    return report


HISTORY_SHOWN = 20  # runs in report.md's history table (history.jsonl keeps every one)


def history_row(report: dict[str, Any]) -> dict[str, Any]:
    """One run's line in RUN/watch/history.jsonl: when, what it read, each check's numbers and flag."""
    c, tr = report["checks"], report["traffic"]
    row = {"created": report["created"], "drift": report["drift"], "student": report["student"],
           "traffic": {k: tr[k] for k in ("n", "first", "last", "selection")},
           "input": {k: c["input"].get(k) for k in ("mmd2", "effect", "effect_lower", "p_value", "p_adjusted", "n_live",
                                                    "flagged")},
           "escalation": {k: c["escalation"].get(k) for k in ("share", "max", "p_value", "p_adjusted", "n", "flagged")}}
    if "labels" in c:
        row["labels"] = {k: c["labels"].get(k) for k in ("tv", "p_value", "p_adjusted", "n_live", "flagged")}
    return row


def append_history(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` as one line, in one write to a file opened for appending: two watches at once each
    add a whole line, and a line a crash cut short stays alone on its line (``read_history`` skips it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # the end of a line a crash cut short
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def read_history(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The runs in ``path``, oldest first, and how many lines were skipped (cut short, not JSON)."""
    rows, cut = [], 0
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            cut += 1
            continue
        if isinstance(row, dict) and "created" in row:
            rows.append(row)
        else:
            cut += 1
    return rows, cut


def _history_lines(rows: list[dict[str, Any]], cut: int) -> list[str]:
    shown = rows[-HISTORY_SHOWN:]
    lines = [f"## History: the last {len(shown)} of {len(rows)} runs (RUN/watch/history.jsonl)", "",
             "| written | requests | inputs: MMD (p) | label mix: TV (p) | escalation | verdict |",
             "|---|---|---|---|---|---|"]
    for r in reversed(shown):
        i, lab, e = r["input"], r.get("labels"), r["escalation"]
        mmd = "-" if i.get("mmd2") is None else f"{i['effect']:.3f} ({i['p_value']:.3f})"
        tv = "-" if not lab or lab.get("p_value") is None else f"{lab['tv']:.3f} ({lab['p_value']:.3f})"
        lines.append(f"| {r['created']} | {r['traffic']['n']} | {mmd}{' !' if i.get('flagged') else ''} | "
                     f"{tv}{' !' if lab and lab.get('flagged') else ''} | {e['share']:.1%}"
                     f"{' !' if e.get('flagged') else ''} | {'DRIFT' if r['drift'] else 'ok'} |")
    if cut:
        lines.append(f"\n{cut} line(s) of history.jsonl could not be read (cut short by a crash?) and were skipped.")
    return lines + [""]


def _p(check: dict[str, Any]) -> str:
    """A check's p-value, and Holm's adjustment of it where that differs."""
    p, adj = check.get("p_value"), check.get("p_adjusted")
    if p is None:
        return "-"
    return f"{p:.4f}" if adj is None or abs(adj - p) < 1e-12 else f"{p:.4f} (Holm {adj:.4f})"


def _holm(report: dict[str, Any]) -> str:
    m = report.get("checks_judged", 1)
    return f"Holm over {m}: " if m > 1 else ""


def _rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(check, statistic, p-value, effect, threshold, verdict) per check."""
    c, w = report["checks"], report["thresholds"]
    verdict = {True: "DRIFT", False: "ok"}
    rows = []
    i = c["input"]
    too_few = f"not judged (needs {max(2, w['min_requests'])}: watch.min_requests)"
    if i["mmd2"] is None:
        rows.append(("inputs (MMD)", f"{i['n_live']} input(s) within the student's context", "-", "-",
                     too_few, verdict[False]))
    else:
        rows.append(("inputs (MMD)", f"MMD^2 {i['mmd2']:.4f} (n {i['n_live']} vs {i['n_reference']})", _p(i),
                     f"MMD {i['effect']:.3f} (>= {i['effect_lower']:.3f} at 95%)",
                     f"{_holm(report)}p <= {w['alpha']} and MMD's bound >= {w['min_effect']}", verdict[i["flagged"]]))
    if "labels" in c and c["labels"]["p_value"] is None:
        rows.append(("label mix (G-test)", f"{c['labels']['n_live']} label(s)", "-", "-", too_few, verdict[False]))
    elif "labels" in c:
        lab = c["labels"]
        rows.append(("label mix (G-test)", f"G {lab['g']:.1f} (df {lab['df']}; n {lab['n_live']} vs {lab['n_reference']})",
                     _p(lab),
                     f"TV {lab['tv']:.3f}", f"{_holm(report)}p <= {w['alpha']} and TV > {w['label_tv_max']}",
                     verdict[lab["flagged"]]))
    e = c["escalation"]
    per = " ".join(f"{s:.0%}" for s in e["per_window"])
    if e["max"] is None:
        limit = "not judged (no routing.json)"
    elif e["p_value"] is None:
        limit = too_few
    else:
        of = f" of {e['n_expected']}" if e.get("n_expected") else ""
        limit = (f"{_holm(report)}p <= {w['alpha']} and share > {e['max']:.0%} "
                 f"(val {e['expected']:.0%}{of} + {w['escalation_margin']})")
    rows.append(("escalation", f"{e['share']:.1%} of {e['n']} [{per}]", _p(e), f"slope {100 * e['slope_per_100']:+.1f} pts/100 req",
                 limit, verdict[e["flagged"]]))
    if e.get("by_reason"):
        rows.append(("escalated by reason", ", ".join(f"{k} {v:.1%}" for k, v in e["by_reason"].items()), "-", "-", "-", "-"))
    return rows


def table(report: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"potstill watch: {report['traffic']['n']} served requests vs training inputs "
                    f"({'DRIFT' if report['drift'] else 'no drift'})")
    for col in ("check", "statistic", "p-value", "effect", "flag when", "verdict"):
        t.add_column(col)
    for row in _rows(report):
        t.add_row(*row, style="red" if row[-1] == "DRIFT" else None)
    return t


def markdown(report: dict[str, Any], history: list[dict[str, Any]] | None = None, cut: int = 0) -> str:
    tr = report["traffic"]
    lines = [
        f"# potstill watch: {'DRIFT' if report['drift'] else 'no drift'}", "",
        f"{tr['n']} served requests ({tr['selection']}, {tr['first']} to {tr['last']}) against the training inputs "
        f"of `{report['run_dir']}`; student `{report['student']}`; written {report['created']}.", "",
        "| check | statistic | p-value | effect | flag when | verdict |", "|---|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in _rows(report)), "",
    ]
    if "live" in report["checks"].get("labels", {}):
        lab = report["checks"]["labels"]
        lines += ["| label | served | training |", "|---|---|---|",
                  *(f"| {k} | {lab['live'][k]:.1%} | {lab['reference'][k]:.1%} |" for k in lab["live"]), ""]
    lines += [f"- {n}" for n in report["notes"]]
    lines.append("Exit code of `potstill watch`: 0 within thresholds, 3 drift, 2 error.")
    if history:
        lines += ["", *_history_lines(history, cut)]
    return "\n".join(lines) + "\n"
