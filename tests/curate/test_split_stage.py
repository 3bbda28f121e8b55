"""Splits (stratified, seeded, stable) and the curate stage on disk (card, review reruns it)."""

from __future__ import annotations

import json
from collections import Counter

from potstill.config import Config
from potstill.curate import curate
from potstill.curate.stage import curate_stage
from potstill.records import Record, read_records, write_jsonl
from potstill.review.store import ReviewStore
from tests.curate.test_filters import LABELS, _words, rec


def records(n: int, offset: int = 0) -> list[Record]:
    # Unbalanced on purpose: 60% sports, 30% tech, 10% politics; two slices.
    out = []
    for i in range(offset, offset + n):
        label = "sports" if i % 10 < 6 else "tech" if i % 10 < 9 else "politics"
        out.append(rec(_words(1000 + i), label, slice=["long" if i % 3 else "short"]))
    return out


def ids(rs: list[Record]) -> set[str]:
    return {r.id for r in rs}


def test_count_splits_are_stratified_by_label_and_slice():
    rs = records(300)
    c = curate(Config(task={"labels": LABELS}, curate={"val": 30, "test": 60}), rs)
    assert (len(c.train), len(c.val), len(c.test)) == (210, 30, 60)
    whole = Counter((r.output, r.slice[0]) for r in rs)
    test = Counter((r.output, r.slice[0]) for r in c.test)
    for stratum, n in whole.items():
        assert abs(test[stratum] - n * 60 / 300) < 1, (stratum, test[stratum], n)


def test_fraction_splits_are_reproducible_seeded_and_stable_when_records_arrive():
    config = Config(task={"labels": LABELS}, curate={"val": 0.1, "test": 0.2, "seed": 7})
    first = curate(config, records(200))
    again = curate(config, records(200))
    assert [r.id for r in first.test] == [r.id for r in again.test]
    other_seed = curate(config.model_copy(update={"curate": config.curate.model_copy(update={"seed": 8})}), records(200))
    assert ids(other_seed.test) != ids(first.test)
    grown = curate(config, records(200) + records(100, offset=200))
    # Every old record keeps its split: a trained-on input never becomes a test input later.
    assert ids(first.test) <= ids(grown.test) and ids(first.train) <= ids(grown.train) and ids(first.val) <= ids(grown.val)
    assert 0.12 < len(grown.test) / 300 < 0.28


def test_a_new_record_can_move_another_strata_record_only_in_count_mode():
    """split.py and the README said a new record moves at most the boundary records of its own stratum
    (count mode) and never moves a record (README, any mode). Counts are split over strata by largest
    remainder, so one more record in one stratum changes another's quota: 100, 100 and 150 records with
    test 50 give 14, 14, 22, one more in the first 15, 14, 21. What the docs now say, pinned: in count
    mode only the records nearest a stratum's cut move, in fraction mode none."""
    from potstill.curate.split import rank, split

    base = [rec(f"{lab} text {i}", lab) for lab, n in (("a", 100), ("b", 100), ("c", 150)) for i in range(n)]
    grown = base + [rec("a text NEW", "a")]

    def where(rs: list[Record], test: float) -> dict[str, str]:
        tr, va, te = split(rs, val=0, test=test, seed=0, stratum=lambda r: r.output)
        return {r.text: name for name, part in (("train", tr), ("val", va), ("test", te)) for r in part}

    before, after = where(base, 50), where(grown, 50)
    moved = [t for t in before if before[t] != after[t]]
    assert moved and {t.split()[0] for t in moved} == {"c"}  # the new record is an "a"
    cs = sorted((r for r in base if r.output == "c"), key=lambda r: rank(r.text, 0))
    assert [r.text for r in cs].index(moved[0]) == 21  # c's 22nd lowest hash: the one its quota no longer reaches
    assert where(base, 0.15) == {t: s for t, s in where(grown, 0.15).items() if t in before}


def _project(tmp_path, n=60) -> Config:
    run = tmp_path / "run"
    rows = records(n)
    rows[0] = rec(rows[0].text, "weather")  # one invalid teacher answer
    rows.append(rec(rows[1].text.upper(), rows[1].output))  # one exact duplicate
    write_jsonl(run / "teacher.jsonl", rows)
    return Config(run_dir=str(run), task={"labels": LABELS}, curate={"val": 5, "test": 10},
                  teacher={"model": "tiny-teacher", "terms": "Teacher terms: outputs may train other models."},
                  data={"source": "crafted headlines", "license": "CC0"})


def test_stage_writes_card_and_a_review_decision_reruns_it(tmp_path):
    cfg = _project(tmp_path)
    run = tmp_path / "run"
    out = curate_stage(cfg)
    assert not out["skipped"] and out["invalid"] == 1 and out["duplicates_exact"] == 1
    card = json.loads((run / "card.json").read_text())
    md = (run / "card.md").read_text()
    for text in ("## Counts at each step", "| duplicates_exact | 1 |", "| invalid | 1 |", "## Label distribution",
                 "Teacher terms of use: Teacher terms: outputs may train other models.",
                 "crafted headlines; licence: CC0", "## Review decisions"):
        assert text in md, text
    assert card["review_decisions"] is None
    assert curate_stage(cfg)["skipped"]

    target = read_records(run / "train.jsonl")[0]
    with ReviewStore(run / "review.sqlite") as store:
        store.decide(target.id, "reject", teacher_output=target.output)
    out = curate_stage(cfg)
    assert not out["skipped"] and out["review_rejected"] == 1
    assert target.id not in ids(read_records(run / "train.jsonl"))
    rejected = {r.id: r.invalid_reason for r in read_records(run / "rejected.jsonl")}
    assert rejected[target.id] == "review: rejected by a reviewer"
    card = json.loads((run / "card.json").read_text())
    assert card["review_decisions"] == {"decisions": 1, "accept": 0, "reject": 1, "relabel": 0, "edit": 0,
                                      "teacher_error_rate": 1.0}


def test_stage_fails_in_one_line_and_writes_nothing_when_nothing_is_left(tmp_path):
    import pytest

    from potstill.errors import PotstillError

    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [rec("x", "weather"), rec("y", "rain")])
    with pytest.raises(PotstillError, match=r"^curate: no training records left: input=2, invalid=2; rejected: answer "
                                            r"outside the label set \(2\)$"):
        curate_stage(Config(run_dir=str(run), task={"labels": LABELS}))
    assert sorted(p.name for p in run.iterdir()) == ["teacher.jsonl"]
    # Valid answers, all of them held out by the test split: the message says so.
    write_jsonl(run / "teacher.jsonl", [rec(f"text {i}", LABELS[i % len(LABELS)]) for i in range(4)])
    with pytest.raises(PotstillError, match=r"no training records left \(curate.val and curate.test took them all\)"):
        curate_stage(Config(run_dir=str(run), task={"labels": LABELS}, curate={"val": 0, "test": 1000}))
    assert sorted(p.name for p in run.iterdir()) == ["teacher.jsonl"]


def test_an_empty_teacher_file_is_named(tmp_path):
    # It said "curate: no training records left: " and nothing after the colon (every count was 0).
    import pytest

    from potstill.errors import PotstillError

    run = tmp_path / "run"
    run.mkdir()
    (run / "teacher.jsonl").write_text("\n")
    with pytest.raises(PotstillError, match=r"teacher.jsonl holds no records: run `potstill generate` \(it writes one per input\)$"):
        curate_stage(Config(run_dir=str(run), task={"labels": LABELS}))
    assert sorted(p.name for p in run.iterdir()) == ["teacher.jsonl"]


def test_an_empty_real_data_file_is_named_not_mixed_in_as_nothing(tmp_path):
    """A curate.real_data file with no records (a failed export, a header-only CSV) mixed nothing in
    and said nothing: the run trained on teacher answers alone while its config named real data."""
    import pytest

    from potstill.errors import PotstillError

    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [rec(_words(i), "sports") for i in range(6)])
    (tmp_path / "real.csv").write_text("input,label\n")
    with pytest.raises(PotstillError, match=r"curate.real_data .*real.csv holds no records; fill it, or unset"):
        curate_stage(Config(run_dir=str(run), task={"labels": LABELS}, curate={"real_data": str(tmp_path / "real.csv")}))
    assert sorted(p.name for p in run.iterdir()) == ["teacher.jsonl"]


def test_a_served_students_own_answers_are_refused_as_real_data(tmp_path):
    """`potstill import calls.sqlite` keeps every served answer with who wrote it (meta.role); as
    curate.real_data the student's own answers were mixed into train as people's labels, so the next
    student learnt the last one's mistakes. The teacher's escalations there stay usable."""
    import pytest

    from potstill.errors import PotstillError
    from potstill.importers import import_traffic
    from potstill.ledger import Ledger, ServedCall

    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [rec(_words(i), "sports") for i in range(6)])
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        for who, text, label in (("teacher", "the vote in the election", "politics"),
                                 ("student", "a new phone and its software", "sports")):
            ledger.record_served(ServedCall(request={"model": "potstill", "messages": [{"role": "user", "content": text}]},
                                            answered_by=who, model=who, content=label, finish_reason="stop"))
    import_traffic(tmp_path / "calls.sqlite", tmp_path / "served.jsonl")
    cfg = Config(run_dir=str(run), task={"labels": LABELS}, curate={"real_data": str(tmp_path / "served.jsonl")})
    with pytest.raises(PotstillError, match=r"served.jsonl: 1 of 2 records are answers the served student wrote "
                                            r"itself \(meta.role student; the first from ledger row 2\), not labels"):
        curate_stage(cfg)
    assert sorted(p.name for p in run.iterdir()) == ["teacher.jsonl"]
    teacher_only = [r for r in read_records(tmp_path / "served.jsonl") if r.meta["role"] == "teacher"]
    write_jsonl(tmp_path / "served.jsonl", teacher_only)
    curate_stage(cfg)


def test_the_counts_add_up_to_the_input_when_max_train_caps_train():
    """curate.max_train cut train to its cap and the cut records went nowhere: the counts (and the card)
    said input=20 ... train=3, val=5, test=4, and 8 records were neither kept nor set aside."""
    rs = records(20) + [rec("a match", "weather"), rec(_words(1000).upper(), "sports")]
    c = curate(Config(task={"labels": LABELS}, curate={"val": 0.2, "test": 0.2, "max_train": 3}), rs)
    n = c.card["counts"]
    assert len(c.train) == n["train"] == 3
    assert n["over_max_train"] > 0
    assert n["input"] == (n["review_rejected"] + n["invalid"] + n["inconsistent"] + n["duplicates"]
                          + n["over_max_train"] + n["train"] - n["real_added"] + n["val"] + n["test"])


def test_a_write_that_fails_midway_leaves_the_previous_split_whole(tmp_path, monkeypatch):
    """Each file was replaced as soon as it was written: a failure while writing test.jsonl (a full
    disk) left the new train.jsonl beside the old test.jsonl, and after a change of split (here the
    seed) records sat in both; `potstill train` and `evaluate` read that mix. Now every file is
    written first and none replaces its old one unless all were written."""
    import pytest

    cfg = _project(tmp_path)
    run = tmp_path / "run"
    curate_stage(cfg)
    before = {n: (run / n).read_bytes() for n in ("train.jsonl", "val.jsonl", "test.jsonl", "card.json")}
    reseeded = cfg.model_copy(update={"curate": cfg.curate.model_copy(update={"seed": 5})})
    new_test = ids(curate(reseeded, read_records(run / "teacher.jsonl")).test)
    assert new_test != ids(read_records(run / "test.jsonl"))
    dump = Record.model_dump_json

    def full_disk(self, **kw):
        if self.id in new_test:
            raise OSError(28, "No space left on device")
        return dump(self, **kw)

    monkeypatch.setattr(Record, "model_dump_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        curate_stage(reseeded)
    assert {n: (run / n).read_bytes() for n in before} == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_real_examples_own_system_message_is_kept_in_meta_not_trained_on(tmp_path, capsys):
    """data.inputs' system and developer messages go to meta.system (serve drops a client's, so the
    student must not learn to read one), but curate.real_data's stayed in the messages: the student
    trained on a second system prompt after task.instruction that no served request carries."""
    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [rec(_words(i), "sports") for i in range(8)])
    real = [Record(messages=[{"role": "system", "content": "You label news."},
                             {"role": "developer", "content": "One word."},
                             {"role": "user", "content": _words(200)}], label="tech"),
            rec(_words(201), None, label="politics")]
    write_jsonl(tmp_path / "real.jsonl", real)
    curate_stage(Config(run_dir=str(run), task={"labels": LABELS},
                        curate={"real_data": str(tmp_path / "real.jsonl"), "real_ratio": 1.0}))
    mixed = [r for r in read_records(run / "train.jsonl") if r.meta.get("source") == "real"]
    assert len(mixed) == 2 and all([m["role"] for m in r.messages] == ["user"] for r in mixed)
    moved = next(r for r in mixed if r.output == "tech")
    assert moved.meta["system"] == "You label news.\n\nOne word." and moved.text == _words(200)
    said = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 'real.jsonl'}: 1 of 2 records have a system or developer message; it is kept in meta.system" in said


def test_imported_records_with_their_own_system_prompts_are_said_at_import_and_at_curate(tmp_path, capsys):
    """`potstill import` moves a logged system prompt to meta.system without a word, and curate's
    warning counted only system messages still in the messages, so a log answered under five other
    prompts ("Reply in French.") was trained on under task.instruction, unsaid. Import says how many
    records hold one and how many prompts; curate (and generate, for data.inputs) counts those whose
    meta.system is not task.instruction (the same prompt is no news)."""
    from potstill.importers import import_traffic
    from potstill.inputs import InputFile

    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [rec(_words(i), "sports") for i in range(8)])
    asked = [("You label news.", 200), ("Reply in French.", 201), ("Classify the text.", 202), (None, 203)]
    log = tmp_path / "log.jsonl"
    lines = [{"prompt": [*([{"role": "system", "content": p}] if p else []), {"role": "user", "content": _words(i)}],
              "completion": "tech"} for p, i in asked]
    lines.insert(1, {"prompt": "a line skipped", "response": None, "error": "Connection error."})  # not a record
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    import_traffic(log, tmp_path / "real.jsonl")
    said = " ".join(capsys.readouterr().err.split())
    assert f"{log}: 3 of 4 records have a system or developer message (3 different); it is kept in meta.system" in said
    cfg = Config(run_dir=str(run), data={"inputs": str(tmp_path / "real.jsonl")}, task={"labels": LABELS},
                 curate={"real_data": str(tmp_path / "real.jsonl"), "real_ratio": 1.0})
    assert cfg.task.instruction == "Classify the text."
    curate_stage(cfg)
    InputFile(cfg)
    said = " ".join(capsys.readouterr().err.split())
    assert said.count(f"{tmp_path / 'real.jsonl'}: 2 of 4 records have a system or developer message (2 different); "
                      "it is kept in meta.system") == 2, said


def test_a_review_store_from_an_earlier_potstill_reruns_curate_once(tmp_path):
    """curate hashed review.sqlite, then its store migrated the file (schema 1 -> 2 rebuilds the table),
    so the digest marked done was the old file's and the next curate ran again for nothing."""
    import sqlite3

    from potstill.review.store import MIGRATIONS

    cfg = _project(tmp_path)
    run = tmp_path / "run"
    curate_stage(cfg)
    target = read_records(run / "train.jsonl")[0]
    db = sqlite3.connect(run / "review.sqlite")  # a store as potstill wrote it before `edit` (schema 1)
    db.execute(MIGRATIONS[0])
    db.execute("CREATE TABLE _migrations (id INTEGER PRIMARY KEY, applied_at REAL)")
    db.execute("INSERT INTO _migrations VALUES (1, 0)")
    db.execute("INSERT INTO decisions VALUES (?, 'reject', NULL, ?, '2026-12-01T00:00:00Z')", (target.id, target.output))
    db.commit()
    db.close()
    out = curate_stage(cfg)
    assert not out["skipped"] and out["review_rejected"] == 1
    assert curate_stage(cfg)["skipped"]


def test_a_fraction_keeps_one_record_where_its_threshold_took_none():
    """The openai-tools preset's 12 requests at curate.val 0.1 split 10/0/2: serve then had no val to
    calibrate on. A split whose fraction is above 0 keeps one record, the train record of lowest hash;
    the rest stays by threshold, and a larger set that fills the split by threshold takes it back."""
    from potstill.curate.split import rank, split

    rs = [rec(_words(2000 + i), "sports") for i in range(40)]
    # 12 records none of whose hashes fall in val's [test, test + val) = [0.2, 0.3) at seed 0
    few = [r for r in rs if not 0.2 <= rank(r.text, 0) < 0.3][:12]
    tr, va, te = split(few, 0.1, 0.2, 0)
    by_threshold = [r for r in few if rank(r.text, 0) >= 0.3]
    assert len(va) == 1 and len(tr) == len(by_threshold) - 1  # before: val empty
    assert va[0] is min(by_threshold, key=lambda r: rank(r.text, 0))
    assert ids(te) == {r.id for r in few if rank(r.text, 0) < 0.2}
    # Both splits empty by threshold: test first, then val, both from train; train keeps one.
    assert [len(x) for x in split(by_threshold[:1], 0.1, 0.2, 0)] == [1, 0, 0]
    tr, va, te = split(by_threshold[:3], 0.1, 0.2, 0)
    assert (len(tr), len(va), len(te)) == (1, 1, 1)
    # 0 asks for none.
    assert len(split(few, 0.0, 0.2, 0)[1]) == 0
