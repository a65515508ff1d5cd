#!/usr/bin/env bash
# What the benchmarks need beyond .venv, from Debian's packages: wrk, the HTTP load generator for
# endpoints a Python client cannot keep busy (benchmarks/wrk.py). Idempotent.
set -euo pipefail
command -v wrk >/dev/null 2>&1 && { echo "install-bench-tools: wrk present"; exit 0; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-bench-tools: need root (or sudo) to apt-get install wrk" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-bench-tools: apt-get install wrk (once)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
