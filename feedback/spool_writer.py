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

from feedback.events import CompletionServed
from feedback.local_log import LocalLog, Transaction
from feedback.metrics import FeedbackMetrics
from feedback.served_index import ServedIndex
from feedback.spool_usage import SpoolUsage
from feedback.submission import Accepted, IdempotencyConflict, Submission
from feedback.topics import topic_for

log = logging.getLogger(__name__)
_MAX_GROUP = 512  # queue items per transaction


@dataclass
class CompletionWrite:
    """A served completion to record."""

    event: CompletionServed
    value: bytes


@dataclass
class FeedbackWrite:
    """Feedback submissions to accept together, and the future the API awaits."""

    items: list[Submission]
    future: concurrent.futures.Future


class SpoolWriter:
    """A thread that group-commits what the API hands it."""

    def __init__(self, spool: LocalLog, index: ServedIndex, usage: SpoolUsage, metrics: FeedbackMetrics,
                 on_commit: Callable[[], None] = lambda: None):
        self._log, self._index, self._usage, self._metrics = spool, index, usage, metrics
        self._on_commit = on_commit
        self._queue: queue.Queue[CompletionWrite | FeedbackWrite] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feedback-writer", daemon=True)
        self._thread.start()

    def put(self, item: CompletionWrite | FeedbackWrite) -> None:
        """Queue an item for the next transaction."""
        self._queue.put(item)

    def idle(self) -> bool:
        """Whether nothing waits to be written."""
        return self._queue.empty()

    def _loop(self) -> None:
        while not self._stop.is_set():
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
        feedback = [i for i in batch if isinstance(i, FeedbackWrite)]
        outcomes: list[tuple[FeedbackWrite, list[Accepted] | Exception]] = []
        written = [0, 0]  # events, bytes: counted only for what the transaction keeps
        try:
            with self._log.transaction() as tx:
                for c in completions:
                    tx.append(topic_for(c.event), c.event.key(), c.value)
                    ServedIndex.record(tx.cursor, c.event)
                    written[0] += 1
                    written[1] += len(c.value)
                for f in feedback:
                    outcomes.append((f, self._append_feedback(tx, f.items, written)))
        except Exception as exc:  # the disk failed us: nothing in this batch is accepted
            log.exception("feedback: could not write %d items to the local log", len(batch))
            self._metrics.completions.labels("failed").inc(len(completions))
            for f in feedback:
                f.future.set_exception(exc)
            return
        finally:
            for c in completions:
                self._index.settle(c.event)
        self._usage.add(*written)
        self._metrics.completions.labels("recorded").inc(len(completions))
        for f, outcome in outcomes:
            if isinstance(outcome, Exception):
                f.future.set_exception(outcome)
            else:
                f.future.set_result(outcome)
        self._on_commit()

    @staticmethod
    def _append_feedback(tx: Transaction, items: list[Submission], written: list[int]) -> list[Accepted] | Exception:
        """One submission under a savepoint: all of its items, or none."""
        tx.cursor.execute("SAVEPOINT submission")
        out, size = [], 0
        try:
            for item in items:
                earlier = ServedIndex.claim(tx.cursor, item)
                if earlier is not None:
                    out.append(earlier)
                    continue
                value = item.event.to_bytes()
                tx.append(topic_for(item.event), item.event.key(), value)
                size += len(value)
                out.append(Accepted(item.event.event_id, duplicate=False))
        except IdempotencyConflict as exc:
            tx.cursor.execute("ROLLBACK TO submission")
            tx.cursor.execute("RELEASE submission")
            return exc
        tx.cursor.execute("RELEASE submission")
        written[0] += sum(not a.duplicate for a in out)
        written[1] += size
        return out

    def close(self) -> None:
        """Stop the thread (after what is queued, if it gets there in time)."""
        self._stop.set()
        self._thread.join(timeout=5)
