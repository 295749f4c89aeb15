"""The OsmAnd protocol as Traccar Client sends it: query/form parameters and the JSON body of
Traccar Client 9+ (Traccar's OsmAndProtocolDecoder)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from geofence.model import CRS, Fix, Source
from ingest.protocols import (
    HDOP_UERE_M,
    KNOT_MS,
    Decoded,
    Limits,
    decode_osmand_json,
    decode_osmand_query,
)
from tests.protocol_cases import (
    LIMITS,
    NOW,
    REMOVE,
    T_ISO,
    TRACCAR,
    T,
    dumps,
    error,
    osmand,
    osmand_error,
    osmand_fix,
    run_osmand,
    run_traccar,
    traccar,
    traccar_error,
    traccar_fix,
)


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


def test_osmand_missing_timestamp_takes_the_receive_time_and_says_so() -> None:
    # Traccar's server stamps such a fix with the time it arrived; the source marks it.
    received = NOW - 5.0
    (fix,) = decode_osmand_query(osmand(timestamp=REMOVE), NOW, LIMITS, received).fixes
    assert (fix.time, fix.source) == (received, Source.OSMAND_HTTP_RECEIVED_TIME)
    assert osmand_fix(timestamp=REMOVE).time == NOW  # no receive time given: the decoder's now
    assert osmand_fix().source == Source.OSMAND_HTTP  # a sent timestamp is not marked


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
    [("batt", "101", "battery"), ("accuracy", "-3", "accuracy"), ("bearing", "361", "heading")],
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


@pytest.mark.parametrize("param", ["speed", "bearing", "heading", "batt", "altitude"])
def test_osmand_minus_one_means_unknown_not_a_rejection(param: str) -> None:
    fix = osmand_fix(**{param: "-1"})
    field = {"bearing": "heading", "batt": "battery"}.get(param, param)
    assert getattr(fix, field) is None
    assert (fix.lat, fix.lon) == (31.2304, 121.4737)


def test_osmand_other_negative_speed_bearing_battery_are_unknown_but_altitude_is_real() -> None:
    fix = osmand_fix(speed="-3.5", bearing="-90", batt="-2", altitude="-28.5")
    assert (fix.speed, fix.heading, fix.battery, fix.altitude) == (None, None, None, -28.5)


def test_osmand_hdop_stands_in_for_a_missing_accuracy() -> None:
    assert osmand_fix(accuracy=REMOVE, hdop="2.5").accuracy == 2.5 * HDOP_UERE_M == 12.5
    assert osmand_fix(accuracy="8", hdop="2.5").accuracy == 8.0  # a sent accuracy wins
    assert osmand_fix(accuracy=REMOVE, hdop="-1").accuracy is None  # unknown
    assert osmand_fix(accuracy=REMOVE).accuracy is None
    assert osmand_error(osmand(accuracy=REMOVE, hdop="abc")).reason == "bad_type"


def test_osmand_app_tracking_url_is_read() -> None:
    # OsmAnd's online tracking template: lat={0}&lon={1}&timestamp={2}&hdop={3}&altitude={4}
    # &speed={5}&bearing={6}, with the timestamp in milliseconds.
    params = {"id": "48241179", "lat": "31.2304", "lon": "121.4737",
              "timestamp": str(int(T * 1000)), "hdop": "1.2", "altitude": "-1", "speed": "0",
              "bearing": "-1"}
    (fix,) = run_osmand(params).fixes
    assert (fix.time, fix.accuracy, fix.altitude, fix.speed, fix.heading) == (
        T, 1.2 * HDOP_UERE_M, None, 0.0, None)


def test_traccar_client_request_without_location_services_values_is_stored() -> None:
    # Android's Traccar Client, fix from the network provider: no speed, bearing or altitude.
    params = {"id": "48241179", "timestamp": str(int(T)), "lat": "31.2304", "lon": "121.4737",
              "speed": "-1", "bearing": "-1", "altitude": "-1", "accuracy": "35.0", "batt": "-1"}
    (fix,) = run_osmand(params).fixes
    assert (fix.speed, fix.heading, fix.altitude, fix.battery, fix.accuracy) == (
        None, None, None, None, 35.0)


def test_osmand_oversized_parameters_are_rejected() -> None:
    e = osmand_error(osmand(extra="x" * 200), Limits(max_bytes=200))
    assert e.reason == "oversized"


def test_osmand_applies_the_shared_time_window() -> None:
    assert osmand_error(osmand(timestamp=str(int(NOW) + 3600))).reason == "future_time"
    assert osmand_error(osmand(timestamp=str(int((NOW - 31 * 86400) * 1000)))).reason == "too_old"



# ------------------------------------------------------------------------------ OsmAnd JSON

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
    body = dumps(traccar(extras={"pad": "x" * 500}))
    e = error(lambda: decode_osmand_json(body, NOW, Limits(max_bytes=400)))
    assert e.reason == "oversized"
