"""The trainer's durable dataset: what it consumed, de-duplicated, joined and ready to train on.

Events are stored and de-duplicated (by event id) in one transaction; the consumer commits its
offsets only afterwards, so a crash at any point re-delivers events, and re-delivered events are
recognised and skipped: nothing is lost and nothing counts twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from feedback.events import Comparison, CompletionServed
from trainer.data import Ranking

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS completions (
    request_id TEXT PRIMARY KEY, route TEXT, prompt TEXT, policy_version TEXT, choices TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL, request_id TEXT NOT NULL,
    ranking TEXT NOT NULL, rater TEXT, policy_version TEXT
);
CREATE TABLE IF NOT EXISTS consumed (
    topic TEXT, partition INTEGER, first_offset INTEGER, last_offset INTEGER, PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, started REAL, finished REAL, comparisons INTEGER, version TEXT, rm_dir TEXT,
    decision TEXT, record TEXT
);
"""


def user_prompt(event: CompletionServed) -> str | None:
    """The single user message of a chat request (what the trainer's prompts are), else None."""
    if event.route != "chat" or not event.messages:
        return None
    users = [m["content"] for m in event.messages if m.get("role") == "user"]
    return users[-1] if len(users) == 1 and len(event.messages) == 1 else None


class DatasetStore:
    """Completions, comparisons and training rounds in one SQLite database."""

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def store(self, delivered: list) -> tuple[int, int]:
        """Store a polled batch (feedback.source.Delivered); returns (new completions, new comparisons)."""
        new = [0, 0]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for d in delivered:
                    cur.execute("INSERT INTO consumed (topic, partition, first_offset, last_offset) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT (topic, partition) DO UPDATE SET "
                                "first_offset = MIN(first_offset, excluded.first_offset), "
                                "last_offset = MAX(last_offset, excluded.last_offset)",
                                (d.topic, d.partition, d.offset, d.offset))
                    e = d.event
                    if cur.execute("INSERT OR IGNORE INTO seen (event_id) VALUES (?)", (e.event_id,)).rowcount == 0:
                        continue  # delivered before: already stored
                    if isinstance(e, CompletionServed):
                        cur.execute("INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?)",
                                    (e.request_id, e.route, user_prompt(e), e.policy_version,
                                     json.dumps({c.choice_id: c.text for c in e.choices})))
                        new[0] += 1
                    elif isinstance(e, Comparison):
                        cur.execute("INSERT INTO comparisons (event_id, request_id, ranking, rater, policy_version) "
                                    "VALUES (?, ?, ?, ?, ?)", (e.event_id, e.request_id, json.dumps(e.ranking), e.rater,
                                                               e.policy_version))
                        new[1] += 1
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return new[0], new[1]

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def counts(self) -> dict[str, int]:
        """How much the dataset holds."""
        return {"completions": self._rows("SELECT COUNT(*) FROM completions")[0][0],
                "comparisons": self._rows("SELECT COUNT(*) FROM comparisons")[0][0],
                "events": self._rows("SELECT COUNT(*) FROM seen")[0][0]}

    def joined_count(self) -> int:
        """Comparisons whose completion is stored too (what a round can train on)."""
        return self._rows("SELECT COUNT(*) FROM comparisons c JOIN completions p USING (request_id) "
                          "WHERE p.prompt IS NOT NULL")[0][0]

    def comparison_ids(self) -> list[str]:
        """Every stored comparison's event id (for consistency checks)."""
        return [r[0] for r in self._rows("SELECT event_id FROM comparisons ORDER BY seq")]

    def rankings(self) -> list[Ranking]:
        """Comparisons joined to the texts they rank (single-turn chat requests)."""
        out = []
        for ranking_json, prompt, choices_json in self._rows(
                "SELECT c.ranking, p.prompt, p.choices FROM comparisons c JOIN completions p USING (request_id) "
                "WHERE p.prompt IS NOT NULL ORDER BY c.seq"):
            groups, choices = json.loads(ranking_json), json.loads(choices_json)
            ids = [cid for g in groups for cid in g]
            if not all(cid in choices for cid in ids):
                continue
            index = {cid: i for i, cid in enumerate(ids)}
            out.append(Ranking(prompt, [choices[cid] for cid in ids], [[index[c] for c in g] for g in groups]))
        return out

    def prompts(self) -> list[str]:
        """Every distinct single-turn user prompt served."""
        return [r[0] for r in self._rows("SELECT DISTINCT prompt FROM completions WHERE prompt IS NOT NULL ORDER BY prompt")]

    def consumed(self) -> list[dict]:
        """The offset ranges consumed, per topic and partition (lineage)."""
        return [{"topic": t, "partition": p, "first": f, "last": last}
                for t, p, f, last in self._rows("SELECT * FROM consumed ORDER BY topic, partition")]

    def last_round(self) -> dict | None:
        """The latest finished round, or None."""
        rows = self._rows("SELECT round, finished, comparisons, version, rm_dir, decision FROM rounds "
                          "ORDER BY round DESC LIMIT 1")
        if not rows:
            return None
        keys = ("round", "finished", "comparisons", "version", "rm_dir", "decision")
        return dict(zip(keys, rows[0]))

    def record_round(self, number: int, started: float, comparisons: int, version: str | None, rm_dir: str,
                     decision: str, record: dict) -> None:
        """Remember a finished round."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (number, started, time.time(), comparisons, version, rm_dir, decision, json.dumps(record)))
