"""SQLite set up for durability, shared by the feedback spool and the trainer's dataset store.

WAL with synchronous=FULL: a committed transaction is on disk (fsync'd) before COMMIT returns,
and readers on another connection do not wait for a writer. The file is created 0600: it holds
users' prompts and feedback.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path


def connect(path: Path) -> sqlite3.Connection:
    """A connection to a durable database at path (created 0600 if new), usable across threads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    # Freed pages can be handed back (PRAGMA incremental_vacuum) once old rows are pruned; this
    # takes effect for new files, and the one VACUUM below converts an older one.
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            db.execute("VACUUM")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Cursor]:
    """One atomic, durable write on db: everything done on the cursor, or none of it."""
    with lock:
        cur = db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise


def add_columns(db: sqlite3.Connection, statements: list[str]) -> None:
    """Run `ALTER TABLE ... ADD COLUMN` statements, skipping columns an existing file already has:
    how a database written by an older version gains what a newer one records."""
    for sql in statements:
        try:
            db.execute(sql)
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
