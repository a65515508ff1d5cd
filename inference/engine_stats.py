"""The engines' own metrics (vLLM's scheduler and iteration statistics), per engine, for the gateway's
/metrics: what an operator of `vllm serve` watches, labelled by the version each engine serves.

vLLM hands every engine's statistics to the stat loggers it was built with; `EngineStats.logger`
is one, so the figures come from the engine itself, not from the gateway's view of its requests.
The metric names are vLLM's own, so dashboards written for vLLM's server read them unchanged.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# vLLM's own bucket bounds for these two histograms.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Histogram:
    """Observations in fixed buckets, for a collector that builds its families on each scrape."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, values: list[float]) -> None:
        for v in values:
            self.counts[bisect.bisect_left(self.bounds, v)] += 1
            self.sum += v

    def buckets(self) -> list[tuple[str, int]]:
        cumulative, out = 0, []
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            cumulative += n
            out.append((bound, cumulative))
        return out


class EngineStats:
    """One engine's latest scheduler state and running totals, fed by vLLM's stat-logger hook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start the totals afresh (an engine that now serves another version)."""
        with self._lock:
            self.running = self.waiting = 0
            self.kv_cache_usage = 0.0
            self.preemptions = self.prompt_tokens = self.generation_tokens = 0
            self.finished: Counter[str] = Counter()
            self.ttft = _Histogram(_TTFT_BUCKETS)
            self.itl = _Histogram(_ITL_BUCKETS)

    def record(self, scheduler: Any, iteration: Any) -> None:
        """Take one report of vLLM's (SchedulerStats, IterationStats; either may be None)."""
        with self._lock:
            if scheduler is not None:
                self.running, self.waiting = scheduler.num_running_reqs, scheduler.num_waiting_reqs
                self.kv_cache_usage = scheduler.kv_cache_usage
            if iteration is not None:
                self.preemptions += iteration.num_preempted_reqs
                self.prompt_tokens += iteration.num_prompt_tokens
                self.generation_tokens += iteration.num_generation_tokens
                self.ttft.observe(iteration.time_to_first_tokens_iter)
                self.itl.observe(iteration.inter_token_latencies_iter)
                for done in iteration.finished_requests:
                    self.finished[str(done.finish_reason).lower()] += 1

    def logger(self) -> Callable[..., Any]:
        """A stat-logger factory for vLLM's AsyncLLM(stat_loggers=[...]) that reports here."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0):
                pass

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                stats.record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger


class EngineMetrics(Collector):
    """A Prometheus collector over the live engines, given (version, role, stats) of each by
    `engines` (PolicyEngine.engine_stats)."""

    def __init__(self, engines: Callable[[], list[tuple[str, str, EngineStats]]]):
        self._engines = engines

    def collect(self) -> Iterator[Any]:
        """The families, built from each engine's latest figures."""
        labels = ["version", "role"]
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests in the engine's batch.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Requests waiting to be scheduled.", labels=labels
        )
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache use, 0 to 1.", labels=labels)
        preempted = CounterMetricFamily("vllm:num_preemptions", "Preempted requests.", labels=labels)
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Prefilled prompt tokens.", labels=labels)
        generated = CounterMetricFamily("vllm:generation_tokens", "Generated tokens.", labels=labels)
        success = CounterMetricFamily(
            "vllm:request_success", "Finished requests, by reason.", labels=[*labels, "finished_reason"]
        )
        ttft = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds", "Time to first token.", labels=labels
        )
        itl = HistogramMetricFamily("vllm:inter_token_latency_seconds", "Time between tokens.", labels=labels)
        seen = set()
        for version, role, s in self._engines():
            key = [version, role]
            if tuple(key) in seen:  # one series per label set, whatever the engines' states
                continue
            seen.add(tuple(key))
            with s._lock:
                running.add_metric(key, s.running)
                waiting.add_metric(key, s.waiting)
                kv.add_metric(key, s.kv_cache_usage)
                preempted.add_metric(key, s.preemptions)
                prompt.add_metric(key, s.prompt_tokens)
                generated.add_metric(key, s.generation_tokens)
                for reason, n in sorted(s.finished.items()):
                    success.add_metric([*key, reason], n)
                ttft.add_metric(key, s.ttft.buckets(), s.ttft.sum)
                itl.add_metric(key, s.itl.buckets(), s.itl.sum)
        yield from (running, waiting, kv, preempted, prompt, generated, success, ttft, itl)
