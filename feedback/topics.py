"""Topic names. Both topics are keyed by request id, so one prompt's events share a partition."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feedback.events import Event

COMPLETIONS = "alignloop.completions.v1"
FEEDBACK = "alignloop.feedback.v1"
ALL = (COMPLETIONS, FEEDBACK)


def topic_for(event: Event) -> str:
    """The topic an event belongs on."""
    return COMPLETIONS if event.type == "completion" else FEEDBACK
