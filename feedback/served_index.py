"""Which choice ids were served to whom, and which idempotency keys are taken.

Users may rate only what they were served (a `rater` may rate anyone's); that rule lives here,
once. Rows are written in the spool writer's transaction together with the completion event, so
the index and the log never disagree, also after a crash. Completions handed over but not yet
committed are looked up in memory, so feedback may refer to them at once.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from feedback.events import CompletionServed
from feedback.local_log import LocalLog
from feedback.submission import Accepted, IdempotencyConflict, Submission

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    choice_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, caller TEXT NOT NULL, policy_version TEXT,
    at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS served_by_request ON served (request_id);
CREATE TABLE IF NOT EXISTS idempotency (
    scoped_key TEXT PRIMARY KEY, event_id TEXT NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL DEFAULT 0
);
"""
# Spools written before rows carried a time get the column (their rows count as old: at = 0).
MIGRATIONS = ["ALTER TABLE served ADD COLUMN at REAL NOT NULL DEFAULT 0",
              "ALTER TABLE idempotency ADD COLUMN at REAL NOT NULL DEFAULT 0"]
_ROW_OVERHEAD = 48  # SQLite's per-row and per-index-entry bytes, roughly
_SERVED_BYTES = ("SELECT COALESCE(SUM(LENGTH(choice_id) * 2 + LENGTH(request_id) * 2 + LENGTH(caller) "
                 "+ COALESCE(LENGTH(policy_version), 0) + {o}), 0) FROM served").format(o=_ROW_OVERHEAD)
_KEY_BYTES = ("SELECT COALESCE(SUM(LENGTH(scoped_key) * 2 + LENGTH(event_id) + LENGTH(digest) + {o}), 0) "
              "FROM idempotency").format(o=_ROW_OVERHEAD)


@dataclass(frozen=True)
class Served:
    """Who was served a choice, and as part of which request."""

    request_id: str
    caller: str
    policy_version: str | None


class NeverServed(LookupError):
    """No such choice or request was served here."""


class NotServedToCaller(PermissionError):
    """It was served to somebody else."""


class ServedIndex:
    """Lookups and ownership checks over the served-choice table (and its in-memory tail)."""

    def __init__(self, log: LocalLog):
        self._log = log
        self._pending: dict[str, Served] = {}          # choice id -> served, not yet committed
        self._pending_requests: dict[str, Served] = {}  # request id -> served, not yet committed
        self._lock = threading.Lock()

    def hand_over(self, event: CompletionServed) -> None:
        """A completion is on its way to the log: its choices may be referred to from now on."""
        served = Served(event.request_id, event.caller, event.policy_version)
        with self._lock:
            self._pending_requests[event.request_id] = served
            for c in event.choices:
                self._pending[c.choice_id] = served

    def settle(self, event: CompletionServed) -> None:
        """The completion is committed (or failed): the table answers for it now."""
        with self._lock:
            self._pending_requests.pop(event.request_id, None)
            for c in event.choices:
                self._pending.pop(c.choice_id, None)

    def choice(self, choice_id: str) -> Served | None:
        """Who was served this choice id, or None if it was never served here."""
        with self._lock:
            hit = self._pending.get(choice_id)
        if hit:
            return hit
        rows = self._log.query("SELECT request_id, caller, policy_version FROM served WHERE choice_id = ?", (choice_id,))
        return Served(*rows[0]) if rows else None

    def request(self, request_id: str) -> Served | None:
        """Who made a request, or None if it was never served here."""
        with self._lock:
            hit = self._pending_requests.get(request_id)
        if hit:
            return hit
        rows = self._log.query("SELECT request_id, caller, policy_version FROM served WHERE request_id = ? LIMIT 1",
                               (request_id,))
        return Served(*rows[0]) if rows else None

    def owned_choice(self, choice_id: str, caller: str, may_rate_others: bool) -> Served:
        """The served record of a choice the caller may rate; NeverServed or NotServedToCaller otherwise."""
        return _owned(self.choice(choice_id), caller, may_rate_others)

    def owned_request(self, request_id: str, caller: str, may_rate_others: bool) -> Served:
        """The served record of a request the caller may give feedback on."""
        return _owned(self.request(request_id), caller, may_rate_others)

    @staticmethod
    def record(cur: sqlite3.Cursor, event: CompletionServed) -> int:
        """Write a completion's choices (inside the spool writer's transaction); returns their bytes."""
        cur.executemany(
            "INSERT OR IGNORE INTO served (choice_id, request_id, caller, policy_version, at) VALUES (?, ?, ?, ?, ?)",
            [(c.choice_id, event.request_id, event.caller, event.policy_version, event.timestamp)
             for c in event.choices])
        return sum(2 * len(c.choice_id) + 2 * len(event.request_id) + len(event.caller)
                   + len(event.policy_version or "") + _ROW_OVERHEAD for c in event.choices)

    @staticmethod
    def key_bytes(item: Submission) -> int:
        """The bytes an idempotency key takes in the index (0 without one)."""
        return 2 * len(item.idempotency_key) + 32 + 64 + _ROW_OVERHEAD if item.idempotency_key else 0

    @staticmethod
    def size(cur: sqlite3.Cursor) -> int:
        """The index's bytes, counted the way record() and key_bytes() count them."""
        return cur.execute(_SERVED_BYTES).fetchone()[0] + cur.execute(_KEY_BYTES).fetchone()[0]

    @staticmethod
    def prune(cur: sqlite3.Cursor, before: float) -> tuple[int, int]:
        """Forget what was served, and the keys used, before a time; returns (rows, bytes) removed."""
        where = " WHERE at < ?"
        served = cur.execute(_SERVED_BYTES.replace("FROM served", "FROM served" + where), (before,)).fetchone()[0]
        keys = cur.execute(_KEY_BYTES.replace("FROM idempotency", "FROM idempotency" + where), (before,)).fetchone()[0]
        rows = cur.execute("DELETE FROM served" + where, (before,)).rowcount
        rows += cur.execute("DELETE FROM idempotency" + where, (before,)).rowcount
        return rows, served + keys

    @staticmethod
    def claim(cur: sqlite3.Cursor, item: Submission) -> Accepted | None:
        """Take an idempotency key for this submission; the earlier outcome if it repeats one, None if
        the key is new (or absent). IdempotencyConflict if the key was used for other content."""
        if item.idempotency_key is None:
            return None
        row = cur.execute("SELECT event_id, digest FROM idempotency WHERE scoped_key = ?",
                          (item.idempotency_key,)).fetchone()
        if row is not None:
            if row[1] != item.digest():
                raise IdempotencyConflict(f"idempotency key {item.idempotency_key.split(':', 1)[-1]!r} "
                                          "was used before for different feedback")
            return Accepted(row[0], duplicate=True)
        cur.execute("INSERT INTO idempotency (scoped_key, event_id, digest, at) VALUES (?, ?, ?, ?)",
                    (item.idempotency_key, item.event.event_id, item.digest(), item.event.timestamp))
        return None


def _owned(served: Served | None, caller: str, may_rate_others: bool) -> Served:
    if served is None:
        raise NeverServed()
    if served.caller != caller and not may_rate_others:
        raise NotServedToCaller()
    return served
