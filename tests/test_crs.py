"""Rules of geofence.crs, checked against prcoords as an independent oracle.

prcoords works in (lat, lon) order and on one point at a time; the helpers below
translate so every comparison is made in our (lon, lat) order.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import prcoords
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from geofence.crs import (
    CHINA_BBOX,
    CODE_CRS,
    CRS_CODE,
    bd09_to_gcj02,
    convert,
    from_wgs84,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    in_china,
    point_to_wgs84,
    to_wgs84,
    to_wgs84_mixed,
    transform_geometry,
    wgs84_to_gcj02,
)
from geofence.model import CRS

# One millimetre expressed in degrees of latitude (the larger of the two degree lengths).
MM_DEG = 1e-3 / 111_320.0
# Forward conversions implement the same published formulas as prcoords, so they
# should agree to float rounding; 1e-9 deg (0.1 mm) leaves room for operation order.
FORWARD_TOL = 1e-9

WUHAN = (114.3, 30.6)

MIN_LON, MIN_LAT, MAX_LON, MAX_LAT = CHINA_BBOX
# Stay ~5 km inside the box, so a point's GCJ-02 image (offset < 1 km) stays inside too.
_lon_in = st.floats(MIN_LON + 0.05, MAX_LON - 0.05, allow_nan=False)
_lat_in = st.floats(MIN_LAT + 0.05, MAX_LAT - 0.05, allow_nan=False)
points_in_china = st.lists(st.tuples(_lon_in, _lat_in), min_size=1, max_size=20)

_outside_box = st.one_of(
    st.tuples(st.floats(-180, MIN_LON - 1e-6), st.floats(-85, 85)),
    st.tuples(st.floats(MAX_LON + 1e-6, 180), st.floats(-85, 85)),
    st.tuples(st.floats(-180, 180), st.floats(-85, MIN_LAT - 1e-6)),
    st.tuples(st.floats(-180, 180), st.floats(MAX_LAT + 1e-6, 85)),
)
points_outside_china = st.lists(_outside_box, min_size=1, max_size=20)


def _arrays(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.array(points, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def _oracle(fn, lon: np.ndarray, lat: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Apply a prcoords (lat, lon) point function to (lon, lat) arrays."""
    out = [fn((float(la), float(lo)), **kw) for lo, la in zip(lon, lat, strict=True)]
    return np.array([c.lon for c in out]), np.array([c.lat for c in out])


def _max_err(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(max(np.max(np.abs(a[0] - b[0])), np.max(np.abs(a[1] - b[1]))))


def _metres(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    return float(prcoords.Coords(lat1, lon1).distance(prcoords.Coords(lat2, lon2)))


# --- forward conversions agree with the oracle ---------------------------------------


@settings(deadline=None)
@given(points_in_china)
def test_wgs84_to_gcj02_agrees_with_prcoords_inside_china(points):
    lon, lat = _arrays(points)
    assert _max_err(wgs84_to_gcj02(lon, lat), _oracle(prcoords.wgs_gcj, lon, lat)) < FORWARD_TOL


@settings(deadline=None)
@given(points_in_china)
def test_gcj02_to_bd09_agrees_with_prcoords(points):
    lon, lat = _arrays(points)
    assert _max_err(gcj02_to_bd09(lon, lat), _oracle(prcoords.gcj_bd, lon, lat)) < FORWARD_TOL


@settings(deadline=None)
@given(points_in_china)
def test_from_wgs84_to_bd09_agrees_with_prcoords(points):
    lon, lat = _arrays(points)
    ours = from_wgs84(lon, lat, CRS.BD09)
    assert _max_err(ours, _oracle(prcoords.wgs_bd, lon, lat)) < FORWARD_TOL


# Published test vectors of eviltransform (googollee/eviltransform, (lat, lon) there),
# a third implementation: pins the formula to values others have checked.
EVILTRANSFORM_VECTORS = [
    # (wgs lon, wgs lat), (gcj lon, gcj lat)
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),  # Shanghai
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),  # Shenzhen
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),  # Beijing
]


@pytest.mark.parametrize(("wgs", "gcj"), EVILTRANSFORM_VECTORS)
def test_wgs84_to_gcj02_reproduces_published_eviltransform_vectors(wgs, gcj):
    g_lon, g_lat = wgs84_to_gcj02(*wgs)
    assert abs(float(g_lon) - gcj[0]) < FORWARD_TOL
    assert abs(float(g_lat) - gcj[1]) < FORWARD_TOL
    w_lon, w_lat = gcj02_to_wgs84(*gcj)
    assert abs(float(w_lon) - wgs[0]) < MM_DEG
    assert abs(float(w_lat) - wgs[1]) < MM_DEG


# --- inverses are exact ---------------------------------------------------------------


@settings(deadline=None)
@given(points_in_china)
def test_gcj02_to_wgs84_is_undone_by_prcoords_forward_within_a_millimetre(points):
    # Start from GCJ-02 points, invert with ours, re-apply the oracle's forward.
    lon, lat = _arrays(points)
    w_lon, w_lat = gcj02_to_wgs84(lon, lat)
    assert _max_err(_oracle(prcoords.wgs_gcj, w_lon, w_lat), (lon, lat)) < MM_DEG


@settings(deadline=None)
@given(points_in_china)
def test_bd09_to_gcj02_is_undone_by_prcoords_forward_within_a_millimetre(points):
    lon, lat = _arrays(points)
    g_lon, g_lat = bd09_to_gcj02(lon, lat)
    assert _max_err(_oracle(prcoords.gcj_bd, g_lon, g_lat), (lon, lat)) < MM_DEG


@settings(deadline=None)
@given(points_in_china)
def test_bd09_to_wgs84_is_undone_by_prcoords_forward_within_a_millimetre(points):
    lon, lat = _arrays(points)
    w_lon, w_lat = to_wgs84(lon, lat, CRS.BD09)
    assert _max_err(_oracle(prcoords.wgs_bd, w_lon, w_lat), (lon, lat)) < MM_DEG


@settings(deadline=None)
@given(points_in_china)
def test_gcj02_round_trip_is_within_a_millimetre(points):
    lon, lat = _arrays(points)
    assert _max_err(gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat)), (lon, lat)) < MM_DEG


@settings(deadline=None)
@given(points_in_china)
def test_bd09_round_trip_is_within_a_millimetre(points):
    lon, lat = _arrays(points)
    assert _max_err(to_wgs84(*from_wgs84(lon, lat, CRS.BD09), CRS.BD09), (lon, lat)) < MM_DEG
    assert _max_err(bd09_to_gcj02(*gcj02_to_bd09(lon, lat)), (lon, lat)) < MM_DEG


@settings(deadline=None)
@given(points_in_china)
def test_inverses_agree_with_prcoords_iterated_inverses_within_their_accuracy(points):
    # prcoords stops iterating at a 1e-5 residual, so its "bored" inverses are only
    # good to a few 1e-7 deg; ours must land within that of them.
    lon, lat = _arrays(points)
    assert _max_err(gcj02_to_wgs84(lon, lat), _oracle(prcoords.gcj_wgs_bored, lon, lat)) < 1e-6
    assert _max_err(to_wgs84(lon, lat, CRS.BD09), _oracle(prcoords.bd_wgs_bored, lon, lat)) < 1e-6


def test_inverses_are_iterated_not_the_one_step_approximation():
    rng = np.random.default_rng(20240601)
    lon = rng.uniform(MIN_LON + 0.05, MAX_LON - 0.05, 2000)
    lat = rng.uniform(MIN_LAT + 0.05, MAX_LAT - 0.05, 2000)
    g = wgs84_to_gcj02(lon, lat)
    b = gcj02_to_bd09(*g)
    # The one-step formulas (prcoords' gcj_wgs / bd_gcj) are off by far more than 1e-7 ...
    assert _max_err(_oracle(prcoords.gcj_wgs, *g), (lon, lat)) > 1e-5
    assert _max_err(_oracle(prcoords.bd_gcj, *b), g) > 1e-7
    # ... while ours recover the original to float precision.
    assert _max_err(gcj02_to_wgs84(*g), (lon, lat)) < 1e-10
    assert _max_err(bd09_to_gcj02(*b), g) < 1e-10


def test_gcj02_inverse_converges_at_the_sqrt_kink_at_lon_105():
    # The offset has a sqrt(|lon - 105|) term whose slope is unbounded at lon 105.
    lon = 105.0 + np.array([0.0, 1e-12, -1e-9, 1e-6, -3e-3])
    lat = np.full_like(lon, 35.0)
    back = wgs84_to_gcj02(*gcj02_to_wgs84(lon, lat))
    assert _max_err(back, (lon, lat)) < 1e-10


# --- the offset where it applies, and where it does not ------------------------------


def test_gcj02_offset_in_wuhan_is_a_few_hundred_metres_east():
    g_lon, g_lat = wgs84_to_gcj02(*WUHAN)
    assert 300 < _metres(*WUHAN, float(g_lon), float(g_lat)) < 900
    assert float(g_lon) > WUHAN[0]  # GCJ-02 is shifted east throughout eastern China


def test_bd09_offset_in_wuhan_is_about_a_kilometre_and_larger_than_gcj02():
    g = wgs84_to_gcj02(*WUHAN)
    b_lon, b_lat = from_wgs84(*WUHAN, CRS.BD09)
    d_bd = _metres(*WUHAN, float(b_lon), float(b_lat))
    assert 800 < d_bd < 2000
    assert d_bd > _metres(*WUHAN, float(g[0]), float(g[1]))


@settings(deadline=None)
@given(points_outside_china)
def test_points_outside_china_are_unchanged_by_gcj02(points):
    lon, lat = _arrays(points)
    for fn in (wgs84_to_gcj02, gcj02_to_wgs84):
        out_lon, out_lat = fn(lon, lat)
        assert np.array_equal(out_lon, lon)
        assert np.array_equal(out_lat, lat)
    assert not in_china(lon, lat).any()


@settings(deadline=None)
@given(points_outside_china)
def test_bd09_outside_china_is_only_baidus_own_shift(points):
    lon, lat = _arrays(points)
    ours = from_wgs84(lon, lat, CRS.BD09)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prcoords warns on non-Chinese points
        oracle = _oracle(prcoords.wgs_bd, lon, lat)
    assert _max_err(ours, oracle) < FORWARD_TOL
    assert _max_err(ours, gcj02_to_bd09(lon, lat)) == 0.0


@pytest.mark.parametrize(
    ("name", "lon", "lat", "inside"),
    [
        ("Urumqi", 87.6, 43.8, True),
        ("Harbin", 126.6, 45.8, True),
        ("Sanya", 109.5, 18.25, True),
        ("Wuhan", *WUHAN, True),
        ("Tokyo", 139.77, 35.68, False),
        ("London", -0.13, 51.5, False),
        ("Sydney", 151.2, -33.9, False),
        ("Moscow", 37.6, 55.75, False),
    ],
)
def test_in_china_uses_the_common_bounding_box(name, lon, lat, inside):
    assert bool(in_china(lon, lat)) is inside, name


def test_in_china_box_edges_are_inclusive_and_just_beyond_is_outside():
    lon = np.array([MIN_LON, MAX_LON, 100.0, 100.0, MIN_LON - 1e-9, MAX_LON + 1e-9])
    lat = np.array([30.0, 30.0, MIN_LAT, MAX_LAT, 30.0, 30.0])
    assert in_china(lon, lat).tolist() == [True, True, True, True, False, False]


# --- API shape: scalars, arrays, mixed batches ----------------------------------------


def test_scalar_inputs_give_float64_arrays_and_point_helper_gives_floats():
    lon, lat = to_wgs84(114, 30, CRS.GCJ02)  # ints are accepted too
    assert isinstance(lon, np.ndarray) and lon.dtype == np.float64 and lon.shape == ()
    assert isinstance(lat, np.ndarray) and lat.dtype == np.float64 and lat.shape == ()
    p_lon, p_lat = point_to_wgs84(114.0, 30.0, CRS.GCJ02)
    assert type(p_lon) is float and type(p_lat) is float
    assert (p_lon, p_lat) == (float(lon), float(lat))
    assert (p_lon, p_lat) != (114.0, 30.0)


def test_array_shape_is_preserved_and_inputs_are_not_mutated():
    lon = np.array([[114.3, 116.4], [121.5, 104.1]])
    lat = np.array([[30.6, 39.9], [31.2, 30.7]])
    lon0, lat0 = lon.copy(), lat.copy()
    for crs in CRS:
        for fn in (to_wgs84, from_wgs84):
            out_lon, out_lat = fn(lon, lat, crs)
            assert out_lon.shape == lon.shape and out_lat.shape == lat.shape
            assert out_lon is not lon and out_lat is not lat
    assert np.array_equal(lon, lon0) and np.array_equal(lat, lat0)


def test_wgs84_to_wgs84_is_identity_and_crs_may_be_given_as_string():
    lon, lat = np.array([114.3, 1.0]), np.array([30.6, 2.0])
    assert _max_err(to_wgs84(lon, lat, CRS.WGS84), (lon, lat)) == 0.0
    assert _max_err(from_wgs84(lon, lat, CRS.WGS84), (lon, lat)) == 0.0
    assert _max_err(to_wgs84(lon, lat, "gcj02"), to_wgs84(lon, lat, CRS.GCJ02)) == 0.0  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_wgs84(lon, lat, "utm")  # type: ignore[arg-type]


def test_crs_code_mapping_covers_every_crs_with_the_documented_codes():
    assert CRS_CODE == {CRS.WGS84: 0, CRS.GCJ02: 1, CRS.BD09: 2}
    assert {CODE_CRS[c]: c for c in CODE_CRS} == CRS_CODE
    assert set(CRS_CODE) == set(CRS)


@settings(deadline=None)
@given(points_in_china, st.randoms(use_true_random=False))
def test_mixed_crs_batch_equals_per_crs_calls(points, rnd):
    lon, lat = _arrays(points)
    codes = np.array([rnd.choice([0, 1, 2]) for _ in points], dtype=np.int8)
    m_lon, m_lat = to_wgs84_mixed(lon, lat, codes)
    for crs, code in CRS_CODE.items():
        e_lon, e_lat = to_wgs84(lon, lat, crs)
        sel = codes == code
        assert np.array_equal(m_lon[sel], e_lon[sel])
        assert np.array_equal(m_lat[sel], e_lat[sel])


def test_mixed_crs_batch_converts_each_point_by_its_own_code():
    lon = np.full(3, WUHAN[0])
    lat = np.full(3, WUHAN[1])
    m_lon, _ = to_wgs84_mixed(lon, lat, np.array([0, 1, 2]))
    # Same input point, three systems: three distinct results, WGS-84 untouched.
    assert m_lon[0] == WUHAN[0]
    assert len(set(m_lon.tolist())) == 3


def test_mixed_crs_batch_rejects_unknown_or_non_integer_codes():
    lon, lat = np.array([114.3, 114.3]), np.array([30.6, 30.6])
    with pytest.raises(ValueError, match="3"):
        to_wgs84_mixed(lon, lat, np.array([0, 3]))
    with pytest.raises(TypeError):
        to_wgs84_mixed(lon, lat, np.array([0.0, 1.0]))


def test_convert_between_gcj02_and_bd09_matches_the_route_through_wgs84():
    rng = np.random.default_rng(7)
    lon, lat = rng.uniform(100, 125, 500), rng.uniform(20, 45, 500)
    direct = convert(lon, lat, CRS.GCJ02, CRS.BD09)
    assert _max_err(direct, gcj02_to_bd09(lon, lat)) == 0.0
    via = from_wgs84(*to_wgs84(lon, lat, CRS.GCJ02), CRS.BD09)
    assert _max_err(direct, via) < MM_DEG
    back = convert(*direct, CRS.BD09, CRS.GCJ02)
    assert _max_err(back, (lon, lat)) < MM_DEG


# --- geometries -----------------------------------------------------------------------


def _zone() -> Polygon:
    # A ~2 km square in Wuhan with a hole, as a zone drawn on an AMap (GCJ-02) map.
    shell = [(114.29, 30.59), (114.31, 30.59), (114.31, 30.61), (114.29, 30.61)]
    hole = [(114.299, 30.599), (114.301, 30.599), (114.301, 30.601), (114.299, 30.601)]
    return Polygon(shell, [hole])


def test_transform_geometry_moves_every_vertex_by_the_point_conversion():
    zone = _zone()
    moved = transform_geometry(zone, CRS.GCJ02, CRS.WGS84)
    before = shapely.get_coordinates(zone)
    after = shapely.get_coordinates(moved)
    assert before.shape == after.shape
    e_lon, e_lat = to_wgs84(before[:, 0], before[:, 1], CRS.GCJ02)
    assert np.array_equal(after[:, 0], e_lon) and np.array_equal(after[:, 1], e_lat)
    for (lo0, la0), (lo1, la1) in zip(before, after, strict=True):
        assert 300 < _metres(lo0, la0, lo1, la1) < 900
    assert len(moved.interiors) == 1 and moved.is_valid
    assert not moved.equals(zone)


def test_transform_geometry_round_trip_restores_the_polygon():
    zone = _zone()
    for crs in (CRS.GCJ02, CRS.BD09):
        back = transform_geometry(transform_geometry(zone, CRS.WGS84, crs), crs, CRS.WGS84)
        diff = shapely.get_coordinates(back) - shapely.get_coordinates(zone)
        assert np.max(np.abs(diff)) < MM_DEG


def test_transform_geometry_keeps_z_and_handles_geometry_arrays():
    p3 = Point(114.3, 30.6, 42.0)
    out3 = transform_geometry(p3, CRS.WGS84, CRS.GCJ02)
    assert out3.has_z and out3.z == 42.0
    g_lon, g_lat = wgs84_to_gcj02(114.3, 30.6)
    assert (out3.x, out3.y) == (float(g_lon), float(g_lat))
    arr = np.array([Point(114.3, 30.6), _zone()], dtype=object)
    out = transform_geometry(arr, CRS.WGS84, CRS.BD09)
    assert out.shape == (2,) and not out[0].has_z
    assert out[0].equals(Point(*[float(v) for v in from_wgs84(114.3, 30.6, CRS.BD09)]))


def test_transform_geometry_same_crs_returns_the_geometry_unchanged():
    zone = _zone()
    assert transform_geometry(zone, CRS.GCJ02, CRS.GCJ02) is zone


def test_transform_geometry_outside_china_gcj02_is_a_no_op():
    square = Polygon([(2.3, 48.8), (2.4, 48.8), (2.4, 48.9), (2.3, 48.9)])  # Paris
    out = transform_geometry(square, CRS.WGS84, CRS.GCJ02)
    assert shapely.equals_exact(out, square, tolerance=0.0)
    assert math.isclose(out.area, square.area)
