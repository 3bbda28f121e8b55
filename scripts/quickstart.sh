#!/usr/bin/env bash
# README command one: install, then distil the embedded default end to end (offline, no API key).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
exec potstill quickstart "$@"
