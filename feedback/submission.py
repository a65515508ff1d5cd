"""What the feedback API hands the spool, and what it gets back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from feedback.events import Event


class SpoolFull(Exception):
    """The local log holds as much undelivered data as it may; try again later."""


class SpoolUnavailable(Exception):
    """The disk did not take the submission in time (or failed); nothing was accepted."""


class IdempotencyConflict(Exception):
    """An idempotency key was reused for different content."""


@dataclass(frozen=True)
class Submission:
    """One feedback event to accept, with its optional (caller-scoped) idempotency key."""

    event: Event
    idempotency_key: str | None = None

    def digest(self) -> str:
        """The content, without what differs between two submissions of the same thing."""
        body = self.event.model_dump_json(exclude={"event_id", "timestamp"})
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    """The outcome of one submission."""

    event_id: str
    duplicate: bool
