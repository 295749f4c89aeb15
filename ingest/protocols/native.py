"""Our own MQTT payload on `devices/{device_id}/location` (docs/protocols.md, "Native protocol")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from geofence.model import CRS, Fix, Source
from ingest.protocols.common import (
    JSON_NUMBER,
    STRICT,
    Candidate,
    Decoded,
    Limits,
    TimeValue,
    each,
    elements,
    load_json,
    parse_crs,
    plain_numbers,
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


_OPTIONAL_NUMBERS = ("accuracy", "altitude", "speed", "heading", "battery")
_CRS = {c.value: c for c in CRS}


def _plain(obj: dict[str, Any]) -> Candidate | None:
    """The usual fix without the model: every field present has exactly the JSON type the model
    accepts (numbers as int or float, never bool), the CRS is spelled as stored, and the time is
    a number. Anything else returns None and goes through the model, which names the problem;
    `tests/test_protocol_native.py` checks that both ways give the same fix or the same error."""
    get = obj.get
    t: Any = get("time")
    lat: Any = get("lat")
    lon: Any = get("lon")
    if not (type(t) in JSON_NUMBER and type(lat) in JSON_NUMBER and type(lon) in JSON_NUMBER):
        return None
    vals = plain_numbers(obj, _OPTIONAL_NUMBERS)
    if vals is None:
        return None
    crs, provider, mock, seq = get("crs", "wgs84"), get("provider"), get("mock", False), get("seq")
    if (type(crs) is not str or crs not in _CRS or type(mock) is not bool
            or not (provider is None or type(provider) is str)
            or not (seq is None or type(seq) is int)):
        return None
    acc, alt, speed, heading, battery = vals
    return Candidate(time=float(t), lat=float(lat), lon=float(lon), crs=_CRS[crs], accuracy=acc,
                     altitude=alt, speed=speed, heading=heading, battery=battery,
                     provider=provider or None, mock=mock, seq=seq)


def decode_native(device_id: str, payload: bytes, now: float, limits: Limits = Limits()) -> Decoded:
    """Our MQTT payload on `devices/{device_id}/location`: one fix object, or an array of them."""
    items, as_array = elements(load_json(payload, limits), limits)
    fixes: list[Fix] = []

    def one(obj: dict[str, Any]) -> None:
        cand = _plain(obj)
        if cand is not None:
            fixes.append(validate(device_id, cand, Source.NATIVE_MQTT, now, limits))
            return
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
