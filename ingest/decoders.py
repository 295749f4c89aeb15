"""Decoders: raw bytes or parameters from phones in, validated `Fix` objects out.

Pure: no I/O, no database, no clock (`now` is passed in). Every decoder either returns a
`Decoded` or raises `DecodeError`; nothing else escapes, whatever the input bytes.

Four wire formats are understood (see docs/protocols.md):

* `decode_native`       our own MQTT payload on `devices/{device_id}/location`
* `decode_owntracks`    OwnTracks JSON, over MQTT or HTTP
* `decode_osmand_query` the OsmAnd protocol as query/form parameters (classic Traccar Client)
* `decode_osmand_json`  the OsmAnd JSON body sent by Traccar Client 9+

Each protocol only maps its own field names and units onto a `_Candidate`; one shared
function (`_validate`) then applies every plausibility rule, so the rules are the same
whatever the phone spoke. A message holding several fixes is all-or-nothing: one bad
element rejects the whole message, and the error detail names the element index.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from geofence.model import CRS, Fix, Source

__all__ = [
    "REASONS",
    "DecodeError",
    "Decoded",
    "Limits",
    "decode_native",
    "decode_osmand_json",
    "decode_osmand_query",
    "decode_owntracks",
]

# Every reason code a decoder can raise; stable, machine-readable, stored with dead letters.
REASONS = frozenset(
    {
        "oversized",  # payload larger than Limits.max_bytes (checked before parsing)
        "bad_json",  # not UTF-8, or not JSON
        "not_object",  # JSON of the wrong shape (e.g. a number where an object is expected)
        "too_many_fixes",  # more elements than Limits.max_fixes
        "missing_field",  # a required field is absent
        "bad_type",  # a field has the wrong JSON type / a parameter is not a number
        "bad_value",  # right type, impossible value (negative accuracy, battery 120 ...)
        "impossible_coordinates",  # outside the globe, NaN/inf, or exactly (0, 0)
        "impossible_time",  # unparsable time, or ISO time without a timezone
        "future_time",  # later than now + Limits.max_future_s
        "too_old",  # earlier than now - Limits.max_age_s
        "device_mismatch",  # the message names two different devices
    }
)

KNOT_MS = 1852.0 / 3600.0  # one knot in m/s
KMH_MS = 1.0 / 3.6  # one km/h in m/s
_MS_THRESHOLD = 2_147_483_647  # Traccar: integer timestamps >= Integer.MAX_VALUE are milliseconds
_MAX_SEQ = 2**63 - 1  # positions.seq is a bigint
_MAX_TEXT = 64  # provider names, time strings
_MAX_DEVICE_ID = 128


class DecodeError(Exception):
    """A message that cannot become fixes; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message contained."""

    fixes: list[Fix]
    other: list[dict[str, Any]]  # non-location messages to record (OwnTracks lwt, transition ...)
    claimed_device_id: str | None = None  # HTTP protocols whose body names the device


@dataclass(frozen=True, slots=True)
class Limits:
    """Plausibility limits shared by every decoder."""

    max_bytes: int = 65536
    max_fixes: int = 1000
    max_future_s: float = 600.0
    max_age_s: float = 30 * 86400.0


# --------------------------------------------------------------------------------------------
# Shared validation
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Candidate:
    """A fix in canonical units (m, m/s, degrees, percent, epoch s), not yet validated."""

    time: float
    lat: float
    lon: float
    crs: CRS = CRS.WGS84
    accuracy: float | None = None
    altitude: float | None = None
    speed: float | None = None
    heading: float | None = None
    battery: float | None = None
    provider: str | None = None
    mock: bool = False
    seq: int | None = None


def _fmt_time(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return repr(t)


def _check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not lo <= value <= hi:
        raise DecodeError("bad_value", f"{name}={value!r}: must be within [{lo:g}, {hi:g}]")


_REAL_TINY = 1e-30  # well above float4's smallest normal (1.2e-38)


def _real(value: float | None) -> float | None:
    """A value for a `real` (float4) column: PostgreSQL refuses magnitudes that underflow it
    ("1e-300 is out of range for type real"), which would fail the whole batch; they are 0."""
    return value if value is None or abs(value) >= _REAL_TINY else 0.0


def _validate(device_id: str, c: _Candidate, source: Source, now: float, limits: Limits) -> Fix:
    """The one set of plausibility rules every protocol goes through."""
    where = f"lat={c.lat!r} lon={c.lon!r}"
    if not (math.isfinite(c.lat) and math.isfinite(c.lon)):
        raise DecodeError("impossible_coordinates", f"{where}: not a finite number")
    if not -90.0 <= c.lat <= 90.0:
        raise DecodeError("impossible_coordinates", f"{where}: latitude outside [-90, 90]")
    if not -180.0 <= c.lon <= 180.0:
        raise DecodeError("impossible_coordinates", f"{where}: longitude outside [-180, 180]")
    if c.lat == 0.0 and c.lon == 0.0:
        raise DecodeError("impossible_coordinates", f"{where}: (0, 0) is a placeholder, not a fix")

    if not math.isfinite(c.time):
        raise DecodeError("impossible_time", f"time={c.time!r}: not a finite number")
    if c.time > now + limits.max_future_s:
        raise DecodeError(
            "future_time",
            f"time {_fmt_time(c.time)} is {c.time - now:.0f} s ahead of the server "
            f"(limit {limits.max_future_s:g} s)",
        )
    if c.time < now - limits.max_age_s:
        raise DecodeError(
            "too_old",
            f"time {_fmt_time(c.time)} is {(now - c.time) / 86400:.1f} days old "
            f"(limit {limits.max_age_s / 86400:g} days)",
        )

    # Bounds a phone can really report; anything beyond would also overflow the database's
    # real columns and must never reach a batch transaction.
    _check_range("accuracy", c.accuracy, 0.0, 1.0e6)
    _check_range("altitude", c.altitude, -1.2e4, 1.0e5)
    _check_range("speed", c.speed, 0.0, 1.0e3)
    _check_range("heading", c.heading, 0.0, 360.0)
    _check_range("battery", c.battery, 0.0, 100.0)
    if c.seq is not None and not 0 <= c.seq <= _MAX_SEQ:
        raise DecodeError("bad_value", f"seq={c.seq!r}: must be within [0, 2^63-1]")
    if c.provider is not None and len(c.provider) > _MAX_TEXT:
        raise DecodeError("bad_value", f"provider: longer than {_MAX_TEXT} characters")
    if c.provider is not None and "\x00" in c.provider:
        raise DecodeError("bad_value", "provider: contains a NUL character")

    return Fix(
        device_id=device_id,
        time=float(c.time),
        lon=float(c.lon),
        lat=float(c.lat),
        crs=c.crs,
        accuracy=_real(c.accuracy),
        altitude=_real(c.altitude),
        speed=_real(c.speed),
        heading=_real(c.heading),
        battery=_real(c.battery),
        provider=c.provider,
        mock=c.mock,
        seq=c.seq,
        source=source,
    )


def _parse_iso(value: str, name: str) -> float:
    """ISO-8601 with an explicit timezone -> epoch seconds."""
    if len(value) > _MAX_TEXT:
        raise DecodeError("impossible_time", f"{name}: time string longer than {_MAX_TEXT}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError("impossible_time", f"{name}={value!r}: not an ISO-8601 time") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise DecodeError("impossible_time", f"{name}={value!r}: no timezone (use Z or +08:00)")
    try:
        return dt.timestamp()
    except (OverflowError, ValueError):  # e.g. year 1 with a positive offset
        raise DecodeError("impossible_time", f"{name}={value!r}: out of range") from None


def _time_value(value: float | int | str, name: str) -> float:
    """Epoch seconds (number) or ISO-8601 string with timezone -> epoch seconds."""
    if isinstance(value, str):
        return _parse_iso(value, name)
    t = float(value)
    if not math.isfinite(t):
        raise DecodeError("impossible_time", f"{name}={value!r}: not a finite number")
    return t


def _parse_crs(value: str) -> CRS:
    try:
        return CRS(value.lower())
    except ValueError:
        allowed = ", ".join(c.value for c in CRS)
        raise DecodeError("bad_value", f"crs={value!r}: must be one of {allowed}") from None


# --------------------------------------------------------------------------------------------
# JSON plumbing shared by the JSON protocols
# --------------------------------------------------------------------------------------------


def _check_size(size: int, limits: Limits) -> None:
    if size > limits.max_bytes:
        raise DecodeError("oversized", f"{size} bytes > limit {limits.max_bytes}")


def _load_json(payload: bytes, limits: Limits) -> Any:
    """Size check first, then strict JSON (UTF-8 only; NaN/Infinity literals are not JSON)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise DecodeError("bad_json", f"payload must be bytes, got {type(payload).__name__}")
    _check_size(len(payload), limits)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise DecodeError("bad_json", str(e)) from None


_MAX_STORED_DEPTH = 64  # nesting of a message recorded as it came (jsonb via orjson, limit 254)


def _check_depth(doc: Any) -> None:
    """A message kept whole must nest at most `_MAX_STORED_DEPTH` levels (orjson.loads accepts
    1024, orjson.dumps only 254: a deeper one would fail the whole batch when stored)."""
    level: list[Any] = [doc]
    for _ in range(_MAX_STORED_DEPTH):
        level = [v for c in level if isinstance(c, (dict, list))
                 for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return
    if any(isinstance(v, (dict, list)) for v in level):
        raise DecodeError("bad_json", f"nested deeper than {_MAX_STORED_DEPTH} levels")


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _elements(doc: Any, limits: Limits) -> tuple[list[dict[str, Any]], bool]:
    """A JSON object, or an array of objects -> (objects, was_array)."""
    if isinstance(doc, dict):
        return [doc], False
    if not isinstance(doc, list):
        raise DecodeError("not_object", f"expected an object or an array, got {_json_kind(doc)}")
    if len(doc) > limits.max_fixes:
        raise DecodeError("too_many_fixes", f"{len(doc)} elements > limit {limits.max_fixes}")
    for i, el in enumerate(doc):
        if not isinstance(el, dict):
            raise DecodeError("not_object", f"element {i}: expected an object, got {_json_kind(el)}")
    return doc, True


def _each(items: list[dict[str, Any]], as_array: bool, fn: Callable[[dict[str, Any]], None]) -> None:
    """Apply `fn` to every element; an error names the element index when it came in an array."""
    for i, item in enumerate(items):
        try:
            fn(item)
        except DecodeError as e:
            if not as_array:
                raise
            raise DecodeError(e.reason, f"element {i}: {e.detail}") from None


# Pydantic models do the type checking (strict: "12" is not a number, true is not a number,
# 1 is not a boolean); ranges are left to `_validate` so every protocol shares them.

_TYPE_WORDS = {
    "float_type": "expected a number",
    "int_type": "expected an integer",
    "string_type": "expected a string",
    "bool_type": "expected a boolean",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "dict_type": "expected an object",
    "finite_number": "expected a finite number",
}


# Containers are shown a few levels and items deep: a plain repr() of JSON nested ~1000 deep (which
# orjson accepts) raises RecursionError, and of a huge array costs for nothing.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 40, 40


def _short(value: Any) -> str:
    """A repr of any input value short enough for an error detail."""
    text = _REPR.repr(value) if isinstance(value, (list, dict, tuple)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_validation_error(e: ValidationError) -> DecodeError:
    err = e.errors(include_url=False)[0]
    path = ".".join(str(p) for p in err["loc"]) or "message"
    if err["type"] == "missing":
        return DecodeError("missing_field", path)
    words = _TYPE_WORDS.get(err["type"], err["msg"])
    return DecodeError("bad_type", f"{path}: {words}, got {_short(err.get('input'))}")


_M = TypeVar("_M", bound=BaseModel)


def _validate_model(model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _from_validation_error(e) from None


def _time_type(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PydanticCustomError("time_type", "expected epoch seconds (number) or an ISO-8601 string")
    return value


_TimeValue = Annotated[Any, BeforeValidator(_time_type)]
_STRICT = ConfigDict(strict=True, extra="ignore", frozen=True)


# --------------------------------------------------------------------------------------------
# Native MQTT protocol
# --------------------------------------------------------------------------------------------


class _NativeFix(BaseModel):
    model_config = _STRICT

    time: _TimeValue
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
    items, as_array = _elements(_load_json(payload, limits), limits)
    fixes: list[Fix] = []

    def one(obj: dict[str, Any]) -> None:
        m = _validate_model(_NativeFix, obj)
        cand = _Candidate(
            time=_time_value(m.time, "time"),
            lat=m.lat,
            lon=m.lon,
            crs=_parse_crs(m.crs),
            accuracy=m.accuracy,
            altitude=m.altitude,
            speed=m.speed,
            heading=m.heading,
            battery=m.battery,
            provider=m.provider or None,  # "" means "not known", like null
            mock=m.mock,
            seq=m.seq,
        )
        fixes.append(_validate(device_id, cand, Source.NATIVE_MQTT, now, limits))

    _each(items, as_array, one)
    return Decoded(fixes=fixes, other=[])


# --------------------------------------------------------------------------------------------
# OwnTracks
# --------------------------------------------------------------------------------------------


class _OwnTracksLocation(BaseModel):
    """https://owntracks.org/booklet/tech/json/ `_type=location`; always WGS-84."""

    model_config = _STRICT

    lat: float
    lon: float
    tst: float  # epoch seconds
    acc: float | None = None  # metres
    alt: float | None = None  # metres
    vel: float | None = None  # km/h
    cog: float | None = None  # degrees
    batt: float | None = None  # percent


def decode_owntracks(
    device_id: str,
    payload: bytes,
    now: float,
    limits: Limits = Limits(),
    source: Source = Source.OWNTRACKS_MQTT,
) -> Decoded:
    """OwnTracks JSON (one object, or an array in HTTP mode); non-location types go to `other`."""
    items, as_array = _elements(_load_json(payload, limits), limits)
    fixes: list[Fix] = []
    other: list[dict[str, Any]] = []

    def one(obj: dict[str, Any]) -> None:
        if "_type" not in obj:
            raise DecodeError("missing_field", "_type")
        kind = obj["_type"]
        if not isinstance(kind, str):
            raise DecodeError("bad_type", f"_type: expected a string, got {_short(kind)}")
        if kind != "location":
            _check_depth(obj)
            other.append(obj)
            return
        m = _validate_model(_OwnTracksLocation, obj)
        cand = _Candidate(
            time=_time_value(m.tst, "tst"),
            lat=m.lat,
            lon=m.lon,
            accuracy=m.acc,
            altitude=m.alt,
            speed=None if m.vel is None else m.vel * KMH_MS,
            heading=m.cog,
            battery=m.batt,
        )
        fixes.append(_validate(device_id, cand, source, now, limits))

    _each(items, as_array, one)
    return Decoded(fixes=fixes, other=other)


# --------------------------------------------------------------------------------------------
# OsmAnd protocol, query/form parameters (Traccar's OsmAndProtocolDecoder.decodeQuery)
# --------------------------------------------------------------------------------------------

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_LOCAL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _float_text(raw: str, name: str) -> float:
    """A decimal number as text; float() would also take "1_000", " 1 " and non-ASCII digits
    ("١٢", "１２"), Java's parseDouble not."""
    if "_" in raw or raw != raw.strip() or not raw.isascii():
        raise DecodeError("bad_type", f"{name}: expected a number, got {_short(raw)}")
    try:
        return float(raw)
    except ValueError:
        raise DecodeError("bad_type", f"{name}: expected a number, got {_short(raw)}") from None


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
    raise DecodeError("bad_type", f"{name}: expected true/false/1/0, got {_short(raw)}")


def _osmand_time(raw: str) -> float:
    """Traccar's rules: a number below 2^31-1 is epoch seconds, above it epoch milliseconds;
    text containing "T" is ISO-8601 (timezone required here); otherwise "yyyy-MM-dd HH:mm:ss",
    read as UTC (Traccar reads it in the server's zone; ours is UTC)."""
    if len(raw) > _MAX_TEXT:
        raise DecodeError("impossible_time", f"timestamp: longer than {_MAX_TEXT} characters")
    if _DECIMAL.fullmatch(raw):
        value = float(raw)
        return value if value < _MS_THRESHOLD else value / 1000.0
    if "T" in raw:
        return _parse_iso(raw, "timestamp")
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
    if not value or len(value) > _MAX_DEVICE_ID or not value.isprintable():
        raise DecodeError(
            "bad_value", f"{name}={_short(value)}: must be 1..{_MAX_DEVICE_ID} printable characters"
        )
    return value


def _osmand_position(params: Mapping[str, str]) -> tuple[float, float]:
    """`lat` and `lon`, or else `location=lat,lon`."""
    if "lat" in params or "lon" in params:
        coords = {"lat": params.get("lat"), "lon": params.get("lon")}
    elif "location" in params:
        parts = params["location"].split(",")
        if len(parts) != 2:
            raise DecodeError("bad_type", f'location: expected "lat,lon", got {_short(params["location"])}')
        coords = {"location.lat": parts[0], "location.lon": parts[1]}
    else:
        raise DecodeError("missing_field", "lat")
    values = []
    for name, raw in coords.items():
        if raw is None:
            raise DecodeError("missing_field", name)
        values.append(_float_text(raw, name))
    return values[0], values[1]


def decode_osmand_query(params: Mapping[str, str], now: float, limits: Limits = Limits()) -> Decoded:
    """OsmAnd query-string / form parameters (OsmAnd app, classic Traccar Client).

    The device named by `id`/`deviceid` comes back as `claimed_device_id`; the fix carries it too.
    `valid=false` (the sender says the fix is not usable) is recorded in `other`, not decided on.
    """
    size = 0
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise DecodeError("bad_type", f"parameter {_short(k)}: expected text")
        try:  # lone surrogates are not text: they could be neither stored nor echoed
            size += len(k.encode()) + len(v.encode())
        except UnicodeEncodeError:
            raise DecodeError("bad_type", f"parameter {_short(k)}: not valid Unicode text") from None
        size += 2  # "=" and "&"
    _check_size(size, limits)

    device_id = _osmand_device(params)
    valid = _param_bool(params, "valid")
    if valid is False:
        record = {"_type": "invalid_fix", "protocol": "osmand", "params": dict(params)}
        return Decoded(fixes=[], other=[record], claimed_device_id=device_id)

    lat, lon = _osmand_position(params)

    if "timestamp" not in params:
        raise DecodeError("missing_field", "timestamp")
    speed_kn = _param_float(params, "speed")
    heading = _param_float(params, "heading")
    if heading is None:
        heading = _param_float(params, "bearing")
    hdop = _param_float(params, "hdop")  # unitless; not mapped to accuracy, only checked
    _check_range("hdop", hdop, 0.0, math.inf)

    cand = _Candidate(
        time=_osmand_time(params["timestamp"]),
        lat=lat,
        lon=lon,
        accuracy=_param_float(params, "accuracy"),
        altitude=_param_float(params, "altitude"),
        speed=None if speed_kn is None else speed_kn * KNOT_MS,
        heading=heading,
        battery=_param_float(params, "batt"),
        mock=bool(_param_bool(params, "mock")),
    )
    fix = _validate(device_id, cand, Source.OSMAND_HTTP, now, limits)
    return Decoded(fixes=[fix], other=[], claimed_device_id=device_id)


# --------------------------------------------------------------------------------------------
# OsmAnd protocol, JSON body (Traccar Client 9+; Traccar's OsmAndProtocolDecoder.decodeJson)
# --------------------------------------------------------------------------------------------


class _TsCoords(BaseModel):
    model_config = _STRICT

    latitude: float
    longitude: float
    accuracy: float | None = None  # metres
    speed: float | None = None  # m/s; negative = unknown
    heading: float | None = None  # degrees; negative = unknown
    altitude: float | None = None  # metres


class _TsBattery(BaseModel):
    model_config = _STRICT

    level: float | None = None  # 0..1; negative = unknown


class _TsLocation(BaseModel):
    model_config = _STRICT

    timestamp: str  # ISO-8601, e.g. "2025-01-01T12:00:00.000Z"
    coords: _TsCoords
    battery: _TsBattery | None = None
    mock: bool | None = None  # what Traccar's decoder reads
    is_mock: bool | None = None  # accepted as an alias


class _TsBody(BaseModel):
    model_config = _STRICT

    device_id: str
    location: _TsLocation


def _known(value: float | None) -> float | None:
    """The background-geolocation SDK reports -1 for "not available"; Traccar drops negatives."""
    return None if value is None or value < 0 else value


def decode_osmand_json(body: bytes, now: float, limits: Limits = Limits()) -> Decoded:
    """`{"location": {...}, "device_id": "..."}` as posted by Traccar Client 9+.

    Like Traccar, one location per request: `location` must be an object, not an array.
    """
    doc = _load_json(body, limits)
    if not isinstance(doc, dict):
        raise DecodeError("not_object", f"expected an object, got {_json_kind(doc)}")
    m = _validate_model(_TsBody, doc)
    device_id = _device_id_value(m.device_id, "device_id")
    loc = m.location
    level = None if loc.battery is None else _known(loc.battery.level)
    cand = _Candidate(
        time=_parse_iso(loc.timestamp, "location.timestamp"),
        lat=loc.coords.latitude,
        lon=loc.coords.longitude,
        accuracy=loc.coords.accuracy,
        altitude=loc.coords.altitude,
        speed=_known(loc.coords.speed),
        heading=_known(loc.coords.heading),
        battery=None if level is None else round(level * 100.0, 3),
        mock=bool(loc.mock) or bool(loc.is_mock),
    )
    fix = _validate(device_id, cand, Source.OSMAND_HTTP, now, limits)
    return Decoded(fixes=[fix], other=[], claimed_device_id=device_id)
