"""API keys: who is calling, what they may do, and how often.

Keys come from the configuration; when none are configured, a user key and a separate admin key
are generated once into ``<state_dir>/api_keys.json`` (mode 0600) so a single-machine install is
never left open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from core.config import ApiKeyConfig
from core.paths import StatePaths
from gateway.errors import APIError

log = logging.getLogger(__name__)


@dataclass
class Caller:
    """The authenticated client of a request."""

    name: str
    role: str
    limits: ApiKeyConfig


class _TokenBucket:
    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_or_create_keys(configured: list[ApiKeyConfig], state_dir: Path) -> list[ApiKeyConfig]:
    """The configured keys, or keys generated once into the state directory."""
    if configured:
        return configured
    path = StatePaths(state_dir).api_keys
    if path.exists():
        return [ApiKeyConfig(**k) for k in json.loads(path.read_text())]
    keys = [
        ApiKeyConfig(key="sk-user-" + secrets.token_urlsafe(24), name="local-user", role="user"),
        ApiKeyConfig(key="sk-admin-" + secrets.token_urlsafe(24), name="local-admin", role="admin"),
    ]
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump([k.model_dump() for k in keys], f, indent=2)
    log.warning("no API keys configured: generated a user and an admin key into %s", path)
    return keys


class KeyStore:
    """Looks up callers by key and enforces their request rate."""

    def __init__(self, keys: list[ApiKeyConfig]):
        # Keys are held by digest: a lookup does not compare secrets byte by byte.
        self._by_digest = {_digest(k.key): k for k in keys}
        self._buckets = {d: _TokenBucket(k.requests_per_minute) for d, k in self._by_digest.items()}
        self._lock = threading.Lock()

    def authenticate(self, request: Request) -> Caller:
        """The caller behind the Authorization header, or a 401."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
        digest = _digest(token.strip())
        cfg = self._by_digest.get(digest)
        if cfg is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        with self._lock:
            wait = self._buckets[digest].take()
        if wait:
            raise APIError(429, f"Rate limit of {cfg.requests_per_minute} requests/min reached for this key.",
                           code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait)))})
        return Caller(name=cfg.name, role=cfg.role, limits=cfg)
