"""A shorter way in for single feedback events (pairwise, rankings, ratings, demonstrations).

These are the gateway's most frequent small requests. Under load, FastAPI's routing, dependency
solving, body validation and its layers of middleware took about half of their event-loop time,
and the event loop's thread is what limits feedback ingestion (docs/benchmarks.md). This ASGI
middleware hands such a request straight to the same handler and authentication the routes use.

Only a request that the route would read the same way goes this way: POST with a JSON content
type, a body that `json.loads` reads (as Starlette's `Request.json` does) and that the route's model
validates (in Python mode, as FastAPI does). Anything else — not JSON, a field that fails validation,
an odd path — goes to the FastAPI app untouched, with its body replayed, so every refusal is the
one the routes give and the OpenAPI schema still describes these routes.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request

from gateway.dependencies import client
from gateway.errors import APIError, error_response
from gateway.routers import feedback


class FeedbackFastPath:
    """Pure ASGI middleware in front of FastAPI's own; see the module docstring."""

    def __init__(self, app, routes: dict[str, tuple[APIRoute, type]]):
        self.app, self.routes = app, routes

    async def __call__(self, scope, receive, send):
        target = (
            self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        if target is None or scope.get("root_path") or not _json_content(scope):
            return await self.app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body arrived: nobody to answer
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        replay = _replaying(body, receive)
        route, model = target
        try:
            item = model.model_validate(json.loads(body))
        except Exception:  # whatever it is, the route says it in its own words
            return await self.app(scope, replay, send)
        scope["route"] = route  # as FastAPI's router sets it: the metrics label requests by route
        services = scope["app"].state.services
        try:
            caller = await client(Request(scope, replay), services)
            response = await feedback.single(services, item, caller)
        except APIError as exc:  # as the app's APIError handler answers it
            response = error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)
        await response(scope, replay, send)


def single_event_routes(app: FastAPI) -> dict[str, tuple[APIRoute, type]]:
    """Path -> (route, body model) for the app's single-event feedback routes."""
    return {
        r.path: (r, feedback.SINGLE_EVENT_ROUTES[r.endpoint])
        for r in app.routes
        if isinstance(r, APIRoute) and r.endpoint in feedback.SINGLE_EVENT_ROUTES
    }


def _json_content(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


def _replaying(body: bytes, receive):
    """A receive that gives the body already read once, then whatever the client sends next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay
