"""The first version: an empty registry gets v0001 from a real checkpoint, or from a builder."""

from __future__ import annotations

import fcntl
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.hub import resolve_checkpoint
from registry.store import PolicyRegistry

log = logging.getLogger(__name__)


def ensure_base_policy(
    registry: PolicyRegistry,
    base_model: str | None,
    build_default: Callable[[Path], dict[str, Any]] | None,
    hub_cache: Path,
) -> str:
    """The registry's current version, creating v0001 on first use: imported from base_model (a
    checkpoint folder, or a hub model id fetched into hub_cache), or else made by
    build_default(dir), which writes a checkpoint into dir and returns metadata."""
    current = registry.current()
    if current is not None:
        return current
    # A gateway and a trainer starting together on an empty registry: one makes v0001, the other
    # waits for it and serves or trains that (not a second base of its own).
    with open(registry.root / ".bootstrap.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return registry.current() or _first_version(registry, base_model, build_default, hub_cache)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _first_version(
    registry: PolicyRegistry,
    base_model: str | None,
    build_default: Callable[[Path], dict[str, Any]] | None,
    hub_cache: Path,
) -> str:
    if base_model is not None:
        checkpoint = resolve_checkpoint(base_model, hub_cache)
        log.info("registry is empty: importing %s (%s) as the base policy", base_model, checkpoint)
        return registry.publish(checkpoint, source=f"import:{base_model}", make_current=True)
    if build_default is None:
        raise RuntimeError(f"the registry at {registry.root} is empty and no base model is configured")
    with tempfile.TemporaryDirectory(dir=registry.root) as tmp:
        extra = build_default(Path(tmp))
        return registry.publish(
            Path(tmp), source=extra.pop("source", "built"), extra=extra, make_current=True
        )
