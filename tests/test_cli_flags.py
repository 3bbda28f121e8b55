"""What a ``--section.field VALUE`` flag sets: the CLI run in-process (``potstill.cli.main``) over a
real run directory, the result read back from the run's saved potstill.yaml and its artifacts."""

from __future__ import annotations

import sys

import pytest
import yaml

from potstill.cli import main
from potstill.records import read_records, write_jsonl
from tests.curate.test_filters import rec
from tests.helpers.cli import run_main

CONFIG = "task:\n  labels: [a, b]\nrun_dir: run\nteacher:\n  type: openai\n  model: x\n"


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
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--teacher.terms", "Terms: none",
                     "--curate.output_regex", "[a]", "--data.source", "# inbox", "--data.license", "",
                     "--curate.val", "0", "--curate.test", "0", "--curate.near_dup", "false")
    assert code in (0, None), err
    saved = yaml.safe_load((curated / "run" / "potstill.yaml").read_text())
    assert saved["teacher"]["terms"] == "Terms: none"
    assert (saved["curate"]["output_regex"], saved["data"]["source"], saved["data"]["license"]) == ("[a]", "# inbox", "")
    assert {r.output for r in read_records(curated / "run" / "train.jsonl")} == {"a"}  # the regex did filter
    # A quoted value is still YAML's (its quotes go), and null unsets a field that may be unset.
    run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--teacher.terms", "'yes'", "--curate.output_regex", "null",
         "--curate.val", "0", "--curate.test", "0", "--curate.near_dup", "false")
    saved = yaml.safe_load((curated / "run" / "potstill.yaml").read_text())
    assert (saved["teacher"]["terms"], saved["curate"]["output_regex"]) == ("yes", None)


def test_serve_and_redistill_take_a_flag_for_each_field_they_read(tmp_path, monkeypatch, capsys):
    """README: every config command takes a flag for each config field it reads. serve escalates to
    the teacher, prices the student and polls for promotions (redistill.reload_poll_s); redistill asks
    the teacher under generate's budget, curates and trains: those flags were 'No such option', so
    `potstill redistill RUN --generate.budget_usd 5` could not cap the spend without editing the
    run's saved config. Each value below is out of range, so the error shows it reached the config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "potstill.yaml").write_text(CONFIG.replace("run_dir: run", "run_dir: ."))
    cases = {"serve": [("--teacher.timeout_s", "0", "teacher.timeout_s: Input should be greater than 0"),
                       ("--student.usd_per_hour", "-1", "student.usd_per_hour: Input should be greater than or equal to 0"),
                       ("--redistill.reload_poll_s", "-1", "redistill.reload_poll_s: Input should be greater than or equal to 0")],
             "redistill": [("--generate.budget_usd", "-1", "generate.budget_usd: Input should be greater than or equal to 0"),
                           ("--train.lr", "0", "train.lr: Input should be greater than 0"),
                           ("--curate.min_agreement", "2", "curate.min_agreement: Input should be less than or equal to 1"),
                           ("--teacher.max_tokens", "0", "teacher.max_tokens: Input should be greater than or equal to 1")]}
    for command, flags in cases.items():
        for flag, value, why in flags:
            code, err = run_main(monkeypatch, capsys, command, "run", flag, value)
            # Named by the flag that set it (run/potstill.yaml holds a valid value), the value not repeated.
            assert (code, err) == (2, [f"error: {flag}: {why.split(': ', 1)[1]}"]), (command, flag)
    # The task is the trained student's: not a flag of serve (changing it there would serve another task).
    code, err = run_main(monkeypatch, capsys, "serve", "run", "--task.labels", "[x, y]")
    assert code == 2 and any("No such option: --task.labels" in line for line in err)


def test_field_help_is_shown_whole_with_its_type_and_default(monkeypatch, capsys):
    """A flag's help is its field's description, rendered by rich: text in brackets was read as markup
    and dropped, so the engine help said `pip install 'potstill'` (the extra [ctranslate2] gone), and
    the type appended as [int], [float], [str] or [bool] vanished while a choice showed [Literal]."""
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setattr(sys, "argv", ["potstill", "generate", "--help"])
    with pytest.raises(SystemExit):
        main()
    lines = {line.split()[1]: " ".join(line.split()) for line in capsys.readouterr().out.splitlines()
             if line.startswith("│ --")}
    assert "pip install 'potstill[ctranslate2]'" in lines["--teacher.engine"]
    assert lines["--teacher.logprobs"].endswith("Top-k log-probabilities to request per output token (0: none). "
                                                "[int; default 0] │")
    assert "[chat | completion; default chat]" in lines["--teacher.prompt_format"]
    assert "[float | auto; default auto]" in lines["--teacher.recheck_margin"]
    assert "[text or null; default null]" in lines["--teacher.base_url"]
    assert "[list of text; default []]" in lines["--teacher.stop"]
    assert "[int or null; default null]" in lines["--generate.rpm"]
    # A run-directory command's defaults are the run's saved config, not the built-in ones: none shown.
    monkeypatch.setattr(sys, "argv", ["potstill", "serve", "--help"])
    with pytest.raises(SystemExit):
        main()
    port = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines() if "--serve.port" in line]
    assert port[0].endswith("(0: any free port). (short: --port) [int] │")  # --port is its own hidden option


def test_a_list_flag_given_one_word_is_a_one_item_list(curated, monkeypatch, capsys):
    """`--tracking mlflow` (one tracker, as TRL's `--report_to wandb` is given) was refused with
    'Input should be a valid list': a list field now takes a single value as a one-item list,
    and a YAML list, `[]` or null as before."""
    from potstill.config import Config
    from potstill.cli_flags import flag_value as _flag_value

    ann = Config.model_fields["tracking"].annotation
    assert _flag_value("tracking", "mlflow", ann) == ["mlflow"]
    assert _flag_value("tracking", "[mlflow, wandb]", ann) == ["mlflow", "wandb"]
    assert _flag_value("tracking", "[]", ann) == []
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--task.labels", "spam")
    assert code == 2 and len(err) == 1 and "--task.labels: needs at least two labels" in err[0]
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--task.type", "freetext", "--task.labels", "spam",
                     "--curate.val", "0", "--curate.test", "0", "--curate.near_dup", "false")
    assert code in (0, None), err
    assert yaml.safe_load((curated / "run" / "potstill.yaml").read_text())["task"]["labels"] == ["spam"]


def test_a_saved_config_that_no_longer_loads_is_kept_aside_not_overwritten(curated, monkeypatch, capsys):
    """RUN/potstill.yaml records the settings each stage last ran with. One that no longer loaded (a
    hand edit, a field of another potstill version) was silently replaced by the current command's
    config, losing the other stages' settings; it is now moved aside to potstill.yaml.broken (its
    text whole) and one warning line says so."""
    saved = curated / "run" / "potstill.yaml"
    saved.parent.mkdir(exist_ok=True)
    # As potstill wrote it (a headerless file is the user's own, never written over: test_cli_errors).
    old = "# Written by potstill\nrun_dir: .\ntask:\n  labels: [a, b]\ntrain:\n  lr: 0.0003\n  learning_rat: 0.1\n"
    saved.write_text(old)
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--curate.val", "0", "--curate.test", "0",
                     "--curate.near_dup", "false")
    assert code in (0, None), err
    assert (curated / "run" / "potstill.yaml.broken").read_text() == old
    assert yaml.safe_load(saved.read_text())["curate"]["val"] == 0
    warned = [line for line in err if "potstill.yaml.broken" in line]
    assert len(warned) == 1 and "train.learning_rat" in warned[0]
    # A second broken file does not replace the first one kept aside.
    saved.write_text(old + "oops: 1\n")
    run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--curate.val", "0", "--curate.test", "0",
         "--curate.near_dup", "false", "--force")
    assert (curated / "run" / "potstill.yaml.broken").read_text() == old
    assert (curated / "run" / "potstill.yaml.broken.1").read_text() == old + "oops: 1\n"


def test_a_stage_that_fails_leaves_no_run_directory_it_created(curated, monkeypatch, capsys):
    """`curate --run_dir new/sub` with no new/sub/teacher.jsonl failed in one line but left empty
    new/ and new/sub/ behind, which looked like a run that had started. The folders a failing stage
    created are removed when they are still empty; a run directory that already existed stays."""
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--run_dir", "new/sub")
    assert code == 2 and len(err) == 1 and "teacher.jsonl" in err[0]
    assert not (curated / "new").exists()
    (curated / "empty").mkdir()
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--run_dir", "empty")
    assert code == 2 and (curated / "empty").is_dir()


def test_synthesize_with_a_teacher_it_cannot_make_leaves_no_run_directory(curated, monkeypatch, capsys):
    """synthesize opened RUN/calls.sqlite before it made its teacher, so a teacher that cannot be made
    (an unknown plugin, a local one with no model) failed in one line but left a new run directory
    holding an empty ledger, which the stage's clean-up keeps (it removes only empty folders). The
    teacher is now made first, as generate's is."""
    for flags in (["--teacher.type", "nonsense"], ["--teacher.type", "local", "--teacher.model", ""]):
        code, err = run_main(monkeypatch, capsys, "synthesize", "-c", "c.yaml", "--run_dir", "fresh", *flags)
        assert code == 2 and len(err) == 1, err
        assert not (curated / "fresh").exists(), (flags, err)


def test_a_list_of_text_flag_given_one_value_takes_the_text_as_written(curated, monkeypatch, capsys):
    """A one-value list flag was read as YAML and then wrapped, so a stop sequence a completion
    teacher commonly needs failed: `--teacher.stop 'Q:'` is a YAML mapping and `--teacher.stop '###'`
    a comment (null), both refused as 'Input should be a valid list'; `--task.labels yes` became
    [true]. One value of a list of text is now that text, as a text field's is; a value opening
    with [ is still a YAML list, and a quoted one is still YAML's ('"\\n\\n"' is two line breaks)."""
    from potstill.cli_flags import flag_value as _flag_value
    from potstill.config import TeacherConfig

    ann = TeacherConfig.model_fields["stop"].annotation
    assert [_flag_value("teacher.stop", t, ann) for t in ("Q:", "###", "User: ", '"\\n\\n"')] == \
        [["Q:"], ["###"], ["User: "], ["\n\n"]]
    assert _flag_value("teacher.stop", "[Q, A]", ann) == ["Q", "A"] and _flag_value("teacher.stop", "[]", ann) == []
    # Through the CLI the one label reaches the config as a list (and is refused for being one).
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--task.labels", "Q:")
    assert (code, err) == (2, ["error: --task.labels: needs at least two labels for a classification "
                               "task"]), err


def test_version_and_env_say_what_a_bug_report_needs():
    """`potstill --version` was "No such option"; `potstill env` prints the versions and hardware that
    change potstill's behaviour, read from the installed packages' metadata."""
    import subprocess
    from importlib import metadata

    import torch

    from potstill import __version__
    from potstill.envinfo import PACKAGES

    out = subprocess.run([sys.executable, "-m", "potstill.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"potstill {__version__}", out.stderr
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {k: v.strip() for k, v in (line.split(":", 1) for line in out.stdout.splitlines())}
    for name in PACKAGES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = "not installed"
        assert lines[name] == expected, name
    assert lines["torch"] == torch.__version__ and lines["python"] == sys.version.split()[0]
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    assert lines["GPUs"] == (", ".join(gpus) or "none visible")
    assert lines["CPU features"]


def test_a_bad_short_flag_is_named_as_typed(curated, monkeypatch, capsys):
    """A run-directory command's own fields also answer to short flags (`serve --port`, `redistill
    --new-test`); an error about the value named the long flag (`--serve.port`), which the user
    never typed. The flag typed is named, long or short, for a value the model refuses or YAML
    cannot read."""
    (curated / "run" / "potstill.yaml").write_text(CONFIG)
    assert run_main(monkeypatch, capsys, "serve", "run", "--port", "70000") == (
        2, ["error: --port: Input should be less than or equal to 65535"])
    assert run_main(monkeypatch, capsys, "serve", "run", "--serve.port", "70000") == (
        2, ["error: --serve.port: Input should be less than or equal to 65535"])
    code, err = run_main(monkeypatch, capsys, "serve", "run", "--max-messages", "[1")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --max-messages: the value is not valid YAML"), err
    assert run_main(monkeypatch, capsys, "redistill", "run", "--new-test", "1.5") == (
        2, ["error: --new-test: Input should be less than 1"])
