"""OwnTracks JSON, over MQTT (`owntracks/{user}/{device}[/event|/waypoint|/waypoints]`) or HTTP.

Message types from the booklet (https://owntracks.org/booklet/tech/json/):

* `location` becomes a fix.
* `transition` (published on `.../event` when the phone enters or leaves one of its own regions)
  is recorded as a device message, and the position it carries (`lat`, `lon`, `tst`, `acc`: where
  the phone was when it crossed) becomes a fix too; a transition without coordinates is only
  recorded.
* every other type (`waypoint`, `waypoints`, `lwt`, `card`, `status`, `cmd`, `steps`, `beacon`,
  `encrypted` ...) is recorded as a device message and produces no fix: the phone's own regions
  are not the supervision zones, which are defined on the server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from geofence.model import Fix, Source
from ingest.protocols.common import (
    JSON_NUMBER,
    KMH_MS,
    STRICT,
    Candidate,
    Decoded,
    DecodeError,
    Limits,
    check_depth,
    each,
    elements,
    known,
    load_json,
    plain_numbers,
    short,
    time_value,
    validate,
    validate_model,
)


class _OwnTracksLocation(BaseModel):
    """`_type=location`; always WGS-84."""

    model_config = STRICT

    lat: float
    lon: float
    tst: float  # epoch seconds
    acc: float | None = None  # metres
    alt: float | None = None  # metres
    vel: float | None = None  # km/h (negative: unknown)
    cog: float | None = None  # degrees (negative: unknown)
    batt: float | None = None  # percent (negative: unknown)


class _OwnTracksTransition(BaseModel):
    """The position part of `_type=transition`: where the phone was at the crossing."""

    model_config = STRICT

    lat: float
    lon: float
    tst: float  # epoch seconds of the transition (`wtst` is when the region was created)
    acc: float | None = None  # metres


_OPTIONAL_NUMBERS = ("acc", "alt", "vel", "cog", "batt")


def _plain(obj: dict[str, Any]) -> Candidate | None:
    """The usual location without the model: `lat`, `lon` and `tst` are JSON numbers (int or
    float, never bool) and every optional number present is one too. Anything else returns
    None and goes through the model, which names the problem; `tests/test_protocol_owntracks.py`
    checks that both ways give the same fix or the same error. The phone's other fields (`tid`,
    `conn`, `BSSID`, `inregions` ...) are ignored either way."""
    t: Any = obj.get("tst")
    lat: Any = obj.get("lat")
    lon: Any = obj.get("lon")
    if not (type(t) in JSON_NUMBER and type(lat) in JSON_NUMBER and type(lon) in JSON_NUMBER):
        return None
    vals = plain_numbers(obj, _OPTIONAL_NUMBERS)
    if vals is None:
        return None
    acc, alt, vel, cog, batt = vals
    alt, speed, cog, batt = _known(obj, alt, vel, cog, batt)
    return Candidate(time=time_value(t, "tst"), lat=float(lat), lon=float(lon), accuracy=acc,
                     altitude=alt, speed=speed, heading=cog, battery=batt)


def _known(obj: dict[str, Any], alt: float | None, vel: float | None, cog: float | None,
           batt: float | None) -> tuple[float | None, float | None, float | None, float | None]:
    """(altitude, speed in m/s, heading, battery) with the app's "not available" values made
    unknown. Older versions of the iOS app (2014-15) pass on what iOS says: a negative speed,
    course or vertical accuracy means the phone has none (CLLocation), and a battery level of -1
    that it cannot tell, e.g. `{"cog":-1,"vel":-1,"vac":-1,"batt":-1,"alt":0,...}` (today's app
    leaves them out). Refusing those would throw away the position with them; a negative `acc`
    (no position at all) is still refused."""
    vac: Any = obj.get("vac")
    if type(vac) in JSON_NUMBER and vac < 0:
        alt = None  # no vertical fix: the altitude it sends (0) is none
    speed = known(vel)
    return alt, None if speed is None else speed * KMH_MS, known(cog), known(batt)


def _location_fix(device_id: str, obj: dict[str, Any], source: Source, now: float,
                  limits: Limits) -> Fix:
    cand = _plain(obj)
    if cand is not None:
        return validate(device_id, cand, source, now, limits)
    m = validate_model(_OwnTracksLocation, obj)
    alt, speed, cog, batt = _known(obj, m.alt, m.vel, m.cog, m.batt)
    cand = Candidate(
        time=time_value(m.tst, "tst"),
        lat=m.lat,
        lon=m.lon,
        accuracy=m.acc,
        altitude=alt,
        speed=speed,
        heading=cog,
        battery=batt,
    )
    return validate(device_id, cand, source, now, limits)


def _transition_fix(device_id: str, obj: dict[str, Any], source: Source, now: float,
                    limits: Limits) -> Fix | None:
    if "lat" not in obj and "lon" not in obj:
        return None
    acc: Any = obj.get("acc")
    if type(acc) in JSON_NUMBER and acc < 0:
        # The older iOS app's transition when iOS had no position (horizontal accuracy -1):
        # the crossing of the phone's own region is recorded, its coordinates are no fix.
        return None
    m = validate_model(_OwnTracksTransition, obj)
    cand = Candidate(time=time_value(m.tst, "tst"), lat=m.lat, lon=m.lon, accuracy=m.acc)
    return validate(device_id, cand, source, now, limits)


def decode_owntracks(
    device_id: str,
    payload: bytes,
    now: float,
    limits: Limits = Limits(),
    source: Source = Source.OWNTRACKS_MQTT,
) -> Decoded:
    """OwnTracks JSON (one object, or an array in HTTP mode); non-location types go to `other`.

    A transition is both: recorded in `other`, and its position (if any) a fix.
    """
    items, as_array = elements(load_json(payload, limits), limits)
    fixes: list[Fix] = []
    other: list[dict[str, Any]] = []

    def one(obj: dict[str, Any]) -> None:
        if "_type" not in obj:
            raise DecodeError("missing_field", "_type")
        kind = obj["_type"]
        if not isinstance(kind, str):
            raise DecodeError("bad_type", f"_type: expected a string, got {short(kind)}")
        if kind == "location":
            fixes.append(_location_fix(device_id, obj, source, now, limits))
            return
        if kind == "transition":
            fix = _transition_fix(device_id, obj, source, now, limits)
            if fix is not None:
                fixes.append(fix)
        check_depth(obj)
        other.append(obj)

    each(items, as_array, one)
    return Decoded(fixes=fixes, other=other)
