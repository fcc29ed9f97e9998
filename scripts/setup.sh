#!/usr/bin/env bash
# Create .venv and install SpecRef. `bash scripts/setup.sh` (runtime) or `bash scripts/setup.sh test` (+ test extras).
# torch==2.13.0 is installed first on its own: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  python -m pip install -q -e ".[test]"
else
  python -m pip install -q -e .
fi
