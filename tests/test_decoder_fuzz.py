"""Property-based fuzzing of every payload decoder, alone and through the real pipeline.

Decoders (pure): whatever comes in — arbitrary bytes, invalid UTF-8, arbitrary JSON, deep nesting,
huge arrays, NaN/Infinity literals, huge numbers, NULs, or a structurally plausible message with
wrong types and out-of-range values — the outcome is either a `Decoded` whose fixes obey every
documented rule (and whose non-location messages can be stored as JSON), or a `DecodeError` whose
reason code is in the table of docs/protocols.md and whose detail can be stored in a text column.

Pipeline (real PostgreSQL and Redis): nothing is silently dropped. For every batch, each message
is either stored (its fixes as positions or duplicates, its other messages as device messages) or
dead-lettered once, with its reason and its raw bytes.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofence.model import CRS, Fix
from ingest.pipeline import Channel, Pipeline, RawMessage
from ingest.protocols import (
    REASONS,
    Decoded,
    DecodeError,
    Limits,
    decode_native,
    decode_osmand_json,
    decode_osmand_query,
    decode_owntracks,
)
from store.settings import Settings
from tests.conftest import Org

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
DEVICE = "dev-1"
LIMITS = Limits()
# Small limits too, so that the size and count checks are reached by small inputs.
TIGHT = Limits(max_bytes=600, max_fixes=3, max_future_s=60.0, max_age_s=3600.0)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _documented_reasons() -> set[str]:
    """The codes in the "Reason codes" table of docs/protocols.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocols.md").read_text()
    section = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


DOCUMENTED = _documented_reasons()


def test_every_decoder_reason_is_documented() -> None:
    assert REASONS <= DOCUMENTED


# ----------------------------------------------------------------------------------- checker


@dataclass(frozen=True)
class Outcome:
    """What a decoder made of one input."""

    fixes: int = 0
    other: int = 0
    reason: str | None = None


def check(fn: Callable[[], Decoded], limits: Limits = LIMITS, now: float = NOW) -> Outcome:
    """Run a decoder: only a valid `Decoded` or a documented `DecodeError` may come out."""
    try:
        decoded = fn()
    except DecodeError as e:
        assert e.reason in REASONS and e.reason in DOCUMENTED, e.reason
        assert isinstance(e.detail, str) and "\x00" not in e.detail  # dead_letters.detail is text
        return Outcome(reason=e.reason)
    assert isinstance(decoded, Decoded)
    for f in decoded.fixes:
        assert_valid_fix(f, limits, now)
    for o in decoded.other:
        assert isinstance(o, dict)
        orjson.dumps(o)  # recorded as jsonb in device_messages: must serialise
    return Outcome(fixes=len(decoded.fixes), other=len(decoded.other))


def assert_valid_fix(f: Fix, limits: Limits, now: float) -> None:
    """Every documented plausibility rule holds for an accepted fix."""
    assert isinstance(f, Fix)
    assert isinstance(f.lat, float) and isinstance(f.lon, float) and isinstance(f.time, float)
    assert math.isfinite(f.lat) and -90 <= f.lat <= 90
    assert math.isfinite(f.lon) and -180 <= f.lon <= 180
    assert (f.lat, f.lon) != (0.0, 0.0)
    assert now - limits.max_age_s <= f.time <= now + limits.max_future_s
    for name, lo, hi in (("accuracy", 0, 1e6), ("altitude", -1.2e4, 1e5), ("speed", 0, 1e3),
                         ("heading", 0, 360), ("battery", 0, 100)):
        v = getattr(f, name)
        assert v is None or (math.isfinite(v) and lo <= v <= hi), (name, v)
        assert v is None or v == 0 or abs(v) >= 1.2e-38, (name, v)  # fits PostgreSQL's real
    assert f.seq is None or 0 <= f.seq <= 2**63 - 1
    assert f.provider is None or (len(f.provider) <= 64 and "\x00" not in f.provider)
    assert isinstance(f.mock, bool) and isinstance(f.crs, CRS)


# -------------------------------------------------------------------------------- strategies


class Raw:
    """Bytes spliced into a JSON document as they are (NaN literals, deep nesting ...)."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def encode(value: Any) -> bytes:
    """JSON text of a value that may hold `Raw` pieces; NaN/inf become their (invalid) literals."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return b"{" + b",".join(encode(str(k)) + b":" + encode(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    return json.dumps(value, allow_nan=True).encode()


def _nest(depth: int, as_object: bool, leaf: Any) -> Raw:
    inner = encode(leaf)
    if as_object:
        return Raw(b'{"a":' * depth + inner + b"}" * depth)
    return Raw(b"[" * depth + inner + b"]" * depth)


FINITE_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits too
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63 - 1, 2**63, 2**64, 2147483647, 1e16]),
)
# NaN and +-inf, and numbers beyond a double: written as literals that are not JSON, or overflow.
NON_FINITE = st.sampled_from([Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"1e400"),
                              Raw(b"-1e999"), Raw(b"123456789012345678901234567890")])
NUMBERS = FINITE_NUMBERS | FINITE_NUMBERS | FINITE_NUMBERS | NON_FINITE
TEXT = st.text(max_size=30) | st.sampled_from([
    "", "\x00", "a\x00b", "gcj02", "BD09", "WGS84", "location", "transition", "nan", "1e999",
    "2025-06-15T15:05:40Z", "2025-06-15T15:05:40", "2025-06-15T15:05:40+08:00",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "x" * 5000, "\u202e\ufeff",
])
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
# Depths around the limits that matter: orjson's dumps (254) and loads (1024), Python's recursion (1000).
DEPTHS = st.sampled_from([2, 64, 254, 255, 256, 600, 990, 1000, 1023, 1024, 1025]) | st.integers(1, 1030)
DEEP = st.builds(_nest, DEPTHS, st.booleans(), SCALARS)
HUGE_ARRAY = st.builds(lambda n, leaf: Raw(b"[" + b",".join([encode(leaf)] * n) + b"]"),
                       st.integers(min_value=0, max_value=3000), SCALARS)
FIELD_NAMES = st.sampled_from([
    "time", "lat", "lon", "accuracy", "altitude", "speed", "heading", "battery", "crs", "provider",
    "mock", "seq", "_type", "tst", "acc", "alt", "vel", "cog", "batt", "location", "coords",
    "timestamp", "latitude", "longitude", "level", "device_id", "is_mock",
])
JSONISH: st.SearchStrategy[Any] = st.recursive(
    SCALARS | DEEP | DEEP | HUGE_ARRAY,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(FIELD_NAMES | st.text(max_size=6), inner, max_size=6),
    max_leaves=15,
)


WRONG = SCALARS | DEEP | JSONISH  # a value in place of a field: often a type error, or deep


def _in_window(limits: Limits, now: float) -> st.SearchStrategy[float]:
    """Times around the accepted window: inside, on its edges, and just beyond."""
    lo, hi = now - limits.max_age_s, now + limits.max_future_s
    return st.floats(min_value=lo - 3600, max_value=hi + 3600) | st.sampled_from([lo, hi, now])


def _iso(t: float, offset_min: int, fmt: str) -> str:
    tz = timezone(timedelta(minutes=offset_min))
    dt = datetime.fromtimestamp(t, UTC).astimezone(tz)
    if fmt == "naive":
        return dt.replace(tzinfo=None).isoformat()
    if fmt == "z":
        return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return dt.isoformat()


def iso_times(limits: Limits, now: float) -> st.SearchStrategy[str]:
    """ISO-8601 strings, mostly with a timezone, around the accepted window."""
    return st.builds(_iso, _in_window(limits, now), st.integers(-14 * 60, 14 * 60),
                     st.sampled_from(["offset", "z", "naive"]))


def plausible(fields: dict[str, st.SearchStrategy[Any]], required: set[str]) -> st.SearchStrategy[Any]:
    """An object with the protocol's fields: each one right, wrong (any JSON) or absent,
    plus unknown fields of any shape."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, right in fields.items():
            choice = draw(st.sampled_from(["right"] * 6 + ["wrong", "absent"]))
            if choice == "absent" and name not in required:
                continue
            if choice == "absent" and draw(st.booleans()):
                continue
            out[name] = draw(WRONG) if choice == "wrong" else draw(right)
        if draw(st.integers(0, 4)) == 0:
            out[draw(st.text(max_size=6))] = draw(JSONISH)
        return out

    return build()


def _num(lo: float, hi: float) -> st.SearchStrategy[float | int]:
    """Numbers a little beyond [lo, hi] both ways, with the bounds themselves."""
    span = (hi - lo) * 0.1 + 1
    return (st.floats(min_value=lo - span, max_value=hi + span)
            | st.integers(min_value=int(lo - span), max_value=int(hi + span))
            | st.sampled_from([lo, hi]))


LAT, LON = _num(-90, 90), _num(-180, 180)


def native_fields(limits: Limits, now: float) -> dict[str, st.SearchStrategy[Any]]:
    """The native protocol's fields, with values around their valid ranges."""
    return {
        "time": _in_window(limits, now) | iso_times(limits, now),
        "lat": LAT, "lon": LON, "accuracy": _num(0, 1e6) | st.none(), "altitude": _num(-1.2e4, 1e5),
        "speed": _num(0, 1e3), "heading": _num(0, 360), "battery": _num(0, 100) | st.none(),
        "crs": st.sampled_from(["wgs84", "gcj02", "BD09", "GCJ02", "etrs89"]),
        "provider": st.text(max_size=70) | st.none(), "mock": st.booleans(),
        "seq": st.integers(min_value=-5, max_value=2**64),
    }


def owntracks_fields(limits: Limits, now: float) -> dict[str, st.SearchStrategy[Any]]:
    """OwnTracks fields (`_type` mostly "location")."""
    return {
        "_type": st.sampled_from(["location"] * 5 + ["transition", "lwt", "waypoints", ""]),
        "tst": _in_window(limits, now), "lat": LAT, "lon": LON, "acc": _num(0, 1e6),
        "alt": _num(-1.2e4, 1e5), "vel": _num(0, 3600), "cog": _num(0, 360), "batt": _num(0, 100),
    }


def traccar_location(limits: Limits, now: float) -> st.SearchStrategy[Any]:
    """Traccar Client 9's `location` object, each level right, wrong or absent."""
    coords = plausible({"latitude": LAT, "longitude": LON, "accuracy": _num(0, 1e6),
                        "speed": _num(-1, 1e3), "heading": _num(-1, 360),
                        "altitude": _num(-1.2e4, 1e5)}, {"latitude", "longitude"})
    battery = plausible({"level": _num(-1, 1)}, set())
    return plausible({"timestamp": iso_times(limits, now), "coords": coords, "battery": battery,
                      "mock": st.booleans(), "is_mock": st.booleans()}, {"timestamp", "coords"})


def traccar(limits: Limits, now: float, device: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A whole Traccar Client 9 body."""
    return plausible({"device_id": device, "location": traccar_location(limits, now)},
                     {"device_id", "location"})


def one_or_array(obj: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One object, or an array of them (one to a few, or many copies)."""
    many = st.builds(lambda o, n: Raw(b"[" + b",".join([encode(o)] * n) + b"]"), obj,
                     st.sampled_from([LIMITS.max_fixes, LIMITS.max_fixes + 1]) | st.integers(0, 1200))
    return obj | obj | obj | st.lists(obj, max_size=4) | many


def mutate(data: st.DataObject, payload: bytes) -> bytes:
    """The payload with a few bytes flipped, inserted or deleted (invalid UTF-8, NULs ...)."""
    b = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from([0x00, 0x80, 0xC0, 0xFF, 0xED, 0x22, 0x5C, 0x5B, 0x7D])
                         | st.integers(0, 255))
        if op == "insert" or not b:
            b.insert(i, byte)
        elif op == "flip":
            b[min(i, len(b) - 1)] = byte
        else:
            del b[min(i, len(b) - 1)]
    return bytes(b)


QUERY_KEYS = st.sampled_from(["id", "deviceid", "timestamp", "lat", "lon", "location", "speed",
                              "heading", "bearing", "altitude", "accuracy", "batt", "mock", "hdop",
                              "valid", "charge"]) | st.text(max_size=6)
QUERY_VALUES = st.text(max_size=25) | st.sampled_from([
    "", " 1", "1_0", "nan", "-inf", "Infinity", "1e308", "1e309", "-0", "0", "2147483647",
    "2147483646", "99999999999999999999", "1.5e400", "true", "FALSE", "1", "\x00", "31.2,121.4",
    "1,2,3", "١٧٤٩٩٩٩٩٤٠", "２０", "2025-06-15 15:05:40", "2025-06-15T15:05:40Z", "x" * 70000,
]) | st.from_regex(r"-?\d{1,14}(\.\d{1,6})?", fullmatch=True)


def osmand_params(limits: Limits, now: float, device: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Plausible OsmAnd parameters plus junk: every value is text, as from a URL."""
    right = {
        "id": device, "timestamp": st.builds(lambda t: repr(t) if t % 1 else str(int(t)),
                                             _in_window(limits, now))
        | iso_times(limits, now) | st.builds(lambda t: str(int(t * 1000)), _in_window(limits, now)),
        "lat": LAT.map(str), "lon": LON.map(str), "speed": _num(0, 2000).map(str),
        "bearing": _num(0, 360).map(str), "accuracy": _num(0, 1e6).map(str),
        "batt": _num(0, 100).map(str), "valid": st.sampled_from(["true", "1", "false", "0"]),
    }

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, str]:
        out = {k: draw(v) if draw(st.integers(0, 7)) else draw(QUERY_VALUES)
               for k, v in right.items() if draw(st.integers(0, 7))}
        out.update(draw(st.dictionaries(QUERY_KEYS, QUERY_VALUES, max_size=4)))
        return out

    return build()


# -------------------------------------------------------------------------------- decoders

BYTE_DECODERS: dict[str, Callable[[bytes, Limits], Decoded]] = {
    "native": lambda b, lim: decode_native(DEVICE, b, NOW, lim),
    "owntracks": lambda b, lim: decode_owntracks(DEVICE, b, NOW, lim),
    "osmand_json": lambda b, lim: decode_osmand_json(b, NOW, lim),
}
BYTE_NAMES = sorted(BYTE_DECODERS)


@pytest.mark.parametrize("name", BYTE_NAMES)
@FUZZ
@given(payload=st.binary(max_size=2000), tight=st.booleans())
def test_arbitrary_bytes(name: str, payload: bytes, tight: bool) -> None:
    limits = TIGHT if tight else LIMITS
    check(lambda: BYTE_DECODERS[name](payload, limits), limits)


@pytest.mark.parametrize("name", BYTE_NAMES)
@FUZZ
@given(value=JSONISH, tight=st.booleans())
def test_arbitrary_json_with_deep_nesting_huge_arrays_and_non_finite_numbers(
    name: str, value: Any, tight: bool
) -> None:
    limits = TIGHT if tight else LIMITS
    check(lambda: BYTE_DECODERS[name](encode(value), limits), limits)


def test_nesting_deeper_than_any_parser_allows_is_bad_json() -> None:
    for name in BYTE_NAMES:
        assert check(lambda n=name: BYTE_DECODERS[n](b"[" * 5000 + b"]" * 5000, LIMITS)) == Outcome(
            reason="bad_json")


@FUZZ
@given(doc=one_or_array(plausible(native_fields(LIMITS, NOW), {"time", "lat", "lon"})))
def test_native_plausible_messages(doc: Any) -> None:
    check(lambda: decode_native(DEVICE, encode(doc), NOW, LIMITS))


@FUZZ
@given(doc=one_or_array(plausible(owntracks_fields(LIMITS, NOW), {"_type", "tst", "lat", "lon"})))
def test_owntracks_plausible_messages(doc: Any) -> None:
    check(lambda: decode_owntracks(DEVICE, encode(doc), NOW, LIMITS))


@FUZZ
@given(doc=traccar(LIMITS, NOW, st.sampled_from(["48241179", "", "x" * 200, "a\x00b", "\u00e9"])))
def test_traccar_json_plausible_messages(doc: Any) -> None:
    check(lambda: decode_osmand_json(encode(doc), NOW, LIMITS))


@FUZZ
@given(params=osmand_params(LIMITS, NOW, st.sampled_from(["48241179", "", "x" * 200, "a\x00b"])),
       tight=st.booleans())
def test_osmand_query_plausible_parameters(params: dict[str, str], tight: bool) -> None:
    limits = TIGHT if tight else LIMITS
    if check(lambda: decode_osmand_query(params, NOW, limits), limits).fixes:
        # "Numbers are plain decimals": ASCII only, as Java's parseDouble reads them.
        assert all(params[k].isascii() for k in ("lat", "lon", "timestamp", "batt") if k in params)


@FUZZ
@given(params=st.dictionaries(st.text(max_size=10) | QUERY_KEYS,
                              st.text(alphabet=st.characters(codec=None), max_size=20), max_size=8))
def test_osmand_query_with_any_unicode_including_lone_surrogates(params: dict[str, str]) -> None:
    check(lambda: decode_osmand_query(params, NOW, LIMITS))


CANONICAL = {
    "native": b'{"time": 1749999940, "lat": 31.2304, "lon": 121.4737, "accuracy": 12.5, '
              b'"crs": "gcj02", "provider": "fused", "mock": false, "seq": 42}',
    "owntracks": b'[{"_type": "location", "tst": 1749999940, "lat": 48.85, "lon": 2.35, "acc": 15},'
                 b' {"_type": "transition", "event": "leave", "desc": "\xe5\xae\xb6"}]',
    "osmand_json": b'{"device_id": "48241179", "location": {"timestamp": "2025-06-15T15:05:40Z", '
                   b'"coords": {"latitude": 31.23, "longitude": 121.47, "accuracy": 6.5}}}',
}


@pytest.mark.parametrize("name", BYTE_NAMES)
def test_canonical_payloads_are_accepted(name: str) -> None:
    assert check(lambda: BYTE_DECODERS[name](CANONICAL[name], LIMITS)).fixes == 1


@pytest.mark.parametrize("name", BYTE_NAMES)
@FUZZ
@given(data=st.data())
def test_canonical_payloads_with_corrupted_bytes(name: str, data: st.DataObject) -> None:
    payload = mutate(data, CANONICAL[name])
    check(lambda: BYTE_DECODERS[name](payload, LIMITS))


NATIVE_DOC = {"time": 1749999940, "lat": 31.2304, "lon": 121.4737, "accuracy": 12.5, "crs": "gcj02"}
OWNTRACKS_DOC = {"_type": "location", "tst": 1749999940, "lat": 48.85, "lon": 2.35, "acc": 15}
TRACCAR_COORDS = {"latitude": 31.23, "longitude": 121.47, "accuracy": 6.5}
TRACCAR_LOCATION = {"timestamp": "2025-06-15T15:05:40Z", "coords": TRACCAR_COORDS}
# Where a deeply nested value can be put: (decoder, document builder taking the replacement).
SLOTS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "native": ("native", lambda k, v: {**NATIVE_DOC, k: v}),
    "native.array": ("native", lambda k, v: [NATIVE_DOC, {**NATIVE_DOC, k: v}]),
    "owntracks.location": ("owntracks", lambda k, v: {**OWNTRACKS_DOC, k: v}),
    "owntracks.other": ("owntracks", lambda k, v: {"_type": "waypoints", k: v}),
    "owntracks.array": ("owntracks", lambda k, v: [OWNTRACKS_DOC, {"_type": "card", k: v}]),
    "traccar": ("osmand_json", lambda k, v: {"device_id": "1", "location": TRACCAR_LOCATION, k: v}),
    "traccar.location": ("osmand_json",
                         lambda k, v: {"device_id": "1", "location": {**TRACCAR_LOCATION, k: v}}),
    "traccar.coords": ("osmand_json", lambda k, v: {
        "device_id": "1", "location": {**TRACCAR_LOCATION, "coords": {**TRACCAR_COORDS, k: v}}}),
}


@pytest.mark.parametrize("slot", sorted(SLOTS))
@settings(max_examples=80, deadline=None)
@given(data=st.data(), depth=DEPTHS, as_object=st.booleans(), leaf=SCALARS)
def test_deeply_nested_value_in_any_field(slot: str, data: st.DataObject, depth: int,
                                          as_object: bool, leaf: Any) -> None:
    name, build = SLOTS[slot]
    known = sorted(k for k in str(build("k", 0)).split("'") if k.isidentifier() or k == "_type")
    key = data.draw(st.sampled_from(known) | FIELD_NAMES | st.text(max_size=4))
    payload = encode(build(key, _nest(depth, as_object, leaf)))
    check(lambda: BYTE_DECODERS[name](payload, LIMITS))


# Regressions found by the properties above. Hypothesis raises the recursion limit while it runs
# a test, so the first one only shows outside @given.


@pytest.mark.parametrize("doc", [
    lambda v: {**NATIVE_DOC, "lat": v},
    lambda v: [NATIVE_DOC, {**NATIVE_DOC, "time": v}],
    lambda v: {**OWNTRACKS_DOC, "_type": v},
    lambda v: {"device_id": "1", "location": {**TRACCAR_LOCATION, "coords": {**TRACCAR_COORDS,
                                                                              "latitude": v}}},
], ids=["native.lat", "native.array.time", "owntracks._type", "traccar.coords.latitude"])
@pytest.mark.parametrize("name", BYTE_NAMES)
def test_value_nested_a_thousand_deep_is_a_decode_error_not_a_recursion_error(
    name: str, doc: Callable[[Any], Any]
) -> None:
    # was: RecursionError from repr() while writing the bad_type detail
    for depth in (995, 1000, 1023):
        assert check(lambda d=depth: BYTE_DECODERS[name](encode(doc(_nest(d, False, 1))), LIMITS)).reason


def test_owntracks_other_message_nested_too_deep_to_store_is_bad_json() -> None:
    # was: accepted, then orjson.dumps ("Recursion limit reached") failed the whole batch
    deep = encode([OWNTRACKS_DOC, {"_type": "waypoints", "waypoints": _nest(300, False, 1)}])
    e = pytest.raises(DecodeError, decode_owntracks, DEVICE, deep, NOW).value
    assert (e.reason, e.detail) == ("bad_json", "element 1: nested deeper than 64 levels")
    ok = decode_owntracks(DEVICE, encode({"_type": "waypoints", "w": _nest(63, True, 1)}), NOW)
    assert len(ok.other) == 1 and orjson.dumps(ok.other[0])


def test_osmand_query_lone_surrogate_is_bad_type() -> None:
    # was: accepted as a device message (valid=false) that orjson could not serialise
    e = pytest.raises(DecodeError, decode_osmand_query, {"id": "1", "valid": "false", "x": "\ud800"},
                      NOW).value
    assert e.reason == "bad_type" and "'x'" in e.detail


@pytest.mark.parametrize(("key", "value"), [("timestamp", "١٧٤٩٩٩٩٩٤٠"), ("lat", "３１.２"),
                                            ("batt", "٥٠")])
def test_osmand_query_non_ascii_digits_are_not_numbers(key: str, value: str) -> None:
    # was: accepted, float() and re's \d take any Unicode digit
    params = {"id": "1", "timestamp": "1749999940", "lat": "31.2", "lon": "121.4", key: value}
    assert check(lambda: decode_osmand_query(params, NOW)).reason in {"bad_type", "impossible_time"}


# A well-formed fix in range is accepted exactly as sent: the checks above must not reject it.

GOOD_NATIVE = st.fixed_dictionaries(
    {"time": st.floats(NOW - LIMITS.max_age_s, NOW + LIMITS.max_future_s),
     "lat": st.floats(-90, 90), "lon": st.floats(-180, 180).filter(lambda x: x != 0)},
    optional={"accuracy": st.floats(0, 1e6), "altitude": st.floats(-1.2e4, 1e5),
              "speed": st.floats(0, 1e3), "heading": st.floats(0, 360), "battery": st.floats(0, 100),
              "crs": st.sampled_from(["wgs84", "gcj02", "bd09"]), "mock": st.booleans(),
              "provider": st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                                  min_size=1, max_size=64),
              "seq": st.integers(0, 2**63 - 1)},
)


def _stored(v: float | None) -> float | None:
    """What a value too small for PostgreSQL's real becomes: 0."""
    return v if v is None or abs(v) >= 1e-30 else 0.0


@settings(FUZZ, max_examples=100)
@given(docs=st.lists(GOOD_NATIVE, min_size=1, max_size=5))
def test_native_well_formed_fixes_in_range_are_accepted_unchanged(docs: list[dict[str, Any]]) -> None:
    fixes = decode_native(DEVICE, orjson.dumps(docs), NOW, LIMITS).fixes
    assert len(fixes) == len(docs)
    for doc, f in zip(docs, fixes, strict=True):
        assert (f.time, f.lat, f.lon) == (doc["time"], doc["lat"], doc["lon"])
        assert f.accuracy == _stored(doc.get("accuracy")) and f.seq == doc.get("seq")
        assert f.battery == _stored(doc.get("battery")) and f.mock == doc.get("mock", False)
        assert f.crs == CRS(doc.get("crs", "wgs84")) and f.provider == doc.get("provider")


GOOD_QUERY = st.fixed_dictionaries(
    {"id": st.just("48241179"), "timestamp": st.integers(int(NOW - LIMITS.max_age_s) + 1, int(NOW)),
     "lat": st.floats(-90, 90), "lon": st.floats(-180, 180).filter(lambda x: x != 0)},
    optional={"accuracy": st.floats(0, 1e6), "bearing": st.floats(0, 360),
              "batt": st.floats(0, 100), "speed": st.floats(0, 1e3 / 0.5145)},
)


@settings(FUZZ, max_examples=100)
@given(q=GOOD_QUERY)
def test_osmand_query_well_formed_fixes_in_range_are_accepted(q: dict[str, Any]) -> None:
    (f,) = decode_osmand_query({k: str(v) for k, v in q.items()}, NOW, LIMITS).fixes
    assert (f.time, f.lat, f.lon) == (q["timestamp"], q["lat"], q["lon"])
    assert f.heading == _stored(q.get("bearing")) and f.accuracy == _stored(q.get("accuracy"))


# -------------------------------------------------------------------------------- pipeline

PIPELINE_REASONS = {"unknown_device"}  # added by the pipeline itself (documented as well)
P_NOW = time.time()
P_LIMITS = Limits()  # the pipeline's limits come from the default settings
ENROLLED = "fuzz-dev"


@pytest.fixture()
def fuzz_pipeline(settings: Settings, db: psycopg.Connection, org: Org) -> Iterator[Pipeline]:
    """A pipeline on the emptied test database, with one enrolled phone."""
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, 'x')",
               (ENROLLED, org.supervisee_id))
    p = Pipeline.connect(settings)
    yield p
    p.close()


DEVICES = st.sampled_from([ENROLLED] * 4 + ["not-enrolled"])


@st.composite
def raw_messages(draw: st.DrawFn) -> RawMessage:
    """One message as any entry point would hand it over, valid or not."""
    channel = draw(st.sampled_from(list(Channel)))
    device = draw(DEVICES | st.none())
    params = None
    if channel == Channel.NATIVE_MQTT:
        payload = encode(draw(one_or_array(plausible(native_fields(P_LIMITS, P_NOW),
                                                     {"time", "lat", "lon"})) | JSONISH))
    elif channel in (Channel.OWNTRACKS_MQTT, Channel.OWNTRACKS_HTTP):
        payload = encode(draw(one_or_array(plausible(owntracks_fields(P_LIMITS, P_NOW),
                                                     {"_type", "tst", "lat", "lon"})) | JSONISH))
    elif channel == Channel.OSMAND_JSON:
        payload = encode(draw(traccar(P_LIMITS, P_NOW, DEVICES) | JSONISH))
    else:
        params = draw(osmand_params(P_LIMITS, P_NOW, DEVICES))
        payload = b""
    if draw(st.integers(0, 9)) == 0:
        payload = draw(st.binary(max_size=200)) if params is None else payload
    if draw(st.integers(0, 19)) == 0 and params is None:
        payload = payload + b" " * (P_LIMITS.max_bytes + 1 - len(payload))  # oversized
    return RawMessage(channel, payload, device, topic="fuzz", received_at=P_NOW - 1,
                      remote="192.0.2.1", params=params)


def _expected(p: Pipeline, msg: RawMessage) -> Outcome:
    """What the pure decoder says of this message, as the pipeline calls it."""
    if msg.channel == Channel.NATIVE_MQTT:
        return check(lambda: decode_native(msg.device_id or "", msg.payload, P_NOW, p.limits),
                     p.limits, P_NOW)
    if msg.channel in (Channel.OWNTRACKS_MQTT, Channel.OWNTRACKS_HTTP):
        return check(lambda: decode_owntracks(msg.device_id or "", msg.payload, P_NOW, p.limits),
                     p.limits, P_NOW)
    if msg.channel == Channel.OSMAND_JSON:
        return check(lambda: decode_osmand_json(msg.payload, P_NOW, p.limits), p.limits, P_NOW)
    return check(lambda: decode_osmand_query(msg.params or {}, P_NOW, p.limits), p.limits, P_NOW)


def test_pipeline_stores_tiny_values_that_underflow_a_real_column(
    fuzz_pipeline: Pipeline, db: psycopg.Connection
) -> None:
    # was: psycopg NumericValueOutOfRange ("1.12e-282 is out of range for type real") in COPY,
    # failing the whole batch (an HTTP phone got a 500)
    doc = {"time": P_NOW - 5, "lat": 30.58, "lon": 114.3, "accuracy": 1e-300, "altitude": 5e-324,
           "speed": 1e-40, "heading": 1e-39, "battery": 1e-30}
    msg = RawMessage(Channel.NATIVE_MQTT, orjson.dumps(doc), ENROLLED, topic="t")
    [res] = fuzz_pipeline.process([msg], now=P_NOW)
    assert res.ok and res.accepted == 1
    row = db.execute("SELECT accuracy, altitude, speed, heading, battery FROM positions").fetchone()
    assert row is not None and row[:4] == (0.0, 0.0, 0.0, 0.0) and row[4] == pytest.approx(1e-30)


def _counts(db: psycopg.Connection) -> tuple[int, int, int]:
    row = db.execute("SELECT (SELECT count(*) FROM positions), (SELECT count(*) FROM device_messages),"
                     " (SELECT coalesce(max(id), 0) FROM dead_letters)").fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(messages=st.lists(raw_messages(), min_size=1, max_size=5))
def test_pipeline_stores_or_dead_letters_every_message(
    fuzz_pipeline: Pipeline, db: psycopg.Connection, messages: list[RawMessage]
) -> None:
    p = fuzz_pipeline
    positions0, others0, last_dead = _counts(db)
    results = p.process(messages, now=P_NOW)
    positions1, others1, _ = _counts(db)

    assert len(results) == len(messages)
    rejected = [i for i, r in enumerate(results) if not r.ok]
    for i, (msg, res) in enumerate(zip(messages, results, strict=True)):
        expected = _expected(p, msg)
        if res.ok:
            assert expected.reason is None and msg.device_id == ENROLLED
            assert res.accepted + res.duplicates == expected.fixes, i
            assert res.other == expected.other, i
        else:
            assert res.reason in DOCUMENTED, res.reason
            if msg.device_id is not None and expected.reason is not None:
                assert res.reason == expected.reason, (i, res, expected)
            else:  # the decoder took it: only the device can be wrong
                assert res.reason in ("unknown_device", "device_mismatch"), (i, res)
    # count in = stored + dead-lettered: every accepted fix is a new row, every rejection a letter
    assert positions1 - positions0 == sum(r.accepted for r in results)
    assert others1 - others0 == sum(r.other for r in results if r.ok)
    dead = db.execute("SELECT reason, raw, raw_size, source, device_id, remote FROM dead_letters "
                      "WHERE id > %s", (last_dead,)).fetchall()

    def raw_of(m: RawMessage) -> bytes:
        return orjson.dumps(dict(m.params)) if m.channel == Channel.OSMAND_QUERY and m.params \
            is not None else m.payload

    want = Counter((results[i].reason, raw_of(messages[i])[: p.limits.max_bytes],
                    len(raw_of(messages[i])), messages[i].channel.value, messages[i].device_id,
                    "192.0.2.1") for i in rejected)
    got = Counter((r, bytes(raw), size, src, dev, remote) for r, raw, size, src, dev, remote in dead)
    assert got == want
