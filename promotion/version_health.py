"""How each served version is doing right now, as its engine measures it, and the canary's guardrails.

A guardrail must judge what the version controls, not what a client does: a client sets its own
request's length, number of candidates and reading speed, and can aim requests at one version (it
can find `user` values routed to the canary). So a version's health is counted from its engine:
requests the engine failed (not hang-ups, not refusals), the prefill time of each request (from
being scheduled to its first token, so not the time it queued behind others), and the time per
decoding step (how long one more token of every candidate took). The guardrails compare medians,
which a minority of crafted requests cannot move, and only once both versions have served
`guardrail_min_requests` in the window.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass

from core.config import PromotionConfig


@dataclass
class HealthSummary:
    """One version's recent requests."""

    requests: int
    failures: int
    prefill_s: float | None  # median
    step_s: float | None  # median time per decoding step

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


class VersionHealth:
    """The last `window` requests of every version."""

    def __init__(self, window: int = 500):
        self._window = window
        self._seen: dict[str, deque[tuple[bool, float | None, float | None]]] = {}
        self._lock = threading.Lock()

    def observe(
        self, version: str, ok: bool, prefill_s: float | None = None, step_s: float | None = None
    ) -> None:
        """Count one finished request of a version, with its engine's timings if known."""
        with self._lock:
            self._seen.setdefault(version, deque(maxlen=self._window)).append((ok, prefill_s, step_s))

    def summary(self, version: str) -> HealthSummary:
        """The version's recent requests, failures and median engine timings."""
        with self._lock:
            seen = list(self._seen.get(version, ()))

        def median(i: int) -> float | None:
            values = [float(v) for s in seen if s[0] and (v := s[i]) is not None]
            return statistics.median(values) if values else None

        return HealthSummary(len(seen), sum(not ok for ok, _, _ in seen), median(1), median(2))


def guardrail_breach(candidate: HealthSummary, serving: HealthSummary, config: PromotionConfig) -> str | None:
    """Why the candidate must be rolled back at once (its engine fails more requests, or is much
    slower, than the serving version's), or None: also None until both versions served
    `guardrail_min_requests`."""
    if min(candidate.requests, serving.requests) < config.guardrail_min_requests:
        return None
    if candidate.error_rate > serving.error_rate + config.max_error_rate_increase:
        return (
            f"guardrail: the candidate's engine failed {candidate.error_rate:.1%} of its requests "
            f"(serving {serving.error_rate:.1%})"
        )
    for name, mine, theirs in (
        ("prefill time", candidate.prefill_s, serving.prefill_s),
        ("time per token", candidate.step_s, serving.step_s),
    ):
        if mine and theirs and mine > config.max_latency_ratio * theirs:
            return (
                f"guardrail: the candidate's median {name} {mine * 1000:.1f} ms is over "
                f"{config.max_latency_ratio:g}x the serving version's ({theirs * 1000:.1f} ms)"
            )
    return None
