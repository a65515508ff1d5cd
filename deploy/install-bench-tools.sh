#!/usr/bin/env bash
# What the benchmarks need beyond .venv, from Debian's packages: wrk, the HTTP load generator for
# endpoints a Python client cannot keep busy (benchmarks/wrk.py). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null 2>&1 && { echo "install-bench-tools: wrk present"; exit 0; }
bash deploy/apt-install.sh wrk
