"""`potstill redistill` end to end on tiny real models: a tiny student served by the real server,
shifted traffic sent with the official openai client, then the challenger trained, compared on
the frozen and new-traffic tests, and promoted (or not).

The teacher is the replay plugin over a recorded file whose answers follow the topic of each
sentence's content words, so the shift is real: the run was distilled on business/sports
sentences, the traffic is politics/tech."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import yaml

from potstill.config import load_config
from potstill.ledger import Ledger
from potstill.errors import PotstillError
from potstill.records import Record, read_records, write_jsonl
from potstill.rundir import student_train_path
from tests.helpers.live_server import LiveServer

LABELS = ["business", "sports", "tech", "politics"]
WORDS = {"business": "market shares bank profit".split(), "sports": "team match goal win".split(),
         "politics": "election minister party vote".split(), "tech": "phone software internet computer".split()}
OLD, NEW = ["business", "sports"], ["politics", "tech"]
FILL = "the a of to in and on for with".split()


def sentences(topics: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """n distinct (sentence, topic): five content words of one topic between filler words."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    while len(out) < n:
        topic = rng.choice(topics)
        out.setdefault(" ".join(rng.choice(WORDS[topic]) if i % 2 == 0 else rng.choice(FILL) for i in range(9)), topic)
    return list(out.items())


def recording(path: Path, *groups: list[tuple[str, str]]) -> None:
    """The teacher's recorded answers (OpenAI fine-tuning JSONL), one per sentence."""
    write_jsonl(path, [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": topic}]}
                       for g in groups for t, topic in g])


def build_run(root: Path, student: Path) -> Path:
    """A run whose champion is the tiny student, with splits labelled by the teacher through the ledger."""
    from potstill.generate import label_records
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    run = root / "run"
    run.mkdir(parents=True)
    shutil.copytree(student, run / "student")
    cfg = {
        "run_dir": ".", "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "teacher": {"type": "replay", "model": "recorded-teacher", "replay_path": "recorded.jsonl"},
        "student": {"model": str(student), "max_length": 64},
        "train": {"epochs": 10, "lr": 0.003, "batch_size": 8, "device": "cpu"},
        "serve": {"target_escalation": 0.3, "api_key_env": "", "ood_reference": 32},
        "redistill": {"student_sample": 1000, "new_test": 0.3, "max_frozen_drop": 0.05, "reload_poll_s": 0},
        "report": {"bootstrap_samples": 200},
        "evaluate": {"batch_size": 32},
    }
    (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    recording(run / "recorded.jsonl", sentences(OLD, 90, 0), sentences(NEW, 110, 1), sentences(NEW, 6, 2))
    c = load_config(run / "potstill.yaml")
    task = get_task(c.task)
    recs = [Record(messages=[{"role": "user", "content": t}]) for t, _ in sentences(OLD, 90, 0)]
    with Ledger(run / "calls.sqlite") as ledger:
        labelled, _ = label_records(recs, task, get_teacher(c.teacher, task), ledger, "generate")
    write_jsonl(run / "train.jsonl", labelled[:50])
    write_jsonl(run / "val.jsonl", labelled[50:70])
    write_jsonl(run / "test.jsonl", labelled[70:])
    return run


def serve_traffic(run: Path, texts: list[tuple[str, str]], force_student: bool = False) -> None:
    """Send each text through a real server (official openai client, 4 at a time)."""
    import math

    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service

    service = load_service(run, run_config(run, None), device="cpu")
    if force_student:
        service.routing = Routing(confidence_threshold=-math.inf, ood_threshold=math.inf)
    try:
        with LiveServer(build_app(service, None)) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)

            def ask(item: tuple[str, str]) -> None:
                text, topic = item
                client.chat.completions.create(model="potstill", messages=[{"role": "user", "content": text}],
                                               metadata={"label": topic})

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(ask, texts))
    finally:
        service.close()


def _cfg(run: Path, **over):
    return load_config(run / "potstill.yaml", over)


def test_not_better_challenger_is_not_promoted(served_run, tmp_path):
    from potstill.redistill import redistill

    run = tmp_path / "run"
    _copy_original(served_run, run)
    before = (run / "student").resolve()
    # lr ~ 0: the challenger keeps the base weights, which are the champion's: no gain.
    rec = redistill(run, _cfg(run, **{"train.lr": 1e-12}))
    assert rec["decision"]["promote"] is False and rec["promotion"] is None
    assert "fails: new-traffic agreement gain > 0" in rec["decision"]["reason"]
    assert rec["results"]["new_traffic_test"]["teacher"]["gain"]["value"] == 0
    assert not (run / "student").is_symlink() and (run / "student").resolve() == before
    saved = json.loads((run / "redistill" / f"{rec['id']}.json").read_text())
    assert saved["decision"]["reason"] == rec["decision"]["reason"]
    d = rec["data"]
    assert d["distinct"] == 113 and d["overlap_frozen_test"] == 3
    # Every student-answered request went to the teacher through the ledger: the copies of frozen
    # test inputs were already answered at generate time (cache hits), the rest were sent once.
    t = rec["teacher"]
    assert t["calls"] > 0 and t["calls"] + t["cache_hits"] == d["student_answered"] and t["cache_hits"] <= 3
    assert rec["teacher"]["escalations_reused"] == d["escalated"]
    frozen = {r.text for r in read_records(run / "test.jsonl")}
    held = read_records(run / saved["data"]["files"]["new_test"])
    assert held and not frozen & {r.text for r in held}
    assert all(r.meta["source"] == "serve" for r in held)


def test_better_challenger_is_promoted_atomically(served_run, tmp_path):
    from potstill.redistill import redistill, rollback
    from potstill.redistill.compare import frozen_origin

    run = tmp_path / "run"
    _copy_original(served_run, run)
    # A first round on this traffic pays the teacher for it (lr ~ 0: not promoted), as an earlier
    # `potstill redistill` would have; this one must pay nothing again.
    redistill(run, _cfg(run, **{"train.lr": 1e-12}))
    rec = redistill(run, _cfg(run))
    new = rec["results"]["new_traffic_test"]["teacher"]
    assert new["gain"]["value"] > 0, rec["decision"]
    assert rec["decision"]["promote"] is True
    # The same served traffic again: nothing paid twice.
    assert rec["teacher"]["calls"] == 0 and rec["teacher"]["cache_hits"] == rec["data"]["student_answered"]
    link = run / "student"
    assert link.is_symlink() and link.resolve() == (run / "students" / rec["challenger_id"]).resolve()
    assert rec["promotion"] == {"previous": "students/original", "current": f"students/{rec['challenger_id']}"}
    # The frozen score the new champion's lineage started from: the original's, carried to the next round.
    frozen = rec["results"]["frozen_test"]["teacher"]["champion"]
    origin = rec["frozen_origin"]
    assert origin["student"] == "student" and origin["measured_in"] == rec["id"]
    assert (origin["value"], origin["n"]) == (frozen["value"], frozen["n"])
    saved = [json.loads(p.read_text()) for p in sorted((run / "redistill").glob("*.json"))]
    assert frozen_origin(saved, rec["promotion"]["current"], rec["results"]["frozen_test"],
                         origin["frozen_test"]) == origin
    assert (run / "students" / "original" / "config.json").exists()
    assert "gold" in rec["results"]["new_traffic_test"]  # metadata.label of the requests
    # The champion's training records are now the challenger's: the old train set and the traffic it
    # learnt. Serve's out-of-distribution reference and watch's drift reference read them (with
    # RUN/train.jsonl alone, the promoted student's new traffic stayed "out of distribution" and went
    # on to the teacher), and so does the next redistill: a rerun on the same traffic finds nothing new.
    learnt = run / "redistill" / rec["challenger_id"] / "challenger_train.jsonl"
    assert student_train_path(run) == learnt
    assert len(read_records(learnt)) == rec["data"]["old_train"] + rec["data"]["new_train"] == rec["data"]["challenger_train"]
    assert _out_of_distribution(run, sentences(NEW, 40, 7)) <= 10  # of 40 new-domain inputs, none served
    with pytest.raises(PotstillError, match=r"no new training records left after curation .* the champion's training set"):
        redistill(run, _cfg(run))
    assert len(list((run / "redistill").glob("*.json"))) == 2  # one record per decision, none overwritten
    assert rollback(run, "students/original")["current"] == "students/original"
    assert link.resolve() == (run / "students" / "original").resolve()


def _out_of_distribution(run: Path, texts: list[tuple[str, str]]) -> int:
    """How many of ``texts`` the served student's OOD rule would send to the teacher (embedded and
    measured as serve does, without serving them: the module's ledger stays as the other tests expect)."""
    from potstill.serve import run_config
    from potstill.serve.engine import embed_all
    from potstill.serve.routing import ood_distance
    from potstill.serve.service import load_service

    service = load_service(run, run_config(run, None), device="cpu", ledger_path=run / "ood-probe.sqlite")
    try:
        live = service.live
        emb = embed_all(live.engine, [[{"role": "user", "content": t}] for t, _ in texts], 16, "probe")
        return sum(d > live.routing.ood_threshold for d in ood_distance(emb, live.reference))
    finally:
        service.close()


def _cli(monkeypatch, capsys, *args: str) -> str:
    from potstill.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["potstill", "redistill", *args])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_errors_are_one_line(served_run, tmp_path, monkeypatch, capsys):
    bare = tmp_path / "bare"
    _copy_original(served_run, bare, "calls.sqlite*")
    assert _cli(monkeypatch, capsys, str(bare)) == (
        f"error: {bare / 'calls.sqlite'} not found: no served traffic (serve the student with `potstill serve` first)")
    Ledger(bare / "calls.sqlite").close()
    assert _cli(monkeypatch, capsys, str(bare)).startswith("error: redistill: no served traffic in calls.sqlite")
    serve_traffic(bare, sentences(NEW, 6, 2), force_student=True)
    assert _cli(monkeypatch, capsys, str(bare), "--student-sample", "0") == (
        "error: redistill: no escalated requests to learn from and redistill.student_sample is 0: "
        "raise --student-sample to have the teacher label student-answered traffic")
    assert _cli(monkeypatch, capsys, str(bare), "--new-test", "1.5") == (
        "error: --new-test: Input should be less than 1")  # named by the flag typed, not the file


def test_an_empty_frozen_test_is_refused_before_anything_is_paid_or_trained(served_run, tmp_path, monkeypatch, capsys):
    # A run curated with --curate.test 0 has an empty test.jsonl: the challenger was trained, then
    # the comparison crashed with a TypeError (the frozen gain of no examples is None).
    run = tmp_path / "run"
    _copy_original(served_run, run)
    (run / "test.jsonl").write_text("")
    with Ledger(run / "calls.sqlite") as ledger:
        rows = ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    assert _cli(monkeypatch, capsys, str(run)) == (
        f"error: {run / 'test.jsonl'} is empty: redistill compares champion and challenger on the frozen test "
        "(curate with curate.test above 0)")
    assert not (run / "students").exists() and not (run / "redistill").exists()
    with Ledger(run / "calls.sqlite") as ledger:
        assert ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == rows  # no teacher call


def test_an_escalation_the_client_cut_short_is_not_taken_as_the_teachers_answer(tmp_path):
    # A generated answer is cut to the client's stop or max_tokens before it is logged; that text,
    # taken as the teacher's answer, would teach the challenger to stop mid-sentence.
    from potstill.config import TaskConfig
    from potstill.ledger import ServedCall
    from potstill.redistill.traffic import read_traffic
    from potstill.tasks import get_task

    whole = "The minister resigned on Tuesday after a vote of no confidence."
    rows = [({"stop": ["."]}, "The minister resigned on Tuesday after a vote of no confidence"),
            ({"max_tokens": 4}, "The minister resigned on"),
            ({"max_completion_tokens": 4}, "Shares fell"),
            ({"max_tokens": 4096}, whole),  # above the teacher's own budget: the whole answer
            ({}, "Rain all week.")]
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        for i, (limits, content) in enumerate(rows):
            request = {"model": "potstill", "messages": [{"role": "user", "content": f"summarise story {i}"}], **limits}
            ledger.record_served(ServedCall(request=request, answered_by="teacher", model="teacher", content=content,
                                            reason="low_confidence"))
        traffic = read_traffic(ledger, get_task(TaskConfig(type="freetext")), teacher_max_tokens=256)
    assert [r.output for r in traffic.escalated] == [whole, "Rain all week."]
    assert traffic.counts["escalated_cut"] == 3 and traffic.counts["escalated"] == 2


def test_a_challenger_cut_short_is_neither_left_as_a_student_nor_reused(served_run, tmp_path, monkeypatch):
    # Trained and saved into RUN/students/<id>/, then stopped during its int8 calibration (Ctrl-C, OOM):
    # the rerun took that directory as "already trained on this data, reused", so the challenger was
    # compared and promoted never calibrated (serve's int8 engine then runs it unsmoothed), with no
    # training summary in its decision record; meanwhile it sat in students/ as a rollback target.
    import potstill.train.stage
    from potstill.redistill import redistill

    run = tmp_path / "run"
    _copy_original(served_run, run)
    champion = (run / "student").resolve()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(potstill.train.stage, "calibrate_int8", interrupted)
        with pytest.raises(KeyboardInterrupt):
            redistill(run, _cfg(run))
    assert (run / "student").resolve() == champion
    left = [p for p in (run / "students").iterdir() if (p / "config.json").exists()] if (run / "students").exists() else []
    assert left == [], left

    rec = redistill(run, _cfg(run))
    assert not rec["train"].get("reused") and rec["train"]["int8_calibration"] is not None
    assert (run / "students" / rec["challenger_id"] / "int8_calibration.safetensors").exists()
    # Its training was kept (train.trainer's final.json), only the calibration ran again; then dropped.
    assert rec["train"]["resumed_from_step"] == rec["train"]["steps"]
    assert not list((run / "redistill").glob("*/student.training.ckpt"))


def test_a_half_calibrated_challenger_left_by_an_older_version_is_trained_again(served_run, tmp_path, monkeypatch):
    # Versions before the staging directory trained and calibrated the challenger in place in
    # RUN/students/<id>/ and wrote RUN/redistill/<id>/train.json last. One stopped in its calibration
    # left a student there without either; this version still took it as "already trained, reused".
    import potstill.train.stage
    from potstill.redistill import redistill

    run = tmp_path / "run"
    _copy_original(served_run, run)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(potstill.train.stage, "calibrate_int8", interrupted)
        with pytest.raises(KeyboardInterrupt):
            redistill(run, _cfg(run, **{"train.epochs": 1}))
    (work,) = [p for p in (run / "redistill").iterdir() if p.is_dir()]
    assert not (work / "train.json").exists()
    (run / "students").mkdir(exist_ok=True)
    (work / "student.training").rename(run / "students" / work.name)  # where the older version left it

    rec = redistill(run, _cfg(run, **{"train.epochs": 1, "redistill.promote": False}))
    assert rec["challenger_id"] == work.name
    assert not rec["train"].get("reused") and rec["train"]["int8_calibration"] is not None
    assert (run / "students" / work.name / "int8_calibration.safetensors").exists()
    again = redistill(run, _cfg(run, **{"train.epochs": 1, "redistill.promote": False}))
    assert again["train"]["reused"] is True  # once whole, it is reused


def test_a_challenger_trained_whole_but_not_yet_moved_is_moved_not_trained_again(served_run, tmp_path, monkeypatch):
    # Stopped after train.json was written (trained and calibrated, whole) but before the staged
    # challenger was moved into RUN/students/<id>/: the rerun trained it all again.
    import potstill.train.trainer
    from potstill.redistill import redistill

    run = tmp_path / "run"
    _copy_original(served_run, run)
    real_rename = os.rename

    def stopped(src, dst, *a, **k):
        if Path(src).name == "student.training":
            raise KeyboardInterrupt
        return real_rename(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", stopped)
        with pytest.raises(KeyboardInterrupt):
            redistill(run, _cfg(run, **{"train.epochs": 1, "redistill.promote": False}))
    (work,) = [p for p in (run / "redistill").iterdir() if p.is_dir()]
    trained = json.loads((work / "train.json").read_text())
    assert (work / "student.training" / "config.json").exists() and not (run / "students" / work.name).exists()

    def never(*a, **k):
        raise AssertionError("trained again")

    with monkeypatch.context() as m:
        m.setattr(potstill.train.trainer, "train", never)
        rec = redistill(run, _cfg(run, **{"train.epochs": 1, "redistill.promote": False}))
    assert rec["challenger_id"] == work.name and rec["train"]["int8_calibration"] == trained["int8_calibration"]
    assert (run / "students" / work.name / "int8_calibration.safetensors").exists()
    assert not (work / "student.training").exists()


def test_the_new_traffic_test_holds_no_input_an_earlier_round_trained_on(served_run, tmp_path):
    # The hash split keeps an input on one side only under the same redistill.seed and new_test: a
    # second round with another seed held out, as "new traffic", inputs the first round's challenger
    # had trained on (RUN/redistill/<id>/challenger_train.jsonl).
    from potstill.redistill import redistill

    run = tmp_path / "run"
    _copy_original(served_run, run)
    first = redistill(run, _cfg(run, **{"train.epochs": 1, "redistill.promote": False}))
    trained = {r.text for r in read_records(run / first["data"]["files"]["new_train"])}
    second = redistill(run, _cfg(run, **{"train.epochs": 1, "redistill.promote": False, "redistill.seed": 1}))
    held = {r.text for r in read_records(run / second["data"]["files"]["new_test"])}
    assert held and not held & trained, sorted(held & trained)[:3]
    moved = second["data"]["test_trained_by_earlier_round"]
    assert moved > 0 and second["data"]["curate"]["test"] == len(held) == second["data"]["new_test"]
    assert trained <= {r.text for r in read_records(run / "redistill" / second["challenger_id"] / "challenger_train.jsonl")}


def _copy_original(served_run: Path, run: Path, *ignore: str) -> None:
    """A copy of the module's served run for one test to change (``ignore``: more to leave out)."""
    shutil.copytree(served_run, run, symlinks=True, ignore=shutil.ignore_patterns("students", "redistill", *ignore))


def test_new_share_repeats_the_new_traffic_in_the_challengers_training_alone(served_run, tmp_path, capsys):
    """redistill.new_share: the challenger trains on the new records repeated until they make that share
    of its examples (the champion's 50 would otherwise outweigh a little traffic as they will a lot),
    while the records it is said to have learnt (challenger_train.jsonl: the next round's old data,
    serve's and watch's reference) hold each once, so repeats do not pile up over rounds."""
    from collections import Counter

    from potstill.redistill import challenger_id, redistill, weighted

    run = tmp_path / "run"
    _copy_original(served_run, run)
    cfg = _cfg(run, **{"redistill.new_share": 0.9, "redistill.promote": False, "train.epochs": 1})
    rec = redistill(run, cfg)
    d = rec["data"]
    new_train = read_records(run / d["files"]["new_train"])
    assert d["old_train"] == 50 and d["new_train"] == len(new_train) < 450
    # 50 old examples and 450 new ones (0.9 of 500): whole copies of each new record, then a sample.
    assert d["trained_examples"] == 500 == rec["train"]["examples"] and d["new_share"] == 0.9
    copies = Counter(r.text for r in weighted(new_train, 50, 0.9, cfg.redistill.seed))
    assert set(copies) == {r.text for r in new_train} and set(copies.values()) == {450 // len(new_train),
                                                                                  450 // len(new_train) + 1}
    learnt = read_records(run / "redistill" / rec["challenger_id"] / "challenger_train.jsonl")
    assert len(learnt) == d["challenger_train"] == 50 + len(new_train)
    assert "the challenger trains on 500 examples, the new ones repeated to 90% of them" in capsys.readouterr().err
    # Another challenger than the one trained on each record once; a share the data already has changes nothing.
    assert rec["challenger_id"] != challenger_id(cfg, read_records(run / "train.jsonl") + new_train)
    assert weighted(new_train, 50, 0.5, 0) == new_train and weighted(new_train, 50, None, 0) == new_train


def test_failed_teacher_calls_are_named_not_passed_off_as_curation(served_run, tmp_path, capsys):
    # The replay teacher has no answer for these inputs, as a teacher with a revoked key has none for any.
    from potstill.errors import PotstillError
    from potstill.redistill import redistill

    unrecorded = sentences(NEW, 20, 7)
    recorded = {json.loads(line)["messages"][0]["content"] for line in (served_run / "recorded.jsonl").open()}
    unrecorded = [(t, topic) for t, topic in unrecorded if t not in recorded]
    assert len(unrecorded) >= 10

    # Every call failed: before, "no new training records left after curation (... rejected); serve more traffic".
    bare = tmp_path / "bare"
    _copy_original(served_run, bare, "calls.sqlite*")
    serve_traffic(bare, unrecorded, force_student=True)
    with pytest.raises(PotstillError) as e:
        redistill(bare, _cfg(bare, **{"redistill.student_sample": 1.0}))
    msg = str(e.value)
    assert "\n" not in msg and f"{len(unrecorded)} of {len(unrecorded)} teacher calls failed" in msg, msg
    assert "no recorded answer" in msg and "rerun" in msg
    assert not (bare / "students").exists()

    # Some failed: the challenger is trained on the rest, and one line says how many were left out
    # (before: nothing said it, and the new-traffic test quietly lost that share of the traffic).
    run = tmp_path / "run"
    _copy_original(served_run, run)
    serve_traffic(run, unrecorded, force_student=True)
    capsys.readouterr()
    rec = redistill(run, _cfg(run, **{"redistill.student_sample": 1.0}))
    assert rec["teacher"]["errors"] == len(unrecorded)
    lines = [line for line in capsys.readouterr().err.splitlines() if "teacher calls failed" in line]
    assert len(lines) == 1 and f"{len(unrecorded)} of " in lines[0] and "left out" in lines[0], lines


def test_an_unreadable_train_json_is_named_in_one_line(served_run, tmp_path, monkeypatch, capsys):
    # RUN/train.json cut short (a disk that filled, an edit): redistill stopped with json's traceback
    # after paying the teacher for the traffic, where every other unreadable file is one line; it is
    # now read with the run's other checks, before any teacher call.
    run = tmp_path / "run"
    _copy_original(served_run, run)
    with Ledger(run / "calls.sqlite") as ledger:
        rows = ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    (run / "train.json").write_text('{"base_model": "')
    assert _cli(monkeypatch, capsys, str(run)) == (
        f"error: {run / 'train.json'}: malformed JSON: a string opened at column 16 is never closed (missing '\"')")
    (run / "train.json").write_text('["not", "an object"]')
    assert _cli(monkeypatch, capsys, str(run)) == f"error: {run / 'train.json'}: expected a JSON object, got list"
    assert not (run / "students").exists()
    with Ledger(run / "calls.sqlite") as ledger:
        assert ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == rows  # no teacher call


def test_a_new_traffic_test_too_small_to_promote_stops_before_training(tmp_path, tiny_model):
    """With fewer new-traffic examples than redistill.min_new_test no challenger can be promoted, yet
    one was trained (minutes on a real student) before the decision said so; it stops first, and
    --no-promote (compare only) still trains and records the comparison."""
    from potstill.redistill import redistill

    run = build_run(tmp_path, tiny_model)
    serve_traffic(run, sentences(NEW, 110, 1))
    with pytest.raises(PotstillError, match=r"new-traffic test holds \d+ examples, under redistill.min_new_test 1000"):
        redistill(run, _cfg(run, **{"redistill.min_new_test": 1000}))
    assert not (run / "students").exists() and not list((run / "redistill").glob("*/student.training"))
    rec = redistill(run, _cfg(run, **{"redistill.min_new_test": 1000, "redistill.promote": False}))
    assert rec["promotion"] is None and rec["decision"]["reason"].startswith("new-traffic test too small")


def test_the_challengers_training_is_followed_live_in_mlflow(served_run, tmp_path, monkeypatch):
    """The challenger trains through the same ``train()`` as `potstill train`: while it trains, the
    redistill run is in MLflow, RUNNING, with every step before the current one; once the decision
    is made the same run, FINISHED, gets the decision's numbers and record. One run in all."""
    from potstill.redistill import redistill
    from tests.test_tracking import before_each_step, mlflow, mlflow_runs

    run = tmp_path / "run"
    _copy_original(served_run, run)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    seen = {}
    with before_each_step(lambda k: seen.update({k: mlflow_runs(run)})):
        rec = redistill(run, _cfg(run, **{"train.epochs": 1, "tracking": ["mlflow"]}))
    assert seen and sorted(seen) == list(range(1, len(seen) + 1))
    for k, runs in seen.items():
        ((name, status, params, steps),) = runs
        assert (name, status, params["train.lr"], steps) == ("run/redistill", "RUNNING", "0.003", list(range(1, k)))
    rows = [json.loads(ln) for ln in (run / "redistill" / rec["challenger_id"] / "metrics.jsonl").read_text().splitlines()]
    ((name, status, _, steps),) = mlflow_runs(run)
    assert (name, status, steps) == ("run/redistill", "FINISHED", [r["step"] for r in rows]) and len(rows) == len(seen)
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (r,) = client.search_runs([client.get_experiment_by_name("potstill").experiment_id])
    assert r.data.metrics["decision.promote"] == float(rec["decision"]["promote"])
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {f"{rec['id']}.json", "metrics.jsonl"}
