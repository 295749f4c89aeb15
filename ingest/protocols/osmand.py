"""The OsmAnd protocol as Traccar's server reads it (its `OsmAndProtocolDecoder`).

Two forms reach the same URL: query-string / form parameters (OsmAnd, classic Traccar Client,
scripts) and the JSON body of Traccar Client 9+. See docs/protocols.md, "Traccar Client".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import BaseModel

from geofence.model import Source
from ingest.protocols.common import (
    KNOT_MS,
    MAX_DEVICE_ID,
    MAX_TEXT,
    STRICT,
    Candidate,
    Decoded,
    DecodeError,
    Limits,
    check_size,
    json_kind,
    known,
    load_json,
    parse_iso,
    short,
    validate,
    validate_model,
)

# --------------------------------------------------------------------------------------------
# Query/form parameters (Traccar's OsmAndProtocolDecoder.decodeQuery)
# --------------------------------------------------------------------------------------------


_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_LOCAL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_MS_THRESHOLD = 2_147_483_647  # Traccar: integer timestamps >= Integer.MAX_VALUE are milliseconds
UNKNOWN = -1.0  # the "not available" value of an altitude (which may be negative for real)
# Horizontal accuracy from HDOP: accuracy ≈ HDOP × UERE (user equivalent range error). 5 m is the
# usual 1-sigma UERE of a single-frequency GPS receiver (docs/protocols.md, "hdop").
HDOP_UERE_M = 5.0


def _float_text(raw: str, name: str) -> float:
    """A decimal number as text; float() would also take "1_000", " 1 " and non-ASCII digits
    ("١٢", "１２"), Java's parseDouble not."""
    if "_" in raw or raw != raw.strip() or not raw.isascii():
        raise DecodeError("bad_type", f"{name}: expected a number, got {short(raw)}")
    try:
        return float(raw)
    except ValueError:
        raise DecodeError("bad_type", f"{name}: expected a number, got {short(raw)}") from None


def _param_float(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name)
    return None if raw is None else _float_text(raw, name)


def _param_bool(params: Mapping[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise DecodeError("bad_type", f"{name}: expected true/false/1/0, got {short(raw)}")


def _osmand_time(raw: str) -> float:
    """Traccar's rules: a number below 2^31-1 is epoch seconds, above it epoch milliseconds;
    text containing "T" is ISO-8601 (timezone required here); otherwise "yyyy-MM-dd HH:mm:ss",
    read as UTC (Traccar reads it in the server's zone; ours is UTC)."""
    if len(raw) > MAX_TEXT:
        raise DecodeError("impossible_time", f"timestamp: longer than {MAX_TEXT} characters")
    if _DECIMAL.fullmatch(raw):
        value = float(raw)
        return value if value < _MS_THRESHOLD else value / 1000.0
    if "T" in raw:
        return parse_iso(raw, "timestamp")
    try:
        dt = datetime.strptime(raw, _LOCAL_TIME_FORMAT)
    except ValueError:
        raise DecodeError("impossible_time", f"timestamp={raw!r}: unrecognised format") from None
    return dt.replace(tzinfo=UTC).timestamp()


def _osmand_device(params: Mapping[str, str]) -> str:
    ids = {k: params[k] for k in ("id", "deviceid") if k in params}
    if not ids:
        raise DecodeError("missing_field", "id")
    values = set(ids.values())
    if len(values) > 1:
        raise DecodeError("device_mismatch", f"id={ids['id']!r} but deviceid={ids['deviceid']!r}")
    return _device_id_value(values.pop(), "id")


def _device_id_value(value: str, name: str) -> str:
    if not value or len(value) > MAX_DEVICE_ID or not value.isprintable():
        raise DecodeError(
            "bad_value", f"{name}={short(value)}: must be 1..{MAX_DEVICE_ID} printable characters"
        )
    return value


def _osmand_position(params: Mapping[str, str]) -> tuple[float, float]:
    """`lat` and `lon`, or else `location=lat,lon`."""
    if "lat" in params or "lon" in params:
        coords = {"lat": params.get("lat"), "lon": params.get("lon")}
    elif "location" in params:
        parts = params["location"].split(",")
        if len(parts) != 2:
            raise DecodeError("bad_type", f'location: expected "lat,lon", got {short(params["location"])}')
        coords = {"location.lat": parts[0], "location.lon": parts[1]}
    else:
        raise DecodeError("missing_field", "lat")
    values = []
    for name, raw in coords.items():
        if raw is None:
            raise DecodeError("missing_field", name)
        values.append(_float_text(raw, name))
    return values[0], values[1]


def decode_osmand_query(params: Mapping[str, str], now: float, limits: Limits = Limits(),
                        received_at: float | None = None) -> Decoded:
    """OsmAnd query-string / form parameters (OsmAnd app, classic Traccar Client).

    The device named by `id`/`deviceid` comes back as `claimed_device_id`; the fix carries it too.
    `valid=false` (the sender says the fix is not usable) is recorded in `other`, not decided on.
    Without `timestamp` the fix takes `received_at` (default `now`) and the source
    `osmand_http_received_time`. `-1` (any negative value) for speed, bearing, battery or hdop,
    and exactly `-1` for altitude, mean "unknown". Without `accuracy`, `hdop` × `HDOP_UERE_M`
    stands in for it.
    """
    size = 0
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise DecodeError("bad_type", f"parameter {short(k)}: expected text")
        try:  # lone surrogates are not text: they could be neither stored nor echoed
            size += len(k.encode()) + len(v.encode())
        except UnicodeEncodeError:
            raise DecodeError("bad_type", f"parameter {short(k)}: not valid Unicode text") from None
        size += 2  # "=" and "&"
    check_size(size, limits)

    device_id = _osmand_device(params)
    valid = _param_bool(params, "valid")
    if valid is False:
        record = {"_type": "invalid_fix", "protocol": "osmand", "params": dict(params)}
        return Decoded(fixes=[], other=[record], claimed_device_id=device_id)

    lat, lon = _osmand_position(params)
    if "timestamp" in params:
        time, source = _osmand_time(params["timestamp"]), Source.OSMAND_HTTP
    else:  # like Traccar: the time it reached us, marked so that nobody takes it for the fix's
        time = now if received_at is None else received_at
        source = Source.OSMAND_HTTP_RECEIVED_TIME
    speed_kn = known(_param_float(params, "speed"))
    heading = _param_float(params, "heading")
    if heading is None:
        heading = _param_float(params, "bearing")
    altitude = _param_float(params, "altitude")
    accuracy = _param_float(params, "accuracy")
    if accuracy is None:
        hdop = known(_param_float(params, "hdop"))
        accuracy = None if hdop is None else hdop * HDOP_UERE_M

    cand = Candidate(
        time=time,
        lat=lat,
        lon=lon,
        accuracy=accuracy,
        altitude=None if altitude == UNKNOWN else altitude,
        speed=None if speed_kn is None else speed_kn * KNOT_MS,
        heading=known(heading),
        battery=known(_param_float(params, "batt")),
        mock=bool(_param_bool(params, "mock")),
    )
    fix = validate(device_id, cand, source, now, limits)
    return Decoded(fixes=[fix], other=[], claimed_device_id=device_id)


# --------------------------------------------------------------------------------------------
# OsmAnd protocol, JSON body (Traccar Client 9+; Traccar's OsmAndProtocolDecoder.decodeJson)
# --------------------------------------------------------------------------------------------


class _TsCoords(BaseModel):
    model_config = STRICT

    latitude: float
    longitude: float
    accuracy: float | None = None  # metres
    speed: float | None = None  # m/s; negative = unknown
    heading: float | None = None  # degrees; negative = unknown
    altitude: float | None = None  # metres


class _TsBattery(BaseModel):
    model_config = STRICT

    level: float | None = None  # 0..1; negative = unknown


class _TsLocation(BaseModel):
    model_config = STRICT

    timestamp: str  # ISO-8601, e.g. "2025-01-01T12:00:00.000Z"
    coords: _TsCoords
    battery: _TsBattery | None = None
    mock: bool | None = None  # what Traccar's decoder reads
    is_mock: bool | None = None  # accepted as an alias


class _TsBody(BaseModel):
    model_config = STRICT

    device_id: str
    location: _TsLocation


def decode_osmand_json(body: bytes, now: float, limits: Limits = Limits()) -> Decoded:
    """`{"location": {...}, "device_id": "..."}` as posted by Traccar Client 9+.

    Like Traccar, one location per request: `location` must be an object, not an array.
    """
    doc = load_json(body, limits)
    if not isinstance(doc, dict):
        raise DecodeError("not_object", f"expected an object, got {json_kind(doc)}")
    m = validate_model(_TsBody, doc)
    device_id = _device_id_value(m.device_id, "device_id")
    loc = m.location
    level = None if loc.battery is None else known(loc.battery.level)
    cand = Candidate(
        time=parse_iso(loc.timestamp, "location.timestamp"),
        lat=loc.coords.latitude,
        lon=loc.coords.longitude,
        accuracy=loc.coords.accuracy,
        altitude=loc.coords.altitude,
        speed=known(loc.coords.speed),
        heading=known(loc.coords.heading),
        battery=None if level is None else round(level * 100.0, 3),
        mock=bool(loc.mock) or bool(loc.is_mock),
    )
    fix = validate(device_id, cand, Source.OSMAND_HTTP, now, limits)
    return Decoded(fixes=[fix], other=[], claimed_device_id=device_id)
