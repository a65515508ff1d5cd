# The two commands of the README. Both install what they need first (deploy/install.sh).
ACCEL ?= cpu

.PHONY: install run serve test bench-serving bench-feedback bench-training bench-swap

install:
	ALIGNLOOP_ACCEL=$(ACCEL) bash deploy/install.sh

run: install
	.venv/bin/alignloop demo

serve: install
	.venv/bin/alignloop serve

test: install
	bash deploy/install-test-tools.sh
	.venv/bin/python -m pytest tests

bench-serving: install
	.venv/bin/python -m benchmarks.serving

bench-feedback: install
	bash deploy/install-bench-tools.sh
	.venv/bin/python -m benchmarks.feedback

bench-training:
	ALIGNLOOP_ACCEL=$(ACCEL) ALIGNLOOP_EXTRAS=test,bench bash deploy/install.sh
	.venv/bin/python -m benchmarks.training --trl

bench-swap: install
	.venv/bin/python -m benchmarks.swap
