"""What a phone needs to start reporting, as links an officer can hand over at enrolment.

* OwnTracks: the app's documented remote configuration, `owntracks:///config?inline=<base64 of a
  JSON _type=configuration>` (https://owntracks.org/booklet/features/remoteconfig/), in MQTT mode
  (mode 0: the broker's device listener, the topic `ingest/mqtt_worker.py` subscribes to) or HTTP
  mode (mode 3: `POST /api/v1/ingest/owntracks` with Basic device id:secret), per
  `CCS_OWNTRACKS_MODE`; a QR code of that link as an SVG data URI (segno) for the phone's camera.
* Traccar Client: the server URL of the OsmAnd endpoint, the secret in the path.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import psycopg
import redis
import segno

from store.settings import Settings

OWNTRACKS_MQTT, OWNTRACKS_HTTP = 0, 3  # OwnTracks' `mode` values


def owntracks_topic(settings: Settings, device_id: str) -> str:
    """The topic the ingest worker routes to a device: {prefix}owntracks/{user}/{device}."""
    return f"{settings.mqtt_topic_prefix}owntracks/{device_id}/{device_id}"


def owntracks_url(settings: Settings) -> str:
    return f"{settings.public_base_url.rstrip('/')}/api/v1/ingest/owntracks"


def traccar_client_url(settings: Settings, secret: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}/api/v1/ingest/osmand/{secret}"


def owntracks_configuration(settings: Settings, device_id: str, secret: str) -> dict[str, Any]:
    """An OwnTracks `_type=configuration` for this device (keys as the booklet's JSON page)."""
    conf: dict[str, Any] = {
        "_type": "configuration", "auth": True, "username": device_id, "password": secret,
        "deviceId": device_id, "tid": device_id[-2:].upper(), "clientId": device_id,
    }
    if settings.owntracks_mode == "http":
        conf |= {"mode": OWNTRACKS_HTTP, "url": owntracks_url(settings)}
        return conf
    conf |= {
        "mode": OWNTRACKS_MQTT, "host": settings.mqtt_host,
        "port": settings.mqtt_device_port or settings.mqtt_port, "tls": settings.mqtt_device_tls,
        "pubTopicBase": owntracks_topic(settings, device_id), "mqttProtocolLevel": 4,
    }
    return conf


def owntracks_link(conf: dict[str, Any]) -> str:
    inline = base64.b64encode(json.dumps(conf, separators=(",", ":")).encode()).decode()
    return f"owntracks:///config?inline={inline}"


def qr_svg(payload: str) -> str:
    """A QR code of `payload` as an SVG data URI (error correction M, 4-module quiet zone)."""
    return segno.make(payload, error="m", micro=False).svg_data_uri(scale=4, border=4)


def enrolment(settings: Settings, device_id: str, secret: str) -> dict[str, Any]:
    """The `enrolment` part of DeviceCredentials."""
    link = owntracks_link(owntracks_configuration(settings, device_id, secret))
    return {"owntracks_mode": settings.owntracks_mode, "owntracks_link": link,
            "owntracks_qr_svg": qr_svg(link),
            "traccar_client_url": traccar_client_url(settings, secret),
            "traccar_client_device_identifier": device_id}


def seed_device_clocks(settings: Settings, r: redis.Redis, device_id: str) -> None:
    """Start a newly enrolled phone's silence clocks: one that never reports still alerts."""
    from alerts.silences import seed_enrolled
    from store.registry import Registry

    registry = Registry(r, settings.redis_prefix)
    with psycopg.connect(settings.psycopg_dsn, autocommit=True) as conn:
        infos = registry.lookup(conn, [device_id])
        seed_enrolled(r, settings.redis_prefix, {d: i.silence_s for d, i in infos.items()},
                      registry.phone_off_s())
