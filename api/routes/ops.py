"""Operations: health and the dead-letter table."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import select, text

from api.authz import CITY, access, declared
from api.deps import CurrentStaff, RedisDep, SessionDep, SettingsDep, audit
from api.errors import Forbidden, Unauthorized
from api.metrics import AuditChainCollector, DatabaseCollector
from api.schemas import DeadLetterOut
from store.enums import Role
from store.models import DeadLetter

router = APIRouter(tags=["operations"])


@router.get("/healthz", **declared("public", "anyone"))
def health(session: SessionDep, r: RedisDep) -> dict[str, Any]:
    """Liveness of the API and its database and Redis connections."""
    session.execute(text("SELECT 1"))
    r.ping()
    return {"status": "ok"}


@router.get("/livez", **declared("public", "anyone"))
def livez() -> dict[str, Any]:
    """The process answers (a liveness probe: restart it when this fails). Touches nothing
    else, so a database outage does not get every API instance restarted."""
    return {"status": "ok"}


@router.get("/readyz", **declared("public", "anyone"))
def readyz(session: SessionDep, r: RedisDep) -> dict[str, Any]:
    """Ready for traffic (a readiness probe: take it out of the load balancer when this
    fails): the database and Redis answer."""
    session.execute(text("SELECT 1"))
    r.ping()
    return {"status": "ok"}


_registry: CollectorRegistry | None = None


@router.get("/metrics", response_class=PlainTextResponse, **declared("token", "prometheus"))
def metrics(settings: SettingsDep,
            authorization: Annotated[str | None, Header()] = None) -> PlainTextResponse:
    """Prometheus metrics (alerts opened, acknowledged, escalated, time to acknowledge, ...).

    Counts only, no personal data. With `CCS_METRICS_TOKEN` set (required in production) the
    scraper sends it as a bearer token.
    """
    if settings.metrics_token:
        presented = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ")
        if not hmac.compare_digest(presented.encode(), settings.metrics_token.encode()):
            raise Unauthorized("metrics need the bearer token CCS_METRICS_TOKEN")
    global _registry
    if _registry is None:
        _registry = CollectorRegistry()
        _registry.register(DatabaseCollector(settings.psycopg_dsn))
        _registry.register(AuditChainCollector(settings))
    return PlainTextResponse(generate_latest(_registry).decode(), media_type=CONTENT_TYPE_LATEST)


@router.get("/dead-letters", response_model=list[DeadLetterOut], **access({CITY}, "city"))
def dead_letters(
    ctx: CurrentStaff, session: SessionDep, request: Request, reason: str | None = None,
    offset: int = Query(0, ge=0, le=2**31 - 1), limit: int = Query(100, ge=1, le=1000),
) -> list[DeadLetterOut]:
    """Rejected messages with their reason (city administrators: they may name any device)."""
    if ctx.staff.role != Role.CITY_ADMIN:
        raise Forbidden("only city administrators may read the dead-letter table")
    q = select(DeadLetter)
    if reason is not None:
        q = q.where(DeadLetter.reason == reason)
    rows = session.scalars(q.order_by(DeadLetter.id.desc()).offset(offset).limit(limit)).all()
    audit(session, ctx, request, "dead_letters.read", "dead_letters", count=len(rows))
    session.commit()
    return [
        DeadLetterOut(
            id=d.id, received_at=d.received_at, source=d.source, topic=d.topic,
            device_id=d.device_id, reason=d.reason, detail=d.detail, raw_size=d.raw_size,
            raw_preview=d.raw[:512].decode("utf-8", errors="replace"), remote=d.remote,
        )
        for d in rows
    ]
