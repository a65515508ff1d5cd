# The two commands of the README. Both install what they need first (deploy/install.sh).
ACCEL ?= cpu

.PHONY: install lock check run serve test bench-serving bench-feedback bench-training bench-swap bench-learning

install:
	ALIGNLOOP_ACCEL=$(ACCEL) bash deploy/install.sh

# Re-resolve deploy/lock/ from pyproject.toml (the only way the installed versions change).
lock:
	bash deploy/lock.sh

# The static checks, first in `make test`: lint, format, types (scope and rules: pyproject.toml).
check: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# RUN_ARGS: the demo's options, e.g. RUN_ARGS="--rounds 1" (deploy/fresh-debian.sh's short demo).
run: install
	.venv/bin/alignloop demo $(RUN_ARGS)

serve: install
	.venv/bin/alignloop serve

test: install check
	bash deploy/install-test-tools.sh
	.venv/bin/python -m pytest tests

bench-serving: install
	.venv/bin/python -m benchmarks.serving

bench-feedback: install
	bash deploy/install-bench-tools.sh
	.venv/bin/python -m benchmarks.feedback

bench-training: install
	.venv/bin/python -m benchmarks.training --trl

bench-learning: install
	.venv/bin/python -m benchmarks.learning

bench-swap: install
	.venv/bin/python -m benchmarks.swap
