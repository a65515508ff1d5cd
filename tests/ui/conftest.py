"""The page's tests get a gateway whose labelling queue samples every chat prompt (the shared one
samples none) and one headless Chromium for the session."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import make_gateway

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, tiny_model_dir, kafka_broker):
    """A real gateway with vLLM and Kafka whose labelling queue takes every single-turn chat prompt."""
    gw = make_gateway(
        tmp_path_factory.mktemp("ui-gateway"),
        tiny_model_dir,
        kafka_broker.bootstrap,
        # Every lease drawn at random: each ranking of a canary's item is a verdict, as the
        # leaderboard's test needs (leases for being informative: tests/gateway/test_labelling_verdicts.py).
        labelling="sample_rate = 1.0\nk = 3\nmax_tokens = 16\noverlap = 1\nrandom_share = 1.0",
    ).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (deploy/install-test-tools.sh installs it) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield b
        b.close()
