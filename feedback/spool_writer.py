"""The spool's writer thread: group commit of served completions and feedback to the local log.

Completions are queued without waiting (serving never waits on the disk); feedback waits for the
transaction that holds it, so the API answers only once it is fsync'd. One transaction takes
everything queued meanwhile, so many concurrent submissions cost one fsync. A submission is all or
nothing (a savepoint), so one whose idempotency key conflicts leaves the rest of the batch alone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from core.supervision import OnFailure, SupervisedThread
from feedback.events import CompletionServed
from feedback.idempotency import IdempotencyIndex
from feedback.local_log import LocalLog, Transaction
from feedback.metrics import FeedbackMetrics
from feedback.spool_usage import SpoolUsage
from feedback.submission import Accepted, IdempotencyConflict, Submission
from feedback.topics import topic_for

log = logging.getLogger(__name__)
_MAX_GROUP = 512  # queue items per transaction


@dataclass
class Tally:
    """What a transaction adds to the spool."""

    events: int = 0
    bytes: int = 0
    index_bytes: int = 0

    def add(self, other: Tally) -> None:
        """Add another tally to this one."""
        self.events += other.events
        self.bytes += other.bytes
        self.index_bytes += other.index_bytes


@dataclass
class CompletionWrite:
    """A served completion to record."""

    event: CompletionServed
    value: bytes


@dataclass
class FeedbackWrite:
    """Feedback submissions to accept together, and the future the API awaits."""

    items: list[Submission]
    future: concurrent.futures.Future[list[Accepted]]


class SpoolWriter:
    """A thread that group-commits what the API hands it."""

    def __init__(
        self,
        spool: LocalLog,
        usage: SpoolUsage,
        metrics: FeedbackMetrics,
        max_keys_per_caller: int,
        on_commit: Callable[[], None] = lambda: None,
        on_failure: OnFailure = lambda _: None,
    ):
        self._log, self._usage, self._metrics = spool, usage, metrics
        self._max_keys = max_keys_per_caller
        self._on_commit = on_commit
        self._queue: queue.Queue[CompletionWrite | FeedbackWrite] = queue.Queue()
        self._thread = SupervisedThread("feedback-writer", self._loop, on_failure)

    def put(self, item: CompletionWrite | FeedbackWrite) -> None:
        """Queue an item for the next transaction."""
        self._queue.put(item)

    def idle(self) -> bool:
        """Whether nothing waits to be written."""
        return self._queue.empty()

    def backlog(self) -> int:
        """Items waiting to be written."""
        return self._queue.qsize()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < _MAX_GROUP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[CompletionWrite | FeedbackWrite]) -> None:
        completions = [i for i in batch if isinstance(i, CompletionWrite)]
        # A submission whose caller stopped waiting (a cancelled or timed-out request) was never
        # accepted: it is not written. Once marked running it can no longer be cancelled, so the
        # result set below always lands.
        feedback = [
            i for i in batch if isinstance(i, FeedbackWrite) and i.future.set_running_or_notify_cancel()
        ]
        # Completions and single submissions without an idempotency key cannot be refused: they
        # go in as one statement (each statement hands the GIL to the busy event loop and back).
        plain: list[FeedbackWrite] = []
        keyed: list[FeedbackWrite] = []
        for f in feedback:
            (plain if len(f.items) == 1 and f.items[0].idempotency_key is None else keyed).append(f)
        rows = [(topic_for(c.event), c.event.key(), c.value) for c in completions]
        rows += [(topic_for(e), e.key(), e.to_bytes()) for e in (f.items[0].event for f in plain)]
        outcomes: list[tuple[FeedbackWrite, list[Accepted] | Exception]] = [
            (f, [Accepted(f.items[0].event.event_id, duplicate=False)]) for f in plain
        ]
        written = Tally()  # counted only for what the transaction keeps
        try:
            with self._log.transaction() as tx:
                tx.append_many(rows)
                written.events += len(rows)
                written.bytes += sum(len(value) for _, _, value in rows)
                for f in keyed:
                    outcomes.append((f, self._append_feedback(tx, f.items, written, self._max_keys)))
        except Exception as exc:  # the disk failed us: nothing in this batch is accepted
            log.exception("feedback: could not write %d items to the local log", len(batch))
            self._metrics.completions.labels("failed").inc(len(completions))
            for f in feedback:
                f.future.set_exception(exc)
            return
        self._usage.add(written.events, written.bytes)
        self._usage.add_index(written.index_bytes)
        self._metrics.completions.labels("recorded").inc(len(completions))
        for f, outcome in outcomes:
            if isinstance(outcome, Exception):
                f.future.set_exception(outcome)
            else:
                f.future.set_result(outcome)
        self._on_commit()

    @staticmethod
    def _append_feedback(
        tx: Transaction, items: list[Submission], written: Tally, max_keys: int
    ) -> list[Accepted] | Exception:
        """One submission under a savepoint: all of its items, or none (and then none is counted)."""
        # A single item needs no savepoint: its only refusal (a conflicting key) comes before it
        # writes anything. Most submissions are single, and each statement saved is a GIL hand-off.
        guarded = len(items) > 1
        if guarded:
            tx.cursor.execute("SAVEPOINT submission")
        mine = Tally()
        out = []
        try:
            for item in items:
                earlier = IdempotencyIndex.claim(tx.cursor, item)
                if earlier is not None:
                    out.append(earlier)
                    continue
                value = item.event.to_bytes()
                tx.append(topic_for(item.event), item.event.key(), value)
                mine.events += 1
                mine.bytes += len(value)
                mine.index_bytes += IdempotencyIndex.key_bytes(item)
                if item.idempotency_key:
                    mine.index_bytes -= IdempotencyIndex.evict_over(tx.cursor, item.idempotency_key, max_keys)
                out.append(Accepted(item.event.event_id, duplicate=False))
        except IdempotencyConflict as exc:
            if guarded:
                tx.cursor.execute("ROLLBACK TO submission")
                tx.cursor.execute("RELEASE submission")
            return exc
        if guarded:
            tx.cursor.execute("RELEASE submission")
        written.add(mine)
        return out

    def close(self) -> None:
        """Stop the thread (after what is queued, if it gets there in time)."""
        self._thread.stop(timeout=5)
