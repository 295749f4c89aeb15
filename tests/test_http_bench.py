"""The HTTP ingest bench's requests are what the Traccar Client sends and what the API reads."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

from shapely.geometry import Point

from api.security import hash_device_secret
from geofence.crs import transform_geometry
from geofence.model import CRS
from ingest.protocols.osmand import decode_osmand_query
from simulators.fleet import device_id, district_adcodes
from simulators.http_bench import phone_secret, request_paths
from simulators.phone import district_index
from tests.geo import district


def test_each_request_is_its_phones_fix_at_home_authenticated_by_its_own_secret():
    n = 30
    now = time.time()
    for i, path in enumerate(request_paths(n)):
        url = urlsplit(path + str(round(now * 1000)))
        dev = device_id(i)
        secret = url.path.rsplit("/", 1)[1]
        assert url.path == f"/api/v1/ingest/osmand/{secret}"
        # Its own secret, which only its hash in the database recognises; no two phones share one.
        assert secret == phone_secret(dev) and hash_device_secret(secret) != hash_device_secret(
            phone_secret(device_id(i + 1)))
        decoded = decode_osmand_query(dict(parse_qsl(url.query)), now)
        [fix] = decoded.fixes
        assert decoded.claimed_device_id == dev
        assert abs(fix.time - round(now * 1000) / 1000) < 1e-6  # milliseconds, as wrk stamps them
        assert (fix.speed, fix.heading, fix.altitude) == (None, None, None)  # -1: unknown
        assert fix.crs == CRS.WGS84 and fix.accuracy is not None and fix.accuracy > 0
        # Inside the phone's own district (the shipped boundary is GCJ-02).
        home = transform_geometry(district(district_adcodes()[int(district_index(i, 13))]),
                                  CRS.GCJ02, CRS.WGS84)
        assert home.buffer(0.001).contains(Point(fix.lon, fix.lat)), (i, fix)

