"""OpenAI-style error bodies, and the handlers that turn every failure into one.

Every refusal is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; the
OpenAI SDK maps these onto its exception classes (400 BadRequestError, 401 AuthenticationError...).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    503: "service_unavailable",
}


class APIError(Exception):
    """A refusal to send to the client as an OpenAI-style error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


class SafeJSONResponse(JSONResponse):
    """JSON rendered ASCII-only: a body that quotes client input (an unknown key, a bad id) can
    always be sent, even when that input is not valid Unicode."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body of an error response."""
    return {
        "error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}
    }


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI-style error response."""
    return SafeJSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return (
            f"Unknown parameter '{param}': neither OpenAI's API nor vLLM's server takes it here "
            "(a misspelling?).",
            param,
        )
    where = f" (at '{param}')" if param else ""
    return f"{first.get('msg', 'Invalid request')}{where}", param


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise to an OpenAI-style body."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        # OpenAI answers malformed or mistyped bodies with 400, not FastAPI's 422.
        message, param = _validation_message(exc)
        return error_response(400, message, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error: %s", exc)
        return error_response(500, "Internal error; it has been logged.", code="internal_error")
