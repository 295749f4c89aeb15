"""Device credentials towards the broker: re-enrolment, and the EMQX HTTP auth/ACL hooks.

Re-enrolment gives an enrolled phone a new secret (a replaced or reset phone keeps its device
id and history); the old secret stops working at once for HTTP, and for MQTT as soon as the
broker-sync process has rewritten the broker's password file (a trigger announces the change;
Mosquitto then disconnects the phone still connected with the old secret).

For an EMQX deployment the broker asks the API instead of reading files
(docs/broker-security.md): `POST /broker/auth` at every connect, `POST /broker/acl` for each
publish and subscribe (EMQX caches the answers). EMQX presents the shared secret
`CCS_BROKER_HOOK_SECRET` as a bearer token; without that setting the hooks answer 404.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field

from api.authz import SUPERVISORS, access, declared
from api.deps import (
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    commit_config_change,
    device_in_jurisdiction,
)
from api.enrolment import enrolment, owntracks_topic, owntracks_url, traccar_client_url
from api.errors import Conflict, NotFound, Unauthorized
from api.schemas import DeviceCredentials, NoNulModel
from api.security import hash_device_secret, new_device_secret, secret_matches
from store.broker_sync import broker_hash, service_accounts
from store.models import Device
from store.settings import Settings
from store.topics import ingest_filters

router = APIRouter(tags=["broker"])


def device_credentials(settings: Settings, device_id: str, secret: str) -> DeviceCredentials:
    """What a phone is told: the same shape as the enrolment answer, with the device port."""
    p = settings.mqtt_topic_prefix
    return DeviceCredentials(
        device_id=device_id,
        secret=secret,
        mqtt={
            "host": settings.mqtt_host, "port": settings.mqtt_device_port or settings.mqtt_port,
            "client_id": device_id, "username": device_id, "password": secret,
            "location_topic": f"{p}devices/{device_id}/location",
            "owntracks_topic": owntracks_topic(settings, device_id),
            "command_topic": f"{p}devices/{device_id}/cmd",
        },
        http={
            "owntracks_url": owntracks_url(settings),
            "owntracks_auth": {"username": device_id, "password": secret},
            "traccar_client_url": traccar_client_url(settings, secret),
            "traccar_client_device_identifier": device_id,
        },
        enrolment=enrolment(settings, device_id, secret),
    )


@router.post("/devices/{device_id}/reenrol", response_model=DeviceCredentials, **access(SUPERVISORS))
def reenrol_device(
    device_id: str, ctx: CurrentStaff, session: SessionDep, request: Request,
    r: RedisDep, settings: SettingsDep,
) -> DeviceCredentials:
    """Issue an enrolled phone a new secret (shown once); the old one stops working at once."""
    dev = device_in_jurisdiction(session, ctx, device_id)
    if not dev.active:
        raise Conflict(f"device {device_id} is revoked: enrol a new device instead")
    secret = new_device_secret()
    dev.secret_hash = hash_device_secret(secret)
    dev.broker_hash = broker_hash(secret)
    commit_config_change(session, ctx, request, r, settings,
                         "device.reenrol", f"device:{device_id}", supervisee_id=dev.supervisee_id)
    return device_credentials(settings, device_id, secret)


# --- EMQX hooks -------------------------------------------------------------------------------

_SEGMENT = r"[^/+#]+"


class AuthIn(NoNulModel):
    """EMQX HTTP authentication request (body template in docs/broker-security.md)."""

    username: str = Field(default="", max_length=200)
    password: str = Field(default="", max_length=200)
    clientid: str = Field(default="", max_length=200)


class AclIn(NoNulModel):
    """EMQX HTTP authorization request."""

    username: str = Field(default="", max_length=200)
    clientid: str = Field(default="", max_length=200)
    topic: str = Field(max_length=1000)
    action: Literal["publish", "subscribe", "all"]


class HookOut(BaseModel):
    """EMQX's expected answer."""

    result: Literal["allow", "deny"]
    is_superuser: bool = False


def hook_secret(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """The broker's shared secret, checked before anything of the request is read."""
    if not settings.broker_hook_secret:
        raise NotFound("broker hooks are disabled (CCS_BROKER_HOOK_SECRET is not set)")
    presented = (authorization or "").removeprefix("Bearer ").encode()
    if not hmac.compare_digest(presented, settings.broker_hook_secret.encode()):
        raise Unauthorized("broker hook secret required")


def device_may(device_id: str, action: str, topic: str, prefix: str) -> bool:
    """A phone publishes only its own report topics and subscribes only to its own commands
    (the same rules as the Mosquitto device ACL, store/broker_sync.device_acl)."""
    owntracks = f"{prefix}owntracks/{device_id}/{device_id}"
    if action == "publish":  # its OwnTracks subtree too (events, waypoints), as in the Mosquitto ACL
        return topic in (f"{prefix}devices/{device_id}/location", owntracks) or (
            topic.startswith(owntracks + "/") and not any(c in topic for c in "+#"))
    if action == "subscribe":
        return topic in (f"{prefix}devices/{device_id}/cmd", f"{owntracks}/cmd")
    return False


def service_may(settings: Settings, username: str, action: str, topic: str) -> bool:
    """The ingest account subscribes to every phone's reports; the command account publishes to
    any phone's command topics (the Mosquitto service ACL, store/broker_sync.service_acl)."""
    p = re.escape(settings.mqtt_topic_prefix)
    commands = settings.mqtt_commands_credentials[0] or settings.mqtt_username
    if action == "subscribe" and username == settings.mqtt_username:
        return topic in ingest_filters(settings.mqtt_topic_prefix)
    if action == "publish" and username == commands:
        return bool(re.fullmatch(rf"{p}devices/{_SEGMENT}/cmd|{p}owntracks/{_SEGMENT}/{_SEGMENT}/cmd",
                                 topic))
    return False


@router.post("/broker/auth", response_model=HookOut, dependencies=[Depends(hook_secret)],
             **declared("token", "broker"))
def broker_auth(body: AuthIn, session: SessionDep, settings: SettingsDep) -> HookOut:
    """EMQX authentication: an active device whose client id is its device id and whose secret
    matches, or a service account."""
    services = service_accounts(settings) if settings.mqtt_username else {}
    if body.username in services:
        ok = hmac.compare_digest(body.password.encode(), services[body.username].encode())
        return HookOut(result="allow" if ok else "deny")
    dev = session.get(Device, body.username) if body.username else None
    ok = (dev is not None and dev.active and body.clientid == dev.id
          and secret_matches(body.password, dev.secret_hash))
    return HookOut(result="allow" if ok else "deny")


@router.post("/broker/acl", response_model=HookOut, dependencies=[Depends(hook_secret)],
             **declared("token", "broker"))
def broker_acl(body: AclIn, session: SessionDep, settings: SettingsDep) -> HookOut:
    """EMQX authorization of one publish or subscribe."""
    services = service_accounts(settings) if settings.mqtt_username else {}
    if body.username in services:
        ok = service_may(settings, body.username, body.action, body.topic)
    else:
        dev = session.get(Device, body.username) if body.username else None
        ok = (dev is not None and dev.active and body.clientid == dev.id
              and device_may(dev.id, body.action, body.topic, settings.mqtt_topic_prefix))
    return HookOut(result="allow" if ok else "deny")
