"""Rules every protocol shares, the reason codes, and robustness against arbitrary input."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofence.model import CRS, Fix
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
from tests.protocol_cases import (
    DEVICE,
    LIMITS,
    NATIVE,
    NOW,
    OSMAND,
    OWNTRACKS,
    TRACCAR,
    T,
    dumps,
    error,
    native,
    osmand,
    override,
    owntracks,
    run_native,
    run_osmand,
    run_owntracks,
    run_traccar,
    traccar,
)

# ------------------------------------------------------------------------------ all protocols

# One "apply these overrides to the canonical message" runner per protocol, in canonical units.
PROTOCOLS: dict[str, Callable[..., Decoded]] = {
    "native": lambda lat=31.2, time=T: run_native(native(lat=lat, time=time)),
    "owntracks": lambda lat=31.2, time=T: run_owntracks(owntracks(lat=lat, tst=time)),
    "osmand_query": lambda lat=31.2, time=T: run_osmand(osmand(lat=str(lat), timestamp=str(time))),
    "osmand_json": lambda lat=31.2, time=T: run_traccar(
        traccar({"latitude": lat}, timestamp=datetime.fromtimestamp(time, UTC).isoformat())
    ),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"lat": 90.5}, "impossible_coordinates"),
        ({"time": NOW + 601}, "future_time"),
        ({"time": NOW - 30 * 86400 - 1}, "too_old"),
    ],
)
def test_every_protocol_applies_the_same_rules(protocol: str, overrides: dict[str, Any], reason: str) -> None:
    run = PROTOCOLS[protocol]
    assert len(run().fixes) == 1
    assert error(lambda: run(**overrides)).reason == reason


# One example per reason code; the set must match REASONS exactly.
REASON_EXAMPLES: dict[str, Callable[[], Decoded]] = {
    "oversized": lambda: run_native([native()] * 3, Limits(max_bytes=100)),
    "bad_json": lambda: decode_native(DEVICE, b"{", NOW),
    "not_object": lambda: run_native(42),
    "too_many_fixes": lambda: decode_owntracks(DEVICE, dumps([owntracks()] * 3), NOW, Limits(max_fixes=2)),
    "missing_field": lambda: run_owntracks({"lat": 1}),
    "bad_type": lambda: run_native(native(lat="abc")),
    "bad_value": lambda: run_native(native(accuracy=-1)),
    "impossible_coordinates": lambda: run_native(native(lat=0, lon=0)),
    "impossible_time": lambda: run_native(native(time="2025-06-15 15:05:40")),
    "future_time": lambda: run_osmand(osmand(timestamp=str(int(NOW + 3600)))),
    "too_old": lambda: run_traccar(traccar(timestamp="2024-01-01T00:00:00Z")),
    "device_mismatch": lambda: run_osmand(osmand(deviceid="someone-else")),
}


def test_every_reason_code_has_an_example() -> None:
    assert set(REASON_EXAMPLES) == REASONS


@pytest.mark.parametrize("reason", sorted(REASON_EXAMPLES))
def test_reason_example_raises_that_reason(reason: str) -> None:
    e = error(REASON_EXAMPLES[reason])
    assert e.reason == reason and e.detail


def test_decode_error_str_is_reason_colon_detail() -> None:
    e = DecodeError("bad_value", "battery=120: must be within [0, 100]")
    assert str(e) == "bad_value: battery=120: must be within [0, 100]"
    assert (e.reason, e.detail) == ("bad_value", "battery=120: must be within [0, 100]")
    assert str(DecodeError("bad_json")) == "bad_json: "


def test_limits_defaults() -> None:
    assert Limits() == Limits(max_bytes=65536, max_fixes=1000, max_future_s=600, max_age_s=2592000)


# ------------------------------------------------------------------------------ robustness

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["location", "2025-06-15T15:05:40Z", "gcj02", "", "NaN"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _check_outcome(fn: Callable[[], Decoded]) -> None:
    """Only a Decoded or a DecodeError may come out; every fix returned obeys the rules."""
    try:
        decoded = fn()
    except DecodeError as e:
        assert e.reason in REASONS
        return
    assert isinstance(decoded, Decoded)
    for f in decoded.fixes:
        assert isinstance(f, Fix)
        assert math.isfinite(f.lat) and -90 <= f.lat <= 90
        assert math.isfinite(f.lon) and -180 <= f.lon <= 180
        assert (f.lat, f.lon) != (0.0, 0.0)
        assert NOW - LIMITS.max_age_s <= f.time <= NOW + LIMITS.max_future_s
        assert f.accuracy is None or f.accuracy >= 0
        assert f.speed is None or f.speed >= 0
        assert f.heading is None or 0 <= f.heading <= 360
        assert f.battery is None or 0 <= f.battery <= 100
        assert isinstance(f.mock, bool) and isinstance(f.crs, CRS)


BYTE_DECODERS: dict[str, Callable[[bytes], Decoded]] = {
    "native": lambda b: decode_native(DEVICE, b, NOW),
    "owntracks": lambda b: decode_owntracks(DEVICE, b, NOW),
    "osmand_json": lambda b: decode_osmand_json(b, NOW),
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(BYTE_DECODERS))
@FUZZ
@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes_give_decoded_or_decode_error(name: str, payload: bytes) -> None:
    _check_outcome(lambda: BYTE_DECODERS[name](payload))


@pytest.mark.parametrize("name", sorted(BYTE_DECODERS))
@FUZZ
@given(value=JSON_VALUES)
def test_arbitrary_json_values_give_decoded_or_decode_error(name: str, value: Any) -> None:
    _check_outcome(lambda: BYTE_DECODERS[name](dumps(value)))


CANONICAL: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Decoded]]] = {
    "native": (NATIVE, run_native),
    "owntracks": (OWNTRACKS, run_owntracks),
    "osmand_json.root": (TRACCAR, run_traccar),
    "osmand_json.location": (
        TRACCAR["location"],
        lambda loc: run_traccar(traccar(root={"location": loc})),
    ),
    "osmand_json.coords": (TRACCAR["location"]["coords"], lambda c: run_traccar(traccar(coords=c))),
}


@pytest.mark.parametrize("name", sorted(CANONICAL))
@FUZZ
@given(data=st.data(), value=JSON_VALUES)
def test_canonical_message_with_one_field_replaced_never_crashes(
    name: str, data: st.DataObject, value: Any
) -> None:
    base, run = CANONICAL[name]
    key = data.draw(st.sampled_from(sorted(base)))
    _check_outcome(lambda: run(override(base, {key: value})))


@FUZZ
@given(params=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=8))
def test_arbitrary_query_parameters_give_decoded_or_decode_error(params: dict[str, str]) -> None:
    _check_outcome(lambda: decode_osmand_query(params, NOW))


QUERY_TEXT = (
    st.text(max_size=25)
    | st.sampled_from(
        [
            "nan",
            "-inf",
            "1e308",
            "1e309",
            "0",
            "-0",
            "2147483647",
            "99999999999999999999",
            "true",
            "1",
        ]
    )
    | st.from_regex(r"-?\d{1,14}(\.\d{1,6})?", fullmatch=True)
)


@FUZZ
@given(data=st.data(), value=QUERY_TEXT)
def test_osmand_query_with_one_parameter_replaced_never_crashes(data: st.DataObject, value: str) -> None:
    key = data.draw(st.sampled_from(sorted([*OSMAND, "location", "valid", "mock", "hdop", "deviceid"])))
    _check_outcome(lambda: decode_osmand_query(osmand(**{key: value}), NOW))
