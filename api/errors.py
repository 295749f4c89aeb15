"""Domain errors carry their HTTP status; one handler renders them."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse


class DomainError(Exception):
    """Base for errors the API reports to its caller."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        # Further machine-readable facts for the caller (numbers a client words in its own
        # language), beside `error` and `detail`.
        self.extra = extra or {}
        if code is not None:
            self.code = code


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class TooManyRequests(DomainError):
    status_code = 429
    code = "too_many_requests"


class Unavailable(DomainError):
    status_code = 503
    code = "unavailable"


class Invalid(DomainError):
    status_code = 422
    code = "invalid"


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Render any DomainError as {"error": code, "detail": text, **extra}."""
    assert isinstance(exc, DomainError)
    headers = dict(exc.headers)
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(
        {**exc.extra, "error": exc.code, "detail": exc.detail}, status_code=exc.status_code, headers=headers
    )
