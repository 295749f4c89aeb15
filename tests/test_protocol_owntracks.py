"""OwnTracks JSON (booklet: https://owntracks.org/booklet/tech/json/), over MQTT and HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.model import CRS, Fix, Source
from ingest.protocols import (
    KMH_MS,
    Decoded,
    decode_owntracks,
)
from ingest.protocols import owntracks as owntracks_module
from tests.protocol_cases import (
    DEVICE,
    JSON_VALUES,
    NOW,
    REMOVE,
    T,
    fast_path_and_model,
    override,
    owntracks,
    owntracks_error,
    run_owntracks,
)


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


# The booklet's transition, published on owntracks/{user}/{device}/event: lat/lon/acc are where
# the phone was when it crossed, tst when, wtst when the region was created.
TRANSITION: dict[str, Any] = {
    "_type": "transition", "wtst": int(T) - 86400, "lat": 48.8566, "lon": 2.3522, "tst": int(T),
    "acc": 130, "tid": "JP", "event": "enter", "desc": "my Indian restaurant", "t": "c",
}
WAYPOINT: dict[str, Any] = {  # published on .../waypoint when a region is set up on the phone
    "_type": "waypoint", "desc": "Home", "lat": 48.8566, "lon": 2.3522, "rad": 50,
    "tst": int(T) - 86400,
}


def test_owntracks_transition_is_recorded_and_its_position_is_a_fix() -> None:
    decoded = run_owntracks(TRANSITION)
    assert decoded.other == [TRANSITION]
    (fix,) = decoded.fixes
    assert (fix.time, fix.lat, fix.lon, fix.accuracy, fix.source) == (
        T, 48.8566, 2.3522, 130.0, Source.OWNTRACKS_MQTT)
    assert (fix.speed, fix.heading, fix.battery, fix.altitude) == (None,) * 4


def test_owntracks_transition_without_coordinates_is_only_recorded() -> None:
    message = override(TRANSITION, {"lat": REMOVE, "lon": REMOVE})
    assert run_owntracks(message) == Decoded(fixes=[], other=[message])


def test_a_transition_without_a_position_is_recorded_and_is_no_fix() -> None:
    # The older iOS app sent iOS's "no position" (horizontal accuracy -1) in a transition's acc:
    # the phone's crossing of its own region is kept, its coordinates are not a fix.
    message = override(TRANSITION, {"acc": -1})
    assert run_owntracks(message) == Decoded(fixes=[], other=[message])
    # A location with that accuracy is no fix either, and is refused (kept as a dead letter).
    assert owntracks_error(owntracks(acc=-1)).reason == "bad_value"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [({"lat": 95.0}, "impossible_coordinates"), ({"lon": REMOVE}, "missing_field"),
     ({"tst": REMOVE}, "missing_field"), ({"acc": "-1"}, "bad_type"),
     ({"tst": int(NOW) + 3600}, "future_time")],
)
def test_owntracks_transition_with_a_bad_position_is_rejected_whole(
        overrides: dict[str, Any], reason: str) -> None:
    assert owntracks_error(override(TRANSITION, overrides)).reason == reason


def test_owntracks_waypoint_and_waypoints_are_recorded_never_fixes() -> None:
    # The phone's own regions are not the supervision zones: kept as device messages only.
    waypoints = {"_type": "waypoints", "waypoints": [WAYPOINT, override(WAYPOINT, {"desc": "Work"})]}
    assert run_owntracks(WAYPOINT) == Decoded(fixes=[], other=[WAYPOINT])
    assert run_owntracks(waypoints) == Decoded(fixes=[], other=[waypoints])


def test_owntracks_http_queue_flush_mixes_locations_and_transitions() -> None:
    lwt = {"_type": "lwt", "tst": int(T) - 600}
    decoded = run_owntracks([owntracks(), TRANSITION, lwt], Source.OWNTRACKS_HTTP)
    assert [f.lat for f in decoded.fixes] == [48.8566, 48.8566]
    assert {f.source for f in decoded.fixes} == {Source.OWNTRACKS_HTTP}
    assert decoded.other == [TRANSITION, lwt]


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
        ("acc", -1, "accuracy"),  # iOS: no position at all
        ("batt", 101, "battery"),
        ("cog", 400, "heading"),
        ("vel", 5000, "speed"),
    ],
)
def test_owntracks_rejects_impossible_values(field: str, value: float, named: str) -> None:
    e = owntracks_error(owntracks(**{field: value}))
    assert e.reason == "bad_value" and e.detail.startswith(named)


def test_an_iphone_standing_still_is_stored_with_what_it_does_not_know_left_unknown() -> None:
    """The older iOS app's location (2014-15; today's leaves such fields out) of a phone without
    speed, course, vertical fix or battery reading, as the OwnTracks Recorder's documentation
    shows it: the position is stored; -1 is "not available", never a value, and never a reason
    to refuse."""
    ios = {"cog": -1, "batt": -1, "lon": 2.29513, "acc": 5, "vel": -1, "vac": -1, "lat": 48.85833,
           "t": "u", "tst": int(T), "alt": 0, "_type": "location", "tid": "JJ"}
    (fix,) = run_owntracks(ios).fixes
    assert (fix.lat, fix.lon, fix.accuracy) == (48.85833, 2.29513, 5.0)
    assert (fix.speed, fix.heading, fix.battery, fix.altitude) == (None, None, None, None)
    # With a vertical fix the altitude is kept, and a real speed and course are read as ever.
    (fix,) = run_owntracks(ios | {"vac": 25, "alt": 129, "vel": 36, "cog": 90, "batt": 80}).fixes
    assert (fix.altitude, fix.speed, fix.heading, fix.battery) == (129.0, 36 * KMH_MS, 90.0, 80.0)


@pytest.mark.parametrize(("extra", "speed", "heading", "battery", "altitude"), [
    ({"vel": -3}, None, None, None, 12.0),  # any negative speed: none (iOS)
    ({"batt": -100}, 10.0, None, None, 12.0),  # a battery level of -1 x 100: unknown
    ({"cog": -0.5}, 10.0, None, None, 12.0),
    ({"vac": -1}, 10.0, None, None, None),  # no vertical fix: the altitude is none
    ({"vac": -0.0}, 10.0, None, None, 12.0),  # zero is no negative accuracy
    ({"vac": True}, 10.0, None, None, 12.0),  # not a number: ignored, as any extra field
    ({"vac": "-1"}, 10.0, None, None, 12.0),
    ({"vac": None}, 10.0, None, None, 12.0),
])
def test_owntracks_reads_the_apps_not_available_values_as_unknown(
        extra: dict[str, Any], speed: float | None, heading: float | None,
        battery: float | None, altitude: float | None) -> None:
    obj = {"_type": "location", "lat": 48.85, "lon": 2.35, "tst": int(T), "vel": 36, "alt": 12}
    (fix,) = run_owntracks(obj | extra).fixes
    got = (fix.speed, fix.heading, fix.battery, fix.altitude)
    assert got == pytest.approx((speed, heading, battery, altitude))


def test_owntracks_applies_the_shared_time_window() -> None:
    assert owntracks_error(owntracks(tst=int(NOW) + 3600)).reason == "future_time"
    assert owntracks_error(owntracks(tst=int(NOW) - 40 * 86400)).reason == "too_old"


def test_owntracks_payload_must_be_object_or_array() -> None:
    assert owntracks_error("location").reason == "not_object"


# What an OwnTracks phone sends besides the fix (Android 2.4, iOS 17): ignored either way.
_EXTRAS = {"tid": "ab", "conn": "m", "bs": 1, "m": 1, "t": "p", "BSSID": "aa:bb", "SSID": "x",
           "inregions": ["home"], "created_at": T, "topic": "owntracks/u/d", "vac": 3, "p": 100.2}


@settings(max_examples=600, deadline=None)
@given(base=st.fixed_dictionaries({}, optional={
    "tst": st.one_of(JSON_VALUES, st.floats(NOW - 40 * 86400, NOW + 700)),
    "lat": st.one_of(JSON_VALUES, st.floats(-91, 91)), "lon": st.one_of(JSON_VALUES, st.floats(-181, 181)),
    **{k: JSON_VALUES for k in ("acc", "alt", "vel", "cog", "batt", "vac", "tid", "conn")}}),
    keep_valid=st.booleans(), extras=st.booleans())
def test_owntracks_fast_path_gives_the_models_fix_or_error(
        base: dict[str, Any], keep_valid: bool, extras: bool) -> None:
    """The usual location skips the pydantic model (`owntracks._plain`): on any input, valid or
    not, the result is the model path's, the same fix or the same error."""
    obj = {"_type": "location"} | (_EXTRAS if extras else {}) | (
        {"tst": int(T), "lat": 48.85, "lon": 2.35} if keep_valid else {}) | base
    fast, model = fast_path_and_model(decode_owntracks, owntracks_module, obj)
    assert fast == model


def test_owntracks_fast_path_takes_the_usual_location() -> None:
    """The check above compares like with like only if the usual location really goes the fast
    way."""
    obj = owntracks() | _EXTRAS
    cand = owntracks_module._plain(obj)
    assert cand is not None and cand.accuracy == 15.0 and cand.speed == 36 * KMH_MS
    assert owntracks_module._plain(obj | {"vel": None}) is None  # null: the model decides
    assert owntracks_module._plain(obj | {"batt": True}) is None
    assert owntracks_module._plain(obj | {"tst": "2026-01-01T00:00:00Z"}) is None
