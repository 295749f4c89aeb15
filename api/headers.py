"""Security headers on every response, as an ASGI middleware.

The API answers JSON (and an SSE stream) to its own console and to phones; nothing it serves is
meant to be framed, sniffed, cached or to load anything, so the policy is the strictest one:

* the console (`/`, `/static/`) gets `console_csp`: its own scripts and styles, nothing inline;
* `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'; ...` — except the two
  documentation pages (`/docs`, `/redoc`), which FastAPI builds from scripts and styles on the
  jsDelivr CDN plus an inline bootstrap script: they get a policy allowing exactly those;
* `X-Frame-Options: DENY` (older browsers), `X-Content-Type-Options: nosniff`,
  `Referrer-Policy: no-referrer` (URLs may carry ids; the OsmAnd URL carries a secret);
* `Cache-Control: no-store` on everything under /api/ (positions, names, tokens: personal data
  must not sit in a browser or proxy cache), unless a route set its own;
* `Strict-Transport-Security` in production only (a development server speaks plain HTTP).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# FastAPI's Swagger UI and ReDoc pages: assets from jsDelivr, an inline script starting them,
# the schema fetched from this origin, ReDoc's web worker from a blob and Google Fonts.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


def console_csp(tile_origin: str = "") -> str:
    """The console's policy: its own scripts and styles only (no inline code, no eval), data:
    images for QR codes, and tiles from the one configured tile server if any."""
    tiles = f" {tile_origin}" if tile_origin else ""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src 'self' data:{tiles}; connect-src 'self'; font-src 'self'; "
            "manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeaders:
    """Add the security headers above to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp, hsts: bool = False, console: str = "") -> None:
        self.app = app
        self.hsts = hsts
        self.console = console or console_csp()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        policy = (DOCS_CSP if path in DOCS_PATHS else self.console
                  if path == "/" or path.startswith("/static/") else API_CSP)
        extra = [
            ("Content-Security-Policy", policy),
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
        if path.startswith("/api/"):
            extra.append(("Cache-Control", "no-store"))
        if self.hsts:
            extra.append(("Strict-Transport-Security", HSTS))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
