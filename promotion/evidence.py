"""People's verdicts between versions, one per person and request, kept durably.

A ranking whose answers came from different versions (a blinded mixed request, a labelling item
during a canary) is one person's judgement of those versions. It is kept once per (rater, request,
pair of versions): a rater who ranks the same request again replaces their verdict (the latest
ranking wins, as in the trainer) and keeps its place in the order, so replays, with or without
idempotency keys, from one replica or several, never add a verdict. Two readers:

- the canary's sequential test reads the verdicts of a pair of versions in a fixed order (when each
  was first given, then rater and request), the same on every gateway (promotion/sequential.py);
- the leaderboard reads `board`: how many rankings produced each pattern of outcomes, a table whose
  size is bounded by the versions and K, not by traffic (promotion/leaderboard.py).

Rows come from the feedback log, not from the HTTP route (promotion/evidence_feed.py), so every
gateway holds the verdicts given on all of them. State: <state_dir>/gateway/evidence.db.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from core import durable_sqlite
from feedback.events import Comparison
from promotion.leaderboard import Board, Patterns, outcomes_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    at REAL NOT NULL, updated REAL NOT NULL, rater TEXT NOT NULL, request_id TEXT NOT NULL,
    a TEXT NOT NULL, b TEXT NOT NULL, a_wins INTEGER NOT NULL, b_wins INTEGER NOT NULL, ties INTEGER NOT NULL,
    PRIMARY KEY (rater, request_id, a, b)
);
CREATE INDEX IF NOT EXISTS verdicts_by_pair ON verdicts (a, b, at);
CREATE TABLE IF NOT EXISTS board (pattern TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def pair_counts(comparison: Comparison) -> dict[tuple[str, str], list[int]]:
    """(a, b) with a < b -> [a's wins, b's wins, ties] over the ranking's cross-version pairs."""
    versions = comparison.choice_versions or {}
    counts: dict[tuple[str, str], list[int]] = {}
    for o in outcomes_of(comparison.ranking, versions.get):
        a, b = sorted((o.winner, o.loser))
        row = counts.setdefault((a, b), [0, 0, 0])
        row[2 if o.tie else 0 if o.winner == a else 1] += 1
    return counts


def _pattern(counts: dict[tuple[str, str], list[int]]) -> str:
    return json.dumps(sorted([a, b, *c] for (a, b), c in counts.items()))


class EvidenceStore:
    """Verdicts per (rater, request) and the leaderboard's pattern counts."""

    def __init__(self, path: Path):
        self._db = durable_sqlite.connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.board = Board(self.patterns)

    def consumer_group(self) -> str:
        """This store's consumer group on the feedback log: new with the file, so a store that is
        deleted is rebuilt from the whole log."""
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'group'").fetchone()
            if row is None:
                row = (f"alignloop-evidence-{uuid.uuid4().hex[:12]}",)
                cur.execute("INSERT INTO meta (key, value) VALUES ('group', ?)", row)
        group: str = row[0]
        return group

    def record(self, comparison: Comparison) -> bool:
        """Keep a cross-version ranking as its rater's verdict on its request (replacing an earlier
        one by the same rater); False if it compares no two versions or a newer one is kept."""
        return self.record_many([comparison]) == 1

    def record_many(self, comparisons: list[Comparison]) -> int:
        """record() for each, in one durable transaction; returns how many were kept."""
        kept = 0
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            for comparison in comparisons:
                kept += self._keep(cur, comparison)
        if kept:
            self.board.changed()
        return kept

    def _keep(self, cur: sqlite3.Cursor, comparison: Comparison) -> bool:
        counts = pair_counts(comparison)
        if not counts:
            return False
        who, when = (comparison.rater, comparison.request_id), comparison.timestamp
        rows = cur.execute(
            "SELECT a, b, a_wins, b_wins, ties, at, updated FROM verdicts WHERE rater = ? AND request_id = ?",
            who,
        ).fetchall()
        if rows and max(r[6] for r in rows) > when:
            return False  # a redelivered older ranking: the newer one stands
        first = min((r[5] for r in rows), default=when)
        if rows:
            self._count(cur, _pattern({(r[0], r[1]): list(r[2:5]) for r in rows}), -1)
            cur.execute("DELETE FROM verdicts WHERE rater = ? AND request_id = ?", who)
        cur.executemany(
            "INSERT INTO verdicts (at, updated, rater, request_id, a, b, a_wins, b_wins, ties) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(first, when, *who, a, b, *c) for (a, b), c in counts.items()],
        )
        self._count(cur, _pattern(counts), +1)
        return True

    @staticmethod
    def _count(cur: sqlite3.Cursor, pattern: str, by: int) -> None:
        cur.execute(
            "INSERT INTO board (pattern, n) VALUES (?, ?) ON CONFLICT (pattern) DO UPDATE SET n = n + ?",
            (pattern, by, by),
        )
        cur.execute("DELETE FROM board WHERE n <= 0")

    def leaderboard(
        self, sft: str | None, serving: str | None, bootstrap_rounds: int = 200
    ) -> dict[str, Any]:
        """The versions' leaderboard from every kept ranking (promotion/leaderboard.py; blocking)."""
        return self.board.get(sft, serving, bootstrap_rounds)

    def patterns(self) -> Patterns:
        """(pattern of one ranking's outcomes, how many rankings gave it): the leaderboard's state."""
        with self._lock:
            rows = self._db.execute("SELECT pattern, n FROM board").fetchall()
        return [(json.loads(p), n) for p, n in rows]

    def verdicts(self, version: str, against: str, since: float = 0.0) -> list[tuple[str, bool | None]]:
        """(rater, True if `version` was preferred / False / None for an even split) of every
        verdict between the two first given at or after `since`, in the test's order."""
        a, b = sorted((version, against))
        with self._lock:
            rows = self._db.execute(
                "SELECT rater, a_wins, b_wins FROM verdicts WHERE a = ? AND b = ? AND at >= ? "
                "ORDER BY at, rater, request_id",
                (a, b, since),
            ).fetchall()
        out = []
        for rater, a_wins, b_wins in rows:
            mine, theirs = (a_wins, b_wins) if a == version else (b_wins, a_wins)
            out.append((rater, None if mine == theirs else mine > theirs))
        return out

    def prune(self, older_than_s: float) -> int:
        """Forget verdicts last given over `older_than_s` ago (their requests are past the feedback
        window, so nobody can rank them again); the board's counts stay. Returns how many."""
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            return cur.execute(
                "DELETE FROM verdicts WHERE updated < ?", (time.time() - older_than_s,)
            ).rowcount
