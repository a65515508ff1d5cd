"""Whether two versions are interchangeable: the same tokenizer (prompts tokenized once can go to
either) and, for an in-place weight swap, the same shapes as well."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# config.json keys that may differ between checkpoints of the same architecture.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}


def tokenizer_fingerprint(path: Path) -> str:
    """Hash of the tokenizer: two versions with the same one give the same token ids to a prompt."""
    tok = path / "tokenizer.json"
    return hashlib.sha256(tok.read_bytes()).hexdigest() if tok.exists() else ""


def arch_fingerprint(path: Path) -> str:
    """Hash of the model's shapes and tokenizer: equal means the weights can be swapped in place."""
    config = json.loads((path / "config.json").read_text())
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256((json.dumps(config, sort_keys=True) + tokenizer_fingerprint(path)).encode()).hexdigest()
