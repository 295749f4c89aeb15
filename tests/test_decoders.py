"""Decoders: each protocol from one canonical message plus overrides; rules named in test names."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofence.model import CRS, Fix, Source
from ingest.decoders import (
    KMH_MS,
    KNOT_MS,
    REASONS,
    Decoded,
    DecodeError,
    Limits,
    decode_native,
    decode_osmand_json,
    decode_osmand_query,
    decode_owntracks,
)

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
T = NOW - 60.0  # a fix one minute old: 2025-06-15T15:05:40Z
T_ISO = "2025-06-15T15:05:40Z"
DEVICE = "dev-1"
REMOVE: Any = object()  # override value meaning "drop this key"
LIMITS = Limits()


def _override(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is REMOVE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _error(fn: Callable[[], Decoded]) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        fn()
    return info.value


# ------------------------------------------------------------------------------ native MQTT

NATIVE: dict[str, Any] = {
    "time": T,
    "lat": 31.2304,
    "lon": 121.4737,
    "accuracy": 12.5,
    "altitude": 4.0,
    "speed": 1.5,
    "heading": 270.0,
    "battery": 81.0,
    "crs": "gcj02",
    "provider": "fused",
    "mock": True,
    "seq": 42,
}


def native(**overrides: Any) -> dict[str, Any]:
    return _override(NATIVE, overrides)


def run_native(doc: Any, limits: Limits = LIMITS) -> Decoded:
    return decode_native(DEVICE, _dumps(doc), NOW, limits)


def native_error(doc: Any, limits: Limits = LIMITS) -> DecodeError:
    return _error(lambda: run_native(doc, limits))


def native_fix(**overrides: Any) -> Fix:
    (fix,) = run_native(native(**overrides)).fixes
    return fix


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
    assert _error(lambda: decode_native(DEVICE, payload, NOW)).reason == "not_object"


def test_native_accepts_exactly_max_fixes() -> None:
    assert len(run_native([native()] * 3, Limits(max_fixes=3)).fixes) == 3


def test_native_rejects_more_fixes_than_the_limit() -> None:
    e = native_error([native()] * 4, Limits(max_fixes=3))
    assert e.reason == "too_many_fixes" and "4" in e.detail


def test_native_accepts_payload_of_exactly_max_bytes() -> None:
    payload = _dumps(native())
    assert decode_native(DEVICE, payload, NOW, Limits(max_bytes=len(payload))).fixes


def test_native_rejects_oversized_payload_before_parsing() -> None:
    payload = b"{" * 101  # not JSON either: size is checked first
    e = _error(lambda: decode_native(DEVICE, payload, NOW, Limits(max_bytes=100)))
    assert e.reason == "oversized" and "101" in e.detail


@pytest.mark.parametrize("payload", [b"", b'{"lat":', b'{"time": NaN}', b"{'lat': 1}", b'{"a":1}{"b":2}'])
def test_native_rejects_invalid_json(payload: bytes) -> None:
    assert _error(lambda: decode_native(DEVICE, payload, NOW)).reason == "bad_json"


def test_native_rejects_non_utf8_payload() -> None:
    payload = b'{"time": 1, "lat": 1, "lon": 1, "provider": "\xff\xfe"}'
    assert _error(lambda: decode_native(DEVICE, payload, NOW)).reason == "bad_json"


# ------------------------------------------------------------------------------ OwnTracks

OWNTRACKS: dict[str, Any] = {
    "_type": "location",
    "lat": 48.8566,
    "lon": 2.3522,
    "tst": int(T),
    "acc": 15,
    "alt": 35,
    "vel": 36,
    "cog": 90,
    "batt": 77,
    "bs": 1,
    "tid": "ab",
    "t": "u",
    "m": 1,
    "conn": "w",
    "topic": "owntracks/jane/dev-1",
    "inregions": ["home"],
}


def owntracks(**overrides: Any) -> dict[str, Any]:
    return _override(OWNTRACKS, overrides)


def run_owntracks(doc: Any, source: Source = Source.OWNTRACKS_MQTT) -> Decoded:
    return decode_owntracks(DEVICE, _dumps(doc), NOW, Limits(), source)


def owntracks_error(doc: Any) -> DecodeError:
    return _error(lambda: run_owntracks(doc))


def test_owntracks_location_maps_every_field_into_the_fix() -> None:
    decoded = run_owntracks(owntracks())
    assert decoded == Decoded(
        fixes=[
            Fix(
                device_id=DEVICE,
                time=T,
                lon=2.3522,
                lat=48.8566,
                crs=CRS.WGS84,
                accuracy=15.0,
                altitude=35.0,
                speed=36 * KMH_MS,  # 36 km/h; the unit test below pins the factor
                heading=90.0,
                battery=77.0,
                provider=None,
                mock=False,
                seq=None,
                source=Source.OWNTRACKS_MQTT,
            )
        ],
        other=[],
    )


def test_owntracks_velocity_is_converted_from_kmh() -> None:
    (fix,) = run_owntracks(owntracks(vel=90)).fixes
    assert fix.speed == pytest.approx(25.0)
    assert pytest.approx(1 / 3.6) == KMH_MS


def test_owntracks_minimal_location_needs_only_lat_lon_tst() -> None:
    (fix,) = run_owntracks({"_type": "location", "lat": 1.25, "lon": 2.5, "tst": int(T)}).fixes
    assert (fix.lat, fix.lon, fix.time, fix.speed, fix.accuracy) == (1.25, 2.5, T, None, None)


def test_owntracks_coordinates_are_always_wgs84() -> None:
    (fix,) = run_owntracks(owntracks(crs="gcj02")).fixes
    assert fix.crs is CRS.WGS84


def test_owntracks_http_source_is_recorded() -> None:
    (fix,) = run_owntracks(owntracks(), Source.OWNTRACKS_HTTP).fixes
    assert fix.source is Source.OWNTRACKS_HTTP


@pytest.mark.parametrize(
    "kind", ["transition", "waypoint", "lwt", "card", "status", "cmd", "encrypted", "steps"]
)
def test_owntracks_non_location_types_go_to_other(kind: str) -> None:
    message = {"_type": kind, "tst": int(T), "data": "x"}
    assert run_owntracks(message) == Decoded(fixes=[], other=[message])


def test_owntracks_rejects_message_without_type() -> None:
    e = owntracks_error(owntracks(_type=REMOVE))
    assert (e.reason, e.detail) == ("missing_field", "_type")


def test_owntracks_rejects_non_string_type() -> None:
    assert owntracks_error(owntracks(_type=1)).reason == "bad_type"


def test_owntracks_http_array_splits_fixes_and_other() -> None:
    lwt = {"_type": "lwt", "tst": int(T)}
    decoded = run_owntracks([owntracks(tst=int(T) - 5), lwt, owntracks()], Source.OWNTRACKS_HTTP)
    assert [f.time for f in decoded.fixes] == [T - 5, T]
    assert decoded.other == [lwt]


def test_owntracks_one_bad_element_rejects_the_whole_array_naming_its_index() -> None:
    e = owntracks_error([owntracks(), {"_type": "lwt"}, owntracks(lon=200)])
    assert e.reason == "impossible_coordinates" and e.detail.startswith("element 2: ")


@pytest.mark.parametrize("field", ["lat", "lon", "tst"])
def test_owntracks_location_requires_lat_lon_tst(field: str) -> None:
    e = owntracks_error(owntracks(**{field: REMOVE}))
    assert (e.reason, e.detail) == ("missing_field", field)


def test_owntracks_rejects_timestamp_as_string() -> None:
    e = owntracks_error(owntracks(tst=str(int(T))))
    assert e.reason == "bad_type" and e.detail.startswith("tst")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("vel", -5, "speed"),
        ("acc", -1, "accuracy"),
        ("batt", 101, "battery"),
        ("cog", 400, "heading"),
    ],
)
def test_owntracks_rejects_impossible_values(field: str, value: float, named: str) -> None:
    e = owntracks_error(owntracks(**{field: value}))
    assert e.reason == "bad_value" and e.detail.startswith(named)


def test_owntracks_applies_the_shared_time_window() -> None:
    assert owntracks_error(owntracks(tst=int(NOW) + 3600)).reason == "future_time"
    assert owntracks_error(owntracks(tst=int(NOW) - 40 * 86400)).reason == "too_old"


def test_owntracks_payload_must_be_object_or_array() -> None:
    assert owntracks_error("location").reason == "not_object"


# ------------------------------------------------------------------------------ OsmAnd query

OSMAND: dict[str, str] = {
    "id": "48241179",
    "timestamp": str(int(T)),
    "lat": "31.2304",
    "lon": "121.4737",
    "speed": "10.0",
    "bearing": "45.5",
    "altitude": "12.0",
    "accuracy": "8.0",
    "batt": "64.0",
    "charge": "false",
}


def osmand(**overrides: Any) -> dict[str, str]:
    return _override(OSMAND, overrides)


def run_osmand(params: dict[str, str], limits: Limits = LIMITS) -> Decoded:
    return decode_osmand_query(params, NOW, limits)


def osmand_error(params: dict[str, str], limits: Limits = LIMITS) -> DecodeError:
    return _error(lambda: run_osmand(params, limits))


def osmand_fix(**overrides: Any) -> Fix:
    (fix,) = run_osmand(osmand(**overrides)).fixes
    return fix


def test_osmand_query_maps_every_parameter_into_the_fix() -> None:
    decoded = run_osmand(osmand())
    assert decoded == Decoded(
        fixes=[
            Fix(
                device_id="48241179",
                time=T,
                lon=121.4737,
                lat=31.2304,
                crs=CRS.WGS84,
                accuracy=8.0,
                altitude=12.0,
                speed=10.0 * KNOT_MS,  # 10 kn; pinned by test_osmand_speed_is_in_knots
                heading=45.5,
                battery=64.0,
                provider=None,
                mock=False,
                seq=None,
                source=Source.OSMAND_HTTP,
            )
        ],
        other=[],
        claimed_device_id="48241179",
    )


def test_osmand_speed_is_in_knots() -> None:
    assert osmand_fix(speed="1").speed == pytest.approx(0.514444, abs=1e-6)
    assert pytest.approx(1852 / 3600) == KNOT_MS


def test_osmand_timestamp_in_milliseconds_when_large() -> None:
    assert osmand_fix(timestamp=str(int(T * 1000) + 250)).time == pytest.approx(T + 0.25)


def test_osmand_timestamp_below_int_max_is_seconds() -> None:
    assert osmand_fix(timestamp=str(int(T))).time == T


@pytest.mark.parametrize(
    "value", [T_ISO, "2025-06-15T23:05:40+08:00", "2025-06-15T15:05:40.000Z", "2025-06-15 15:05:40"]
)
def test_osmand_timestamp_text_forms(value: str) -> None:
    assert osmand_fix(timestamp=value).time == T


def test_osmand_plain_datetime_is_read_as_utc() -> None:
    expected = datetime(2025, 6, 15, 15, 5, 40, tzinfo=UTC).timestamp()
    assert osmand_fix(timestamp="2025-06-15 15:05:40").time == expected


def test_osmand_iso_timestamp_without_timezone_is_impossible_time() -> None:
    assert osmand_error(osmand(timestamp="2025-06-15T15:05:40")).reason == "impossible_time"


@pytest.mark.parametrize("value", ["now", "15/06/2025 15:05", "", "1e400x"])
def test_osmand_unparsable_timestamp_is_impossible_time(value: str) -> None:
    assert osmand_error(osmand(timestamp=value)).reason == "impossible_time"


def test_osmand_missing_timestamp_is_missing_field() -> None:
    e = osmand_error(osmand(timestamp=REMOVE))
    assert (e.reason, e.detail) == ("missing_field", "timestamp")


def test_osmand_deviceid_is_an_alias_of_id() -> None:
    decoded = run_osmand(osmand(id=REMOVE, deviceid="abc"))
    assert decoded.claimed_device_id == "abc" and decoded.fixes[0].device_id == "abc"


def test_osmand_same_id_and_deviceid_are_accepted() -> None:
    assert run_osmand(osmand(deviceid="48241179")).claimed_device_id == "48241179"


def test_osmand_conflicting_id_and_deviceid_is_device_mismatch() -> None:
    assert osmand_error(osmand(deviceid="other")).reason == "device_mismatch"


def test_osmand_missing_id_is_missing_field() -> None:
    e = osmand_error(osmand(id=REMOVE))
    assert (e.reason, e.detail) == ("missing_field", "id")


@pytest.mark.parametrize("value", ["", "x" * 129, "a\nb"])
def test_osmand_unusable_id_is_bad_value(value: str) -> None:
    assert osmand_error(osmand(id=value)).reason == "bad_value"


def test_osmand_location_parameter_is_lat_comma_lon() -> None:
    fix = osmand_fix(lat=REMOVE, lon=REMOVE, location="-33.8688,151.2093")
    assert (fix.lat, fix.lon) == (-33.8688, 151.2093)


@pytest.mark.parametrize("value", ["1.5", "1,2,3", "a,b"])
def test_osmand_malformed_location_parameter_is_bad_type(value: str) -> None:
    assert osmand_error(osmand(lat=REMOVE, lon=REMOVE, location=value)).reason == "bad_type"


def test_osmand_missing_coordinates_is_missing_field() -> None:
    assert osmand_error(osmand(lat=REMOVE, lon=REMOVE)).reason == "missing_field"
    e = osmand_error(osmand(lon=REMOVE))
    assert (e.reason, e.detail) == ("missing_field", "lon")


def test_osmand_heading_parameter_works_like_bearing() -> None:
    assert osmand_fix(bearing=REMOVE, heading="123.0").heading == 123.0


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("lat", "abc"),
        ("lon", ""),
        ("speed", "fast"),
        ("batt", "50%"),
        ("accuracy", " 5"),
        ("altitude", "1_000"),
    ],
)
def test_osmand_non_numeric_parameter_is_bad_type(param: str, value: str) -> None:
    e = osmand_error(osmand(**{param: value}))
    assert e.reason == "bad_type" and e.detail.startswith(param)


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_osmand_non_finite_latitude_is_impossible_coordinates(value: str) -> None:
    assert osmand_error(osmand(lat=value)).reason == "impossible_coordinates"


def test_osmand_null_island_is_impossible_coordinates() -> None:
    assert osmand_error(osmand(lat="0", lon="0.0")).reason == "impossible_coordinates"


@pytest.mark.parametrize(
    ("param", "value", "named"),
    [("speed", "-1", "speed"), ("batt", "101", "battery"), ("accuracy", "-3", "accuracy")],
)
def test_osmand_impossible_values_are_bad_value(param: str, value: str, named: str) -> None:
    e = osmand_error(osmand(**{param: value}))
    assert e.reason == "bad_value" and e.detail.startswith(named)


@pytest.mark.parametrize(("value", "mock"), [("true", True), ("1", True), ("false", False)])
def test_osmand_mock_flag_is_mapped(value: str, mock: bool) -> None:
    assert osmand_fix(mock=value).mock is mock


def test_osmand_mock_defaults_to_false() -> None:
    assert osmand_fix().mock is False


def test_osmand_unreadable_mock_flag_is_bad_type() -> None:
    assert osmand_error(osmand(mock="maybe")).reason == "bad_type"


def test_osmand_valid_false_is_recorded_as_other_not_a_fix() -> None:
    decoded = run_osmand(osmand(valid="false", lat="0", lon="0"))
    assert decoded.fixes == []
    assert decoded.other[0]["_type"] == "invalid_fix"
    assert decoded.other[0]["params"]["lat"] == "0"
    assert decoded.claimed_device_id == "48241179"


def test_osmand_valid_true_gives_a_fix() -> None:
    assert len(run_osmand(osmand(valid="1")).fixes) == 1


def test_osmand_hdop_is_checked_but_not_used_as_accuracy() -> None:
    assert osmand_fix(accuracy=REMOVE, hdop="2.5").accuracy is None
    assert osmand_error(osmand(hdop="-1")).reason == "bad_value"


def test_osmand_oversized_parameters_are_rejected() -> None:
    e = osmand_error(osmand(extra="x" * 200), Limits(max_bytes=200))
    assert e.reason == "oversized"


def test_osmand_applies_the_shared_time_window() -> None:
    assert osmand_error(osmand(timestamp=str(int(NOW) + 3600))).reason == "future_time"
    assert osmand_error(osmand(timestamp=str(int((NOW - 31 * 86400) * 1000)))).reason == "too_old"


# ------------------------------------------------------------------------------ OsmAnd JSON

# Exactly what Traccar Client 9 posts (its locationTemplate, plus the device_id http param).
TRACCAR: dict[str, Any] = {
    "location": {
        "timestamp": "2025-06-15T15:05:40.000Z",
        "coords": {
            "latitude": 31.2304,
            "longitude": 121.4737,
            "accuracy": 6.5,
            "speed": 2.5,
            "heading": 181.0,
            "altitude": 14.2,
        },
        "is_moving": True,
        "odometer": 1234.5,
        "event": "",
        "battery": {"level": 0.64, "is_charging": False},
        "activity": {"type": "walking"},
        "extras": {},
        "_": "&id=48241179&lat=31.2304&lon=121.4737&timestamp=2025-06-15T15:05:40.000Z&",
    },
    "device_id": "48241179",
}


def traccar(
    coords: dict[str, Any] | None = None,
    /,
    root: dict[str, Any] | None = None,
    **location: Any,
) -> dict[str, Any]:
    """The canonical body; `coords` overrides inside coords, keywords inside location."""
    body = _override(TRACCAR, root or {})
    if "location" in body and isinstance(body["location"], dict):
        body["location"] = _override(body["location"], location)
        if coords is not None:
            body["location"]["coords"] = _override(body["location"]["coords"], coords)
    return body


def run_traccar(doc: Any) -> Decoded:
    return decode_osmand_json(_dumps(doc), NOW)


def traccar_error(doc: Any) -> DecodeError:
    return _error(lambda: run_traccar(doc))


def traccar_fix(coords: dict[str, Any] | None = None, /, **location: Any) -> Fix:
    (fix,) = run_traccar(traccar(coords, **location)).fixes
    return fix


def test_traccar_json_maps_every_field_into_the_fix() -> None:
    assert run_traccar(traccar()) == Decoded(
        fixes=[
            Fix(
                device_id="48241179",
                time=T,
                lon=121.4737,
                lat=31.2304,
                crs=CRS.WGS84,
                accuracy=6.5,
                altitude=14.2,
                speed=2.5,
                heading=181.0,
                battery=64.0,
                provider=None,
                mock=False,
                seq=None,
                source=Source.OSMAND_HTTP,
            )
        ],
        other=[],
        claimed_device_id="48241179",
    )


def test_traccar_json_speed_is_already_metres_per_second() -> None:
    assert traccar_fix({"speed": 13.9}).speed == 13.9


def test_traccar_json_negative_speed_and_heading_mean_unknown() -> None:
    fix = traccar_fix({"speed": -1, "heading": -1})
    assert (fix.speed, fix.heading) == (None, None)


def test_traccar_json_battery_level_is_a_fraction() -> None:
    assert traccar_fix(battery={"level": 0.07}).battery == pytest.approx(7.0)


def test_traccar_json_negative_battery_level_means_unknown() -> None:
    assert traccar_fix(battery={"level": -1, "is_charging": False}).battery is None


def test_traccar_json_battery_level_above_one_is_bad_value() -> None:
    e = traccar_error(traccar(battery={"level": 1.5}))
    assert e.reason == "bad_value" and e.detail.startswith("battery")


def test_traccar_json_optional_coords_may_be_absent() -> None:
    fix = traccar_fix({"accuracy": REMOVE, "speed": REMOVE, "heading": REMOVE, "altitude": REMOVE})
    assert (fix.accuracy, fix.speed, fix.heading, fix.altitude) == (None,) * 4


def test_traccar_json_battery_may_be_absent() -> None:
    assert traccar_fix(battery=REMOVE).battery is None


@pytest.mark.parametrize("key", ["mock", "is_mock"])
def test_traccar_json_mock_flag_is_mapped(key: str) -> None:
    assert traccar_fix(**{key: True}).mock is True


def test_traccar_json_negative_accuracy_is_bad_value() -> None:
    assert traccar_error(traccar({"accuracy": -1})).reason == "bad_value"


def test_traccar_json_location_array_is_rejected_like_traccar() -> None:
    body = traccar(root={"location": [TRACCAR["location"]]})
    e = traccar_error(body)
    assert e.reason == "bad_type" and e.detail.startswith("location:")


@pytest.mark.parametrize("doc", [[TRACCAR], "x", 5])
def test_traccar_json_root_must_be_an_object(doc: Any) -> None:
    assert traccar_error(doc).reason == "not_object"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (traccar(root={"device_id": REMOVE}), "device_id"),
        (traccar(root={"location": REMOVE}), "location"),
        (traccar(coords=REMOVE), "location.coords"),
        (traccar(timestamp=REMOVE), "location.timestamp"),
        (traccar({"latitude": REMOVE}), "location.coords.latitude"),
        (traccar({"longitude": REMOVE}), "location.coords.longitude"),
    ],
)
def test_traccar_json_missing_field_names_its_path(body: dict[str, Any], path: str) -> None:
    e = traccar_error(body)
    assert (e.reason, e.detail) == ("missing_field", path)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (traccar({"latitude": "31.2"}), "location.coords.latitude"),
        (traccar(timestamp=int(T)), "location.timestamp"),
        (traccar(root={"device_id": 48241179}), "device_id"),
        (traccar(battery={"level": "full"}), "location.battery.level"),
        (traccar(mock="yes"), "location.mock"),
        (traccar({"speed": True}), "location.coords.speed"),
    ],
)
def test_traccar_json_wrong_type_names_its_path(body: dict[str, Any], path: str) -> None:
    e = traccar_error(body)
    assert e.reason == "bad_type" and e.detail.startswith(f"{path}: ")


def test_traccar_json_timestamp_must_have_a_timezone() -> None:
    assert traccar_error(traccar(timestamp="2025-06-15T15:05:40")).reason == "impossible_time"


def test_traccar_json_applies_the_shared_rules() -> None:
    assert traccar_error(traccar({"latitude": -91})).reason == "impossible_coordinates"
    assert traccar_error(traccar(timestamp="2025-06-15T18:00:00Z")).reason == "future_time"


def test_traccar_json_empty_device_id_is_bad_value() -> None:
    assert traccar_error(traccar(root={"device_id": ""})).reason == "bad_value"


def test_traccar_json_oversized_body_is_rejected() -> None:
    body = _dumps(traccar(extras={"pad": "x" * 500}))
    e = _error(lambda: decode_osmand_json(body, NOW, Limits(max_bytes=400)))
    assert e.reason == "oversized"


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
    assert _error(lambda: run(**overrides)).reason == reason


# One example per reason code; the set must match REASONS exactly.
REASON_EXAMPLES: dict[str, Callable[[], Decoded]] = {
    "oversized": lambda: run_native([native()] * 3, Limits(max_bytes=100)),
    "bad_json": lambda: decode_native(DEVICE, b"{", NOW),
    "not_object": lambda: run_native(42),
    "too_many_fixes": lambda: decode_owntracks(DEVICE, _dumps([owntracks()] * 3), NOW, Limits(max_fixes=2)),
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
    e = _error(REASON_EXAMPLES[reason])
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
    _check_outcome(lambda: BYTE_DECODERS[name](_dumps(value)))


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
    _check_outcome(lambda: run(_override(base, {key: value})))


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
