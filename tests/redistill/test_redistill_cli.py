"""`potstill redistill` as cron runs it, through the real CLI on a tiny served run: the exit code of
a kept champion, rollback to a challenger that lost, the run directory held against a concurrent
command, and the champion's base model named by another spelling of the same path."""

from __future__ import annotations

import json
import os

from potstill.ledger import Ledger
from tests.helpers.cli import run_main
from tests.helpers.run_lock import held_elsewhere
from tests.redistill.test_redistill import _copy_original


def _records(run) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "redistill").glob("*.json"))]


def test_a_kept_champion_exits_3_with_fail_on_keep(served_run, tmp_path, monkeypatch, capsys):
    """Found by an audit: `potstill redistill` exited 0 whether or not it promoted, so a cron job could
    not tell without reading the decision record. It still does by default (a champion kept is the
    rule working, not a failure); --fail-on-keep exits 3 when RUN/student is left as it was."""
    run = tmp_path / "run"
    _copy_original(served_run, run)
    # lr ~ 0: the challenger keeps the base weights, which are the champion's: no gain, kept.
    assert run_main(monkeypatch, capsys, "redistill", str(run), "--train.lr", "1e-12")[0] == 0
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "--train.lr", "1e-12", "--fail-on-keep")
    assert code == 3, err
    assert not (run / "student").is_symlink()
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "--fail-on-keep")
    assert code == 0, err
    promoted = _records(run)[-1]
    assert promoted["decision"]["promote"]
    assert (run / "student").resolve() == (run / "students" / promoted["challenger_id"]).resolve()
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", "original", "--fail-on-keep")
    assert code == 2 and err == ["error: --fail-on-keep judges a comparison; --rollback makes none"], err
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "--force")
    assert code == 2 and err == ["error: --force is for --rollback (to a challenger that lost its comparison)"], err


def test_a_challenger_that_lost_is_no_rollback_target_unless_forced(served_run, tmp_path, monkeypatch, capsys):
    """Found by an audit: `--rollback` pointed RUN/student at any student in RUN/students/, a challenger
    that lost its comparison and was never promoted too: the student the comparison had just refused
    went live with no word. It is refused in one line naming the decision record; --force does it."""
    from potstill.redistill import redistill
    from tests.redistill.test_redistill import _cfg

    run = tmp_path / "run"
    _copy_original(served_run, run)
    loser = redistill(run, _cfg(run, **{"train.lr": 1e-12}))
    assert not loser["decision"]["challenger_wins"]
    cid = loser["challenger_id"]
    capsys.readouterr()
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", cid)
    assert code == 2 and err == [
        f"error: students/{cid} lost its comparison with the champion (redistill/{loser['id']}.json: "
        f"{loser['decision']['reason']}) and was never promoted; pass --force to point RUN/student at it anyway"], err
    assert not (run / "student").is_symlink()
    assert run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", f"students/{cid}", "--force")[0] == 0
    assert (run / "student").resolve() == (run / "students" / cid).resolve()
    # The champion it replaced was never a challenger: back to it without --force.
    assert run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", "original")[0] == 0
    assert (run / "student").resolve() == (run / "students" / "original").resolve()


def test_redistill_and_rollback_are_refused_while_another_command_holds_the_run(served_run, tmp_path, monkeypatch,
                                                                                capsys):
    """Found by an audit: every stage holds the run directory (``rundir.exclusive``), but redistill took
    no lock: it trained a challenger, rewrote RUN/student and the manifest (the train stage's entry)
    under a running `potstill run` or a second cron redistill."""
    from potstill.redistill.promote import switch
    from tests.helpers.tiny import make_model_dir

    run = tmp_path / "run"
    _copy_original(served_run, run)
    make_model_dir(run / "students" / "b", seed=2)
    switch(run, run / "students" / "b")
    with Ledger(run / "calls.sqlite") as ledger:
        calls = ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    with held_elsewhere(run):
        for args in (("--rollback", "original"), ()):
            code, err = run_main(monkeypatch, capsys, "redistill", str(run), *args)
            assert code == 2 and len(err) == 1 and "another potstill command is running" in err[0], (args, err)
        assert os.readlink(run / "student") == os.path.join("students", "b")
        assert not (run / "redistill").exists()
    with Ledger(run / "calls.sqlite") as ledger:
        assert ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == calls  # no teacher call
    assert run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", "original")[0] == 0


def test_the_champions_base_named_by_another_spelling_of_its_path_is_the_same_base(served_run, tmp_path,
                                                                                   tiny_model, tiny_model_b,
                                                                                   monkeypatch, capsys):
    """Found by an audit: RUN/train.json's base_model and student.model were compared as strings, so
    the champion's own base written /a/./b, or through a symlink (RUN/potstill.yaml is saved with the
    path resolved, train.json keeps it as the user typed it) was refused as another model."""
    bare = tmp_path / "bare"
    _copy_original(served_run, bare, "calls.sqlite*")  # so that the check after the base's is the error
    link = tmp_path / "models"
    link.symlink_to(tiny_model.parent, target_is_directory=True)
    missing = f"error: {bare / 'calls.sqlite'} not found: no served traffic (serve the student with `potstill serve` first)"
    for base in (f"{tiny_model.parent}/./{tiny_model.name}", str(link / tiny_model.name)):
        (bare / "train.json").write_text(json.dumps({"base_model": base}))
        assert run_main(monkeypatch, capsys, "redistill", str(bare)) == (2, [missing]), base
    (bare / "train.json").write_text(json.dumps({"base_model": str(tiny_model_b)}))
    code, err = run_main(monkeypatch, capsys, "redistill", str(bare))
    assert code == 2 and err == [f"error: redistill: the champion was trained from {tiny_model_b} but student.model "
                                 f"is {tiny_model}: a challenger must start from the champion's base (pass -c with "
                                 "the run's config)"], err


def test_a_manifest_that_cannot_be_read_is_refused_before_the_teacher_is_asked(served_run, tmp_path, monkeypatch,
                                                                               capsys):
    """Found by a review: redistill paid the teacher, trained the challenger, then switched RUN/student to it
    and failed on the manifest (exit 2, no decision record), the new student served all the same. A
    promotion must record itself in the manifest: one that cannot be read is refused first."""
    run = tmp_path / "run"
    _copy_original(served_run, run)
    (run / "manifest.json").write_text('{"stages": {')
    with Ledger(run / "calls.sqlite") as ledger:
        calls = ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    code, err = run_main(monkeypatch, capsys, "redistill", str(run))
    assert code == 2 and len(err) == 1 and f"{run / 'manifest.json'}: not valid JSON" in err[0], err
    assert not (run / "student").is_symlink()
    assert not (run / "students").exists() and not (run / "redistill").exists()
    with Ledger(run / "calls.sqlite") as ledger:
        assert ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == calls  # no teacher call


def test_a_config_with_another_task_is_refused_before_the_teacher_is_asked(served_run, tmp_path, monkeypatch,
                                                                           capsys):
    """Found by a review: `redistill -c` with another task.instruction trained the challenger and compared
    both students under an instruction the champion never saw, and promoted on that, exit 0. Only
    student.model was compared with the run's."""
    import yaml

    run = tmp_path / "run"
    _copy_original(served_run, run)
    data = yaml.safe_load((run / "potstill.yaml").read_text())
    data["task"]["instruction"] = "translate the text to French"
    data["teacher"]["replay_path"] = str(run / "recorded.jsonl")  # the rest as the run's: only the task differs
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    with Ledger(run / "calls.sqlite") as ledger:
        calls = ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "-c", str(other))
    assert code == 2 and err == [
        'error: redistill: task.instruction is "translate the text to French" in the config but "classify the text" '
        f"in {run / 'potstill.yaml'}, the task RUN/student was trained for; give -c a config with the run's task, "
        "or none"], err
    assert not (run / "redistill").exists() and not (run / "student").is_symlink()
    with Ledger(run / "calls.sqlite") as ledger:
        assert ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == calls  # no teacher call


def test_a_student_whose_weights_cannot_load_is_refused_before_anything_is_moved_or_paid(served_run, tmp_path,
                                                                                          monkeypatch, capsys):
    """Found by a review: a kept student whose model.safetensors was cut short (a full disk, a copy
    stopped half-way) was accepted by `--rollback` (exit 0), though a running server refused it and kept
    the old one, so RUN/student no longer named the model serving. The next redistill then paid the
    teacher and trained a challenger before it died loading that champion (a traceback, exit 1, no
    decision record), and `potstill serve` crashed at start the same way. Each is now one line, exit 2."""
    import shutil

    from potstill.redistill.promote import switch

    run = tmp_path / "run"
    _copy_original(served_run, run)
    broken = run / "students" / "broken"
    shutil.copytree(run / "student", broken)
    os.truncate(broken / "model.safetensors", 1000)
    cut = "model.safetensors: SafetensorError: Error while deserializing header: invalid header length"
    code, err = run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", "broken")
    assert code == 2 and err == [f"error: cannot load {broken}: {cut}; RUN/student left as it was"], err
    assert not (run / "student").is_symlink()

    # RUN/student pointed at it all the same (as an older version's rollback did): redistill stops
    # before the teacher is asked or a challenger trained.
    switch(run, broken)
    with Ledger(run / "calls.sqlite") as ledger:
        calls = ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    code, err = run_main(monkeypatch, capsys, "redistill", str(run))
    assert code == 2 and err == [f"error: cannot load the champion {broken}: {cut}; roll RUN/student back to a kept "
                                 f"student (`potstill redistill {run} --rollback ID`) or train again"], err
    assert sorted(p.name for p in (run / "students").iterdir()) == ["broken", "original"]
    assert not (run / "redistill").exists()
    with Ledger(run / "calls.sqlite") as ledger:
        assert ledger._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == calls  # no teacher call

    # And `potstill serve` says it in one line (the port is taken first, then given back).
    code, err = run_main(monkeypatch, capsys, "serve", str(run), "--port", "0")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot load {broken}: SafetensorError"), err

    assert run_main(monkeypatch, capsys, "redistill", str(run), "--rollback", "original")[0] == 0
    assert (run / "student").resolve() == (run / "students" / "original").resolve()
