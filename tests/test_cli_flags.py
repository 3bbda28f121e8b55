"""What a ``--section.field VALUE`` flag sets: the CLI run in-process (``potstill.cli.main``) over a
real run directory, the result read back from the run's saved potstill.yaml and its artifacts."""

from __future__ import annotations

import sys

import pytest
import yaml

from potstill.cli import main
from potstill.records import read_records, write_jsonl
from tests.curate.test_filters import rec

CONFIG = "task:\n  labels: [a, b]\nrun_dir: run\nteacher:\n  type: openai\n  model: x\n"


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["potstill", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def curated(tmp_path, monkeypatch):
    """A run whose teacher.jsonl `potstill curate` can split without any model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG)
    write_jsonl(tmp_path / "run" / "teacher.jsonl",
                [rec(f"text number {i} " + "word " * i, "ab"[i % 2]) for i in range(12)] + [rec("the odd one", "b")])
    return tmp_path


def test_text_fields_take_the_text_as_written(curated, monkeypatch, capsys):
    """A text field's value is text even where YAML reads it as something else: 'Terms: none' is a
    mapping, '[ab]' a list, '# x' a comment (null) and '' null; they were refused as 'Input should be
    a valid string', so `--api-key-env ''` (what serve's own error suggests) could not be given."""
    code, err = _cli(monkeypatch, capsys, "curate", "-c", "c.yaml", "--teacher.terms", "Terms: none",
                     "--curate.output_regex", "[a]", "--data.source", "# inbox", "--data.license", "",
                     "--curate.val", "0", "--curate.test", "0", "--curate.near_dup", "false")
    assert code in (0, None), err
    saved = yaml.safe_load((curated / "run" / "potstill.yaml").read_text())
    assert saved["teacher"]["terms"] == "Terms: none"
    assert (saved["curate"]["output_regex"], saved["data"]["source"], saved["data"]["license"]) == ("[a]", "# inbox", "")
    assert {r.output for r in read_records(curated / "run" / "train.jsonl")} == {"a"}  # the regex did filter
    # A quoted value is still YAML's (its quotes go), and null unsets a field that may be unset.
    _cli(monkeypatch, capsys, "curate", "-c", "c.yaml", "--teacher.terms", "'yes'", "--curate.output_regex", "null",
         "--curate.val", "0", "--curate.test", "0", "--curate.near_dup", "false")
    saved = yaml.safe_load((curated / "run" / "potstill.yaml").read_text())
    assert (saved["teacher"]["terms"], saved["curate"]["output_regex"]) == ("yes", None)
