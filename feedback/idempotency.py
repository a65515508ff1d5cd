"""Which idempotency keys are taken, by which event, for what content.

Rows are written in the spool writer's transaction together with the event, so the index and the
log never disagree, also after a crash. A key repeated on this gateway answers with the first
event's id (or 409 for other content). Across replicas there is no shared table: the event id of
keyed feedback is derived from the caller and the key (feedback/submission.py), so the same
submission sent to two replicas is one event, which the trainer stores once.

Who may rate what is not looked up here: the ids the gateway hands out are signed
(gateway/ownership.py).
"""

from __future__ import annotations

import sqlite3

from feedback.submission import Accepted, IdempotencyConflict, Submission

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    scoped_key TEXT PRIMARY KEY, event_id TEXT NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL DEFAULT 0
);
"""
# Spools written before rows carried a time get the column (their rows count as old: at = 0); the
# served-choice table of spools written before ids were signed is dropped.
MIGRATIONS = ["ALTER TABLE idempotency ADD COLUMN at REAL NOT NULL DEFAULT 0", "DROP TABLE IF EXISTS served"]
_ROW_OVERHEAD = 48  # SQLite's per-row and per-index-entry bytes, roughly
_KEY_BYTES = (
    f"SELECT COALESCE(SUM(LENGTH(scoped_key) * 2 + LENGTH(event_id) + LENGTH(digest) + {_ROW_OVERHEAD}), 0) "
    "FROM idempotency"
)


class IdempotencyIndex:
    """The idempotency table's operations, run inside the spool writer's transactions."""

    @staticmethod
    def key_bytes(item: Submission) -> int:
        """The bytes an idempotency key takes in the index (0 without one)."""
        return 2 * len(item.idempotency_key) + 32 + 64 + _ROW_OVERHEAD if item.idempotency_key else 0

    @staticmethod
    def size(cur: sqlite3.Cursor) -> int:
        """The index's bytes, counted the way key_bytes() counts them."""
        size: int = cur.execute(_KEY_BYTES).fetchone()[0]
        return size

    @staticmethod
    def prune(cur: sqlite3.Cursor, before: float) -> tuple[int, int]:
        """Forget the keys used before a time; returns (rows, bytes) removed."""
        size = cur.execute(_KEY_BYTES + " WHERE at < ?", (before,)).fetchone()[0]
        rows = cur.execute("DELETE FROM idempotency WHERE at < ?", (before,)).rowcount
        return rows, size

    @staticmethod
    def evict_over(cur: sqlite3.Cursor, scoped_key: str, limit: int) -> int:
        """Forget the oldest keys of `scoped_key`'s caller beyond `limit`, so one caller cannot fill
        everyone's spool with keys; returns the bytes freed. Safe: a keyed event's id is derived from
        its key, so a retry of a forgotten key is still the same event to every reader."""
        caller = scoped_key.split(":", 1)[0] + ":"
        bounds = (caller, caller[:-1] + ";")  # every "caller:..." key, by the primary key's order
        over = (
            cur.execute(
                "SELECT COUNT(*) FROM idempotency WHERE scoped_key >= ? AND scoped_key < ?", bounds
            ).fetchone()[0]
            - limit
        )
        if over <= 0:
            return 0
        oldest = (
            "SELECT scoped_key FROM idempotency WHERE scoped_key >= ? AND scoped_key < ? ORDER BY at LIMIT ?"
        )
        size: int = cur.execute(_KEY_BYTES + f" WHERE scoped_key IN ({oldest})", (*bounds, over)).fetchone()[
            0
        ]
        cur.execute(f"DELETE FROM idempotency WHERE scoped_key IN ({oldest})", (*bounds, over))
        return size

    @staticmethod
    def claim(cur: sqlite3.Cursor, item: Submission) -> Accepted | None:
        """Take an idempotency key for this submission; the earlier outcome if it repeats one, None if
        the key is new (or absent). IdempotencyConflict if the key was used for other content."""
        if item.idempotency_key is None:
            return None
        row = cur.execute(
            "SELECT event_id, digest FROM idempotency WHERE scoped_key = ?", (item.idempotency_key,)
        ).fetchone()
        if row is not None:
            if row[1] != item.digest():
                raise IdempotencyConflict(
                    f"idempotency key {item.idempotency_key.split(':', 1)[-1]!r} "
                    "was used before for different feedback"
                )
            return Accepted(row[0], duplicate=True)
        cur.execute(
            "INSERT INTO idempotency (scoped_key, event_id, digest, at) VALUES (?, ?, ?, ?)",
            (item.idempotency_key, item.event.event_id, item.digest(), item.event.timestamp),
        )
        return None
