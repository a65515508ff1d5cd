"""The first version: an empty registry gets v0001 from a real checkpoint, or from a builder."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.store import PolicyRegistry

log = logging.getLogger(__name__)


def ensure_base_policy(
    registry: PolicyRegistry,
    base_model: Path | None,
    build_default: Callable[[Path], dict[str, Any]] | None = None,
) -> str:
    """The registry's current version, creating v0001 on first use: imported from base_model, or
    else made by build_default(dir), which writes a checkpoint into dir and returns metadata."""
    current = registry.current()
    if current is not None:
        return current
    if base_model is not None:
        log.info("registry is empty: importing %s as the base policy", base_model)
        return registry.publish(base_model, source=f"import:{base_model}", make_current=True)
    if build_default is None:
        raise RuntimeError(f"the registry at {registry.root} is empty and no base model is configured")
    with tempfile.TemporaryDirectory(dir=registry.root) as tmp:
        extra = build_default(Path(tmp))
        return registry.publish(
            Path(tmp), source=extra.pop("source", "built"), extra=extra, make_current=True
        )
