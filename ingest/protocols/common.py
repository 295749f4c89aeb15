"""What every phone protocol shares: the result types, the error, and the one set of rules.

Pure: no I/O, no database, no clock (`now` is passed in). Each protocol module
(`native`, `owntracks`, `osmand`) only maps its own field names and units onto a `Candidate`;
`validate` then applies every plausibility rule, so the rules are the same whatever the phone
spoke. A message holding several fixes is all-or-nothing: one bad element rejects the whole
message, and the error detail names the element index.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from geofence.model import CRS, Fix, Source

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
_MAX_SEQ = 2**63 - 1  # positions.seq is a bigint
MAX_TEXT = 64  # provider names, time strings
MAX_DEVICE_ID = 128


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
class Candidate:
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


def check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not lo <= value <= hi:
        raise DecodeError("bad_value", f"{name}={value!r}: must be within [{lo:g}, {hi:g}]")


_REAL_TINY = 1e-30  # well above float4's smallest normal (1.2e-38)


def _real(value: float | None) -> float | None:
    """A value for a `real` (float4) column: PostgreSQL refuses magnitudes that underflow it
    ("1e-300 is out of range for type real"), which would fail the whole batch; they are 0."""
    return value if value is None or abs(value) >= _REAL_TINY else 0.0


def known(value: float | None) -> float | None:
    """A phone's "not available": location APIs report -1 (any negative value) for a speed,
    heading, battery level or HDOP they do not have (Android's Traccar Client and the SDK behind
    Traccar Client 9+; iOS, passed on by the older OwnTracks app). Traccar drops negatives."""
    return None if value is None or value < 0 else value


# The Python types of a JSON number as orjson gives it (bool is neither: checked with `type() in`).
JSON_NUMBER = (int, float)


def plain_numbers(obj: dict[str, Any], keys: tuple[str, ...]) -> list[float | None] | None:
    """For a decoder's fast path: the optional numbers `keys` of a JSON object as floats (None
    where absent), or None when one is present but not exactly a JSON number (an explicit null,
    a bool, a string ...): the decoder's model then decides and names the problem."""
    get = obj.get
    vals: list[float | None] = []
    for k in keys:
        v = get(k)
        if v is None:
            if k in obj:
                return None
            vals.append(None)
        elif type(v) in JSON_NUMBER:
            vals.append(float(v))
        else:
            return None
    return vals


def validate(device_id: str, c: Candidate, source: Source, now: float, limits: Limits) -> Fix:
    """The one set of plausibility rules every protocol goes through."""
    lat, lon = c.lat, c.lon
    # One comparison for the usual fix (also false for NaN); the message only when refused.
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
        where = f"lat={lat!r} lon={lon!r}"
        if not (math.isfinite(lat) and math.isfinite(lon)):
            raise DecodeError("impossible_coordinates", f"{where}: not a finite number")
        if not -90.0 <= lat <= 90.0:
            raise DecodeError("impossible_coordinates", f"{where}: latitude outside [-90, 90]")
        if not -180.0 <= lon <= 180.0:
            raise DecodeError("impossible_coordinates", f"{where}: longitude outside [-180, 180]")
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
    # real columns and must never reach a batch transaction. One test for the usual fix (false
    # for NaN too); each bound on its own only to name the one broken.
    acc, alt, speed, heading, battery = c.accuracy, c.altitude, c.speed, c.heading, c.battery
    if not ((acc is None or 0.0 <= acc <= 1.0e6) and (alt is None or -1.2e4 <= alt <= 1.0e5)
            and (speed is None or 0.0 <= speed <= 1.0e3)
            and (heading is None or 0.0 <= heading <= 360.0)
            and (battery is None or 0.0 <= battery <= 100.0)):
        check_range("accuracy", acc, 0.0, 1.0e6)
        check_range("altitude", alt, -1.2e4, 1.0e5)
        check_range("speed", speed, 0.0, 1.0e3)
        check_range("heading", heading, 0.0, 360.0)
        check_range("battery", battery, 0.0, 100.0)
    if c.seq is not None and not 0 <= c.seq <= _MAX_SEQ:
        raise DecodeError("bad_value", f"seq={c.seq!r}: must be within [0, 2^63-1]")
    if c.provider is not None and len(c.provider) > MAX_TEXT:
        raise DecodeError("bad_value", f"provider: longer than {MAX_TEXT} characters")
    if c.provider is not None and "\x00" in c.provider:
        raise DecodeError("bad_value", "provider: contains a NUL character")

    return Fix(
        device_id=device_id, time=float(c.time), lon=float(lon), lat=float(lat), crs=c.crs,
        accuracy=_real(acc), altitude=_real(alt), speed=_real(speed), heading=_real(heading),
        battery=_real(battery), provider=c.provider, mock=c.mock, seq=c.seq, source=source,
    )


def parse_iso(value: str, name: str) -> float:
    """ISO-8601 with an explicit timezone -> epoch seconds."""
    if len(value) > MAX_TEXT:
        raise DecodeError("impossible_time", f"{name}: time string longer than {MAX_TEXT}")
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


def time_value(value: float | int | str, name: str) -> float:
    """Epoch seconds (number) or ISO-8601 string with timezone -> epoch seconds."""
    if isinstance(value, str):
        return parse_iso(value, name)
    t = float(value)
    if not math.isfinite(t):
        raise DecodeError("impossible_time", f"{name}={value!r}: not a finite number")
    return t


def parse_crs(value: str) -> CRS:
    try:
        return CRS(value.lower())
    except ValueError:
        allowed = ", ".join(c.value for c in CRS)
        raise DecodeError("bad_value", f"crs={value!r}: must be one of {allowed}") from None


# --------------------------------------------------------------------------------------------
# JSON plumbing shared by the JSON protocols
# --------------------------------------------------------------------------------------------


def check_size(size: int, limits: Limits) -> None:
    if size > limits.max_bytes:
        raise DecodeError("oversized", f"{size} bytes > limit {limits.max_bytes}")


def load_json(payload: bytes, limits: Limits) -> Any:
    """Size check first, then strict JSON (UTF-8 only; NaN/Infinity literals are not JSON)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise DecodeError("bad_json", f"payload must be bytes, got {type(payload).__name__}")
    check_size(len(payload), limits)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise DecodeError("bad_json", str(e)) from None


_MAX_STORED_DEPTH = 64  # nesting of a message recorded as it came (jsonb via orjson, limit 254)


def check_depth(doc: Any) -> None:
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


def json_kind(value: Any) -> str:
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


def elements(doc: Any, limits: Limits) -> tuple[list[dict[str, Any]], bool]:
    """A JSON object, or an array of objects -> (objects, was_array)."""
    if isinstance(doc, dict):
        return [doc], False
    if not isinstance(doc, list):
        raise DecodeError("not_object", f"expected an object or an array, got {json_kind(doc)}")
    if len(doc) > limits.max_fixes:
        raise DecodeError("too_many_fixes", f"{len(doc)} elements > limit {limits.max_fixes}")
    for i, el in enumerate(doc):
        if not isinstance(el, dict):
            raise DecodeError("not_object", f"element {i}: expected an object, got {json_kind(el)}")
    return doc, True


def each(items: list[dict[str, Any]], as_array: bool, fn: Callable[[dict[str, Any]], None]) -> None:
    """Apply `fn` to every element; an error names the element index when it came in an array."""
    for i, item in enumerate(items):
        try:
            fn(item)
        except DecodeError as e:
            if not as_array:
                raise
            raise DecodeError(e.reason, f"element {i}: {e.detail}") from None


# Pydantic models do the type checking (strict: "12" is not a number, true is not a number,
# 1 is not a boolean); ranges are left to `validate` so every protocol shares them.

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


def short(value: Any) -> str:
    """A repr of any input value short enough for an error detail."""
    text = _REPR.repr(value) if isinstance(value, (list, dict, tuple)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_validation_error(e: ValidationError) -> DecodeError:
    err = e.errors(include_url=False)[0]
    path = ".".join(str(p) for p in err["loc"]) or "message"
    if err["type"] == "missing":
        return DecodeError("missing_field", path)
    words = _TYPE_WORDS.get(err["type"], err["msg"])
    return DecodeError("bad_type", f"{path}: {words}, got {short(err.get('input'))}")


_M = TypeVar("_M", bound=BaseModel)


def validate_model(model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _from_validation_error(e) from None


def _time_type(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PydanticCustomError("time_type", "expected epoch seconds (number) or an ISO-8601 string")
    return value


TimeValue = Annotated[Any, BeforeValidator(_time_type)]
STRICT = ConfigDict(strict=True, extra="ignore", frozen=True)
