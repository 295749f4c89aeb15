"""The native MQTT protocol (`devices/{device_id}/location`, docs/protocols.md); rules named in
test names."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.model import CRS, Fix, Source
from ingest.protocols import (
    Decoded,
    Limits,
    decode_native,
)
from ingest.protocols import native as native_module
from tests.protocol_cases import (
    DEVICE,
    JSON_VALUES,
    NOW,
    REMOVE,
    T,
    dumps,
    error,
    fast_path_and_model,
    native,
    native_error,
    native_fix,
    run_native,
)


def test_native_maps_every_field_into_the_fix() -> None:
    decoded = run_native(native())
    assert decoded == Decoded(
        fixes=[
            Fix(
                device_id=DEVICE,
                time=T,
                lon=121.4737,
                lat=31.2304,
                crs=CRS.GCJ02,
                accuracy=12.5,
                altitude=4.0,
                speed=1.5,
                heading=270.0,
                battery=81.0,
                provider="fused",
                mock=True,
                seq=42,
                source=Source.NATIVE_MQTT,
            )
        ],
        other=[],
        claimed_device_id=None,
    )


def test_native_minimal_message_gets_defaults() -> None:
    fix = run_native({"time": T, "lat": 1.5, "lon": 2.5}).fixes[0]
    assert (fix.crs, fix.mock, fix.seq, fix.provider) == (CRS.WGS84, False, None, None)
    assert (fix.accuracy, fix.altitude, fix.speed, fix.heading, fix.battery) == (None,) * 5


def test_native_null_optional_fields_mean_absent() -> None:
    fix = native_fix(accuracy=None, speed=None, provider=None, seq=None)
    assert (fix.accuracy, fix.speed, fix.provider, fix.seq) == (None, None, None, None)


def test_native_empty_provider_means_absent() -> None:
    assert native_fix(provider="").provider is None


def test_native_ignores_unknown_fields() -> None:
    assert native_fix(satellites=7, note={"x": [1]}).lat == 31.2304


def test_native_integer_numbers_are_accepted_as_floats() -> None:
    fix = native_fix(time=int(T), lat=31, lon=121, accuracy=5)
    assert (fix.time, fix.lat, fix.lon, fix.accuracy) == (T, 31.0, 121.0, 5.0)


def test_native_time_accepts_iso_with_timezone_offset() -> None:
    assert native_fix(time="2025-06-15T23:05:40+08:00").time == T
    assert native_fix(time="2025-06-15T15:05:40.250Z").time == T + 0.25


def test_native_rejects_iso_time_without_timezone() -> None:
    e = native_error(native(time="2025-06-15T15:05:40"))
    assert e.reason == "impossible_time" and "timezone" in e.detail


@pytest.mark.parametrize("value", ["yesterday", "2025-13-45T00:00:00Z", "", "1750000000"])
def test_native_rejects_unparsable_time(value: str) -> None:
    assert native_error(native(time=value)).reason == "impossible_time"


@pytest.mark.parametrize("value", [True, None, [T], {"t": T}])
def test_native_time_must_be_number_or_string(value: Any) -> None:
    e = native_error(native(time=value))
    assert (e.reason, e.detail.split(":")[0]) == ("bad_type", "time")


def test_native_epoch_milliseconds_are_caught_as_future_time() -> None:
    assert native_error(native(time=T * 1000)).reason == "future_time"


@pytest.mark.parametrize("lat", [90.0001, -90.5, 1e9])
def test_native_rejects_latitude_beyond_ninety(lat: float) -> None:
    assert native_error(native(lat=lat)).reason == "impossible_coordinates"


@pytest.mark.parametrize("lon", [180.0001, -181.0])
def test_native_rejects_longitude_beyond_one_eighty(lon: float) -> None:
    assert native_error(native(lon=lon)).reason == "impossible_coordinates"


@pytest.mark.parametrize(("lat", "lon"), [(90.0, 180.0), (-90.0, -180.0)])
def test_native_accepts_coordinates_on_the_boundary(lat: float, lon: float) -> None:
    fix = native_fix(lat=lat, lon=lon)
    assert (fix.lat, fix.lon) == (lat, lon)


def test_native_rejects_null_island() -> None:
    e = native_error(native(lat=0, lon=0.0))
    assert e.reason == "impossible_coordinates" and "(0, 0)" in e.detail


def test_native_accepts_equator_and_meridian_separately() -> None:
    assert (native_fix(lat=0.0, lon=9.5).lat, native_fix(lat=51.5, lon=0.0).lon) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lat", "abc"),
        ("lat", "31.2"),
        ("lat", True),  # a bool is not a number
        ("lon", None),
        ("accuracy", "5"),
        ("battery", False),
        ("speed", [1]),
        ("mock", "yes"),
        ("mock", 1),
        ("seq", 1.5),
        ("seq", "7"),
        ("seq", True),
        ("provider", 5),
        ("crs", 3),
        ("crs", None),
    ],
)
def test_native_rejects_wrong_types_naming_the_field(field: str, value: Any) -> None:
    e = native_error(native(**{field: value}))
    assert e.reason == "bad_type"
    assert e.detail.startswith(f"{field}: ")


@pytest.mark.parametrize("field", ["time", "lat", "lon"])
def test_native_rejects_missing_required_field(field: str) -> None:
    e = native_error(native(**{field: REMOVE}))
    assert (e.reason, e.detail) == ("missing_field", field)


@pytest.mark.parametrize(
    ("value", "crs"),
    [("wgs84", CRS.WGS84), ("gcj02", CRS.GCJ02), ("bd09", CRS.BD09), ("BD09", CRS.BD09)],
)
def test_native_crs_is_mapped(value: str, crs: CRS) -> None:
    assert native_fix(crs=value).crs is crs


def test_native_crs_defaults_to_wgs84() -> None:
    assert native_fix(crs=REMOVE).crs is CRS.WGS84


def test_native_rejects_unknown_crs() -> None:
    e = native_error(native(crs="epsg3857"))
    assert e.reason == "bad_value" and "crs" in e.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("accuracy", -1.0),
        ("speed", -0.1),
        ("heading", -1),
        ("heading", 360.5),
        ("battery", 100.5),
        ("battery", -1),
        ("seq", -1),
        ("seq", 2**63),
        ("provider", "x" * 65),
    ],
)
def test_native_rejects_impossible_values(field: str, value: Any) -> None:
    e = native_error(native(**{field: value}))
    assert e.reason == "bad_value" and e.detail.startswith(field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("accuracy", 0),
        ("speed", 0),
        ("heading", 0),
        ("heading", 360),
        ("battery", 0),
        ("battery", 100),
        ("seq", 0),
        ("altitude", -420.0),
    ],
)
def test_native_accepts_boundary_values(field: str, value: float) -> None:
    assert getattr(native_fix(**{field: value}), field) == value


def test_native_accepts_clock_skew_within_tolerance() -> None:
    assert native_fix(time=NOW + 599).time == NOW + 599


def test_native_rejects_time_beyond_future_tolerance() -> None:
    e = native_error(native(time=NOW + 601))
    assert e.reason == "future_time" and "601 s ahead" in e.detail


def test_native_accepts_buffered_fix_within_max_age() -> None:
    assert native_fix(time=NOW - 29 * 86400).time == NOW - 29 * 86400


def test_native_rejects_fix_older_than_max_age() -> None:
    assert native_error(native(time=NOW - 31 * 86400)).reason == "too_old"


def test_native_time_limits_are_configurable() -> None:
    strict = Limits(max_future_s=0, max_age_s=3600)
    assert native_error(native(time=NOW + 1), strict).reason == "future_time"
    assert native_error(native(time=NOW - 3601), strict).reason == "too_old"


def test_native_array_gives_one_fix_per_element_in_order() -> None:
    decoded = run_native([native(time=T - 20, seq=1), native(time=T - 10, seq=2), native(seq=3)])
    assert [(f.time, f.seq) for f in decoded.fixes] == [(T - 20, 1), (T - 10, 2), (T, 3)]


def test_native_empty_array_gives_no_fixes() -> None:
    assert run_native([]) == Decoded(fixes=[], other=[])


def test_native_one_bad_element_rejects_the_whole_array_naming_its_index() -> None:
    e = native_error([native(), native(), native(lat=95.0), native(battery=-3)])
    assert e.reason == "impossible_coordinates"
    assert e.detail.startswith("element 2: ")


def test_native_single_object_error_has_no_element_prefix() -> None:
    assert not native_error(native(lat=95.0)).detail.startswith("element")


@pytest.mark.parametrize("element", [1, "x", None, [native()]])
def test_native_array_elements_must_be_objects(element: Any) -> None:
    e = native_error([native(), element])
    assert (e.reason, e.detail.split(":")[0]) == ("not_object", "element 1")


@pytest.mark.parametrize("payload", [b"3", b'"fix"', b"null", b"true"])
def test_native_rejects_scalar_payload(payload: bytes) -> None:
    assert error(lambda: decode_native(DEVICE, payload, NOW)).reason == "not_object"


def test_native_accepts_exactly_max_fixes() -> None:
    assert len(run_native([native()] * 3, Limits(max_fixes=3)).fixes) == 3


def test_native_rejects_more_fixes_than_the_limit() -> None:
    e = native_error([native()] * 4, Limits(max_fixes=3))
    assert e.reason == "too_many_fixes" and "4" in e.detail


def test_native_accepts_payload_of_exactly_max_bytes() -> None:
    payload = dumps(native())
    assert decode_native(DEVICE, payload, NOW, Limits(max_bytes=len(payload))).fixes


def test_native_rejects_oversized_payload_before_parsing() -> None:
    payload = b"{" * 101  # not JSON either: size is checked first
    e = error(lambda: decode_native(DEVICE, payload, NOW, Limits(max_bytes=100)))
    assert e.reason == "oversized" and "101" in e.detail


@pytest.mark.parametrize("payload", [b"", b'{"lat":', b'{"time": NaN}', b"{'lat': 1}", b'{"a":1}{"b":2}'])
def test_native_rejects_invalid_json(payload: bytes) -> None:
    assert error(lambda: decode_native(DEVICE, payload, NOW)).reason == "bad_json"


def test_native_rejects_non_utf8_payload() -> None:
    payload = b'{"time": 1, "lat": 1, "lon": 1, "provider": "\xff\xfe"}'
    assert error(lambda: decode_native(DEVICE, payload, NOW)).reason == "bad_json"


_FIELDS = ["time", "lat", "lon", "accuracy", "altitude", "speed", "heading", "battery", "crs",
           "provider", "mock", "seq", "extra"]


@settings(max_examples=600, deadline=None)
@given(base=st.fixed_dictionaries({}, optional={
    "time": st.one_of(JSON_VALUES, st.floats(NOW - 40 * 86400, NOW + 700)),
    "lat": st.one_of(JSON_VALUES, st.floats(-91, 91)), "lon": st.one_of(JSON_VALUES, st.floats(-181, 181)),
    **{k: JSON_VALUES for k in _FIELDS[3:]}}), keep_valid=st.booleans())
def test_native_fast_path_gives_the_models_fix_or_error(base: dict[str, Any], keep_valid: bool) -> None:
    """The usual fix skips the pydantic model (`native._plain`): on any input, valid or not, the
    result is the model path's, the same fix or the same error."""
    obj = ({"time": T, "lat": 31.2, "lon": 121.4} | base) if keep_valid else base
    fast, model = fast_path_and_model(decode_native, native_module, obj)
    assert fast == model


def test_native_fast_path_takes_the_usual_fix() -> None:
    """The check above compares like with like only if the usual fix really goes the fast way."""
    obj = {"time": T, "lat": 31.2, "lon": 121.4, "accuracy": 12, "speed": None, "crs": "gcj02",
           "provider": "gps", "mock": False, "seq": 7}
    cand = native_module._plain({k: v for k, v in obj.items() if k != "speed"})
    assert cand is not None and cand.accuracy == 12.0 and cand.crs is CRS.GCJ02
    assert native_module._plain(obj) is None  # an explicit null: the model decides
    assert native_module._plain(obj | {"speed": 1, "mock": 0}) is None
