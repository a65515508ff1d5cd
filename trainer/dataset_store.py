"""The trainer's durable dataset: what it consumed, de-duplicated, joined and ready to train on.

Events are stored and de-duplicated (by event id) in one transaction; the consumer commits its
offsets only afterwards, so a crash at any point re-delivers events, and re-delivered events are
recognised and skipped: nothing is lost and nothing counts twice. A record that is not an event
is kept as a dead letter with its offset, and consumption goes on.

What a round trains on is defended against one user steering it: one ranking per (user, request)
counts, the latest; each user contributes at most `per_user_cap` rankings (the latest) and prompts.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core import durable_sqlite
from feedback.events import Comparison, CompletionServed
from trainer.data import Conversation, Ranking

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS completions (
    request_id TEXT PRIMARY KEY, route TEXT, prompt TEXT, policy_version TEXT, choices TEXT NOT NULL, caller TEXT,
    conversation TEXT
);
CREATE TABLE IF NOT EXISTS comparisons (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL, request_id TEXT NOT NULL,
    ranking TEXT NOT NULL, rater TEXT, policy_version TEXT
);
CREATE INDEX IF NOT EXISTS comparisons_by_request ON comparisons (request_id, rater);
CREATE TABLE IF NOT EXISTS consumed (
    topic TEXT, partition INTEGER, first_offset INTEGER, last_offset INTEGER, PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, started REAL, finished REAL, comparisons INTEGER, version TEXT, rm_dir TEXT,
    decision TEXT, record TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    topic TEXT, partition INTEGER, offset INTEGER, reason TEXT, value BLOB, at REAL, PRIMARY KEY (topic, partition, offset)
);
"""
_MIGRATIONS = [
    "ALTER TABLE completions ADD COLUMN caller TEXT",
    # the newest comparison a round could see: what arrives after it is new to the next one
    "ALTER TABLE rounds ADD COLUMN last_seq INTEGER",
    # when the rater gave it (the event's timestamp): the feedback-to-deployment clock starts there
    "ALTER TABLE comparisons ADD COLUMN at REAL",
    # a multi-turn prompt's messages (JSON); prompt holds its key
    "ALTER TABLE completions ADD COLUMN conversation TEXT",
]

# Trainable comparisons: joined to a chat completion, the latest per (rater, request), and at most
# :cap per rater (the latest). n = 1 is a rater's newest.
_USABLE = """
WITH joined AS (
    SELECT c.seq, c.rater, c.ranking, p.prompt, p.conversation, p.choices,
           ROW_NUMBER() OVER (PARTITION BY c.request_id, c.rater ORDER BY c.seq DESC) AS k
    FROM comparisons c JOIN completions p USING (request_id) WHERE p.prompt IS NOT NULL),
usable AS (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY rater ORDER BY seq DESC) AS n FROM joined WHERE k = 1)
"""


def training_prompt(event: CompletionServed) -> str | None:
    """What a chat request asked, as the trainer's prompt: the user's message, or for a conversation
    (earlier turns, then the user's) a Conversation; None for what is not a chat answered after a
    user's message (plain completions, a conversation ending in another role)."""
    if event.route != "chat" or not event.messages:
        return None
    messages = event.messages
    if len(messages) == 1:
        return messages[0]["content"] if messages[0].get("role") == "user" else None
    try:
        return Conversation(messages)  # which turns make a conversation is Conversation's rule
    except ValueError:
        return None


def _prompt(key: str, conversation: str | None) -> str:
    return Conversation(json.loads(conversation)) if conversation else key


@dataclass(frozen=True)
class RankedBy:
    """A trainable ranking and who gave it."""

    ranking: Ranking
    rater: str


class DatasetStore:
    """Completions, comparisons, dead letters and training rounds in one SQLite database."""

    def __init__(self, path: Path, per_user_cap: int = 1_000_000):
        self.per_user_cap = per_user_cap
        self._db = durable_sqlite.connect(Path(path))
        self._db.executescript(_SCHEMA)
        durable_sqlite.add_columns(self._db, _MIGRATIONS)
        self._lock = threading.Lock()

    def store(self, delivered: list) -> tuple[int, int]:
        """Store a polled batch (feedback.source.Delivered); returns (new completions, new comparisons)."""
        new = [0, 0]
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            for d in delivered:
                cur.execute(
                    "INSERT INTO consumed (topic, partition, first_offset, last_offset) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET "
                    "first_offset = MIN(first_offset, excluded.first_offset), "
                    "last_offset = MAX(last_offset, excluded.last_offset)",
                    (d.topic, d.partition, d.offset, d.offset),
                )
                e = d.event
                if e is None:
                    cur.execute(
                        "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                        (d.topic, d.partition, d.offset, d.error, d.raw, time.time()),
                    )
                    continue
                if (
                    cur.execute("INSERT OR IGNORE INTO seen (event_id) VALUES (?)", (e.event_id,)).rowcount
                    == 0
                ):
                    continue  # delivered before: already stored
                if isinstance(e, CompletionServed):
                    prompt = training_prompt(e)
                    cur.execute(
                        "INSERT OR IGNORE INTO completions "
                        "(request_id, route, prompt, policy_version, choices, caller, conversation) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.request_id,
                            e.route,
                            None if prompt is None else str(prompt),
                            e.policy_version,
                            json.dumps({c.choice_id: c.text for c in e.choices}),
                            e.caller,
                            json.dumps(prompt.as_messages()) if isinstance(prompt, Conversation) else None,
                        ),
                    )
                    new[0] += 1
                elif isinstance(e, Comparison):
                    cur.execute(
                        "INSERT INTO comparisons (event_id, request_id, ranking, rater, policy_version, at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            e.event_id,
                            e.request_id,
                            json.dumps(e.ranking),
                            e.rater,
                            e.policy_version,
                            e.timestamp,
                        ),
                    )
                    new[1] += 1
        return new[0], new[1]

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def counts(self) -> dict[str, int]:
        """How much the dataset holds."""
        return {
            "completions": self._rows("SELECT COUNT(*) FROM completions")[0][0],
            "comparisons": self._rows("SELECT COUNT(*) FROM comparisons")[0][0],
            "events": self._rows("SELECT COUNT(*) FROM seen")[0][0],
        }

    def dead_letters(self) -> list[dict]:
        """Records that were not events: where they were and why."""
        return [
            {"topic": t, "partition": p, "offset": o, "reason": r}
            for t, p, o, r in self._rows(
                "SELECT topic, partition, offset, reason FROM dead_letters ORDER BY topic, partition, offset"
            )
        ]

    def joined_count(self) -> int:
        """Trainable comparisons (what a round can train on, after the per-user rules)."""
        return self._rows(_USABLE + "SELECT COUNT(*) FROM usable WHERE n <= ?", (self.per_user_cap,))[0][0]

    def last_seq(self) -> int:
        """The newest stored comparison's sequence number (0: none)."""
        return self._rows("SELECT COALESCE(MAX(seq), 0) FROM comparisons")[0][0]

    def new_since(self, seq: int) -> int:
        """Trainable comparisons stored after `seq`, counting at most per_user_cap per rater: what
        triggers a round. (Counting the capped total instead stops counting once every rater is at
        the cap: a service with one busy key would never train again.)"""
        return self._rows(
            _USABLE + "SELECT COALESCE(SUM(MIN(c, ?)), 0) FROM (SELECT COUNT(*) AS c FROM joined "
            "WHERE k = 1 AND seq > ? GROUP BY rater)",
            (self.per_user_cap, seq),
        )[0][0]

    def first_at_since(self, seq: int) -> float | None:
        """When the oldest comparison stored after `seq` was given (None: none, or stored before times were)."""
        return self._rows("SELECT MIN(at) FROM comparisons WHERE seq > ?", (seq,))[0][0]

    def comparison_ids(self) -> list[str]:
        """Every stored comparison's event id (for consistency checks)."""
        return [r[0] for r in self._rows("SELECT event_id FROM comparisons ORDER BY seq")]

    def ranked(self) -> list[RankedBy]:
        """Trainable comparisons joined to the texts they rank, oldest first, with their raters."""
        out = []
        for ranking_json, prompt, conversation, choices_json, rater in self._rows(
            _USABLE
            + "SELECT ranking, prompt, conversation, choices, rater FROM usable WHERE n <= ? ORDER BY seq",
            (self.per_user_cap,),
        ):
            groups, choices = json.loads(ranking_json), json.loads(choices_json)
            ids = [cid for g in groups for cid in g]
            if not all(cid in choices for cid in ids):
                continue
            index = {cid: i for i, cid in enumerate(ids)}
            out.append(
                RankedBy(
                    Ranking(
                        _prompt(prompt, conversation),
                        [choices[cid] for cid in ids],
                        [[index[c] for c in g] for g in groups],
                    ),
                    rater or "",
                )
            )
        return out

    def rankings(self) -> list[Ranking]:
        """Trainable comparisons joined to the texts they rank (chat requests)."""
        return [r.ranking for r in self.ranked()]

    def per_user(self) -> dict[str, dict[str, int]]:
        """Per rater: comparisons stored and comparisons a round may use (lineage)."""
        stored = dict(self._rows("SELECT COALESCE(rater, ''), COUNT(*) FROM comparisons GROUP BY rater"))
        used = dict(
            self._rows(
                _USABLE + "SELECT COALESCE(rater, ''), COUNT(*) FROM usable WHERE n <= ? GROUP BY rater",
                (self.per_user_cap,),
            )
        )
        return {r: {"stored": n, "used": used.get(r, 0)} for r, n in stored.items()}

    def prompts(self) -> list[str]:
        """Distinct chat prompts served (single messages and Conversations), each caller's latest
        per_user_cap requests at most."""
        return [
            _prompt(prompt, conversation)
            for prompt, conversation in self._rows(
                "WITH ranked AS (SELECT prompt, conversation, "
                "ROW_NUMBER() OVER (PARTITION BY caller ORDER BY rowid DESC) AS n "
                "FROM completions WHERE prompt IS NOT NULL) "
                "SELECT DISTINCT prompt, conversation FROM ranked WHERE n <= ? ORDER BY prompt",
                (self.per_user_cap,),
            )
        ]

    def waiting_items(self, caller: str, raters: int, limit: int) -> list[tuple[str, str, list[str]]]:
        """(request id, prompt, candidate texts) of the newest `limit` chat completions served to
        `caller` that fewer than `raters` people ranked: the labelling queue's items still waiting."""
        rows = self._rows(
            "SELECT p.request_id, p.prompt, p.conversation, p.choices FROM completions p "
            "WHERE p.caller = ? AND p.prompt IS NOT NULL AND (SELECT COUNT(DISTINCT c.rater) "
            "FROM comparisons c WHERE c.request_id = p.request_id) < ? ORDER BY p.rowid DESC LIMIT ?",
            (caller, raters, limit),
        )
        return [(rid, _prompt(p, conv), list(json.loads(choices).values())) for rid, p, conv, choices in rows]

    def consumed(self) -> list[dict]:
        """The offset ranges consumed, per topic and partition (lineage)."""
        return [
            {"topic": t, "partition": p, "first": f, "last": last}
            for t, p, f, last in self._rows("SELECT * FROM consumed ORDER BY topic, partition")
        ]

    def last_round(self) -> dict | None:
        """The latest finished round, or None."""
        rows = self._rows(
            "SELECT round, finished, comparisons, version, rm_dir, decision, last_seq FROM rounds "
            "ORDER BY round DESC LIMIT 1"
        )
        if not rows:
            return None
        keys = ("round", "finished", "comparisons", "version", "rm_dir", "decision", "last_seq")
        return dict(zip(keys, rows[0]))

    def record_round(
        self,
        number: int,
        started: float,
        comparisons: int,
        version: str | None,
        rm_dir: str,
        decision: str,
        record: dict,
        last_seq: int = 0,
    ) -> None:
        """Remember a finished round (`last_seq`: the newest comparison it could train on)."""
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            cur.execute(
                "INSERT OR REPLACE INTO rounds (round, started, finished, comparisons, version, rm_dir, "
                "decision, record, last_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    number,
                    started,
                    time.time(),
                    comparisons,
                    version,
                    rm_dir,
                    decision,
                    json.dumps(record),
                    last_seq,
                ),
            )
