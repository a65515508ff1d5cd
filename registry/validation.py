"""What a version must be to enter the registry or be served: a complete Hugging Face checkpoint, or
a LoRA adapter (peft's layout) for one, whose weights are safetensors only (pickle formats can
execute code on load) and not corrupt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.errors import RegistryError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header
REQUIRED_FILES = ("config.json",)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_safetensors(path: Path) -> None:
    """Refuse a weights file whose header does not parse or whose tensors run past its end
    (truncated or corrupt): reads the header only, so it is cheap for any size."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size or n > _MAX_HEADER:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"the header is a {type(header).__name__}, not a table of tensors")
        end = 0
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            begin, stop = tensor["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
                raise ValueError(f"tensor {name!r} has offsets {tensor['data_offsets']!r}")
            end = max(end, stop)
        if 8 + n + end != size:
            raise ValueError(f"tensors need {8 + n + end} bytes, the file has {size}")
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, RecursionError) as exc:
        # Whatever the damage (truncation, garbage, a header that is not a table, nesting deep
        # enough to exhaust the parser), it is a refusal, never an error that escapes.
        raise RegistryError(
            f"{path} is not a valid safetensors file ({type(exc).__name__}: {exc})"[:500]
        ) from exc


def is_adapter(path: Path) -> bool:
    """Whether a directory holds a LoRA adapter (peft's layout) rather than full weights."""
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def validate_version(path: Path) -> None:
    """Refuse a directory that is neither a valid checkpoint nor a valid adapter."""
    if is_adapter(path):
        validate_adapter(path)
    else:
        validate_checkpoint(path)


def _read_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RegistryError(f"{what} has an unreadable {path.name}: {exc}"[:500]) from exc
    if not isinstance(value, dict):
        raise RegistryError(f"{what} has a {path.name} that is not an object")
    return value


def adapter_rank(path: Path) -> int:
    """The rank (r) of a LoRA adapter directory; RegistryError if its config does not say."""
    rank = _read_object(path / ADAPTER_CONFIG, f"adapter {path}").get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise RegistryError(f"adapter {path} has no positive integer rank (r) in {ADAPTER_CONFIG}")
    return rank


def validate_adapter(path: Path) -> None:
    """Refuse a directory that is not a LoRA adapter with safetensors weights and a rank."""
    if not path.is_dir():
        raise RegistryError(f"adapter {path} is not a directory")
    _refuse_pickle(path)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise RegistryError(f"adapter {path} has no {ADAPTER_WEIGHTS}")
    check_safetensors(path / ADAPTER_WEIGHTS)
    adapter_rank(path)


def _refuse_pickle(path: Path) -> list[Path]:
    files = [p for p in path.rglob("*") if p.is_file()]
    pickled = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise RegistryError(f"{path} holds pickle-format files {pickled}; only safetensors is accepted")
    return files


def validate_checkpoint(path: Path) -> None:
    """Refuse a directory that is not a complete safetensors-only HF checkpoint."""
    if not path.is_dir():
        raise RegistryError(f"checkpoint {path} is not a directory")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise RegistryError(f"checkpoint {path} has no {name}")
    files = _refuse_pickle(path)
    weights = [p for p in files if p.suffix == ".safetensors"]
    if not weights:
        raise RegistryError(f"checkpoint {path} has no .safetensors weights")
    for w in weights:
        check_safetensors(w)
    _read_object(path / "config.json", f"checkpoint {path}")
