"""Whether two versions are interchangeable: the same tokenizer (prompts tokenized once can go to
either) and, for an in-place weight swap, the same shapes as well."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# config.json keys that may differ between checkpoints of the same architecture.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}


# What decides how a prompt becomes token ids: the vocabulary, merges and normalisation, which tokens
# are special, and the chat template that renders messages. Only these parts are hashed: a re-saved
# tokenizer writes bookkeeping keys of its own (is_local, local_files_only, versions...) that change
# nothing about tokenisation.
_TOKENIZER_JSON_KEYS = ("model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder")
_CONFIG_KEYS = (
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "add_bos_token",
    "add_eos_token",
    "additional_special_tokens",
    "extra_special_tokens",
    "added_tokens_decoder",
    "clean_up_tokenization_spaces",
)
_RAW_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def tokenizer_fingerprint(path: Path) -> str:
    """Hash of the tokenizer: two versions with the same one give the same token ids to a prompt."""
    tokenizer = _json(path / "tokenizer.json")
    config = _json(path / "tokenizer_config.json")
    template = config.get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    digest = hashlib.sha256(
        json.dumps(
            {
                "tokenizer": {k: tokenizer.get(k) for k in _TOKENIZER_JSON_KEYS},
                "config": {k: config.get(k) for k in _CONFIG_KEYS},
                "chat_template": template.strip() if isinstance(template, str) else template,
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    for name in _RAW_FILES:
        if (path / name).exists():
            digest.update(name.encode() + b"\0" + (path / name).read_bytes())
    return digest.hexdigest()


def arch_fingerprint(path: Path) -> str:
    """Hash of the model's shapes and tokenizer: equal means the weights can be swapped in place."""
    config = json.loads((path / "config.json").read_text())
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256(
        (json.dumps(config, sort_keys=True) + tokenizer_fingerprint(path)).encode()
    ).hexdigest()
