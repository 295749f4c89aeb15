"""Our own MQTT payload on `devices/{device_id}/location` (docs/protocols.md, "Native protocol")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from geofence.model import CRS, Fix, Source
from ingest.protocols.common import (
    STRICT,
    Candidate,
    Decoded,
    Limits,
    TimeValue,
    each,
    elements,
    load_json,
    parse_crs,
    time_value,
    validate,
    validate_model,
)


class _NativeFix(BaseModel):
    model_config = STRICT

    time: TimeValue
    lat: float
    lon: float
    accuracy: float | None = None
    altitude: float | None = None
    speed: float | None = None
    heading: float | None = None
    battery: float | None = None
    crs: str = CRS.WGS84.value
    provider: str | None = None
    mock: bool = False
    seq: int | None = None


def decode_native(device_id: str, payload: bytes, now: float, limits: Limits = Limits()) -> Decoded:
    """Our MQTT payload on `devices/{device_id}/location`: one fix object, or an array of them."""
    items, as_array = elements(load_json(payload, limits), limits)
    fixes: list[Fix] = []

    def one(obj: dict[str, Any]) -> None:
        m = validate_model(_NativeFix, obj)
        cand = Candidate(
            time=time_value(m.time, "time"),
            lat=m.lat,
            lon=m.lon,
            crs=parse_crs(m.crs),
            accuracy=m.accuracy,
            altitude=m.altitude,
            speed=m.speed,
            heading=m.heading,
            battery=m.battery,
            provider=m.provider or None,  # "" means "not known", like null
            mock=m.mock,
            seq=m.seq,
        )
        fixes.append(validate(device_id, cand, Source.NATIVE_MQTT, now, limits))

    each(items, as_array, one)
    return Decoded(fixes=fixes, other=[])
