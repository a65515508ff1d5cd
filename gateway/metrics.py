"""Prometheus metrics of the gateway, and the ASGI middleware that records the HTTP-level ones."""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.errors import error_body

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    """Every metric the gateway exports, on a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("alignloop_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("alignloop_http_request_duration_seconds",
                                 "End-to-end request time (streams: until the last byte)",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("alignloop_time_to_first_token_seconds", "Time to the first generated token",
                              ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("alignloop_http_requests_in_flight", "Requests being served", registry=r)
        self.prompt_tokens = Counter("alignloop_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("alignloop_generation_tokens", "Tokens generated", registry=r)
        self.policy = Gauge("alignloop_policy_version_info", "1 for the policy version being served",
                            ["version"], registry=r)
        self.canary = Gauge("alignloop_canary_fraction", "Share of new requests sent to the canary version",
                            ["version"], registry=r)
        self.served_by = Counter("alignloop_generations_by_policy_version", "Generation requests by the version "
                                 "that served them", ["version"], registry=r)
        self.swaps = Counter("alignloop_policy_swaps", "Policy version switches by outcome", ["outcome"], registry=r)
        self.swap_seconds = Histogram("alignloop_policy_swap_seconds", "Time from a switch's start until new "
                                      "requests go to the new version", ["mode"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cancelled = Counter("alignloop_requests_cancelled", "Generations aborted because the client went away",
                                 ["route"], registry=r)
        self.ready = Gauge("alignloop_engine_ready", "1 once the engine has warmed up", registry=r)

    def set_version(self, version: str) -> None:
        """Mark version as the one served."""
        self.policy.clear()
        self.policy.labels(version=version).set(1)

    def set_canary(self, version: str | None, fraction: float = 0.0) -> None:
        """Show the canary (or that there is none)."""
        self.canary.clear()
        if version is not None:
            self.canary.labels(version=version).set(fraction)


class _BodyTooLarge(Exception):
    pass


class HTTPMetricsMiddleware:
    """Counts requests, times them to their last byte, and bounds request bodies.

    Pure ASGI (not BaseHTTPMiddleware) so that streamed responses are timed to the end and not
    buffered."""

    def __init__(self, app, metrics: GatewayMetrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = {"code": 500, "sent": False}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        self.metrics.in_flight.inc()
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                await self._too_large(send, status)
                return
            received = 0
            cut_off = False

            async def bounded_receive():
                nonlocal received, cut_off
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        cut_off = True
                        raise _BodyTooLarge()
                return message

            async def recording_send(message):
                if cut_off:
                    # The framework may turn the aborted read into an error of its own; the
                    # client gets the real reason instead.
                    if not status["sent"]:
                        await self._too_large(send, status)
                    return
                if message["type"] == "http.response.start":
                    status["code"], status["sent"] = message["status"], True
                await send(message)

            try:
                await self.app(scope, bounded_receive, recording_send)
            except _BodyTooLarge:
                if not status["sent"]:
                    await self._too_large(send, status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(label, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(time.monotonic() - started)

    async def _too_large(self, send, status) -> None:

        body = json.dumps(error_body(413, f"Request body exceeds {self.max_body} bytes.", code="body_too_large")).encode()
        status["code"], status["sent"] = 413, True
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
