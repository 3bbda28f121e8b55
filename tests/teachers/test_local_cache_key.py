"""A local teacher's ledger key names its weights by content, not by the path the config spells:
a relative `teacher.model` (or a config loaded by a relative `-c`) and the absolute path to the same
folder found each other's answers missing, and the teacher was asked everything again."""

from __future__ import annotations

import shutil

from potstill.config import load_config
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import Record
from potstill.teachers.local import LocalTeacher

TASK = {"type": "classification", "labels": ["sports", "tech", "politics"]}
RECORDS = [Record(messages=[{"role": "user", "content": f"the cup final number {i}"}]) for i in range(3)]


def _run(ledger: Ledger, model: str):
    cfg = load_config(overrides={"task": TASK, "teacher": {"type": "local", "model": model, "batch_size": 4}})
    return run_generate(cfg, RECORDS, ledger)


def test_the_same_folder_by_another_path_is_answered_from_the_cache(tmp_path, tiny_model, monkeypatch):
    shutil.copytree(tiny_model, tmp_path / "project" / "teacher")
    (tmp_path / "elsewhere").mkdir()
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        monkeypatch.chdir(tmp_path / "project")
        out, first = _run(ledger, "./teacher")
        monkeypatch.chdir(tmp_path / "elsewhere")
        again, by_abs = _run(ledger, str(tmp_path / "project" / "teacher"))
        _, by_other = _run(ledger, "../project/teacher")
    assert (first.calls, by_abs.calls, by_other.calls) == (3, 0, 0)
    assert by_abs.cache_hits == by_other.cache_hits == 3
    assert [r.output for r in again] == [r.output for r in out]


def test_answers_cached_under_the_path_as_written_are_still_found(tmp_path, tiny_model, monkeypatch):
    """Rows written before the key changed (keyed by the path string) answer the same run still."""
    teacher = str(shutil.copytree(tiny_model, tmp_path / "teacher"))
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        with monkeypatch.context() as m:
            m.setattr(LocalTeacher, "identity", LocalTeacher.former_identity)  # the key as it was
            _, old = _run(ledger, teacher)
        _, now = _run(ledger, teacher)
        _, again = _run(ledger, teacher)
    assert (old.calls, now.calls, now.cache_hits, again.calls) == (3, 0, 3, 0)
