"""Where a base model comes from: a checkpoint folder, or a model id fetched from the Hugging Face hub.

Only what serving and training read is fetched (configs, tokenizer files, safetensors weights):
pickled weights (`*.bin`, `*.pt`) are never downloaded, so nothing here can run a pickle."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from registry.errors import RegistryError

log = logging.getLogger(__name__)

# owner/name as the hub spells it (letters, digits, '-', '_', '.'), optionally @revision.
_MODEL_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")
FETCHED = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


class ModelUnavailable(RegistryError):
    """The base model is neither a local checkpoint folder nor fetchable from the hub."""


def resolve_checkpoint(ref: str, cache_dir: Path) -> Path:
    """A local checkpoint folder for `ref`: the folder itself, or the hub's snapshot of the model id
    (downloaded into cache_dir once; later calls reuse it, offline too)."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return folder
    if not _MODEL_ID.fullmatch(ref):
        raise ModelUnavailable(
            f"base_model {ref!r}: no checkpoint folder there, and it is not a Hugging Face model id (owner/name)"
        )
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = ref.partition("@")
    endpoint = constants.ENDPOINT  # HF_ENDPOINT, as the client itself reads it
    log.info(
        "fetching %s from %s into %s (safetensors, configs and tokenizer only)", ref, endpoint, cache_dir
    )
    try:
        path = snapshot_download(
            repo_id, revision=revision or None, cache_dir=cache_dir, allow_patterns=FETCHED
        )
    except Exception as exc:  # the hub's client raises many kinds (HTTP, offline, gated, not found)
        raise ModelUnavailable(
            f"base_model {ref!r}: no checkpoint folder there, and the model could not be fetched from "
            f"{endpoint} ({type(exc).__name__}: {exc}). Check the id and the network (HF_ENDPOINT, and "
            "HF_TOKEN for a gated model), or give base_model a local checkpoint folder."
        ) from exc
    return Path(path)
