"""The C locale with Python's UTF-8 mode off (LC_ALL=C PYTHONUTF8=0 PYTHONCOERCECLOCALE=0: an old
cron or container setup): files are ASCII there unless a program says otherwise, and a non-ASCII file
name reaches Python as undecodable bytes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from potstill.records import Record, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
C_LOCALE = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PYTHONUTF8": "0",
            "PYTHONCOERCECLOCALE": "0", "HOME": os.environ.get("HOME", "/tmp"), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def test_a_run_directory_whose_name_python_cannot_decode_is_refused_before_any_work(tmp_path, tiny_model):
    """`--run_dir runs/lç` there: pilot, generate and curate ran (the teacher paid), then train died in
    the tokenizer library's save with 'UnicodeEncodeError: surrogates not allowed' and a traceback. The
    name is now refused when the config loads, in one line that says what to set."""
    (tmp_path / "c.yaml").write_text(f"task:\n  labels: [sports, tech]\nteacher:\n  type: replay\n  model: x\n"
                                     f"student:\n  model: {tiny_model}\ntrain:\n  int8_calibration: 0\n"
                                     "  max_steps: 1\nexport:\n  imatrix_inputs: 0\n", encoding="utf-8")
    write_jsonl(tmp_path / "runs" / "lç" / "train.jsonl",
                [Record(messages=[{"role": "user", "content": "the match"}], output="sports", label="sports")])
    p = subprocess.run([sys.executable, "-m", "potstill", "train", "-c", "c.yaml", "--run_dir", b"runs/l\xc3\xa7"],
                       cwd=tmp_path, env=C_LOCALE, capture_output=True, timeout=300)
    err = p.stderr.decode("utf-8", "replace").strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, err[-20:]
    assert err[0].startswith("error: --run_dir: runs/l") and "which Python reads as ascii here" in err[0], err
    assert err[0].endswith("set PYTHONUTF8=1 (or a UTF-8 locale, LC_ALL=C.UTF-8), or name it in ASCII"), err
    assert sorted(p.name for p in (tmp_path / "runs" / "lç").iterdir()) == ["train.jsonl"]


def _text_io_without_encoding(path: Path) -> list[str]:
    """Calls of open() / Path.open() / read_text() / write_text() in text mode that leave the encoding to the locale."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
        if name in ("read_text", "write_text") and isinstance(fn, ast.Attribute):
            found.append(f"{path}:{node.lineno}")
        elif name == "open" and not (isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name)
                                     and fn.value.id in ("os", "gzip", "tarfile", "zipfile", "Image")):
            at = 1 if isinstance(fn, ast.Name) else 0  # open(path, mode) / path.open(mode)
            mode = next((k.value for k in node.keywords if k.arg == "mode"), node.args[at] if len(node.args) > at else None)
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                found.append(f"{path}:{node.lineno}")
    return found


def test_every_text_file_potstill_reads_or_writes_names_its_encoding():
    """Left to the locale, a file is ASCII under LC_ALL=C without UTF-8 mode: `potstill export --format hf`
    of a task whose instruction said 's'il vous plaît' ended in a UnicodeEncodeError traceback writing the
    model card (README.md), and eval.json, card.json and the like, written as UTF-8, could not be read back."""
    found = [hit for f in sorted((ROOT / "src" / "potstill").rglob("*.py")) for hit in _text_io_without_encoding(f)]
    assert found == []
