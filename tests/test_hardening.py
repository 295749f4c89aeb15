"""API hardening: security headers, CORS, body size limit, per-device ingest rate limits,
bounded request models, and the Redis rate limiter itself."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.types import Message

from api.headers import API_CSP
from api.limits import BodySizeLimit
from store.ratelimit import allow, allow_many
from store.settings import Environment, Settings, set_settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.test_api import basic, enrol, owntracks

API = "/api/v1"


@contextmanager
def app_with(settings: Settings, **changes: Any) -> Iterator[TestClient]:
    """The real app built under changed settings (restored afterwards)."""
    from api.app import create_app

    set_settings(settings.model_copy(update=changes))
    try:
        with TestClient(create_app()) as c:
            yield c
    finally:
        set_settings(settings)


# ------------------------------------------------------------------------- security headers


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/healthz"), ("GET", "/supervisees"), ("GET", "/supervisees/999999"),
    ("POST", "/ingest/owntracks"),
])
def test_api_responses_carry_the_security_headers(client: TestClient, org: Org, method: str,
                                                   path: str) -> None:
    h = login(client, "admin") if path.startswith("/supervisees") else {}
    r = client.request(method, API + path, headers=h)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"] == API_CSP
    assert "frame-ancestors 'none'" in API_CSP and "default-src 'none'" in API_CSP
    assert "strict-transport-security" not in r.headers  # not production


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_documentation_pages_may_load_exactly_the_assets_they_use(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    directives = dict((d.split()[0], d.split()[1:]) for d in csp.split("; "))
    for tag, url in re.findall(r"<(script|link)[^>]*?(?:src|href)=\"(https?://[^\"]+)\"", r.text):
        host = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        kind = "script-src" if tag == "script" else ("style-src" if "css" in url else "img-src")
        assert host in directives[kind], (url, directives[kind])
    assert "'unsafe-inline'" in directives["script-src"]  # the bootstrap script is inline
    assert r.headers["x-frame-options"] == "DENY"


def test_api_csp_is_not_relaxed_for_other_paths(client: TestClient) -> None:
    assert client.get("/openapi.json").headers["content-security-policy"] == API_CSP


def test_hsts_only_in_production(settings: Settings, org: Org) -> None:
    with app_with(settings, environment=Environment.PRODUCTION) as c:
        assert c.get(f"{API}/healthz").headers["strict-transport-security"].startswith(
            "max-age=31536000")


# ------------------------------------------------------------------------------------- CORS

CONSOLE = "https://console.example.org"


def _preflight(c: TestClient, origin: str) -> Any:
    return c.options(f"{API}/supervisees", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})


def test_cors_echoes_an_allowed_origin_and_ignores_others(settings: Settings, org: Org) -> None:
    with app_with(settings, cors_origins=[CONSOLE]) as c:
        ok = _preflight(c, CONSOLE)
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == CONSOLE
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in ok.headers
        bad = _preflight(c, "https://evil.example")
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers

        h = login(c, "admin")
        got = c.get(f"{API}/supervisees", headers={**h, "Origin": CONSOLE})
        assert got.headers["access-control-allow-origin"] == CONSOLE
        assert got.headers["x-frame-options"] == "DENY"
        other = c.get(f"{API}/supervisees", headers={**h, "Origin": "https://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_no_cross_origin_access_by_default(client: TestClient, org: Org) -> None:
    assert _preflight(client, CONSOLE).status_code == 400
    r = client.get(f"{API}/healthz", headers={"Origin": CONSOLE})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_setting_reads_a_comma_separated_list() -> None:
    s = Settings(cors_origins="https://a.example, https://b.example/")  # type: ignore[arg-type]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert Settings().cors_origins == []


# --------------------------------------------------------------------------- body size limit


def test_declared_body_over_the_limit_is_413_before_the_handler(settings: Settings, org: Org) -> None:
    with app_with(settings, max_body_bytes=1000, max_zone_body_bytes=5000) as c:
        h = login(c, "admin")
        big = {"office_id": 1, "full_name": "x" * 2000, "case_number": "c",
               "supervision_type": "probation"}
        r = c.post(f"{API}/supervisees", json=big, headers=h)
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large" and r.json()["limit"] == 1000
        assert r.headers["x-content-type-options"] == "nosniff"
        # The zone upload has its own, larger limit: this body passes it and is judged on content.
        zone = {"name": "z", "kind": "exclusion", "owner_unit_id": org.city_id,
                "geometry": {"type": "Point", "coordinates": [114.3, 30.6]}, "radius_m": 300.0,
                "crs": "wgs84", "pad": "x" * 2000}
        assert c.post(f"{API}/zones", json=zone, headers=h).status_code == 422  # 'pad' forbidden
        zone["pad"] = "x" * 6000
        assert c.post(f"{API}/zones", json=zone, headers=h).status_code == 413


def test_chunked_body_over_the_limit_is_413(settings: Settings, org: Org) -> None:
    with app_with(settings, max_body_bytes=1000) as c:
        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b"x" * 300

        h = login(c, "admin")
        r = c.post(f"{API}/supervisees", content=chunks(),
                   headers={**h, "Content-Type": "application/json"})
        assert r.status_code == 413


async def _drive(mw: BodySizeLimit, chunks: list[bytes], declared: int | None) -> tuple[int, int]:
    """Call the middleware around an app that reads the whole body; (status, chunks read)."""
    read = 0

    async def receive() -> Message:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    scope = {"type": "http", "method": "POST", "path": "/api/v1/x", "headers": headers}
    await mw(scope, receive, send)
    return sent[0]["status"], read


async def _read_all(scope: Any, receive: Any, send: Any) -> None:
    more = True
    size = 0
    while more:
        m = await receive()
        size += len(m.get("body", b""))
        more = m.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_body_limit_reads_nothing_of_a_declared_oversize_and_stops_at_the_limit() -> None:
    import asyncio

    mw = BodySizeLimit(_read_all, limit=100)
    assert asyncio.run(_drive(mw, [b"x" * 60] * 5, declared=300)) == (413, 0)
    assert asyncio.run(_drive(mw, [b"x" * 60] * 5, declared=None)) == (413, 2)  # 120 > 100
    assert asyncio.run(_drive(mw, [b"x" * 50] * 2, declared=100)) == (200, 2)


# --------------------------------------------------------------------------- ingest rate limit


@pytest.fixture()
def limited(settings: Settings, org: Org) -> Iterator[TestClient]:
    """The app with a small ingest limit: 1 a minute on average, 2 back to back."""
    with app_with(settings, ingest_rate_per_min=1, ingest_rate_burst=2) as c:
        yield c


def _dead(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT reason, device_id, source, raw, detail FROM dead_letters "
                      "WHERE reason = 'rate_limited' ORDER BY id").fetchall()


def test_owntracks_over_the_rate_is_429_with_retry_after_and_dead_lettered(
    limited: TestClient, org: Org, db: psycopg.Connection
) -> None:
    c = limited
    h = login(c, "admin")
    cred, other = enrol(c, h, org.supervisee_id), enrol(c, h, org.supervisee_id)
    auth = basic(cred["device_id"], cred["secret"])
    bodies = [orjson.dumps(owntracks(deep_inside(JIANGAN), time.time() - 30 + k)) for k in range(3)]
    codes = [c.post(f"{API}/ingest/owntracks", content=b, headers=auth).status_code
             for b in bodies[:2]]
    assert codes == [200, 200]
    r = c.post(f"{API}/ingest/owntracks", content=bodies[2], headers=auth)
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    [(reason, device, source, raw, detail)] = _dead(db)
    assert (reason, device, source, bytes(raw)) == ("rate_limited", cred["device_id"],
                                                   "owntracks_http", bodies[2])
    assert "1 requests/min" in detail
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (2,)
    # Per device: another phone of the same person is not held back.
    ok = c.post(f"{API}/ingest/owntracks", content=bodies[2],
                headers=basic(other["device_id"], other["secret"]))
    assert ok.status_code == 200


def test_osmand_over_the_rate_is_429_and_dead_lettered_with_its_parameters(
    limited: TestClient, org: Org, db: psycopg.Connection
) -> None:
    c = limited
    cred = enrol(c, login(c, "admin"), org.supervisee_id)
    lon, lat = deep_inside(JIANGAN)
    url = f"{API}/ingest/osmand/{cred['secret']}"
    params = [{"id": cred["device_id"], "lat": lat, "lon": lon, "timestamp": int(time.time()) - k}
              for k in (30, 20, 10)]
    assert [c.get(url, params=p).status_code for p in params[:2]] == [200, 200]
    r = c.post(url, params=params[2])
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    [(reason, device, source, raw, _)] = _dead(db)
    assert (reason, device, source) == ("rate_limited", cred["device_id"], "osmand_query")
    assert orjson.loads(raw) == {k: str(v) for k, v in params[2].items()}


def test_unknown_credentials_are_not_counted_against_a_device(limited: TestClient, org: Org) -> None:
    c = limited
    cred = enrol(c, login(c, "admin"), org.supervisee_id)
    for _ in range(3):
        r = c.post(f"{API}/ingest/owntracks", content=b"{}", headers=basic(cred["device_id"], "nope"))
        assert r.status_code == 401
    body = orjson.dumps(owntracks(deep_inside(JIANGAN), time.time() - 5))
    ok = c.post(f"{API}/ingest/owntracks", content=body,
                headers=basic(cred["device_id"], cred["secret"]))
    assert ok.status_code == 200


def test_basic_auth_user_with_a_nul_is_401_not_500(client: TestClient, org: Org) -> None:
    r = client.post(f"{API}/ingest/owntracks", content=b"{}", headers=basic("a\x00b", "x"))
    assert r.status_code == 401


# ------------------------------------------------------------------------------ the limiter


def test_limiter_allows_the_burst_then_refuses_until_the_rate_allows(rds: redis.Redis,
                                                                      settings: Settings) -> None:
    key = settings.redis_prefix + "rl:test"
    got = [allow(rds, key, limit=10, window_s=3600, burst=3) for _ in range(5)]
    assert [d.allowed for d in got] == [True, True, True, False, False]
    assert [d.remaining for d in got[:3]] == [2, 1, 0]
    # One request per 360 s on average: the refusal says how long until the next one.
    assert all(0 < d.retry_after_s <= 360 for d in got[3:])
    assert got[3].retry_after_header.isdigit() and int(got[3].retry_after_header) <= 360
    assert allow(rds, settings.redis_prefix + "rl:other", 10, 3600, burst=3).allowed  # own bucket


def test_limiter_burst_defaults_to_the_limit(rds: redis.Redis, settings: Settings) -> None:
    key = settings.redis_prefix + "rl:default"
    assert [allow(rds, key, 4, 3600).allowed for _ in range(5)] == [True] * 4 + [False]
    assert 0 < rds.pttl(key) <= 3600 * 1000 + 1  # the bucket expires by itself (ms, rounded up)


def test_limiter_counts_a_batch_of_keys_in_turn(rds: redis.Redis, settings: Settings) -> None:
    """allow_many (one round trip for HTTP ingest's batch) decides as allow would, one request
    after another: a key that comes twice is counted twice."""
    a, b = settings.redis_prefix + "rl:many-a", settings.redis_prefix + "rl:many-b"
    got = allow_many(rds, [a, b, a, a, b], limit=10, window_s=3600, burst=2)
    assert [d.allowed for d in got] == [True, True, True, False, True]
    assert [d.remaining for d in got] == [1, 1, 0, 0, 0]
    assert 0 < got[3].retry_after_s <= 360
    assert allow(rds, a, 10, 3600, burst=2).allowed is False  # the same buckets as allow's
    assert allow_many(rds, [], 10, 3600) == []
    with pytest.raises(ValueError):
        allow_many(rds, [a], 0, 60)


@pytest.mark.parametrize(("limit", "window", "burst"), [(0, 60, None), (5, 0, None), (5, 60, 0)])
def test_limiter_refuses_meaningless_parameters(rds: redis.Redis, limit: int, window: float,
                                                burst: int | None) -> None:
    with pytest.raises(ValueError):
        allow(rds, "k", limit, window, burst)


# ------------------------------------------------------------------------ bounded requests


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/supervisees/2147483648", None),
    ("GET", "/alerts?supervisee_id=99999999999", None),
    ("GET", "/dead-letters?offset=9223372036854775808", None),
    ("PUT", "/supervisees/{sid}/home-area", {"zone_id": 2**40}),
    ("PUT", "/supervisees/{sid}/rules", {"overrides": {f"k{i}": 1.0 for i in range(65)},
                                          "reason": "too many"}),
    ("PUT", "/supervisees/{sid}/level", {"level": "strict", "key_flags": ["x" * 65],
                                         "reason": "flag too long"}),
    ("POST", "/key-periods", {"name": "n", "starts_on": "2030-01-01", "ends_on": "2030-01-02",
                              "interval_factor": 5e-324}),
    ("POST", "/supervisees/{sid}/zones", {"zone_id": 1, "role": "curfew", "timezone": "x" * 65}),
])
def test_out_of_range_and_unbounded_inputs_are_422(client: TestClient, org: Org, method: str,
                                                   path: str, body: Any) -> None:
    h = login(client, "admin")
    r = client.request(method, API + path.format(sid=org.supervisee_id), json=body, headers=h)
    assert r.status_code == 422, r.text


def test_a_tiny_buffer_is_stored_as_zero_not_a_database_error(client: TestClient, org: Org,
                                                              db: psycopg.Connection) -> None:
    h = login(client, "admin")
    zone = {"name": "bar", "kind": "exclusion", "owner_unit_id": org.city_id, "crs": "wgs84",
            "geometry": {"type": "Point", "coordinates": [114.3, 30.6]}, "radius_m": 300.0}
    zid = client.post(f"{API}/zones", json=zone, headers=h).json()["id"]
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                    json={"zone_id": zid, "role": "exclusion", "buffer_m": 5e-324})
    assert r.status_code == 201, r.text
    assert db.execute("SELECT buffer_m FROM supervisee_zones").fetchone() == (0.0,)


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/devices/a%00b"), ("GET", "/dead-letters?reason=a%00b"),
    ("GET", "/supervisees/{sid}/track?purpose=a%00b"), ("GET", "/alerts?since=2025-01-01T00:00:00%00"),
])
def test_nul_characters_in_path_or_query_are_4xx(client: TestClient, org: Org, method: str,
                                                  path: str) -> None:
    h = login(client, "admin")
    r = client.request(method, API + path.format(sid=org.supervisee_id), headers=h)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


@pytest.mark.parametrize(("path", "body"), [
    ("/supervisees", {"office_id": 1, "full_name": "a\x00b", "case_number": "c",
                      "supervision_type": "probation"}),
    ("/supervisees/{sid}/rollcalls", {"reason": "ab\x00c"}),
    ("/supervisees/{sid}/rules", {"overrides": {"a\x00": 1.0}, "reason": "key with a NUL"}),
    ("/alerts/watch", {"purpose": "00\x00"}),  # found by Schemathesis: was a 500
    ("/staff", {"username": "nul.staff", "full_name": "a\x00b", "role": "officer",
                "org_unit_id": 1, "password": "x" * 16}),
])
def test_nul_characters_in_a_body_are_422(client: TestClient, org: Org, path: str, body: Any) -> None:
    h = login(client, "admin")
    method = "PUT" if path.endswith("rules") else "POST"
    r = client.request(method, API + path.format(sid=org.supervisee_id), json=body, headers=h)
    assert r.status_code == 422 and "NUL" in r.text, r.text


def test_nul_in_an_ingest_url_is_still_dead_lettered(client: TestClient, org: Org,
                                                     db: psycopg.Connection) -> None:
    r = client.get(f"{API}/ingest/osmand/secret%00x?id=a%00")
    assert r.status_code == 401
    assert db.execute("SELECT reason FROM dead_letters").fetchall() == [("unknown_device",)]
