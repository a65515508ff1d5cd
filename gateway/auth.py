"""API keys: who is calling, what they may do, and how much of the service they may take.

Keys come from the configuration; when none are configured, a user key and a separate admin key
are generated once into ``<state_dir>/api_keys.json`` (mode 0600) so a single-machine install is
never left open; a keys file others can read is refused.

Fairness per key: a request rate, a number of generations at once, and a rate of generated tokens
(reserved as n × max_tokens when a generation starts, the unused part given back when it ends), so
one key cannot take every engine slot. Failed authentications are throttled per client address.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from core.config import ApiKeyConfig
from core.paths import StatePaths, UnsafeStateFile
from gateway.errors import APIError

log = logging.getLogger(__name__)


class KeysFileUnsafe(UnsafeStateFile):
    """The generated keys file is readable by others."""


class _TokenBucket:
    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float = 1.0) -> float:
        """0 if `amount` was taken, else the seconds until it would be available."""
        self._refill()
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate

    def give_back(self, amount: float) -> None:
        """Return what was taken and not used."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens + amount)


@dataclass
class _KeyState:
    config: ApiKeyConfig
    requests: _TokenBucket
    tokens: _TokenBucket
    running: int = 0


@dataclass
class Caller:
    """The authenticated client of a request."""

    name: str
    role: str
    limits: ApiKeyConfig
    _state: _KeyState | None = field(default=None, repr=False)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_or_create_keys(
    configured: list[ApiKeyConfig], state_dir: Path, users: int = 1
) -> list[ApiKeyConfig]:
    """The configured keys, or keys generated once into the state directory (refused if others can
    read it), with at least `users` user keys (one per person: a canary needs verdicts from several)."""
    if configured:
        return configured
    keys = _load_or_create_generated(state_dir)
    have = [k for k in keys if k.role == "user"]
    if len(have) < users:
        keys += [
            ApiKeyConfig(key="sk-user-" + secrets.token_urlsafe(24), name=f"local-user-{i + 1}", role="user")
            for i in range(len(have), users)
        ]
        path = StatePaths(state_dir).api_keys
        tmp = path.with_name(path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([k.model_dump() for k in keys], f, indent=2)
        os.replace(tmp, path)
        log.warning("added %d user keys to %s", users - len(have), path)
    return keys


def _load_or_create_generated(state_dir: Path) -> list[ApiKeyConfig]:
    path = StatePaths(state_dir).api_keys
    if path.exists():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeysFileUnsafe(
                f"{path} is readable by other users (mode {stat.S_IMODE(path.stat().st_mode):o}); "
                f"run `chmod 600 {path}`, or delete it to have new keys generated"
            )
        return [ApiKeyConfig(**k) for k in json.loads(path.read_text())]
    keys = [
        ApiKeyConfig(key="sk-user-" + secrets.token_urlsafe(24), name="local-user", role="user"),
        ApiKeyConfig(key="sk-rater-" + secrets.token_urlsafe(24), name="local-rater", role="rater"),
        ApiKeyConfig(key="sk-admin-" + secrets.token_urlsafe(24), name="local-admin", role="admin"),
    ]
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump([k.model_dump() for k in keys], f, indent=2)
    log.warning("no API keys configured: generated a user, a rater and an admin key into %s", path)
    return keys


class GenerationLease:
    """One admitted generation: holds a slot of its key's concurrency and reserved tokens."""

    def __init__(self, store: KeyStore, state: _KeyState, reserved: int):
        self._store, self._state, self._reserved, self._open = store, state, reserved, True

    def release(self, generated: int) -> None:
        """The generation ended having produced `generated` tokens; give back the rest (once)."""
        if not self._open:
            return
        self._open = False
        with self._store.lock:
            self._state.running -= 1
            self._state.tokens.give_back(max(0, self._reserved - generated))


class KeyStore:
    """Looks up callers by key and enforces their limits."""

    def __init__(self, keys: list[ApiKeyConfig], failed_auth_per_minute: int = 60):
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("two API keys share a name: a name owns completions, so each key needs its own")
        # Keys are held by digest: a lookup does not compare secrets byte by byte.
        self._by_digest = {
            _digest(k.key): _KeyState(
                k, _TokenBucket(k.requests_per_minute), _TokenBucket(k.generated_tokens_per_minute)
            )
            for k in keys
        }
        self._failures: dict[str, _TokenBucket] = {}
        self._failed_per_minute = failed_auth_per_minute
        self.lock = threading.Lock()

    def _refuse_guessing(self, request: Request) -> None:
        host = request.client.host if request.client else "unknown"
        with self.lock:
            bucket = self._failures.setdefault(host, _TokenBucket(self._failed_per_minute))
            if len(self._failures) > 10_000:  # bounded: forget the oldest clients
                self._failures.pop(next(iter(self._failures)))
            wait = bucket.take()
        if wait:
            raise APIError(
                429,
                "Too many failed authentications from this address; slow down.",
                code="auth_throttled",
                headers={"Retry-After": str(max(1, round(wait)))},
            )

    def authenticate(self, request: Request) -> Caller:
        """The caller behind the Authorization header, or a 401 (429 after many failures)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._refuse_guessing(request)
            raise APIError(
                401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        state = self._by_digest.get(_digest(token.strip()))
        if state is None:
            self._refuse_guessing(request)
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        self.charge(state, 1)
        cfg = state.config
        return Caller(name=cfg.name, role=cfg.role, limits=cfg, _state=state)

    def charge(self, state: _KeyState, requests: int) -> None:
        """Take `requests` from a key's request rate (a batch of feedback items counts each), or 429."""
        with self.lock:
            wait = state.requests.take(requests)
        if wait:
            raise APIError(
                429,
                f"Rate limit of {state.config.requests_per_minute} requests/min reached for this key.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait)))},
            )

    def charge_caller(self, caller: Caller, requests: int) -> None:
        """charge() for an authenticated caller."""
        if caller._state is not None and requests > 0:
            self.charge(caller._state, requests)

    def admit(self, caller: Caller, max_generated: int) -> GenerationLease:
        """Start a generation of up to max_generated tokens for the caller, or refuse it: 429 with
        Retry-After while the key is at its concurrency or token rate; 400 if it could never fit."""
        state = caller._state
        cfg = state.config
        if max_generated > cfg.generated_tokens_per_minute:
            raise APIError(
                400,
                f"n x max_tokens = {max_generated} exceeds this key's {cfg.generated_tokens_per_minute} "
                "generated tokens per minute.",
                param="max_tokens",
                code="token_budget_exceeded",
            )
        with self.lock:
            if state.running >= cfg.max_concurrent_requests:
                raise APIError(
                    429,
                    f"This key already has {cfg.max_concurrent_requests} generations running.",
                    code="concurrency_limit",
                    headers={"Retry-After": "1"},
                )
            wait = state.tokens.take(max_generated)
            if wait:
                raise APIError(
                    429,
                    f"This key's {cfg.generated_tokens_per_minute} generated tokens/min are spent.",
                    code="token_rate_limit",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            state.running += 1
        return GenerationLease(self, state, max_generated)
