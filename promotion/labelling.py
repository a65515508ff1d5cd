"""The labelling queue: prompts sampled from production traffic, ranked by raters.

    offer()  a served single-turn chat prompt is sampled at labelling.sample_rate (never from a key
             that opted out) and waits as an item (once per distinct prompt)
    fill()   K fresh candidates are generated for it from the serving policy (gateway/label_filler.py),
             shuffled, and recorded as an ordinary served completion, so raters rank it through
             the ordinary feedback API; during a canary, how much the two versions' answers differ
             is kept with it
    score()  the trainer's newest reward model says how unsure it is of each waiting item's order
             (published through the registry after every round; trainer/acquisition.py)
    lease()  a rater gets one item at a time: the most informative one waiting (the reward model
             least sure of its order, or the versions' answers most different), or, at
             labelling.random_share of leases, one drawn uniformly at random; each item goes to
             labelling.overlap raters; a lease that expires (an abandoned tab) returns the item
    done()   the feedback router reports an accepted ranking of an item; overlapping rankings give
             the inter-rater agreement (InstructGPT reports about 73%)

Why a random share: every ranking is a training example, and the informative ones teach the
reward model most, but a verdict between versions must come from prompts people send, not from
prompts chosen because the versions differ most there, or the canary's test and the leaderboard
would estimate a preference over a tilted sample. So a ranking of an item leased for being
informative counts for training only; the router records it with no versions
(gateway/routers/feedback.py), and the versions' verdicts come from mixed user requests and
items leased at random (or in arrival order, when nothing is scored).

State is a SQLite file of the gateway's (<state_dir>/gateway/labels.db).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import durable_sqlite
from core.config import LabellingConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, prompt TEXT NOT NULL, created REAL NOT NULL,
    request_id TEXT UNIQUE, candidates TEXT
);
CREATE TABLE IF NOT EXISTS assignments (
    item_id TEXT NOT NULL, rater TEXT NOT NULL, leased_until REAL NOT NULL, done_at REAL, ranking TEXT,
    PRIMARY KEY (item_id, rater)
);
CREATE INDEX IF NOT EXISTS items_by_prompt ON items (prompt);
CREATE INDEX IF NOT EXISTS assignments_by_rater ON assignments (rater, done_at);
"""
_COLUMNS = [
    # the trainer's reward model's uncertainty about the item's candidates (0 sure .. 1 cannot tell)
    "ALTER TABLE items ADD COLUMN uncertainty REAL",
    # during a canary: how differently the two versions answered (see disagreement())
    "ALTER TABLE items ADD COLUMN disagreement REAL",
    # how the lease chose the item: random | informative | oldest (nothing scored)
    "ALTER TABLE assignments ADD COLUMN picked TEXT",
]
RANDOM, INFORMATIVE, OLDEST = "random", "informative", "oldest"
# Items that still need a rater: filled, not held or ranked by this rater, fewer than overlap others.
_NEEDS_RATER = (
    "i.candidates IS NOT NULL AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.item_id "
    "AND a.rater = :rater) AND (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.item_id AND "
    "(a.done_at IS NOT NULL OR a.leased_until > :now)) < :overlap"
)
_INFORMATION = "MAX(COALESCE(i.uncertainty, -1), COALESCE(i.disagreement, -1))"
_DAY = 86400.0


@dataclass(frozen=True)
class Item:
    """One prompt and its candidates, as a rater sees it (versions hidden)."""

    item_id: str
    request_id: str
    prompt: str
    candidates: list[dict[str, str]]  # [{"id": choice id, "text": ...}] in the (shuffled) order shown


def disagreement(answers: list[tuple[str, str]]) -> float | None:
    """How differently versions answered one prompt, from (version, answer) pairs: 1 - the mean
    Jaccard similarity of the word sets over pairs of answers from different versions (0: the same
    words, 1: none shared); None when one version wrote them all."""
    words = [(v, set(text.lower().split())) for v, text in answers]
    sims = [
        len(a & b) / len(a | b) if a | b else 1.0
        for i, (va, a) in enumerate(words)
        for vb, b in words[i + 1 :]
        if va != vb
    ]
    return 1.0 - sum(sims) / len(sims) if sims else None


def agreement(a: list[list[str]], b: list[list[str]]) -> tuple[int, int]:
    """(pairs both rankings order the same way, pairs both order strictly) of two rankings of one item."""

    def order(ranking: list[list[str]]) -> dict[str, int]:
        return {c: i for i, group in enumerate(ranking) for c in group}

    ra, rb = order(a), order(b)
    ids = sorted(set(ra) & set(rb))
    same = compared = 0
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            da, db = ra[x] - ra[y], rb[x] - rb[y]
            if da and db:
                compared += 1
                same += (da > 0) == (db > 0)
    return same, compared


class LabelQueue:
    """Items to rank, their leases and the rankings given."""

    def __init__(self, path: Path, config: LabellingConfig, seed: int = 0):
        self.config = config
        self._db = durable_sqlite.connect(path)
        self._db.executescript(_SCHEMA)
        durable_sqlite.add_columns(self._db, _COLUMNS)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def offer(self, prompt: str) -> bool:
        """Maybe sample a served prompt into the queue; True if it was taken."""
        if self.config.sample_rate <= 0 or self._rng.random() >= self.config.sample_rate:
            return False
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            waiting = cur.execute("SELECT COUNT(*) FROM items WHERE candidates IS NULL").fetchone()[0]
            # Popular prompts repeat in production traffic: one item per prompt is enough.
            seen = cur.execute("SELECT 1 FROM items WHERE prompt = ?", (prompt,)).fetchone()
            if waiting >= self.config.max_waiting or seen:
                return False
            cur.execute(
                "INSERT INTO items (item_id, prompt, created) VALUES (?, ?, ?)",
                (f"item-{uuid.uuid4().hex[:16]}", prompt, time.time()),
            )
        return True

    def unfilled(self, limit: int = 4) -> list[tuple[str, str]]:
        """(item id, prompt) of items still waiting for candidates, oldest first."""
        return self._rows(
            "SELECT item_id, prompt FROM items WHERE candidates IS NULL ORDER BY created LIMIT ?", (limit,)
        )

    def fill(
        self,
        item_id: str,
        request_id: str,
        candidates: list[dict[str, str]],
        versions_disagree: float | None = None,
    ) -> None:
        """Attach the generated candidates (already recorded as request_id's completion) and, for a
        canary's item, how differently the versions answered."""
        shown = [{"id": c["id"], "text": c["text"]} for c in candidates]
        self._rng.shuffle(shown)  # blind: no position tells which version wrote what
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            cur.execute(
                "UPDATE items SET request_id = ?, candidates = ?, disagreement = ? WHERE item_id = ?",
                (request_id, json.dumps(shown), versions_disagree, item_id),
            )

    def score(self, uncertainty: dict[str, float]) -> int:
        """Keep the reward model's uncertainty (request id -> 0..1) on the items it was computed
        for; returns how many items it matched."""
        rows = [(min(1.0, max(0.0, float(u))), rid) for rid, u in uncertainty.items()]
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            cur.executemany("UPDATE items SET uncertainty = ? WHERE request_id = ?", rows)
            return max(0, cur.rowcount)

    def prune(self) -> int:
        """Drop items (and their rankings) older than labelling.retention_days; returns how many."""
        before = time.time() - self.config.retention_days * _DAY
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            cur.execute(
                "DELETE FROM assignments WHERE item_id IN (SELECT item_id FROM items WHERE created < ?)",
                (before,),
            )
            return cur.execute("DELETE FROM items WHERE created < ?", (before,)).rowcount

    def drop(self, item_id: str) -> None:
        """Forget an item whose prompt cannot be answered (it no longer fits the serving model)."""
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            cur.execute("DELETE FROM items WHERE item_id = ?", (item_id,))

    def items(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest items: prompt, request, whether candidates exist, rankings given (admin view)."""
        rows = self._rows(
            "SELECT i.item_id, i.prompt, i.request_id, i.candidates IS NOT NULL, (SELECT COUNT(*) FROM "
            "assignments a WHERE a.item_id = i.item_id AND a.done_at IS NOT NULL), i.uncertainty, "
            "i.disagreement FROM items i ORDER BY i.created DESC LIMIT ?",
            (limit,),
        )
        keys = ("item_id", "prompt", "request_id", "filled", "rankings", "uncertainty", "disagreement")
        return [{**dict(zip(keys, r)), "filled": bool(r[3])} for r in rows]

    def lease(self, rater: str) -> Item | None:
        """The rater's item: the one they hold already, else a new one that needs more raters (the
        most informative, or at labelling.random_share of leases one drawn at random)."""
        now = time.time()
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            held = cur.execute(
                "SELECT a.item_id FROM assignments a WHERE a.rater = ? AND a.done_at IS NULL "
                "AND a.leased_until > ? LIMIT 1",
                (rater, now),
            ).fetchone()
            if held is None:
                held, picked = self._pick(cur, rater, now)
                if held is None:
                    return None
                cur.execute(
                    "INSERT OR REPLACE INTO assignments (item_id, rater, leased_until, picked) "
                    "VALUES (?, ?, ?, ?)",
                    (held[0], rater, now + self.config.lease_s, picked),
                )
            row = cur.execute(
                "SELECT item_id, request_id, prompt, candidates FROM items WHERE item_id = ?", (held[0],)
            ).fetchone()
        return Item(row[0], row[1], row[2], json.loads(row[3]))

    def _pick(self, cur: sqlite3.Cursor, rater: str, now: float) -> tuple[tuple[str] | None, str]:
        """(the item to lease, how it was picked), inside lease's transaction."""
        args = {"rater": rater, "now": now, "overlap": self.config.overlap}
        if self._rng.random() < self.config.random_share:
            ids = cur.execute(f"SELECT i.item_id FROM items i WHERE {_NEEDS_RATER} ORDER BY i.created", args)
            waiting = ids.fetchall()
            return (self._rng.choice(waiting) if waiting else None), RANDOM
        best = cur.execute(
            f"SELECT i.item_id, {_INFORMATION} FROM items i WHERE {_NEEDS_RATER} "
            f"ORDER BY {_INFORMATION} DESC, i.created LIMIT 1",
            args,
        ).fetchone()
        if best is None:
            return None, INFORMATIVE
        return (best[0],), INFORMATIVE if best[1] >= 0 else OLDEST

    def picked(self, request_id: str, rater: str) -> str | None:
        """How the rater's lease of this request's item chose it (random, informative, oldest), or
        None if it is no item of theirs."""
        row = self._rows(
            "SELECT a.picked FROM items i JOIN assignments a ON a.item_id = i.item_id "
            "WHERE i.request_id = ? AND a.rater = ?",
            (request_id, rater),
        )
        return row[0][0] if row else None

    def leased_to(self, request_id: str, rater: str) -> bool:
        """Whether the item of this request is the rater's: leased to them and not expired, or ranked
        by them already (they may change their ranking)."""
        return bool(
            self._rows(
                "SELECT 1 FROM items i JOIN assignments a ON a.item_id = i.item_id WHERE "
                "i.request_id = ? AND a.rater = ? AND (a.done_at IS NOT NULL OR a.leased_until > ?)",
                (request_id, rater, time.time()),
            )
        )

    def done(self, request_id: str, rater: str, ranking: list[list[str]]) -> bool:
        """Record an accepted ranking of an item leased to the rater; False if the request is no
        item of theirs."""
        with durable_sqlite.transaction(self._db, self._lock) as cur:
            row = cur.execute(
                "SELECT a.item_id FROM items i JOIN assignments a ON a.item_id = i.item_id WHERE "
                "i.request_id = ? AND a.rater = ? AND (a.done_at IS NOT NULL OR a.leased_until > ?)",
                (request_id, rater, time.time()),
            ).fetchone()
            if row is None:
                return False
            cur.execute(
                "UPDATE assignments SET done_at = ?, ranking = ? WHERE item_id = ? AND rater = ?",
                (time.time(), json.dumps(ranking), row[0], rater),
            )
        return True

    def rankings(self) -> list[list[list[str]]]:
        """Every ranking raters gave (choice ids, best first; inner lists are ties)."""
        return [
            json.loads(r) for (r,) in self._rows("SELECT ranking FROM assignments WHERE done_at IS NOT NULL")
        ]

    def waiting(self) -> int:
        """Items that still need a rater (or candidates)."""
        n: int = self._rows(
            "SELECT COUNT(*) FROM items i WHERE (SELECT COUNT(*) FROM assignments a WHERE "
            "a.item_id = i.item_id AND a.done_at IS NOT NULL) < ?",
            (self.config.overlap,),
        )[0][0]
        return n

    def done_today(self, rater: str) -> int:
        """Items the rater ranked in the last 24 hours."""
        n: int = self._rows(
            "SELECT COUNT(*) FROM assignments WHERE rater = ? AND done_at > ?", (rater, time.time() - _DAY)
        )[0][0]
        return n

    def raters(self) -> dict[str, Any]:
        """Per rater: items ranked, and agreement with the other raters of the same items; overall."""
        by_item: dict[str, list[tuple[str, list[list[str]]]]] = {}
        counts: dict[str, int] = {}
        for item, rater, ranking in self._rows(
            "SELECT item_id, rater, ranking FROM assignments WHERE done_at IS NOT NULL"
        ):
            by_item.setdefault(item, []).append((rater, json.loads(ranking)))
            counts[rater] = counts.get(rater, 0) + 1
        pairs: dict[str, list[int]] = {r: [0, 0] for r in counts}
        total = [0, 0]
        for labels in by_item.values():
            for i, (ra, a) in enumerate(labels):
                for rb, b in labels[i + 1 :]:
                    same, compared = agreement(a, b)
                    for r in (ra, rb):
                        pairs[r][0] += same
                        pairs[r][1] += compared
                    total[0] += same
                    total[1] += compared
        return {
            "raters": {
                r: {
                    "ranked": counts[r],
                    "agreement": pairs[r][0] / pairs[r][1] if pairs[r][1] else None,
                    "compared_pairs": pairs[r][1],
                }
                for r in counts
            },
            "agreement": total[0] / total[1] if total[1] else None,
            "compared_pairs": total[1],
            "overlapping_items": sum(len(v) > 1 for v in by_item.values()),
            "waiting": self.waiting(),
        }
