"""Where the base model comes from: a checkpoint folder is imported as v0001; a model id the hub
cannot give (here: a hub endpoint that refuses connections) fails start-up with an error naming
the id and what to check, and leaves the registry empty."""

import os
import subprocess
import sys

import pytest

from registry.bootstrap import ensure_base_policy
from registry.hub import ModelUnavailable, resolve_checkpoint
from registry.store import PolicyRegistry
from tests.conftest import REPO, free_port


def test_a_checkpoint_folder_is_imported_as_the_first_version(tiny_model_dir, tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")

    def build(_):  # must not run: a base model is configured
        raise AssertionError("the tiny model was built although a base model was given")

    assert ensure_base_policy(registry, str(tiny_model_dir), build, tmp_path / "hub") == "v0001"
    assert registry.info("v0001").source == f"import:{tiny_model_dir}"
    assert ensure_base_policy(registry, str(tiny_model_dir), build, tmp_path / "hub") == "v0001"
    assert registry.names() == ["v0001"]


def test_something_neither_a_folder_nor_a_model_id_is_refused_without_a_download(tmp_path):
    with pytest.raises(ModelUnavailable, match="'no such folder': no checkpoint folder there"):
        resolve_checkpoint("no such folder", tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_a_model_id_the_hub_cannot_give_stops_serve_with_its_name(tmp_path):
    state = tmp_path / "state"
    dead = free_port()  # nothing listens there: the hub is unreachable
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignloop",
            "serve",
            "--state-dir",
            str(state),
            "--base-model",
            "acme/no-model",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{dead}", HF_HUB_OFFLINE="0"),
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "base_model 'acme/no-model'" in out.stderr and f"127.0.0.1:{dead}" in out.stderr, out.stderr
    assert "local checkpoint folder" in out.stderr  # what to do next
    assert PolicyRegistry(state / "registry").names() == []
