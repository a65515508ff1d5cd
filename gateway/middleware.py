"""The ASGI middleware in front of every route: bounds request bodies (413) and records the
HTTP-level metrics (requests by route and status, latency to the last byte, requests in flight,
the gateway's own overhead outside the engine: gateway/overhead.py)."""

from __future__ import annotations

import json
import time

from gateway.errors import error_body
from gateway.metrics import GatewayMetrics
from gateway.overhead import HEADER, SCOPE_KEY, EngineClock


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
        clock = EngineClock()
        scope.setdefault("state", {})[SCOPE_KEY] = clock
        status = {"code": 500, "sent": False}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        self.metrics.in_flight.inc()
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                await self._too_large(send, status)
                return
            received = 0
            cut_off = False
            body_read = False

            async def bounded_receive():
                nonlocal received, cut_off, body_read
                if body_read:
                    # Past the body a receive only returns when the client hangs up
                    # (gateway/hang_up.py waits so): waiting for that is nobody's cost.
                    return await receive()
                t0 = time.monotonic()
                message = await receive()
                clock.receiving_s += time.monotonic() - t0
                if message["type"] == "http.request":
                    body_read = not message.get("more_body", False)
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
                    overhead_ms = f"{clock.overhead_s() * 1000:.2f}".encode()
                    message = {**message, "headers": [*message.get("headers", []), (HEADER, overhead_ms)]}
                    await send(message)
                    return
                t0 = time.monotonic()
                await send(message)
                clock.sending_s += time.monotonic() - t0

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
            self.metrics.overhead.labels(label).observe(clock.overhead_s())

    async def _too_large(self, send, status) -> None:
        body = json.dumps(
            error_body(413, f"Request body exceeds {self.max_body} bytes.", code="body_too_large")
        ).encode()
        status["code"], status["sent"] = 413, True
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
