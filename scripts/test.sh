#!/usr/bin/env bash
# README command two (and what .ci/run calls): install with the test tools (chromium included), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
. .venv/bin/activate
set +e
# Three worker processes, each test file whole in one of them (module fixtures built once): the tests
# run single-threaded (tests/conftest.py), so one process left a 2-core machine's second core idle
# (22 minutes of pytest against 12.5 with two, 2026-12-04), and many wait on subprocesses and
# servers, so a third keeps both cores busier (15.9 minutes against 19.2 with two, 2026-12-07, the
# same 1,803 tests). A later -n in "$@" replaces this one.
python -m pytest -q -n 3 --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure of the suite itself" >&2
  exit 1
fi
exit "$rc"
