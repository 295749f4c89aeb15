"""Rules of the simulated phones (simulators/phone.py), checked with independent tools.

Membership and distances are judged by the engine's own `PreparedZone` (its transverse
Mercator plane, not the simulator's equirectangular one), GCJ-02 by prcoords as well as
geofence.crs, and payloads by the real decoder.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import prcoords
import pytest
import shapely
from pyproj import Geod

from geofence.crs import CRS_CODE, gcj02_to_wgs84
from geofence.model import CRS, Membership, ZoneKind
from geofence.zones import PreparedZone
from ingest.protocols import decode_native
from simulators.fleet import district_adcodes
from simulators.phone import (
    District,
    FixBatch,
    Mode,
    PhoneConfig,
    PhoneFleet,
    Provider,
    districts_from_geojson,
    fix_payload,
)
from store.demo import load_regions

GEOD = Geod(ellps="WGS84")
T0 = 1_764_000_000.0  # any epoch: the model takes time as a parameter


@pytest.fixture(scope="module")
def districts() -> list[District]:
    return districts_from_geojson(load_regions())


@pytest.fixture(scope="module")
def zones(districts: list[District]) -> list[PreparedZone]:
    return [PreparedZone(k, 1, ZoneKind.HOME_AREA, d.geom_wgs84) for k, d in enumerate(districts)]


def memberships(zone: PreparedZone, lon: np.ndarray, lat: np.ndarray,
                acc: np.ndarray) -> np.ndarray:
    """The engine's verdict per fix as Membership values (whatever array type it returns)."""
    m = zone.membership(lon, lat, acc)
    if m.dtype.kind in "iu":  # vectorised codes: index into geofence.zones.MEMBERSHIPS
        from geofence.zones import MEMBERSHIPS

        return np.asarray(MEMBERSHIPS, dtype=object)[m]
    return m


def run(fleet: PhoneFleet, steps: int, dt: float) -> list[FixBatch]:
    return [fleet.advance(T0 + dt * (k + 1)) for k in range(steps)]


def signed_distances(zones: list[PreparedZone], district: np.ndarray, lon: np.ndarray,
                     lat: np.ndarray) -> np.ndarray:
    """Metres from each point to its district border: > 0 outside, < 0 inside (engine's plane)."""
    return np.array([zones[k].signed_distance(float(x), float(y))
                     for k, x, y in zip(district, lon, lat, strict=True)])


def test_phones_are_spread_over_the_districts_the_way_provisioning_enrols_them(districts):
    fleet = PhoneFleet(districts, 130, seed=3, config=PhoneConfig(wander_share=0.0),
                       start_time=T0)
    assert [d.adcode for d in districts] == district_adcodes()
    assert len(districts) == 13
    # Phone i lives in district i % 13, and its home is inside that district's real boundary.
    assert np.array_equal(fleet.district, np.arange(130) % 13)
    b = fleet.advance(T0)
    for k, d in enumerate(districts):
        sel = fleet.district == k
        assert shapely.contains_xy(d.geom_wgs84, b.true_lon[sel], b.true_lat[sel]).all()


def test_ordinary_phones_stay_inside_their_district_and_never_look_outside(districts, zones):
    cfg = PhoneConfig(wander_share=0.0, dwell_mean_s=120.0)
    fleet = PhoneFleet(districts, 260, seed=7, config=cfg, start_time=T0)
    batches = run(fleet, steps=360, dt=20.0)  # two simulated hours
    home_lon, home_lat = batches[0].true_lon, batches[0].true_lat
    travelled = np.zeros(fleet.n)
    for b in batches[::12]:
        _, _, d = GEOD.inv(home_lon, home_lat, b.true_lon, b.true_lat)
        travelled = np.maximum(travelled, d)
        dist = signed_distances(zones, fleet.district, b.true_lon, b.true_lat)
        # True positions keep the stay margin (scale error of the model's plane < 0.5 %).
        assert dist.max() < -cfg.stay_margin_m * 0.99
    # Not a trivial pass: phones really move around their district.
    assert np.median(travelled) > 500.0
    assert (travelled > 3000.0).sum() > 20

    # However noisy, no decidable fix of an ordinary phone is wholly outside its district.
    for b in batches:
        decidable = b.accuracy <= 200.0
        for k in np.unique(fleet.district):
            sel = decidable & (fleet.district == k)
            m = memberships(zones[k], b.wgs_lon[sel], b.wgs_lat[sel], b.accuracy[sel])
            assert not (m == Membership.OUTSIDE).any()


def test_wanderers_end_up_outside_by_the_configured_margin(districts, zones):
    cfg = PhoneConfig(wander_share=1.0, wander_margin_m=(1000.0, 3000.0),
                      wander_depart_s=(0.0, 60.0), wander_lead_m=(50.0, 500.0),
                      wander_speed_ms=(8.0, 16.0))
    fleet = PhoneFleet(districts, 130, seed=11, config=cfg, start_time=T0)
    first = fleet.advance(T0)
    start = signed_distances(zones, fleet.district, first.true_lon, first.true_lat)
    assert (start < 0).all(), "wanderers start inside their district"
    assert (start > -600.0).all(), "... within the configured lead of its border"

    batches = run(fleet, steps=400, dt=30.0)  # 3 h 20 min: enough for the longest way out
    last = batches[-1]
    assert (fleet.mode == Mode.OUT).all()
    assert fleet.wanderers_out() == fleet.n
    margin = fleet.wander_margin
    assert margin.min() >= 1000.0 and margin.max() <= 3000.0
    dist = signed_distances(zones, fleet.district, last.true_lon, last.true_lat)
    assert (dist >= margin * 0.99).all()
    assert (dist <= margin * 1.01 + 60.0).all()  # first point far enough along the way out

    # Their GNSS fixes (accuracy <= 50 m) are judged wholly outside by the engine's geometry.
    gps = last.provider == Provider.GPS
    for k in np.unique(fleet.district[gps]):
        sel = gps & (fleet.district == k)
        m = memberships(zones[k], last.wgs_lon[sel], last.wgs_lat[sel], last.accuracy[sel])
        assert (m == Membership.OUTSIDE).all()


def test_wanderers_leave_only_after_their_departure_time(districts, zones):
    cfg = PhoneConfig(wander_share=1.0, wander_depart_s=(600.0, 900.0))
    fleet = PhoneFleet(districts, 26, seed=5, config=cfg, start_time=T0)
    before = fleet.advance(T0 + 590.0)
    assert not before.outside.any()
    assert (signed_distances(zones, fleet.district, before.true_lon, before.true_lat) < 0).all()
    assert (fleet.mode == Mode.DWELL).all()
    fleet.advance(T0 + 901.0)
    assert (fleet.mode != Mode.DWELL).all()


def test_accuracy_is_mostly_3_to_50_m_and_the_error_matches_it(districts):
    cfg = PhoneConfig(wander_share=0.0)
    fleet = PhoneFleet(districts, 500, seed=2, config=cfg, start_time=T0)
    batches = run(fleet, steps=60, dt=5.0)  # 30,000 fixes
    acc = np.concatenate([b.accuracy for b in batches])
    provider = np.concatenate([b.provider for b in batches])
    _, _, err = GEOD.inv(np.concatenate([b.true_lon for b in batches]),
                         np.concatenate([b.true_lat for b in batches]),
                         np.concatenate([b.wgs_lon for b in batches]),
                         np.concatenate([b.wgs_lat for b in batches]))
    gps = provider == Provider.GPS
    assert ((acc[gps] >= 3.0) & (acc[gps] <= 50.0)).all()
    assert 0.93 < np.mean((acc >= 3.0) & (acc <= 50.0)) < 0.97  # ~5 % network fixes
    assert 5.0 < np.median(acc[gps]) < 20.0
    net = ~gps
    assert ((acc[net] >= 60.0) & (acc[net] <= 1500.0)).all()
    # Accuracy is the 68 % radius: about 68 % of fixes lie within it (the Rayleigh tail is cut
    # at 3 sigma, which lifts it to 68.8 %; glitches take 0.5 % away).
    assert 0.665 < np.mean(err <= acc) < 0.705
    # Ordinary errors stay below 1.99 x accuracy; only rare glitches exceed it, at most 4 x.
    ratio = err / acc
    assert 0.002 < np.mean(ratio > 1.995) < 0.009
    assert ratio.max() < 4.0 * 1.005
    # Network fixes carry neither speed nor heading nor altitude.
    speed = np.concatenate([b.speed for b in batches])
    assert np.isnan(speed[net]).all() and not np.isnan(speed[gps]).any()


def test_gcj02_phones_report_properly_converted_coordinates(districts):
    cfg = PhoneConfig(wander_share=0.1, gcj02_share=0.5)
    fleet = PhoneFleet(districts, 400, seed=9, config=cfg, start_time=T0)
    b = run(fleet, steps=3, dt=10.0)[-1]
    gcj = b.crs == CRS_CODE[CRS.GCJ02]
    assert 0.4 < gcj.mean() < 0.6
    # Converted back, the report is exactly the noisy WGS-84 position the phone measured ...
    back_lon, back_lat = gcj02_to_wgs84(b.lon[gcj], b.lat[gcj])
    np.testing.assert_allclose(back_lon, b.wgs_lon[gcj], atol=1e-7)
    np.testing.assert_allclose(back_lat, b.wgs_lat[gcj], atol=1e-7)
    # ... the forward conversion agrees with an independent implementation ...
    for k in np.flatnonzero(gcj)[:50]:
        lat, lon = prcoords.wgs_gcj((float(b.wgs_lat[k]), float(b.wgs_lon[k])))
        assert math.isclose(lon, b.lon[k], abs_tol=1e-9) and math.isclose(lat, b.lat[k], abs_tol=1e-9)
    # ... and it is a real shift of a few hundred metres, not just a label.
    _, _, shift = GEOD.inv(b.wgs_lon[gcj], b.wgs_lat[gcj], b.lon[gcj], b.lat[gcj])
    assert (shift > 300.0).all() and (shift < 800.0).all()
    # WGS-84 phones report what they measured.
    assert np.array_equal(b.lon[~gcj], b.wgs_lon[~gcj])


def test_payloads_decode_to_the_fix_the_model_produced(districts):
    fleet = PhoneFleet(districts, 200, seed=4, config=PhoneConfig(gcj02_share=0.5),
                       start_time=T0)
    b = run(fleet, steps=2, dt=10.0)[-1]
    for k in range(len(b)):
        t = T0 + 20.0 + k / 1000
        fix = decode_native(f"sim{k:06d}", _json(fix_payload(b, k, t)), now=T0 + 30.0).fixes[0]
        assert fix.time == pytest.approx(t, abs=1e-6)
        assert fix.crs == (CRS.GCJ02 if b.crs[k] == CRS_CODE[CRS.GCJ02] else CRS.WGS84)
        assert fix.lon == pytest.approx(b.lon[k], abs=1e-7)
        assert fix.lat == pytest.approx(b.lat[k], abs=1e-7)
        assert fix.accuracy == pytest.approx(b.accuracy[k], abs=0.05)
        assert fix.provider == ("gps" if b.provider[k] == Provider.GPS else "network")
        assert fix.seq == b.seq[k] == 2


def _json(obj: object) -> bytes:
    import orjson

    return orjson.dumps(obj)


def _batch_equal(a: FixBatch, b: FixBatch) -> bool:
    for f in fields(FixBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
        elif x != y:
            return False
    return True


def test_same_seed_gives_the_same_fixes_and_another_seed_does_not(districts):
    cfg = PhoneConfig(wander_share=0.3)

    def history(seed: int) -> list[FixBatch]:
        fleet = PhoneFleet(districts, 150, seed=seed, config=cfg, start_time=T0)
        out = [fleet.advance(T0 + 7.0 * k, np.arange(k % 3, 150, 3)) for k in range(1, 40)]
        return out + run(fleet, steps=20, dt=60.0)

    a, b, c = history(42), history(42), history(43)
    assert all(_batch_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.allclose(a[0].true_lon, c[0].true_lon)
    assert not np.allclose(a[-1].lon, c[-1].lon)


def test_a_phone_is_the_same_phone_whichever_publisher_drives_it(districts):
    # The bench splits a fleet over processes: home, role and CRS depend on the seed only.
    cfg = PhoneConfig(wander_share=0.25, gcj02_share=0.4)
    whole = PhoneFleet(districts, 300, seed=8, config=cfg, start_time=T0)
    part = PhoneFleet(districts, 300, seed=8, config=cfg, start_time=T0,
                      phones=np.arange(1, 300, 2))
    idx = part.phone
    assert np.array_equal(part.wanderer, whole.wanderer[idx])
    assert np.array_equal(part.crs, whole.crs[idx])
    assert np.array_equal(part.home_x, whole.home_x[idx])
    assert np.array_equal(part.home_y, whole.home_y[idx])
    assert whole.wanderer.sum() == 75
