"""Vectorised conversion between WGS-84, GCJ-02 ("Mars") and BD-09 (Baidu) coordinates.

All coordinates are (lon, lat) in degrees. The module is pure: no I/O, no state.

GCJ-02 is the obfuscated datum Chinese web maps (AMap, Tencent) are drawn in; BD-09 is
Baidu's further distortion applied on top of GCJ-02. Devices report WGS-84 (GNSS) or,
when they take their fix from a Chinese map SDK, GCJ-02/BD-09, so every fix and zone is
normalised to WGS-84 before any geometry is done.

Where the GCJ-02 offset applies: the offset is a national rule, but there is no public
border polygon for it, so we use the rough bounding box used by eviltransform, prcoords
and most other open implementations (lon 72.004..137.8347, lat 0.8293..55.8271). It
covers all of China, and also parts of neighbouring countries (Mongolia, the Koreas,
part of Japan, much of South-East Asia), where the offset is then applied too. Matching
the common implementations matters more than geographic exactness: coordinates produced
by a Chinese map SDK were shifted by the same kind of rule, so undoing them with it
gives back what the device saw. Points outside the box are returned unchanged.

The BD-09 step (GCJ-02 <-> BD-09) is applied everywhere, as prcoords does, since
Baidu's own distortion is not tied to the Chinese box.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
import shapely

from geofence.model import CRS

__all__ = [
    "CHINA_BBOX",
    "CODE_CRS",
    "CRS_CODE",
    "bd09_to_gcj02",
    "convert",
    "from_wgs84",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "in_china",
    "point_to_wgs84",
    "to_wgs84",
    "to_wgs84_mixed",
    "transform_geometry",
    "wgs84_to_gcj02",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Integer codes for batches whose fixes come in mixed systems (stored in int columns).
CRS_CODE: dict[CRS, int] = {CRS.WGS84: 0, CRS.GCJ02: 1, CRS.BD09: 2}
CODE_CRS: dict[int, CRS] = {code: crs for crs, code in CRS_CODE.items()}

# (min_lon, min_lat, max_lon, max_lat): the box of eviltransform/prcoords, see module doc.
CHINA_BBOX: tuple[float, float, float, float] = (72.004, 0.8293, 137.8347, 55.8271)

# Krasovsky 1940 ellipsoid, which GCJ-02 uses to turn its metre offsets into degrees.
_GCJ_A = 6378245.0
_GCJ_EE = 0.00669342162296594323

# BD-09 constants: the 3000 * pi / 180 angular frequency and Baidu's fixed shift.
_BD_XPI = math.pi * 3000.0 / 180.0
_BD_DLON = 0.0065
_BD_DLAT = 0.0060

# Inverses are solved by fixed-point iteration. 1e-10 deg is ~0.01 mm: three orders of
# magnitude under the 1e-7 deg target, yet still reachable near lon 105 where the
# sqrt(|lon - 105|) term of GCJ-02 limits convergence to ~1e-11 deg.
_INVERSE_TOL = 1e-10
# The iterations contract by ~1e-2 per step, so a few steps suffice; the cap only
# bounds the work on pathological input.
_MAX_ITER = 30


def _as_float_arrays(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    # Copies, so callers' arrays are never aliased by results or mutated in place.
    lon_a, lat_a = np.broadcast_arrays(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    )
    return lon_a.copy(), lat_a.copy()


def _in_box(lon: FloatArray, lat: FloatArray) -> BoolArray:
    min_lon, min_lat, max_lon, max_lat = CHINA_BBOX
    return (lon >= min_lon) & (lon <= max_lon) & (lat >= min_lat) & (lat <= max_lat)


def in_china(lon: npt.ArrayLike, lat: npt.ArrayLike) -> BoolArray:
    """True where (lon, lat) lies in the box in which the GCJ-02 offset is applied."""
    return _in_box(*_as_float_arrays(lon, lat))


def _gcj_delta(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    # The published GCJ-02 distortion, applied unconditionally (callers mask by box).
    x = lon - 105.0
    y = lat - 35.0
    px = np.pi * x
    py = np.pi * y
    # Shared by both components: the "fast" x wiggles.
    wiggle_x = 2.0 * np.sin(6.0 * px) + 2.0 * np.sin(2.0 * px)
    sqrt_abs_x = np.sqrt(np.abs(x))
    dlat_m = (
        -100.0
        + 2.0 * x
        + 3.0 * y
        + 0.2 * y * y
        + 0.1 * x * y
        + 0.2 * sqrt_abs_x
        + (
            wiggle_x
            + 2.0 * np.sin(py)
            + 4.0 * np.sin(py / 3.0)
            + 16.0 * np.sin(py / 12.0)
            + 32.0 * np.sin(py / 30.0)
        )
        * 20.0
        / 3.0
    )
    dlon_m = (
        300.0
        + x
        + 2.0 * y
        + 0.1 * x * x
        + 0.1 * x * y
        + 0.1 * sqrt_abs_x
        + (
            wiggle_x
            + 2.0 * np.sin(px)
            + 4.0 * np.sin(px / 3.0)
            + 15.0 * np.sin(px / 12.0)
            + 30.0 * np.sin(px / 30.0)
        )
        * 20.0
        / 3.0
    )
    # Metres to degrees on the Krasovsky ellipsoid (meridional and parallel arc lengths).
    rad_lat = np.radians(lat)
    magic = 1.0 - _GCJ_EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    m_per_deg_lat = np.radians(_GCJ_A * (1.0 - _GCJ_EE) / (magic * sqrt_magic))
    m_per_deg_lon = np.radians(_GCJ_A * np.cos(rad_lat) / sqrt_magic)
    return dlon_m / m_per_deg_lon, dlat_m / m_per_deg_lat


def _solve_inverse(
    forward: Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
    lon: FloatArray,
    lat: FloatArray,
    guess_lon: FloatArray,
    guess_lat: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    # Fixed-point iteration p <- p - (forward(p) - target). The distortions are small and
    # slowly varying (Jacobian close to the identity), so this contracts fast. Only points
    # not yet converged are re-evaluated, which keeps large batches cheap.
    # Work on flat copies so `active` can index any input shape.
    out_lon, out_lat = guess_lon.ravel().copy(), guess_lat.ravel().copy()
    t_lon, t_lat = lon.ravel(), lat.ravel()
    active = np.arange(out_lon.size)
    for _ in range(_MAX_ITER):
        if active.size == 0:
            break
        f_lon, f_lat = forward(out_lon[active], out_lat[active])
        r_lon = f_lon - t_lon[active]
        r_lat = f_lat - t_lat[active]
        out_lon[active] -= r_lon
        out_lat[active] -= r_lat
        # NaN residuals compare False and so drop out, leaving NaN in the result.
        still = (np.abs(r_lon) > _INVERSE_TOL) | (np.abs(r_lat) > _INVERSE_TOL)
        active = active[still]
    return out_lon.reshape(lon.shape), out_lat.reshape(lat.shape)


def _gcj_forward_unmasked(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    dlon, dlat = _gcj_delta(lon, lat)
    return lon + dlon, lat + dlat


def wgs84_to_gcj02(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert WGS-84 to GCJ-02; points outside the China box are returned unchanged."""
    lon_a, lat_a = _as_float_arrays(lon, lat)
    inside = _in_box(lon_a, lat_a)
    if inside.any():
        g_lon, g_lat = _gcj_forward_unmasked(lon_a[inside], lat_a[inside])
        lon_a[inside] = g_lon
        lat_a[inside] = g_lat
    return lon_a, lat_a


def gcj02_to_wgs84(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert GCJ-02 to WGS-84 exactly (iterated to < 1e-10 deg), not the one-step guess."""
    lon_a, lat_a = _as_float_arrays(lon, lat)
    # The box test is made on the GCJ-02 input: the WGS-84 point is what we are solving
    # for. Within ~1 km of the box edge this can disagree with the forward test; that
    # band is outside China anyway.
    inside = _in_box(lon_a, lat_a)
    if inside.any():
        t_lon, t_lat = lon_a[inside], lat_a[inside]
        # The usual one-step approximation (up to ~6e-5 deg, ~7 m, off) is only the start.
        d_lon, d_lat = _gcj_delta(t_lon, t_lat)
        w_lon, w_lat = _solve_inverse(
            _gcj_forward_unmasked, t_lon, t_lat, t_lon - d_lon, t_lat - d_lat
        )
        lon_a[inside] = w_lon
        lat_a[inside] = w_lat
    return lon_a, lat_a


def _gcj_to_bd_arrays(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    # Baidu's published distortion: perturb polar radius and angle, then shift.
    r = np.hypot(lon, lat) + 0.00002 * np.sin(lat * _BD_XPI)
    theta = np.arctan2(lat, lon) + 0.000003 * np.cos(lon * _BD_XPI)
    return r * np.cos(theta) + _BD_DLON, r * np.sin(theta) + _BD_DLAT


def gcj02_to_bd09(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert GCJ-02 to BD-09 (Baidu's distortion, applied everywhere)."""
    lon_a, lat_a = _as_float_arrays(lon, lat)
    return _gcj_to_bd_arrays(lon_a, lat_a)


def bd09_to_gcj02(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert BD-09 to GCJ-02 exactly (iterated to < 1e-10 deg)."""
    lon_a, lat_a = _as_float_arrays(lon, lat)
    # The common closed form reverses the perturbations evaluated at the wrong point
    # (up to ~2e-6 deg, ~20 cm, off); it is only the starting guess.
    x = lon_a - _BD_DLON
    y = lat_a - _BD_DLAT
    r = np.hypot(x, y) - 0.00002 * np.sin(y * _BD_XPI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _BD_XPI)
    return _solve_inverse(_gcj_to_bd_arrays, lon_a, lat_a, r * np.cos(theta), r * np.sin(theta))


def convert(
    lon: npt.ArrayLike, lat: npt.ArrayLike, from_crs: CRS, to_crs: CRS
) -> tuple[FloatArray, FloatArray]:
    """Convert coordinates from one CRS to another (float64 arrays out)."""
    src, dst = CRS(from_crs), CRS(to_crs)
    if src == dst:
        return _as_float_arrays(lon, lat)
    # GCJ-02 <-> BD-09 directly: going through WGS-84 would add two box tests and
    # two iterations for nothing.
    if src == CRS.GCJ02 and dst == CRS.BD09:
        return gcj02_to_bd09(lon, lat)
    if src == CRS.BD09 and dst == CRS.GCJ02:
        return bd09_to_gcj02(lon, lat)
    w_lon, w_lat = to_wgs84(lon, lat, src)
    return from_wgs84(w_lon, w_lat, dst)


def to_wgs84(lon: npt.ArrayLike, lat: npt.ArrayLike, crs: CRS) -> tuple[FloatArray, FloatArray]:
    """Convert coordinates given in `crs` to WGS-84 (float64 arrays out)."""
    src = CRS(crs)
    if src == CRS.WGS84:
        return _as_float_arrays(lon, lat)
    if src == CRS.GCJ02:
        return gcj02_to_wgs84(lon, lat)
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat))


def from_wgs84(lon: npt.ArrayLike, lat: npt.ArrayLike, crs: CRS) -> tuple[FloatArray, FloatArray]:
    """Convert WGS-84 coordinates to `crs` (float64 arrays out)."""
    dst = CRS(crs)
    if dst == CRS.WGS84:
        return _as_float_arrays(lon, lat)
    if dst == CRS.GCJ02:
        return wgs84_to_gcj02(lon, lat)
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def point_to_wgs84(lon: float, lat: float, crs: CRS) -> tuple[float, float]:
    """Convert a single (lon, lat) in `crs` to WGS-84 as plain floats."""
    w_lon, w_lat = to_wgs84(lon, lat, crs)
    return float(w_lon), float(w_lat)


def to_wgs84_mixed(
    lon: npt.ArrayLike, lat: npt.ArrayLike, crs_codes: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Convert a batch whose points are each in the CRS given by `crs_codes` (CRS_CODE)."""
    lon_a, lat_a, codes = np.broadcast_arrays(
        np.asarray(lon, dtype=np.float64),
        np.asarray(lat, dtype=np.float64),
        np.asarray(crs_codes),
    )
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"crs_codes must be integers, got dtype {codes.dtype}")
    unknown = ~np.isin(codes, list(CODE_CRS))
    if unknown.any():
        bad = sorted({int(c) for c in codes[unknown]})
        raise ValueError(f"unknown CRS codes {bad}; expected one of {sorted(CODE_CRS)}")
    out_lon, out_lat = lon_a.copy(), lat_a.copy()
    # One vectorised call per system present, rather than a Python loop over points.
    for code, crs in CODE_CRS.items():
        if crs == CRS.WGS84:
            continue
        sel = codes == code
        if sel.any():
            out_lon[sel], out_lat[sel] = to_wgs84(lon_a[sel], lat_a[sel], crs)
    return out_lon, out_lat


GeomT = TypeVar("GeomT")


def transform_geometry(geom: GeomT, from_crs: CRS, to_crs: CRS) -> GeomT:
    """Convert a shapely geometry (or array of them) vertex by vertex between CRSs."""
    src, dst = CRS(from_crs), CRS(to_crs)
    if src == dst:
        return geom  # shapely geometries are immutable, so sharing is safe

    def _fn(coords: FloatArray) -> FloatArray:
        out = coords.copy()  # keeps any z column as is: the datums differ only in lon/lat
        out[:, 0], out[:, 1] = convert(coords[:, 0], coords[:, 1], src, dst)
        return out

    # include_z=None keeps 3D geometries 3D and 2D ones 2D.
    return cast(GeomT, shapely.transform(geom, _fn, include_z=None))
