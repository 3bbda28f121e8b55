"""Mistakes an engineer makes at the command line end in one line on stderr and exit 2, never a
traceback (``potstill.cli.main``): files that are folders, not UTF-8, not YAML or not a ledger; a
flag whose value is not YAML; a port already taken. The value of a flag is never repeated (it may
be a key)."""

from __future__ import annotations

import socket
import sys

import pytest

from potstill.cli import main
from potstill.ledger import Ledger
from tests.helpers.cli import run_main

CONFIG = "task:\n  labels: [a, b]\ndata:\n  inputs: in.jsonl\nteacher:\n  type: openai\n  model: x\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text('{"input": "the match"}\n')
    return tmp_path


def test_config_files_that_are_folders_not_utf8_or_not_yaml(work, monkeypatch, capsys):
    (work / "bin.yaml").write_bytes(b"\xff\xfe\x00task: 1\n")
    (work / "broken.yaml").write_text("task:\n  labels: [a, b\n")
    for config, line in ((str(work), f"error: {work} is a directory, not a config file"),
                         ("bin.yaml", "error: bin.yaml: not UTF-8 text (byte 0)"),
                         ("broken.yaml", "error: broken.yaml: invalid YAML: expected ',' or ']', but got '<stream "
                                         "end>' (line 3, column 1)")):
        assert run_main(monkeypatch, capsys, "preflight", "-c", config) == (2, [line])


def test_a_flag_value_that_is_not_yaml_is_one_line_without_the_value(work, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "preflight", "-c", "c.yaml", "--task.labels", "[sk-secret-1")
    assert (code, err) == (2, ["error: --task.labels: the value is not valid YAML: expected ',' or ']', but got "
                               "'<stream end>' (line 1, column 13)"])


def test_a_run_dir_that_is_a_file_and_a_ledger_that_is_not_sqlite(work, monkeypatch, capsys):
    (work / "afile").write_text("mine")
    code, err = run_main(monkeypatch, capsys, "generate", "-c", "c.yaml", "--run_dir", "afile")
    assert (code, err) == (2, ["error: --run_dir: afile is a file, not a run directory"])
    assert (work / "afile").read_text() == "mine"
    (work / "run").mkdir()
    (work / "run" / "calls.sqlite").write_text("notadb")
    with pytest.raises(Exception, match=r"calls.sqlite: not a potstill ledger \(SQLite: file is not a database\)"):
        Ledger(work / "run" / "calls.sqlite")
    code, err = run_main(monkeypatch, capsys, "cost", "run")
    assert (code, err) == (2, ["error: run/calls.sqlite: not a potstill ledger (SQLite: file is not a database); "
                               "move it aside"])
    assert (work / "run" / "calls.sqlite").read_text() == "notadb"


def test_a_users_own_config_in_the_run_directory_is_never_written_over(work, monkeypatch, capsys):
    """Found by a review: with `run_dir: .` in a hand-written config, a stage replaced that very file
    with its saved settings (comments gone, and the key in a base_url's user info, the only copy);
    `--run_dir "$RUN"` with RUN unset did the same to the cwd's config, writing the run beside it."""
    mine = "# my notes\nrun_dir: .\n" + CONFIG.replace("model: x\n", "model: x\n  base_url: http://u:pw@h/v1\n")
    (work / "potstill.yaml").write_text(mine)
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "potstill.yaml")
    assert (code, err) == (2, ["error: potstill.yaml is not one potstill wrote (no '# Written by potstill' first "
                               "line), and a stage records its settings there: keep your config outside the run "
                               "directory (or give run_dir another folder) so it is not written over"]), err
    assert (work / "potstill.yaml").read_text() == mine
    before = sorted(p.name for p in work.iterdir())
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--run_dir", "")
    assert (code, err) == (2, ['error: --run_dir: an empty path (an unset variable, as in --run_dir "$RUN"?): '
                               "name the run's directory"]), err
    assert sorted(p.name for p in work.iterdir()) == before

    # The files potstill writes there are its own to rewrite: a stage's, and quickstart's.
    from potstill.stage import check_saved_config

    for first in ("# Written by potstill: the settings", "# Written by `potstill quickstart`; rerun"):
        (work / "potstill.yaml").write_text(first + "\n" + mine)
        check_saved_config(work)


def test_init_makes_the_folders_it_needs_and_refuses_a_folder(work, monkeypatch, capsys):
    assert run_main(monkeypatch, capsys, "init", "sub/dir/p.yaml")[0] == 0
    assert (work / "sub" / "dir" / "p.yaml").read_text().startswith("#")
    assert run_main(monkeypatch, capsys, "init", "sub") == (2, ["error: sub is a directory; name the config file to write"])


def test_a_taken_port_is_one_line_before_anything_is_announced(tmp_path, monkeypatch, capsys):
    """``review`` (``serve`` binds the same way, ``potstill.listen``) on a port another socket holds."""
    from potstill.listen import bind

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            bind("127.0.0.1", port)
        with pytest.raises(Exception, match="cannot listen on 999.1.1.1:80: "):
            bind("999.1.1.1", 80)
    finally:
        taken.close()


def test_a_hand_edited_split_without_a_valid_answer_is_named_before_training(work, tiny_model, monkeypatch, capsys):
    """train.jsonl with a line that has no output (or a label outside the set) is file:line and exit 2,
    where training used to stop on an AssertionError; the earlier student stays."""
    run = work / "run"
    run.mkdir()
    (run / "student").mkdir()
    (run / "student" / "keep").write_text("earlier student")
    (work / "c.yaml").write_text(CONFIG.replace("type: openai", "type: replay") + f"run_dir: run\nstudent:\n"
                                                                                 f"  model: {tiny_model}\n")
    for line, why in (('{"input": "x y"}', "no output"), ('{"input": "x y", "output": "c"}', "answer outside the label set")):
        (run / "train.jsonl").write_text('{"input": "the match", "output": "a"}\n' + line + "\n")
        code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml")
        assert (code, err) == (2, [f"error: run/train.jsonl:2: {why}; a split holds only answers to train on "
                                   "(`potstill curate` writes them)"])
    assert (run / "student" / "keep").read_text() == "earlier student"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_a_device_torch_cannot_use_is_one_line(work, tiny_model, monkeypatch, capsys):
    """``train.device: cuda`` where torch has no GPU, or a device torch does not know: one line,
    where loading the student used to end in torch's AssertionError or RuntimeError."""
    (work / "run").mkdir()
    (work / "run" / "train.jsonl").write_text('{"input": "the match", "output": "a"}\n')
    (work / "c.yaml").write_text(CONFIG.replace("type: openai", "type: replay") + f"run_dir: run\nstudent:\n"
                                                                                 f"  model: {tiny_model}\n")
    import torch

    cpu_only = "this torch is built for the CPU only" if torch.version.cuda is None else "torch sees no CUDA GPU"
    for device, line in (("cuda", f"error: device 'cuda': {cpu_only} (use device auto or cpu)"),
                         ("tpu", "error: device 'tpu': not a device torch knows (auto, cpu, cuda, cuda:N, mps)")):
        assert run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.device", device) == (2, [line])
    assert not (work / "run" / "student").exists()


def test_a_model_that_is_a_stray_file_or_not_gguf_is_named(tmp_path):
    from potstill.errors import PotstillError
    from potstill.models.loading import resolve

    (tmp_path / "inputs.jsonl").write_text("{}\n")
    (tmp_path / "x.gguf").write_text("junk")
    with pytest.raises(PotstillError, match=r"inputs.jsonl: a file, not a model: name a model directory"):
        resolve(str(tmp_path / "inputs.jsonl"))
    with pytest.raises(PotstillError, match=r"x.gguf: not a GGUF file \(it does not start with GGUF's magic bytes\)"):
        resolve(str(tmp_path / "x.gguf"))


def test_a_replay_teachers_file_missing_or_malformed_is_named(tmp_path):
    from potstill.config import load_config
    from potstill.errors import PotstillError
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    def teacher(path):
        cfg = load_config(None, {"task.labels": ["a", "b"], "teacher.type": "replay", "teacher.replay_path": str(path)})
        return get_teacher(cfg.teacher, get_task(cfg.task))

    with pytest.raises(PotstillError, match=r"teacher.replay_path .*nope.jsonl: file not found"):
        teacher(tmp_path / "nope.jsonl")
    logs = tmp_path / "logs.jsonl"
    logs.write_text('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}]}\n\n{oops\n')
    with pytest.raises(PotstillError, match=r"logs.jsonl:3: malformed JSON"):
        teacher(logs)._load()


def test_a_generate_whose_teacher_cannot_be_made_leaves_no_ledger(work, tiny_model, monkeypatch, capsys):
    (work / "c.yaml").write_text(CONFIG + f"student:\n  model: {tiny_model}\n")
    code, err = run_main(monkeypatch, capsys, "generate", "-c", "c.yaml", "--run_dir", "run", "--teacher.type", "vllm")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: unknown teacher type 'vllm'")
    assert not (work / "run" / "calls.sqlite").exists()


def test_a_manifest_that_is_not_json_or_not_a_manifest_is_one_line_and_kept(work, monkeypatch, capsys):
    """RUN/manifest.json broken by hand (an edit, a merge conflict) or holding other JSON ended every
    stage command in a JSONDecodeError or KeyError traceback; it is one line, and the file is left."""
    (work / "run").mkdir()
    (work / "run" / "teacher.jsonl").write_text('{"input": "the match", "output": "a"}\n')
    for text, why in (("{oops", "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
                      ("[1, 2]", "not a potstill manifest (no 'stages' object)"),
                      ('{"stages": {"curate": 3}}', "not a potstill manifest (stage 'curate' is not an object)")):
        (work / "run" / "manifest.json").write_text(text)
        code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--run_dir", "run")
        assert (code, err) == (2, [f"error: run/manifest.json: {why}; move it aside (the stages then run again)"])
        assert (work / "run" / "manifest.json").read_text() == text
        assert not (work / "run" / "train.jsonl").exists()


_FULL_DISK = """
import resource, signal, sys
# A file may grow to 4 KB and no further (EFBIG), as on a disk that fills mid-write.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
"""


def test_config_files_written_on_a_full_disk_leave_the_old_file_or_none(tmp_path):
    """`potstill init --overwrite` and `potstill quickstart` wrote potstill.yaml with Path.write_text:
    a disk that filled mid-write left a truncated file (the old one gone, or a half config the next
    `potstill run -c` read as broken YAML). They now write beside it and rename, and the error is one line."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    old = "# mine\ntask:\n  labels: [a, b]\n"
    (tmp_path / "p.yaml").write_text(old)
    run = subprocess.run([sys.executable, "-c", _FULL_DISK + "from potstill.cli import main\nsys.argv = "
                          "['potstill', 'init', 'p.yaml', '--overwrite']\nmain()"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert (tmp_path / "p.yaml").read_text() == old
    run = subprocess.run([sys.executable, "-c", _FULL_DISK + "from potstill.cli import main\nsys.argv = "
                          "['potstill', 'init', 'new.yaml']\nmain()"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and not (tmp_path / "new.yaml").exists(), run.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("p.yaml",)]  # no temp file left either
    # quickstart: its data files are written first; the disk fills just before potstill.yaml.
    code = ("import potstill.quickstart as q\nsafe_dump = q.yaml.safe_dump\n"
            "def full_after(*a, **k):\n    text = safe_dump(*a, **k)\n" + "".join(
                "    " + line + "\n" for line in _FULL_DISK.strip().splitlines()) +
            "    return text * 20\nq.yaml.safe_dump = full_after\n"
            "from potstill.errors import PotstillError\n"
            "try:\n    q.build('qs', n_inputs=80, n_test=5, n_shots=2, orders=1, n_real=0, engine='transformers')\n"
            "except OSError as e:\n    print('failed', e.errno)\n")
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "potstill.yaml").write_text(old)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.stdout.startswith("failed"), run.stdout + run.stderr
    assert (tmp_path / "qs" / "potstill.yaml").read_text() == old


def test_a_bad_value_is_named_by_the_flag_that_set_it_not_by_the_file(work, monkeypatch, capsys):
    """`potstill curate -c c.yaml --curate.min_agreement 2` said 'c.yaml: curate.min_agreement: ...'
    though c.yaml holds no curate section at all: the user looked for the mistake in the file. A flag's value is named by its
    flag (the value not repeated); a file's own bad value is still named by the file."""
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--curate.min_agreement", "2")
    assert (code, err) == (2, ["error: --curate.min_agreement: Input should be less than or equal to 1"])
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--task.labels", "[a, [b]]")
    assert (code, err) == (2, ["error: --task.labels: 1: Input should be a valid string"])
    (work / "bad.yaml").write_text(CONFIG + "curate:\n  min_agreement: 2\n")
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "bad.yaml", "--curate.val", "0")
    assert (code, err) == (2, ["error: bad.yaml: curate.min_agreement: Input should be less than or equal to 1"])
    # Without -c too: it said 'config: teacher.temperature: ...', naming no flag.
    code, err = run_main(monkeypatch, capsys, "generate", "--teacher.temperature", "-1")
    assert (code, err) == (2, ["error: --teacher.temperature: Input should be greater than or equal to 0"])


def test_a_flag_that_trips_a_check_across_fields_is_named_not_the_file(work, monkeypatch, capsys):
    """Found by a review: a check across fields (the config's or a section's own) is located at the
    config or the section, so `--task.labels '[a]'` said 'c.yaml: config: Value error, task.labels
    needs at least two labels', blaming a file that holds [a, b]. The flags the message names are named."""
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "c.yaml", "--task.labels", "[a]")
    assert (code, err) == (2, ["error: --task.labels: needs at least two labels for a classification task"])
    (work / "warm.yaml").write_text(CONFIG + "train:\n  warmup_steps: 5\n")
    code, err = run_main(monkeypatch, capsys, "train", "-c", "warm.yaml", "--train.warmup_ratio", "0.1")
    assert (code, err) == (2, ["error: --train.warmup_ratio: train.warmup_steps 5 and train.warmup_ratio 0.1 both "
                               "set the warm-up; keep one"])
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.warmup_ratio", "0.1",
                         "--train.warmup_steps", "5")
    assert (code, err) == (2, ["error: --train.warmup_steps and --train.warmup_ratio: train.warmup_steps 5 and "
                               "train.warmup_ratio 0.1 both set the warm-up; keep one"])
    # The file's own mistake is still the file's, and a flag the message does not name is not blamed.
    (work / "one.yaml").write_text(CONFIG.replace("[a, b]", "[a]"))
    code, err = run_main(monkeypatch, capsys, "curate", "-c", "one.yaml", "--curate.val", "0")
    assert (code, err) == (2, ["error: one.yaml: config: task.labels needs at least two labels for a "
                               "classification task"])


def test_a_sqlite_error_names_its_file_and_blames_no_ledger_it_did_not_come_from(work, monkeypatch, capsys):
    """Any SQLite error that reached the CLI read 'SQLite: ... (a file that is not a potstill
    ledger?)' and named no file, whichever file it came from."""
    import sqlite3

    from potstill.cli import _os_problem

    # A ledger whose calls table another tool dropped: `cost` fails on its first query.
    (work / "run").mkdir()
    Ledger(work / "run" / "calls.sqlite").close()
    with sqlite3.connect(work / "run" / "calls.sqlite") as db:
        db.execute("DROP TABLE calls")
    assert run_main(monkeypatch, capsys, "cost", "run") == (2, ["error: run/calls.sqlite: not a potstill ledger "
                                                                "(SQLite: no such table: calls); move it aside"])
    # A SQLite error from no file potstill opened says what SQLite said, and blames no ledger.
    assert _os_problem(sqlite3.DatabaseError("file is not a database")) == "SQLite: file is not a database"
    # A ledger opened read-only (preflight's budget asks it what is answered) that is not one: the
    # check fails naming the file, and the other checks still print.
    (work / "run2").mkdir()
    (work / "run2" / "calls.sqlite").write_text("spend exported by hand\n" * 40)
    monkeypatch.setattr(sys, "argv", ["potstill", "preflight", "-c", "c.yaml", "--run_dir", "run2",
                                      "--teacher.model", "gpt-4o", "--generate.budget_usd", "5"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    budget = next(ln for ln in out.out.splitlines() if ln.split()[1] == "budget")
    from potstill.preflight import CHECKS

    assert e.value.code == 2 and len(out.out.splitlines()) == len(CHECKS[None])  # one line a check
    assert budget.split(None, 2)[2] == ("run2/calls.sqlite: not a potstill ledger (SQLite: file is not a database); "
                                         "move it aside")
    assert (work / "run2" / "calls.sqlite").read_text() == "spend exported by hand\n" * 40


def test_python_dash_m_potstill_is_the_cli():
    """`python -m potstill` said 'No module named potstill.__main__' (only `-m potstill.cli` worked),
    the usual way to run a tool whose console script is not on PATH."""
    import subprocess
    import sys

    import potstill

    r = subprocess.run([sys.executable, "-m", "potstill", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert potstill.__version__ in r.stdout
