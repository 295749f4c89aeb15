"""The FastAPI application: `uvicorn api.app:app`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import console
from api.errors import DomainError, domain_error_handler
from api.headers import SecurityHeaders, console_csp
from api.limits import BodySizeLimit, RejectNulInUrl
from api.routes import (
    alerts,
    audit,
    auth,
    broker,
    duty,
    ingest,
    investigations,
    notify,
    ops,
    org,
    permits,
    reports,
    staff,
    supervisees,
    supervision,
    zones,
)
from store.settings import Environment, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await asyncio.to_thread(ingest.batcher.close)  # joins the batch threads: not on the loop


def create_app() -> FastAPI:
    """Build the application with every router under /api/v1."""
    app = FastAPI(
        title="Community corrections location supervision",
        version="0.1.0",
        description="Staff and phone API. Coordinates are (lon, lat), WGS-84 unless stated.",
        lifespan=lifespan,
    )
    app.add_exception_handler(DomainError, domain_error_handler)
    # The phones' endpoints first: routing tries the routes in order, and every phone's report
    # comes through these (behind a dozen others, matching cost a quarter of the API's time per
    # report: python -m simulators.http_bench). No other router has paths under /ingest.
    for r in (ingest.router, auth.router, org.router, staff.router, supervisees.router,
              zones.router, alerts.router, permits.router, supervision.router, notify.router,
              ops.router, audit.router, broker.router, investigations.router, reports.router):
        app.include_router(r, prefix="/api/v1")
    app.include_router(duty.router, prefix="/api/v1")
    console.mount(app)
    _add_hardening(app)
    return app


def _add_hardening(app: FastAPI) -> None:
    """Request limits, CORS and security headers (outermost last: headers, CORS, limits)."""
    s = get_settings()
    app.add_middleware(RejectNulInUrl, exempt_prefixes=["/api/v1/ingest/"])
    # The phone endpoints read at most max_payload_bytes themselves and keep an oversized body
    # truncated, as a dead letter (api/routes/ingest.py).
    app.add_middleware(BodySizeLimit, limit=s.max_body_bytes, exempt_prefixes=["/api/v1/ingest/"],
                       overrides=[("POST", "/api/v1/zones", s.max_zone_body_bytes),
                                  ("PUT", "/api/v1/zones/{zone_id}", s.max_zone_body_bytes)])
    # No credentials mode (the console is same-origin; integrators use bearer tokens). No origin
    # configured: no CORS headers, and a browser on another origin can neither read a response
    # nor pass a preflight (which the console's CSRF header would need).
    app.add_middleware(
        CORSMiddleware, allow_origins=s.cors_origins, allow_credentials=False,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
        expose_headers=["Retry-After"], max_age=600,
    )
    app.add_middleware(SecurityHeaders, hsts=s.environment == Environment.PRODUCTION,
                       console=console_csp(console.tile_origin(s.console_tile_url,
                                                               s.console_tile_subdomains)))


app = create_app()
