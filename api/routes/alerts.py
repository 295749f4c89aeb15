"""Alerts: list, filter, acknowledge, resolve, and the live Server-Sent Events feed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
import redis
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from alerts import service
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
)
from api.errors import Conflict, Invalid, NotFound
from api.feed import FeedHub, Subscriber, stream_id
from api.schemas import (
    AlertEventOut,
    AlertOut,
    AlertPage,
    DbId,
    DeliveryAttemptOut,
    InputModel,
    NotificationOut,
    ResolveIn,
)
from api.security import new_token, session_key
from store.enums import AlertKind, AlertStatus
from store.models import Alert, AlertEvent, Notification, NotificationAttempt
from store.settings import Settings

router = APIRouter(prefix="/alerts", tags=["alerts"])

HEARTBEAT_S = 15.0  # a comment line this often when idle; also how soon a feed notices a logout


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
    service.acknowledge(session, alert, ctx.id)
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
    service.resolve(session, alert, ctx.id, body.disposition, body.note)
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
    service.escalate(session, alert, ctx.id)
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


class WatchIn(InputModel):
    """Opening the duty view: why (recorded once in the audit log, not at each reconnect)."""
    purpose: str = Field(min_length=3, max_length=200)


class WatchOut(BaseModel):
    watch: str
    expires_in: int


def _watch_key(settings: Settings, watch: str) -> str:
    return f"{settings.redis_prefix}watch:{watch}"


@router.post("/watch", response_model=WatchOut, **access(SUPERVISORS))
def open_watch(body: WatchIn, ctx: CurrentStaff, session: SessionDep, r: RedisDep,
               settings: SettingsDep, request: Request) -> WatchOut:
    """Open a duty watch: one audit row with the purpose; the live feed and the duty map then
    take `watch=` for as long as this sign-in lasts (reconnects write nothing more)."""
    watch = new_token()
    ttl = settings.refresh_token_ttl_s
    r.set(_watch_key(settings, watch),
          orjson.dumps({"sid": ctx.session_id, "purpose": body.purpose}), ex=ttl)
    audit(session, ctx, request, "alert.stream_subscribe", "alerts", purpose=body.purpose)
    session.commit()
    return WatchOut(watch=watch, expires_in=ttl)


class WatchState(WatchOut):
    open: bool


@router.get("/watch/{watch}", response_model=WatchState, **access(SUPERVISORS, "self"))
def check_watch(watch: Annotated[str, Path(min_length=10, max_length=100)], ctx: CurrentStaff,
                r: RedisDep, settings: SettingsDep) -> WatchState:
    """Whether a duty watch is still open for this sign-in (the console asks after its feed was
    refused, to tell an ended watch from a dropped connection)."""
    try:
        watch_info(r, settings, ctx, watch)
    except NotFound:
        return WatchState(watch=watch, expires_in=0, open=False)
    return WatchState(watch=watch, open=True,
                      expires_in=max(0, int(r.ttl(_watch_key(settings, watch)))))


def watch_info(r: redis.Redis, settings: Settings, ctx: StaffContext, watch: str) -> str:
    """The purpose of a duty watch this sign-in opened; refused if another sign-in opened it
    or it ended with the session."""
    raw = r.get(_watch_key(settings, watch))
    info = orjson.loads(raw) if raw is not None else None  # type: ignore[arg-type]
    if info is None or info.get("sid") != ctx.session_id:
        raise NotFound("this duty watch is not open for your sign-in; open the duty view again",
                       "watch_closed")
    return str(info["purpose"])


def feed_hub(request: Request, settings: Settings) -> FeedHub:
    """The process's feed reader, made in the running event loop on first use."""
    import asyncio

    hub: FeedHub | None = getattr(request.app.state, "feed", None)
    if hub is None or hub.loop is not asyncio.get_running_loop():
        hub = FeedHub(settings, feed_key(settings))
        request.app.state.feed = hub
    return hub


@router.get("/stream/live", response_class=StreamingResponse, **access(SUPERVISORS, enforce=False))
async def live_feed(
    request: Request,
    ctx: Annotated[StaffContext, Depends(stream_staff)],
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
    purpose: str | None = Query(None, min_length=3, max_length=200,
                                description="Why the feed is opened (recorded in the audit log); "
                                            "or `watch` from POST /alerts/watch"),
    watch: str | None = Query(None, min_length=10, max_length=100,
                              description="a duty watch opened with POST /alerts/watch"),
) -> StreamingResponse:
    """Server-Sent Events: alerts of the caller's jurisdiction as they open, change and close.

    Resumes after `Last-Event-ID` when the browser reconnects (events trimmed from the stream in
    between are announced by a `feed.reset` event); otherwise starts with new events. A comment
    line every `HEARTBEAT_S` keeps proxies from closing an idle feed.
    """
    require_role(ctx, SUPERVISORS)
    if watch is not None:
        watch_info(r, settings, ctx, watch)
    elif purpose is not None:
        audit(session, ctx, request, "alert.stream_subscribe", "alerts", purpose=purpose)
        session.commit()
    else:
        raise Invalid("say why the feed is opened: `purpose`, or `watch` from POST /alerts/watch")
    if last_event_id is not None:
        try:
            stream_id(last_event_id)
        except ValueError as e:
            raise Invalid("Last-Event-ID is not an event id of this feed") from e
    hub = feed_hub(request, settings)
    sub = Subscriber(ctx.unit_ids)
    session_redis_key = session_key(settings.redis_prefix, ctx.session_id)
    tip: Any = await hub.redis.xrevrange(feed_key(settings), count=1)
    start = last_event_id or (tip[0][0].decode() if tip else "0-0")
    # The database is done with: give its connection back now. The request's session would
    # otherwise hold a pooled connection for as long as the feed stays open (its cleanup runs
    # when the response ends), and twenty open consoles would starve every other request.
    session.close()

    async def events() -> AsyncIterator[bytes]:
        # The first frame names where this feed starts, so a reconnect resumes from there even
        # when no alert came before the connection dropped.
        yield f"id: {start}\nretry: 3000\n: connected\n\n".encode()
        async for ev in hub.follow(sub, start, HEARTBEAT_S):
            if await request.is_disconnected():
                return
            if ev is not None:
                yield ev.sse()
                continue
            if not await hub.redis.exists(session_redis_key):
                # Logged out, session expired, or the account was disabled or changed:
                # the feed of location-bearing alerts stops too.
                yield b"event: end\ndata: {\"reason\": \"session ended\"}\n\n"
                return
            yield b": keepalive\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
