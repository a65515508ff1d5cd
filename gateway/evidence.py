"""People's verdicts between versions, kept durably: every accepted ranking whose answers came from
different versions (a blinded mixed request, a labelling item during a canary) becomes pairwise
outcomes (the leaderboard's) and one verdict per pair of versions (the canary's sequential test: a
ranking is one person's single judgement, so its pairs count once there, as the share of them the
version won). State: <state_dir>/gateway/evidence.db.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from core import durable_sqlite
from gateway.leaderboard import Outcome, leaderboard, outcomes_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event_id TEXT NOT NULL,
    winner TEXT NOT NULL, loser TEXT NOT NULL, tie INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event_id TEXT NOT NULL, rater TEXT,
    a TEXT NOT NULL, b TEXT NOT NULL, a_share REAL NOT NULL, UNIQUE (event_id, a, b)
);
"""


class EvidenceStore:
    """Cross-version outcomes and verdicts."""

    def __init__(self, path: Path):
        self._db = durable_sqlite.connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._board: tuple[tuple, dict] | None = None  # (what it was computed from, the board)

    def leaderboard(self, sft: str | None, serving: str | None, bootstrap_rounds: int = 200) -> dict:
        """The versions' leaderboard from every outcome kept (gateway/leaderboard.py), recomputed
        only when there are new outcomes (its bootstrap takes a while)."""
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
        key = (count, sft, serving, bootstrap_rounds)
        if self._board is None or self._board[0] != key:
            self._board = (key, leaderboard(self.outcomes(), sft, serving, bootstrap_rounds))
        return self._board[1]

    def record(self, event_id: str, rater: str, ranking: list[list[str]], version_of) -> int:
        """Keep one accepted ranking's cross-version outcomes (`version_of(choice id)` names each
        answer's version); returns how many (0: one version only, or this event was kept before)."""
        outcomes = outcomes_of(ranking, version_of)
        if not outcomes:
            return 0
        now = time.time()
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            if cur.execute("SELECT 1 FROM verdicts WHERE event_id = ?", (event_id,)).fetchone():
                return 0  # an idempotent retry of the same event
            cur.executemany("INSERT INTO outcomes (at, event_id, winner, loser, tie) VALUES (?, ?, ?, ?, ?)",
                            [(now, event_id, o.winner, o.loser, int(o.tie)) for o in outcomes])
            for a, b in sorted({tuple(sorted((o.winner, o.loser))) for o in outcomes}):
                pairs = [o for o in outcomes if {o.winner, o.loser} == {a, b}]
                a_share = sum(0.5 if o.tie else float(o.winner == a) for o in pairs) / len(pairs)
                cur.execute("INSERT INTO verdicts (at, event_id, rater, a, b, a_share) VALUES (?, ?, ?, ?, ?, ?)",
                            (now, event_id, rater, a, b, a_share))
        return len(outcomes)

    def outcomes(self) -> list[Outcome]:
        """Every pairwise outcome kept, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT winner, loser, tie FROM outcomes ORDER BY id").fetchall()
        return [Outcome(w, lo, bool(t)) for w, lo, t in rows]

    def verdicts(self, version: str, against: str, after_id: int = 0) -> list[tuple[int, bool | None]]:
        """(row id, True if `version` was preferred / False / None for an even split) of each ranking
        after row `after_id` that compared the two versions, oldest first."""
        a, b = sorted((version, against))
        with self._lock:
            rows = self._db.execute("SELECT id, a_share FROM verdicts WHERE a = ? AND b = ? AND id > ? ORDER BY id",
                                    (a, b, after_id)).fetchall()
        out = []
        for row_id, a_share in rows:
            share = a_share if a == version else 1.0 - a_share
            out.append((row_id, None if share == 0.5 else share > 0.5))
        return out

    def last_id(self) -> int:
        """The newest verdict's row id (0: none)."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM verdicts").fetchone()[0]
