"""benchmarks/kd_signal.py's correctness section, on its committed JSON and on broken copies of it
(the benchmark itself takes most of an hour; its check reads only the JSON)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kd_signal import check

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "kd_signal.json"


def broken(edit) -> dict:
    res = copy.deepcopy(json.loads(RESULT.read_text()))
    edit(res)
    return res


def test_the_committed_comparison_passes():
    assert check(json.loads(RESULT.read_text())) == []


CASES = {
    "topk trained without its signal": (lambda r: r["results"]["topk"].update(kd_terms_first_step={}),
                                        "results.topk: no kd_topk term at the first step"),
    "topk with zero KD tokens": (lambda r: r["results"]["topk"].update(kd_steps=0),
                                 "results.topk: no training step had a topk KD term"),
    "no record with logprobs": (lambda r: r["sizes"].update(train_with_logprobs=0),
                                "sizes.train_with_logprobs is 0"),
    "no label token maps": (lambda r: r.update(one_student_token={k: False for k in r["one_student_token"]}),
                            "one_student_token: no label's teacher token"),
    "labels run trained with topk": (lambda r: r["results"]["labels"].update(train_summary_signal="topk"),
                                     "results.labels: trained with kd_signal 'topk'"),
    "different test sets": (lambda r: r["results"]["topk"].update(teacher_gold_accuracy=0.8),
                            "evaluated on different test sets"),
    "different test ids": (lambda r: [r["results"][s].update(test_ids_sha256=s) for s in ("labels", "topk")],
                           "results.labels.test_ids_sha256 'labels' != results.topk.test_ids_sha256 'topk'"),
    "a smaller test set": (lambda r: r["results"]["topk"]["agreement_ci"].update(n=200),
                           "results.topk: evaluated on 200 test examples, sizes.test is 250"),
    "NaN agreement": (lambda r: r["results"]["labels"].update(agreement_with_teacher=math.nan),
                      "results.labels.agreement_with_teacher is nan"),
    "no gold": (lambda r: r["results"]["topk"].update(gold_accuracy=None), "results.topk.gold_accuracy is None"),
    "NaN KD term": (lambda r: r["results"]["topk"]["kd_terms_first_step"].update(kd=math.nan),
                    "results.topk: KD terms not finite"),
    "one student missing": (lambda r: r["results"].pop("topk"), "results.topk: missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_broken_comparison_fails(case):
    edit, said = CASES[case]
    failures = check(broken(edit))
    assert any(f.startswith(said) or said in f for f in failures), failures


def test_check_only_exits_1_on_a_broken_file_and_0_on_the_committed_one(tmp_path):
    bad = tmp_path / "kd_signal.json"
    bad.write_text(json.dumps(broken(CASES["NaN agreement"][0])))  # json writes NaN, as the benchmark would
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kd_signal.py"), "--check-only"]
    no = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, env=env, timeout=120)
    assert no.returncode == 1
    assert no.stderr.strip() == "CORRECTNESS FAILED: results.labels.agreement_with_teacher is nan, not a rate in [0, 1]"
    ok = subprocess.run([*cmd, str(RESULT)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{RESULT}: ok", ok.stderr
    bad.write_text('{"results": ')
    cut = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, env=env, timeout=120)
    assert cut.returncode == 1 and len(cut.stderr.strip().splitlines()) == 1 and str(bad) in cut.stderr
