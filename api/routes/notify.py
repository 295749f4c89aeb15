"""Notification channels: webhook endpoints (SMS gateways, messaging platforms) and each staff
member's own delivery preferences."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select

from alerts.delivery import new_webhook_secret, refuse_webhook_target
from api.authz import MANAGERS, SUPERVISORS, access
from api.deps import (
    CurrentStaff,
    SessionDep,
    SettingsDep,
    StaffContext,
    audit,
    require_unit,
    unit_path_ids,
)
from api.errors import Conflict, DomainError, Forbidden, NotFound
from api.schemas import ChannelIn, ChannelOut, DbId, WebhookCreated, WebhookIn, WebhookOut
from store.enums import Role
from store.models import StaffChannel, WebhookEndpoint

router = APIRouter(tags=["notifications"])
# Who may have the monthly compliance report e-mailed (officers read their office's on demand).
REPORT_READERS = frozenset({Role.OFFICE_HEAD, Role.DISTRICT_SUPERVISOR, Role.CITY_ADMIN})



def _usable_units(ctx: StaffContext) -> set[int]:
    """Units whose webhooks a staff member may use: their subtree and the units above them
    (a city-wide SMS gateway serves every office)."""
    return set(ctx.unit_ids) | set(unit_path_ids(ctx.unit))


@router.post("/webhooks", response_model=WebhookCreated, status_code=201, **access(MANAGERS))
def create_webhook(body: WebhookIn, ctx: CurrentStaff, session: SessionDep, request: Request,
                   settings: SettingsDep) -> WebhookCreated:
    """Register a receiver; its signing secret is shown in this answer only."""
    require_unit(ctx, body.org_unit_id)
    refused = refuse_webhook_target(body.url, settings)
    if refused:
        raise DomainError(f"webhook refused: {refused}", "invalid_url")
    hook = WebhookEndpoint(org_unit_id=body.org_unit_id, name=body.name, url=body.url,
                           secret=new_webhook_secret(), created_by=ctx.id)
    session.add(hook)
    session.flush()
    audit(session, ctx, request, "webhook.create", f"webhook:{hook.id}", url=body.url)
    session.commit()
    return WebhookCreated(id=hook.id, org_unit_id=hook.org_unit_id, name=hook.name,
                          url=hook.url, active=hook.active, secret=hook.secret)


@router.get("/webhooks", response_model=list[WebhookOut], **access(SUPERVISORS))
def list_webhooks(ctx: CurrentStaff, session: SessionDep) -> list[WebhookEndpoint]:
    """Webhooks the caller may route to: of their subtree and of the units above them."""
    return list(session.scalars(select(WebhookEndpoint)
                                .where(WebhookEndpoint.org_unit_id.in_(_usable_units(ctx)))
                                .order_by(WebhookEndpoint.id)))


@router.delete("/webhooks/{webhook_id}", response_model=WebhookOut, **access(MANAGERS))
def deactivate_webhook(webhook_id: DbId, ctx: CurrentStaff, session: SessionDep,
                       request: Request) -> WebhookEndpoint:
    """Stop sending to a receiver (kept for the delivery record)."""
    hook = session.get(WebhookEndpoint, webhook_id)
    if hook is None or not ctx.can_see_unit(hook.org_unit_id):
        raise NotFound(f"webhook {webhook_id} not found")
    hook.active = False
    audit(session, ctx, request, "webhook.deactivate", f"webhook:{hook.id}")
    session.commit()
    return hook


@router.get("/me/channels", response_model=list[ChannelOut], **access(SUPERVISORS, "self"))
def my_channels(ctx: CurrentStaff, session: SessionDep) -> list[StaffChannel]:
    """The caller's delivery channels (the live feed in the console is always on)."""
    return list(session.scalars(select(StaffChannel).where(StaffChannel.staff_id == ctx.id)
                                .order_by(StaffChannel.id)))


@router.post("/me/channels", response_model=ChannelOut, status_code=201, **access(SUPERVISORS, "self"))
def add_channel(body: ChannelIn, ctx: CurrentStaff, session: SessionDep,
                request: Request) -> StaffChannel:
    """Receive alerts by e-mail, or through a webhook (an SMS gateway, a messaging platform)
    at an address such as a phone number, from a minimum severity up; and (office heads,
    district and city staff, e-mail only) the monthly compliance report with `reports`."""
    if body.channel == "webhook":
        hook = session.get(WebhookEndpoint, body.webhook_id) if body.webhook_id else None
        if hook is None or not hook.active or hook.org_unit_id not in _usable_units(ctx):
            raise NotFound(f"webhook {body.webhook_id} not found")
    elif body.webhook_id is not None:
        raise DomainError("webhook_id belongs to webhook channels only", "invalid_channel")
    existing = session.scalar(select(StaffChannel).where(
        StaffChannel.staff_id == ctx.id, StaffChannel.channel == body.channel,
        StaffChannel.address == body.address,
        StaffChannel.webhook_id.is_(None) if body.webhook_id is None
        else StaffChannel.webhook_id == body.webhook_id))
    if existing is not None and existing.active:
        raise Conflict(f"channel {existing.id} already delivers there")
    ch = existing or StaffChannel(staff_id=ctx.id, channel=body.channel, address=body.address,
                                  webhook_id=body.webhook_id)
    if body.reports and ctx.staff.role not in REPORT_READERS:
        raise Forbidden("monthly reports go to office heads and bureau staff",
                        "reports_not_for_role")
    ch.min_severity = body.min_severity
    ch.alerts, ch.reports = body.alerts, body.reports
    ch.active = True
    session.add(ch)
    session.flush()
    audit(session, ctx, request, "channel.add", f"channel:{ch.id}", channel=body.channel)
    session.commit()
    return ch


@router.delete("/me/channels/{channel_id}", response_model=ChannelOut, **access(SUPERVISORS, "self"))
def remove_channel(channel_id: DbId, ctx: CurrentStaff, session: SessionDep,
                   request: Request) -> StaffChannel:
    """Stop delivering on one of the caller's channels."""
    ch = session.get(StaffChannel, channel_id)
    if ch is None or ch.staff_id != ctx.id:
        raise NotFound(f"channel {channel_id} not found")
    ch.active = False
    audit(session, ctx, request, "channel.remove", f"channel:{ch.id}")
    session.commit()
    return ch
