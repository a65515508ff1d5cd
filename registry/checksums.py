"""SHA-256 of every file of a version, recorded when it is published and checked before an engine
loads it: a file changed, truncated or swapped on a shared volume after publishing (or an engine
that would serve stale weights) is refused instead of served."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from registry.errors import RegistryError

_CHUNK = 4 * 2**20


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of one file, read in chunks (any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{file name: sha256} of a checkpoint directory's files (not those named in `skip`). Files are
    hashed in parallel (hashlib releases the GIL): a large model's shards take one core each."""
    files = [p for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name not in skip]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(1, len(files)))) as pool:
        return dict(zip((p.name for p in files), pool.map(sha256_file, files)))


def verify(directory: Path, expected: dict[str, str], skip: tuple[str, ...] = ()) -> None:
    """RegistryError naming every file that is missing, added or changed since `expected` was taken."""
    found = checksums(directory, skip)
    problems = [f"{n} is missing" for n in sorted(expected.keys() - found.keys())]
    problems += [f"{n} was added" for n in sorted(found.keys() - expected.keys())]
    problems += [f"{n} changed" for n in sorted(expected.keys() & found.keys()) if expected[n] != found[n]]
    if problems:
        raise RegistryError(
            f"{directory} does not match the checksums taken when it was published: "
            + "; ".join(problems)[:400]
        )
