"""A durable, append-only local log of (topic, key, value) records with consumer-group offsets.

Two uses, one mechanism:
- the gateway's spool: every accepted event is written here (fsync'd) before the API answers,
  and a shipper moves it to Kafka in order; what Kafka has acknowledged is then deleted;
- the embedded default when no broker is configured: the log *is* the broker, and the trainer
  reads it by offset with committed offsets per consumer group, as it would read Kafka.

SQLite in WAL mode with synchronous=FULL gives the fsync'd, crash-safe append this needs; one
transaction per batch makes many concurrent appends cost one fsync (group commit).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import durable_sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    topic  TEXT NOT NULL,
    key    BLOB,
    value  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_topic ON records (topic, offset);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp    TEXT NOT NULL,
    topic  TEXT NOT NULL,
    next   INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);
"""


@dataclass(frozen=True)
class Record:
    """One log record; offsets increase across all topics of a log."""

    offset: int
    topic: str
    key: bytes | None
    value: bytes


class Transaction:
    """The writes of one LocalLog transaction."""

    def __init__(self, cursor: sqlite3.Cursor):
        self.cursor = cursor

    def append(self, topic: str, key: bytes | None, value: bytes) -> int:
        """Append one record; returns its offset."""
        self.cursor.execute("INSERT INTO records (topic, key, value) VALUES (?, ?, ?)", (topic, key, value))
        assert self.cursor.lastrowid is not None  # an INSERT sets it
        return self.cursor.lastrowid

    def append_many(self, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """Append records in one statement (one GIL hand-off, not one per record)."""
        if records:
            self.cursor.executemany("INSERT INTO records (topic, key, value) VALUES (?, ?, ?)", records)

    def commit_offset(self, group: str, topic: str, next_offset: int) -> None:
        """Set a consumer group's next offset."""
        self.cursor.execute(
            "INSERT INTO group_offsets (grp, topic, next) VALUES (?, ?, ?) "
            "ON CONFLICT (grp, topic) DO UPDATE SET next = excluded.next",
            (group, topic, next_offset),
        )


class LocalLog:
    """Append, read from an offset, commit offsets per consumer group; safe across threads."""

    def __init__(self, path: Path, extra_schema: str = ""):
        self.path = Path(path)
        self._db = durable_sqlite.connect(self.path)
        self._db.executescript(_SCHEMA + extra_schema)
        self._lock = threading.Lock()
        self._reader = durable_sqlite.connect(self.path)
        self._read_lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic, durable write: everything done on the yielded Transaction or none of it."""
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            yield Transaction(cur)

    def append(self, records: Iterable[tuple[str, bytes | None, bytes]]) -> list[int]:
        """Durably append records; returns their offsets."""
        with self.transaction() as tx:
            return [tx.append(*r) for r in records]

    def read(self, from_offset: int, limit: int = 500, topic: str | None = None) -> list[Record]:
        """Records with offset >= from_offset, oldest first (of one topic, or of all)."""
        # On the writer's connection, under its lock, although WAL would let the reader connection
        # read meanwhile: with the shipper reading there many times a second, a 16 MB spool disk
        # filled up before the test meant it to (tests/feedback/test_disk_full.py, in CI), most
        # likely a WAL that could not be rewound while another connection kept reading.
        with self._lock:
            if topic is None:
                rows = self._db.execute(
                    "SELECT offset, topic, key, value FROM records WHERE offset >= ? ORDER BY offset LIMIT ?",
                    (from_offset, limit),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT offset, topic, key, value FROM records WHERE topic = ? AND offset >= ? "
                    "ORDER BY offset LIMIT ?",
                    (topic, from_offset, limit),
                ).fetchall()
        return [Record(*row) for row in rows]

    def committed(self, group: str, topic: str) -> int:
        """The next offset the group has yet to process (0 if it never committed)."""
        with self._lock:
            row = self._db.execute(
                "SELECT next FROM group_offsets WHERE grp = ? AND topic = ?", (group, topic)
            ).fetchone()
        return row[0] if row else 0

    def commit(self, group: str, topic: str, next_offset: int) -> None:
        """Record that the group has processed everything before next_offset."""
        with self.transaction() as tx:
            tx.commit_offset(group, topic, next_offset)

    def delete_before(self, offset: int) -> None:
        """Forget records before offset (once they are safely elsewhere)."""
        with self._lock:
            self._db.execute("DELETE FROM records WHERE offset < ?", (offset,))

    def delete_topic_before(self, topic: str, offset: int) -> tuple[int, int]:
        """Forget one topic's records before offset; returns (records, bytes) removed."""
        with self.transaction() as tx:
            n, size = tx.cursor.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM records "
                "WHERE topic = ? AND offset < ?",
                (topic, offset),
            ).fetchone()
            tx.cursor.execute("DELETE FROM records WHERE topic = ? AND offset < ?", (topic, offset))
        return n, size

    def count(self, topic: str, from_offset: int = 0) -> int:
        """Records of one topic at or after from_offset."""
        with self._read_lock:
            n: int = self._reader.execute(
                "SELECT COUNT(*) FROM records WHERE topic = ? AND offset >= ?", (topic, from_offset)
            ).fetchone()[0]
            return n

    def stats(self, from_offset: int = 0) -> tuple[int, int]:
        """(records, bytes) at or after from_offset."""
        with self._lock:
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM records WHERE offset >= ?",
                (from_offset,),
            ).fetchone()
        return n, size

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the extra tables a user keeps beside the log (on a connection of its own, so
        readers do not wait for a writer's fsync)."""
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def migrate(self, statements: list[str]) -> None:
        """Apply schema changes to an existing log, skipping those it already has."""
        with self._lock:
            for sql in statements:
                try:
                    self._db.execute(sql)
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise

    def reclaim(self) -> None:
        """Give freed pages back to the file system (incremental vacuum)."""
        with self._lock:
            self._db.execute("PRAGMA incremental_vacuum")

    def close(self) -> None:
        """Close the database."""
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()
