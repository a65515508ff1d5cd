"""The policy registry: immutable, numbered checkpoint versions on disk and a `current` pointer.

Layout under the registry root::

    versions/v0001/{config.json, model.safetensors, tokenizer files, ...}
    versions/v0001/alignloop-version.json   metadata: parent, created, source, metrics, checksums, ...
    versions/v0002/{adapter_config.json, adapter_model.safetensors}   a LoRA adapter version on v0001
    CURRENT                    the name of the version to serve, e.g. "v0003"
    CANDIDATE                  a version the trainer proposes, for the gateway's canary to decide on
    decisions/v0004.json       how a proposed version was decided (promoted, rolled back), with the evidence
    labelling-uncertainty.json the newest reward model's uncertainty about labelling items waiting for
                               raters (request id -> 0..1), for the gateways' labelling queues

A version becomes visible only once complete: it is written into a hidden temporary directory
and renamed into place, so a reader (the gateway) never sees a half-written checkpoint. CURRENT
is replaced with an atomic rename. Only safetensors weights are accepted: pickle-based formats
can execute code on load. Every file's SHA-256 is recorded at publishing and checked before an
engine loads the version (`verify`).

A version is either full weights or a LoRA adapter on a full-weight version, its `base` (recorded
with the adapter's rank). One engine on the base serves every adapter version of it: a canary and a
promotion between adapters start no engine.

Several gateways may share one registry: put its root on a shared filesystem or volume (NFS, a
ReadWriteMany volume) that every gateway and the trainer mount at the same path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.durable_files import fsync_dir, write_atomic
from core.failpoints import failpoint
from registry import checksums
from registry.errors import RegistryError, UnknownVersion
from registry.validation import adapter_rank, is_adapter, validate_adapter, validate_version

_UNCERTAINTY = "labelling-uncertainty.json"
_MAX_UNCERTAINTY_BYTES = 8 << 20  # a bounded read: the trainer writes at most a few thousand items
VERSION_RE = re.compile(r"^v(\d{4,9})$")  # bounded: a name from a request never makes an over-long path


def _number(name: str) -> int:
    """The number of a version name (which names() has matched)."""
    match = VERSION_RE.match(name)
    if match is None:
        raise UnknownVersion(f"{name!r} is not a version name")
    return int(match.group(1))


META_FILE = "alignloop-version.json"


_STAGING = ".staging-"
_HOST = socket.gethostname().replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks; PermissionError would mean alive but not ours
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass
class VersionInfo:
    """Metadata of one policy version."""

    name: str
    created: float
    source: str
    parent: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256, taken at publishing
    base: str | None = None  # for a LoRA adapter version: the full-weight version it adapts
    lora_rank: int | None = None  # for a LoRA adapter version: its rank (r)

    @property
    def is_adapter(self) -> bool:
        """Whether this version is a LoRA adapter on its base rather than full weights."""
        return self.base is not None


class PolicyRegistry:
    """Numbered, immutable policy versions plus an atomically switched `current` pointer."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def _remove_abandoned_staging(self) -> None:
        # A publisher killed mid-copy leaves its staging directory behind; it is invisible to
        # readers, but takes disk. Only this host's, and only those whose process is gone.
        for d in self.versions_dir.glob(f"{_STAGING}{_HOST}-*"):
            try:
                pid = int(d.name[len(f"{_STAGING}{_HOST}-") :].split("-")[0])
            except ValueError:
                continue
            if not _alive(pid):
                shutil.rmtree(d, ignore_errors=True)

    def names(self) -> list[str]:
        """All complete versions, oldest first."""
        found = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=_number)

    def path(self, name: str) -> Path:
        """The checkpoint directory of a version."""
        if not VERSION_RE.match(name) or not (self.versions_dir / name).is_dir():
            raise UnknownVersion(f"unknown policy version {name!r}")
        return self.versions_dir / name

    def info(self, name: str) -> VersionInfo:
        """The metadata of a version."""
        return VersionInfo(**json.loads((self.path(name) / META_FILE).read_text()))

    def verify(self, name: str) -> None:
        """Refuse (RegistryError) a version that is not a valid checkpoint or whose files differ
        from those published; reads every byte, so call it off the event loop."""
        path = self.path(name)
        validate_version(path)
        expected = self.info(name).checksums
        if expected:  # versions published before checksums were recorded have none to check
            checksums.verify(path, expected, skip=(META_FILE,))

    def current(self) -> str | None:
        """The version that should be served, or None for an empty registry."""
        pointer = self.root / "CURRENT"
        return pointer.read_text(errors="replace").strip()[:64] if pointer.exists() else None

    def current_stamp(self) -> tuple[str | None, int]:
        """CURRENT and when it was last written (ns): a rewrite of the same name is a new request."""
        pointer = self.root / "CURRENT"
        try:
            return self.current(), pointer.stat().st_mtime_ns
        except FileNotFoundError:
            return None, 0

    @contextlib.contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        # Serialises pointer moves across processes (the trainer promoting, each gateway reverting).
        with open(self.root / ".current.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def set_current(self, name: str) -> None:
        """Point CURRENT at an existing version (atomic)."""
        validate_version(self.path(name))
        with self._pointer_lock():
            write_atomic(self.root / "CURRENT", name + "\n")

    def compare_and_set_current(self, expected: str | None, name: str) -> bool:
        """Point CURRENT at `name` only if it still names `expected`; False (nothing written) if
        somebody moved it meanwhile. A gateway reverting a version it refused must not undo a newer
        promotion."""
        validate_version(self.path(name))
        with self._pointer_lock():
            if self.current() != expected:
                return False
            write_atomic(self.root / "CURRENT", name + "\n")
            return True

    def candidate(self) -> str | None:
        """The version proposed for a canary, or None."""
        pointer = self.root / "CANDIDATE"
        try:
            return pointer.read_text(errors="replace").strip()[:64] or None
        except FileNotFoundError:
            return None

    def candidate_since(self) -> float:
        """When the current proposal was made (0: none): the start of its canary on every gateway."""
        try:
            return (self.root / "CANDIDATE").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def propose(self, name: str) -> None:
        """Offer a version to the gateway's canary (replacing an undecided earlier proposal)."""
        validate_version(self.path(name))
        with self._pointer_lock():
            write_atomic(self.root / "CANDIDATE", name + "\n")

    def clear_candidate(self, expected: str) -> bool:
        """Withdraw the proposal if it still names `expected` (a newer one stays)."""
        with self._pointer_lock():
            if self.candidate() != expected:
                return False
            (self.root / "CANDIDATE").unlink(missing_ok=True)
            fsync_dir(self.root)
            return True

    def decision(self, name: str) -> dict[str, Any] | None:
        """How a proposed version was decided, with its evidence, or None while undecided."""
        try:
            record: dict[str, Any] = json.loads(
                (self.root / "decisions" / f"{self.path(name).name}.json").read_text()
            )
        except FileNotFoundError:
            return None
        return record

    def publish_uncertainty(self, uncertainty: dict[str, float]) -> None:
        """Replace the published reward-model uncertainty about labelling items (request id -> 0..1)."""
        write_atomic(self.root / _UNCERTAINTY, json.dumps(uncertainty))

    def uncertainty(self) -> dict[str, float]:
        """The published reward-model uncertainty about labelling items; empty when there is none or
        it is not a mapping of request ids to numbers."""
        try:
            with open(self.root / _UNCERTAINTY, "rb") as f:
                data = json.loads(f.read(_MAX_UNCERTAINTY_BYTES + 1)[:_MAX_UNCERTAINTY_BYTES])
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: float(v)
            for k, v in data.items()
            if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        }

    def record_decision(self, name: str, record: dict[str, Any]) -> bool:
        """Keep the decision on a proposed version (the first one kept wins: with several gateways,
        one decides); False if it was decided already."""
        folder = self.root / "decisions"
        folder.mkdir(exist_ok=True)
        path = folder / f"{self.path(name).name}.json"
        with self._pointer_lock():
            if path.exists():
                return False
            write_atomic(path, json.dumps(record, indent=2, default=str))
            return True

    def publish(
        self,
        src: Path,
        *,
        source: str,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        make_current: bool = False,
        base: str | None = None,
    ) -> str:
        """Copy a checkpoint in as the next version, or (with `base`, a full-weight version) a LoRA
        adapter for that base; returns its name."""
        src = Path(src)
        rank = None
        if base is not None:
            validate_adapter(src)
            rank = adapter_rank(src)
            if self.info(base).is_adapter:
                raise RegistryError(f"{base} is an adapter itself; an adapter's base has full weights")
        elif is_adapter(src):
            raise RegistryError(f"{src} is a LoRA adapter: publish it with the version of its base")
        else:
            validate_version(src)
        self._remove_abandoned_staging()
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=f"{_STAGING}{_HOST}-{os.getpid()}-"))
        try:
            for item in src.iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
            failpoint("registry.publish.staged")
            sums = checksums.checksums(staging, skip=(META_FILE,))
            # Numbering races between two publishers are settled by rename: it fails if taken.
            while True:
                existing = self.names()
                number = _number(existing[-1]) + 1 if existing else 1
                name = f"v{number:04d}"
                info = VersionInfo(
                    name=name,
                    created=time.time(),
                    source=source,
                    parent=parent,
                    metrics=metrics or {},
                    extra=extra or {},
                    checksums=sums,
                    base=base,
                    lora_rank=rank,
                )
                meta = staging / META_FILE
                if meta.exists():
                    meta.chmod(stat.S_IWUSR | stat.S_IRUSR)
                meta.write_text(json.dumps(asdict(info), indent=2))
                for item in staging.iterdir():
                    with open(item, "rb") as f:
                        os.fsync(f.fileno())
                    item.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                try:
                    os.rename(staging, self.versions_dir / name)
                    break
                except OSError:
                    continue
            fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        failpoint("registry.publish.renamed")
        if make_current:
            self.set_current(name)
        return name
