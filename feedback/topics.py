"""Topic names. Both topics are keyed by request id, so one prompt's events share a partition."""

COMPLETIONS = "alignloop.completions.v1"
FEEDBACK = "alignloop.feedback.v1"
ALL = (COMPLETIONS, FEEDBACK)


def topic_for(event) -> str:
    """The topic an event belongs on."""
    return COMPLETIONS if event.type == "completion" else FEEDBACK
