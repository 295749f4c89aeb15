"""The FastAPI application: `uvicorn api.app:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import DomainError, domain_error_handler
from api.routes import (
    alerts,
    audit,
    auth,
    broker,
    ingest,
    notify,
    ops,
    org,
    permits,
    staff,
    supervisees,
    supervision,
    zones,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    ingest.pool.close()


def create_app() -> FastAPI:
    """Build the application with every router under /api/v1."""
    app = FastAPI(
        title="Community corrections location supervision",
        version="0.1.0",
        description="Staff and phone API. Coordinates are (lon, lat), WGS-84 unless stated.",
        lifespan=lifespan,
    )
    app.add_exception_handler(DomainError, domain_error_handler)
    for r in (auth.router, org.router, staff.router, supervisees.router, zones.router, alerts.router,
              permits.router, supervision.router, notify.router, ingest.router, ops.router,
              audit.router, broker.router):
        app.include_router(r, prefix="/api/v1")
    return app


app = create_app()
