"""How each served version is doing right now: requests, failures and latency over a recent window,
the canary's guardrails (a candidate that fails more, or is much slower, is rolled back at once)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from core.config import PromotionConfig


@dataclass
class HealthSummary:
    """One version's recent requests."""

    requests: int
    failures: int
    p99_s: float | None

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


class VersionHealth:
    """The last `window` requests of every version."""

    def __init__(self, window: int = 500):
        self._window = window
        self._seen: dict[str, deque[tuple[bool, float]]] = {}
        self._lock = threading.Lock()

    def observe(self, version: str, ok: bool, seconds: float) -> None:
        """Count one finished request of a version."""
        with self._lock:
            self._seen.setdefault(version, deque(maxlen=self._window)).append((ok, seconds))

    def summary(self, version: str) -> HealthSummary:
        """The version's recent requests, failures and 99th-percentile latency."""
        with self._lock:
            seen = list(self._seen.get(version, ()))
        latencies = sorted(s for ok, s in seen if ok)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
        return HealthSummary(len(seen), sum(not ok for ok, _ in seen), p99)


def guardrail_breach(candidate: HealthSummary, serving: HealthSummary, config: PromotionConfig) -> str | None:
    """Why the candidate must be rolled back at once (fails more requests, or is much slower, than
    the serving version), or None: also None until it has served `guardrail_min_requests`."""
    if candidate.requests < config.guardrail_min_requests:
        return None
    if candidate.error_rate > serving.error_rate + config.max_error_rate_increase:
        return (f"guardrail: the candidate failed {candidate.error_rate:.1%} of its requests "
                f"(serving {serving.error_rate:.1%})")
    if candidate.p99_s and serving.p99_s and candidate.p99_s > config.max_latency_ratio * serving.p99_s:
        return (f"guardrail: the candidate's p99 latency {candidate.p99_s:.2f}s is over "
                f"{config.max_latency_ratio:g}x the serving version's ({serving.p99_s:.2f}s)")
    return None
