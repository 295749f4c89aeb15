"""Alerts: list, filter, acknowledge, resolve, and the live Server-Sent Events feed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select, text

from alerts.escalation import ACK_MINUTES
from alerts.worker import feed_key
from api.authz import SUPERVISORS, access, require_role
from api.deps import (
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    StaffContext,
    audit,
    current_staff,
    oauth2_scheme,
    pg_now,
)
from api.errors import Conflict, NotFound
from api.schemas import (
    AlertEventOut,
    AlertOut,
    AlertPage,
    DbId,
    DeliveryAttemptOut,
    NotificationOut,
    ResolveIn,
)
from api.security import session_key
from store.enums import AlertKind, AlertStatus
from store.models import Alert, AlertEvent, Notification, NotificationAttempt

router = APIRouter(prefix="/alerts", tags=["alerts"])

HEARTBEAT_MS = 5_000  # also how soon a feed notices that its session ended


def _alert(session: SessionDep, ctx: StaffContext, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None or not ctx.can_see_unit(alert.office_id):
        raise NotFound(f"alert {alert_id} not found")
    return alert


@router.get("", response_model=AlertPage, **access(SUPERVISORS))
def list_alerts(
    ctx: CurrentStaff,
    session: SessionDep,
    request: Request,
    status: AlertStatus | None = None,
    kind: AlertKind | None = None,
    supervisee_id: DbId | None = None,
    office_id: DbId | None = None,
    since: datetime | None = None,
    offset: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(50, ge=1, le=500),
) -> AlertPage:
    """Alerts of the caller's jurisdiction, newest first, filtered and paged."""
    q = select(Alert).where(Alert.office_id.in_(ctx.unit_ids))
    if status is not None:
        q = q.where(Alert.status == status.value)
    if kind is not None:
        q = q.where(Alert.kind == kind.value)
    if supervisee_id is not None:
        q = q.where(Alert.supervisee_id == supervisee_id)
    if office_id is not None:
        q = q.where(Alert.office_id == office_id)
    if since is not None:
        q = q.where(Alert.updated_at >= since)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    items = session.scalars(q.order_by(Alert.updated_at.desc(), Alert.id.desc())
                            .offset(offset).limit(limit)).all()
    # Alerts carry the position that caused them: a read of location data.
    audit(session, ctx, request, "alert.list", "alerts", count=len(items))
    session.commit()
    return AlertPage(items=[AlertOut.model_validate(a) for a in items], total=total,
                     offset=offset, limit=limit)


@router.get("/{alert_id}", response_model=AlertOut, **access(SUPERVISORS))
def get_alert(alert_id: DbId, ctx: CurrentStaff, session: SessionDep, request: Request) -> Alert:
    """One alert with its explanation (`reason`: rule, zone, distance, accuracy)."""
    alert = _alert(session, ctx, alert_id)
    audit(session, ctx, request, "alert.read", f"alert:{alert_id}")
    session.commit()
    return alert


@router.post("/{alert_id}/acknowledge", response_model=AlertOut, **access(SUPERVISORS))
def acknowledge(alert_id: DbId, ctx: CurrentStaff, session: SessionDep, request: Request) -> Alert:
    """Take responsibility for an open alert."""
    alert = _alert(session, ctx, alert_id)
    if alert.status != AlertStatus.OPEN:
        raise Conflict(f"alert {alert_id} is {alert.status}, not open")
    alert.status = AlertStatus.ACKNOWLEDGED.value
    alert.acknowledged_by = ctx.id
    alert.acknowledged_at = pg_now(session)
    session.add(AlertEvent(alert_id=alert.id, staff_id=ctx.id, action="acknowledged"))
    audit(session, ctx, request, "alert.acknowledge", f"alert:{alert_id}")
    session.commit()
    return alert


@router.post("/{alert_id}/resolve", response_model=AlertOut, **access(SUPERVISORS))
def resolve(
    alert_id: DbId, body: ResolveIn, ctx: CurrentStaff, session: SessionDep, request: Request
) -> Alert:
    """Close an alert: a disposition and a note saying what was found are required."""
    alert = _alert(session, ctx, alert_id)
    if alert.status == AlertStatus.RESOLVED:
        raise Conflict(f"alert {alert_id} is already resolved")
    alert.status = AlertStatus.RESOLVED.value
    alert.resolved_by = ctx.id
    alert.resolved_at = pg_now(session)
    alert.resolution_note = body.note
    alert.disposition = body.disposition
    session.add(AlertEvent(alert_id=alert.id, staff_id=ctx.id, action="resolved",
                           detail={"disposition": body.disposition, "note": body.note}))
    audit(session, ctx, request, "alert.resolve", f"alert:{alert_id}")
    session.commit()
    return alert


@router.get("/{alert_id}/history", response_model=list[AlertEventOut], **access(SUPERVISORS))
def alert_history(alert_id: DbId, ctx: CurrentStaff, session: SessionDep) -> list[AlertEvent]:
    """Every transition of an alert: who, when, what."""
    _alert(session, ctx, alert_id)
    return list(session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id)
                                .order_by(AlertEvent.id)))


@router.get("/{alert_id}/notifications", response_model=list[NotificationOut], **access(SUPERVISORS))
def alert_notifications(alert_id: DbId, ctx: CurrentStaff, session: SessionDep) -> list[NotificationOut]:
    """Every notification sent for an alert, to whom and how, with each attempt and outcome."""
    _alert(session, ctx, alert_id)
    out = []
    for n in session.scalars(select(Notification).where(Notification.alert_id == alert_id)
                             .order_by(Notification.id)):
        item = NotificationOut.model_validate(n)
        item.attempt_log = [DeliveryAttemptOut.model_validate(a) for a in session.scalars(
            select(NotificationAttempt).where(NotificationAttempt.notification_id == n.id)
            .order_by(NotificationAttempt.id))]
        out.append(item)
    return out


@router.post("/{alert_id}/escalate", response_model=AlertOut, **access(SUPERVISORS))
def escalate_by_hand(alert_id: DbId, ctx: CurrentStaff, session: SessionDep,
                     request: Request) -> Alert:
    """Hand an alert up a level (office → district bureau → city bureau); the new level gets
    its own acknowledgement time."""
    # Locked: a scheduled escalation or a colleague's click at the same moment waits, then
    # sees the new level (one step, one notification).
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None or not ctx.can_see_unit(alert.office_id):
        raise NotFound(f"alert {alert_id} not found")
    if alert.status == AlertStatus.RESOLVED:
        raise Conflict(f"alert {alert_id} is resolved")
    if alert.escalation_level >= 2:
        raise Conflict(f"alert {alert_id} is already with the city bureau")
    alert.escalation_level += 1
    alert.ack_deadline = pg_now(session) + timedelta(minutes=ACK_MINUTES[alert.severity])
    session.add(AlertEvent(alert_id=alert.id, staff_id=ctx.id, action="escalated",
                           detail={"to_level": alert.escalation_level, "by_hand": True}))
    session.execute(text("INSERT INTO outbox (topic, payload) VALUES ('alert.escalated', :p)"),
                    {"p": orjson.dumps({"alert_id": alert.id, "office_id": alert.office_id,
                                        "supervisee_id": alert.supervisee_id, "kind": alert.kind,
                                        "escalation_level": alert.escalation_level}).decode()})
    session.execute(text("NOTIFY ccs_outbox"))
    audit(session, ctx, request, "alert.escalate", f"alert:{alert_id}")
    session.commit()
    return alert


def stream_staff(
    request: Request,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
    header_token: Annotated[str | None, Depends(oauth2_scheme)],
    access_token: str | None = Query(None, description="for EventSource, which cannot send headers"),
) -> StaffContext:
    """Bearer token from the header or, for browsers' EventSource, the query string."""
    return current_staff(request, session, r, settings, header_token or access_token)


@router.get("/stream/live", response_class=StreamingResponse, **access(SUPERVISORS, enforce=False))
async def live_feed(
    request: Request,
    ctx: Annotated[StaffContext, Depends(stream_staff)],
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
    purpose: str = Query(..., min_length=3, max_length=200,
                         description="Why the feed is opened (required; recorded in the audit log)"),
) -> StreamingResponse:
    """Server-Sent Events: alerts of the caller's jurisdiction as they open or update.

    Resumes after `Last-Event-ID` when the browser reconnects; otherwise starts with new events.
    """
    require_role(ctx, SUPERVISORS)
    audit(session, ctx, request, "alert.stream_subscribe", "alerts", purpose=purpose)
    session.commit()
    units = ctx.unit_ids
    start = last_event_id or "$"
    session_redis_key = session_key(settings.redis_prefix, ctx.session_id)

    async def events() -> AsyncIterator[bytes]:
        r = aioredis.Redis.from_url(settings.redis_url)
        last = start
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                if not await r.exists(session_redis_key):
                    # Logged out, session expired, or the account was disabled or changed:
                    # the feed of location-bearing alerts stops too.
                    yield b"event: end\ndata: {\"reason\": \"session ended\"}\n\n"
                    return
                resp: Any = await r.xread({feed_key(settings): last}, count=200, block=HEARTBEAT_MS)
                if not resp:
                    yield b": keepalive\n\n"
                    continue
                for _stream, entries in resp:
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        payload = orjson.loads(fields[b"payload"])
                        if payload.get("office_id") not in units:
                            continue
                        payload["outbox_id"] = int(fields[b"outbox_id"])
                        topic = fields[b"topic"].decode()
                        yield (f"id: {last}\nevent: {topic}\ndata: ".encode()
                               + orjson.dumps(payload) + b"\n\n")
        finally:
            await r.aclose()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
