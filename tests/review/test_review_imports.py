"""The review server checks an edited answer with the tasks' shared rule, not through curate's internals
(curate already reads review's store: importing curate back made the two stages a cycle)."""

from __future__ import annotations

import subprocess
import sys


def test_the_review_server_imports_no_curate_module():
    code = ("import sys, potstill.review.app; "
            "print(sorted(m for m in sys.modules if m == 'potstill.curate' or m.startswith('potstill.curate.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
