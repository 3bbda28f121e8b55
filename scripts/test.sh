#!/usr/bin/env bash
# README command two (and what .ci/run calls): install with the test tools (chromium included), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
. .venv/bin/activate
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure of the suite itself" >&2
  exit 1
fi
exit "$rc"
