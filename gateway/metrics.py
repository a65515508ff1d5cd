"""Prometheus metrics of the gateway (the HTTP-level ones are recorded by gateway/middleware.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DEPLOYMENT_BUCKETS = (60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 21600, 86400)
CANARY_DECISIONS = (
    "promoted",
    "rolled_back",
    "promoted_by_operator",
    "rolled_back_by_operator",
    "superseded",
    "refused",
)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class GatewayMetrics:
    """Every metric the gateway exports, on a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "alignloop_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "alignloop_http_request_duration_seconds",
            "End-to-end request time (streams: until the last byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "alignloop_time_to_first_token_seconds",
            "Time to the first generated token",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("alignloop_http_requests_in_flight", "Requests being served", registry=r)
        self.prompt_tokens = Counter("alignloop_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("alignloop_generation_tokens", "Tokens generated", registry=r)
        self.policy = Gauge(
            "alignloop_policy_version_info", "1 for the policy version being served", ["version"], registry=r
        )
        self.canary = Gauge(
            "alignloop_canary_fraction",
            "Share of new requests sent to the canary version",
            ["version"],
            registry=r,
        )
        self.answer_tokens = Histogram(
            "alignloop_answer_tokens",
            "Tokens per served answer, by the version that wrote it (a reward-hacking signal: length)",
            ["version"],
            buckets=(4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.served_by = Counter(
            "alignloop_generations_by_policy_version",
            "Generation requests by the version that served them",
            ["version"],
            registry=r,
        )
        self.swaps = Counter(
            "alignloop_policy_swaps", "Policy version switches by outcome", ["outcome"], registry=r
        )
        self.swap_seconds = Histogram(
            "alignloop_policy_swap_seconds",
            "Time from a switch's start until new requests go to the new version",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.adapters_loaded = Gauge(
            "alignloop_adapters_loaded",
            "LoRA adapter versions the engines serve now (the serving version's and a canary's)",
            registry=r,
        )
        self.adapter_load_seconds = Histogram(
            "alignloop_adapter_load_seconds",
            "Time to load a LoRA adapter version into a running engine",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cancelled = Counter(
            "alignloop_requests_cancelled",
            "Generations aborted because the client went away",
            ["route"],
            registry=r,
        )
        self.ready = Gauge("alignloop_engine_ready", "1 once the engine has warmed up", registry=r)
        self.background_failures = Counter(
            "alignloop_background_failures",
            "Failures of a supervised background thread or task (it restarted)",
            ["task"],
            registry=r,
        )
        self.overhead = Histogram(
            "alignloop_gateway_overhead_seconds",
            "Time a request spent in the gateway "
            "outside the engine (parsing, auth, tokenising, recording, rendering)",
            ["route"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "alignloop_gateway_event_loop_lag_seconds",
            "How late the gateway's event loop woke from a short sleep: a stall delays every request",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.gc_pauses = Histogram(
            "alignloop_gateway_gc_pause_seconds",
            "Garbage-collector passes by generation: a long one stalls every request (gateway/heap.py)",
            ["generation"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.heap_frozen = Gauge(
            "alignloop_gateway_heap_frozen_objects",
            "Long-lived objects kept out of the collector's passes since the last engine change",
            registry=r,
        )
        self.version_score = Gauge(
            "alignloop_version_score",
            "Bradley-Terry score of a policy version from raters' "
            "blinded cross-version rankings (0 = average)",
            ["version"],
            registry=r,
        )
        self.version_win_rate = Gauge(
            "alignloop_version_win_rate",
            "How often raters preferred a version's answer to the reference's (against: sft or serving)",
            ["version", "against"],
            registry=r,
        )
        self.labelling_tokens = Counter(
            "alignloop_labelling_generated_tokens",
            "Tokens generated for labelling-queue items (from labelling.tokens_per_hour, charged to no key)",
            registry=r,
        )
        self.labelling_waiting = Gauge(
            "alignloop_labelling_items_waiting",
            "Labelling-queue items that still need a rater (or their candidates)",
            registry=r,
        )
        # Not by rater: /metrics is unauthenticated, and who rates is not everyone's business (GET
        # /admin/raters has it per rater, for the admin key).
        self.labelled = Counter(
            "alignloop_labelling_rankings", "Rankings of labelling-queue items", registry=r
        )
        self.evidence_kept = Counter(
            "alignloop_evidence_rankings",
            "Cross-version rankings this gateway read back "
            "from the feedback log into its evidence (all replicas')",
            registry=r,
        )
        self.rater_agreement = Gauge(
            "alignloop_rater_agreement",
            "Share of candidate pairs that two raters of the "
            "same item ordered the same way (InstructGPT: ~0.73)",
            registry=r,
        )
        self.canary_decisions = Counter(
            "alignloop_canary_decisions",
            "Canary decisions by outcome (the lineage keeps each with its evidence)",
            ["decision"],
            registry=r,
        )
        self.canary_comparisons = Gauge(
            "alignloop_canary_comparisons",
            "People's blinded verdicts between the canary and the serving version so far",
            ["outcome"],
            registry=r,
        )
        self.canary_llr = Gauge(
            "alignloop_canary_log_likelihood_ratio",
            "The canary's sequential test statistic (promotes at its upper bound, rolls back at its lower)",
            registry=r,
        )
        self.feedback_to_deployment = Histogram(
            "alignloop_feedback_to_deployment_seconds",
            "From the oldest comparison new to a round until the "
            "version that round trained serves all traffic",
            buckets=_DEPLOYMENT_BUCKETS,
            registry=r,
        )

        # Known label values exist from the start at 0 (Prometheus' advice): a rate over a counter
        # that appears only on its first event shows "no data" instead of 0 until then.
        for route in ("chat", "completions"):
            self.cancelled.labels(route)
            self.overhead.labels(route)
        for outcome in ("ok", "refused", "canary_refused"):
            self.swaps.labels(outcome)
        for decision in CANARY_DECISIONS:
            self.canary_decisions.labels(decision)
        for outcome in ("wins", "losses", "ties"):
            self.canary_comparisons.labels(outcome)
        self.set_canary(None)

    def set_leaderboard(self, board: dict) -> None:
        """Show a leaderboard (promotion/leaderboard.py) as gauges."""
        self.version_score.clear()
        self.version_win_rate.clear()
        for row in board["versions"]:
            self.version_score.labels(row["version"]).set(row["score"])
            for against in ("sft", "serving"):
                rate = row[f"vs_{against}"]
                if rate and rate["rate"] is not None:
                    self.version_win_rate.labels(row["version"], against).set(rate["rate"])

    def set_version(self, version: str) -> None:
        """Mark version as the one served."""
        self.policy.clear()
        self.policy.labels(version=version).set(1)

    def set_canary(self, version: str | None, fraction: float = 0.0) -> None:
        """Show the canary (or that there is none)."""
        self.canary.clear()
        # With no canary the share is 0 under version="" rather than no series at all.
        self.canary.labels(version=version or "").set(fraction if version is not None else 0.0)
