"""A request body size limit for the whole API, as an ASGI middleware.

A declared `Content-Length` above the limit is answered 413 before a byte of the body is read; a
body without one (chunked) is counted as it streams and cut off at the limit, so no handler ever
holds more than the limit in memory. Zone uploads (GeoJSON boundaries) get a larger limit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _route(path: str) -> re.Pattern[str]:
    """A route path as a pattern: `{name}` matches one segment."""
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path.rstrip("/"))))


class _BodyTooLarge(Exception):
    """Raised from `receive` when the body runs past the limit."""


class BodySizeLimit:
    """Reject request bodies larger than `limit` bytes (or a per-route `overrides` limit) with 413.

    `overrides` maps (method, path) to a limit, for the few routes that take large documents; a
    path segment `{name}` matches any one segment (`/api/v1/zones/{zone_id}`). Paths under
    `exempt_prefixes` are left to routes that read a bounded body themselves.
    """

    def __init__(self, app: ASGIApp, limit: int,
                 overrides: Iterable[tuple[str, str, int]] = (),
                 exempt_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.overrides = [(m.upper(), _route(p), n) for m, p, n in overrides]
        self.exempt = tuple(exempt_prefixes)

    def limit_for(self, scope: Scope) -> int:
        """The limit for this request's route."""
        method, path = scope.get("method", "").upper(), scope.get("path", "").rstrip("/")
        return next((n for m, p, n in self.overrides if m == method and p.fullmatch(path)),
                    self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(send, limit, f"body of {declared} bytes exceeds the limit of {limit} bytes")
            return

        received = 0
        started = rejected = False

        async def counting_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now: a framework parsing the body turns any error raised here
                    # into its own 400 (FastAPI: "There was an error parsing the body").
                    if not started and not rejected:
                        rejected = True
                        await _reject(send, limit, f"body exceeds the limit of {limit} bytes")
                    raise _BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if rejected:  # the 413 is the answer; what the handler says after it is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):  # answered 413 already, or mid-response
            await self.app(scope, counting_receive, watching_send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the server rejects it, or the body is counted
    return None


async def _reject(send: Send, limit: int, detail: str) -> None:
    body = orjson.dumps({"error": "payload_too_large", "detail": detail, "limit": limit})
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


class RejectNulInUrl:
    """Answer 400 to a path or query string holding a NUL character (`%00`).

    PostgreSQL text cannot hold NUL, so such a value could only end in a database error (a 500)
    wherever a route passes it on. The phone ingest URLs are left alone: their pipeline keeps what
    it cannot use as a dead letter, with a reason.
    """

    def __init__(self, app: ASGIApp, exempt_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.exempt = tuple(exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("path", "").startswith(self.exempt):
            query: bytes = scope.get("query_string", b"")
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                body = orjson.dumps({"error": "bad_request",
                                     "detail": "NUL characters are not allowed in the URL"})
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
