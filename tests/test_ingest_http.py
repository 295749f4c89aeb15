"""The phone HTTP endpoints as the real apps use them (OwnTracks HTTP mode, Traccar Client):
what is recorded is answered 200 so the app's queue moves on, only an outage makes it retry;
unknown credentials are rate-limited per source and kept only as short samples."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import orjson
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from api.routes import ingest
from store.settings import Settings, set_settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.services import free_port
from tests.test_api import basic, enrol, owntracks
from tests.test_hardening import app_with

API = "/api/v1"


def _traccar_client_params(device_id: str, lonlat: tuple[float, float], **extra: str) -> dict:
    """What Android's Traccar Client sends (its ProtocolFormatter): id, timestamp, lat, lon,
    speed (knots), bearing, altitude, accuracy, batt; -1 where the location has no value."""
    lon, lat = lonlat
    return {"id": device_id, "timestamp": str(int(time.time()) - 20), "lat": str(lat),
            "lon": str(lon), "speed": "0.0", "bearing": "-1", "altitude": "-1",
            "accuracy": "12.0", "batt": "-1", **extra}


def test_traccar_client_minus_one_hdop_and_missing_timestamp_are_stored(
        client: TestClient, org: Org, db: psycopg.Connection) -> None:
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    url = f"{API}/ingest/osmand/{cred['secret']}"
    here = deep_inside(JIANGAN)
    first = _traccar_client_params(cred["device_id"], here)
    r = client.post(url, params=first)
    assert (r.status_code, r.json()) == (200, {"accepted": 1, "duplicates": 0})
    # OsmAnd-style: hdop instead of accuracy, and no timestamp at all.
    second = {"id": cred["device_id"], "lat": first["lat"], "lon": first["lon"], "hdop": "1.6"}
    before = time.time()
    r = client.post(url, data=second)  # as a form body this time
    assert (r.status_code, r.json()) == (200, {"accepted": 1, "duplicates": 0})
    rows = db.execute("SELECT fix_time, received_at, speed, heading, altitude, battery, accuracy,"
                      " source FROM positions ORDER BY fix_time").fetchall()
    assert [r[2:] for r in rows] == [(0.0, None, None, None, 12.0, "osmand_http"),
                                     (None, None, None, None, 8.0, "osmand_http_received_time")]
    stamped: datetime = rows[1][0]
    assert stamped == rows[1][1] and stamped.timestamp() >= before - 1  # the receive time
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


@pytest.mark.parametrize("path", ["/ingest/osmand/{secret}/", "/ingest/owntracks/"])
def test_trailing_slash_is_accepted_not_redirected(client: TestClient, org: Org,
                                                   db: psycopg.Connection, path: str) -> None:
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    url = API + path.format(secret=cred["secret"])
    here = deep_inside(JIANGAN)
    if "osmand" in path:
        r = client.post(url, params=_traccar_client_params(cred["device_id"], here),
                        follow_redirects=False)
    else:
        r = client.post(url, json=owntracks(here, time.time() - 5), follow_redirects=False,
                        headers=basic(cred["device_id"], cred["secret"]))
    assert r.status_code == 200, r.text
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (1,)
    # A dead letter from such a URL does not keep the secret either.
    client.post(url.replace(cred["secret"], "wrong-secret"), params={"id": "x"})
    topics = [t for (t,) in db.execute("SELECT topic FROM dead_letters")]
    assert topics and all("wrong-secret" not in (t or "") for t in topics)


def test_a_permanently_bad_fix_is_answered_200_and_kept_so_the_queue_moves_on(
        client: TestClient, org: Org, db: psycopg.Connection) -> None:
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    auth = basic(cred["device_id"], cred["secret"])
    here = deep_inside(JIANGAN)
    bad = {**owntracks(here, time.time() - 30), "lat": 95.0}
    r = client.post(f"{API}/ingest/owntracks", json=bad, headers=auth)
    assert (r.status_code, r.json(), r.headers["x-ccs-dead-letter"]) == (
        200, [], "impossible_coordinates")
    r = client.post(f"{API}/ingest/osmand/{cred['secret']}",
                    params=_traccar_client_params(cred["device_id"], here, batt="140"))
    assert r.status_code == 200
    assert r.json()["dead_letter"]["reason"] == "bad_value"
    # The next fix in the phone's queue goes through.
    ok = client.post(f"{API}/ingest/owntracks", json=owntracks(here, time.time() - 5), headers=auth)
    assert (ok.status_code, "x-ccs-dead-letter" in ok.headers) == (200, False)
    assert db.execute("SELECT reason FROM dead_letters ORDER BY id").fetchall() == [
        ("impossible_coordinates",), ("bad_value",)]
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (1,)


@contextmanager
def _unreachable(settings: Settings, service: str) -> Iterator[None]:
    """The app's settings point `service` at a closed port (nothing is stopped)."""
    port = free_port()
    url = (f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere" if service == "database"
           else f"redis://127.0.0.1:{port}/0")
    ingest.pool.close()  # pipelines connected to the real services are not reused
    set_settings(settings.model_copy(
        update={"database_url" if service == "database" else "redis_url": url}))
    try:
        yield
    finally:
        set_settings(settings)
        ingest.pool.close()


@pytest.mark.parametrize("service", ["database", "redis"])
def test_an_outage_is_answered_503_with_retry_after_and_the_retry_is_stored(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings,
        service: str) -> None:
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    here = deep_inside(JIANGAN)
    body = owntracks(here, time.time() - 10)
    params = _traccar_client_params(cred["device_id"], here)
    auth = basic(cred["device_id"], cred["secret"])
    with _unreachable(settings, service):
        answers = [client.post(f"{API}/ingest/owntracks", json=body, headers=auth),
                   client.get(f"{API}/ingest/osmand/{cred['secret']}", params=params)]
    for r in answers:
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (
            503, "unavailable", str(ingest.RETRY_AFTER_S))
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (0,)
    # The apps send the same messages again once the services answer: both are stored.
    assert client.post(f"{API}/ingest/owntracks", json=body, headers=auth).status_code == 200
    assert client.get(f"{API}/ingest/osmand/{cred['secret']}", params=params).status_code == 200
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


def test_unknown_credentials_are_rate_limited_per_source_and_kept_as_short_samples(
        settings: Settings, org: Org, db: psycopg.Connection, rds: redis.Redis) -> None:
    body = b'{"_type": "location", "pad": "' + b"x" * 5000 + b'"}'
    with app_with(settings, ingest_unknown_rate_per_min=1, ingest_unknown_rate_burst=2,
                  ingest_unknown_sample_bytes=16) as c:
        codes = []
        for _ in range(4):
            r = c.post(f"{API}/ingest/owntracks", content=body, headers=basic("nobody", "guess"))
            codes.append(r.status_code)
        assert codes == [401, 401, 429, 429]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        rows = db.execute("SELECT reason, raw, raw_size FROM dead_letters ORDER BY id").fetchall()
        assert [(reason, bytes(raw), size) for reason, raw, size in rows] == [
            ("unknown_device", body[:16], len(body))] * 2  # two samples, the rest only counted
        p = settings.redis_prefix
        assert int(rds.get(f"{p}ingest:unknown_credentials") or 0) == 4
        # When the source's rate allows again, the next sample says how many were not kept.
        for key in rds.scan_iter(f"{p}ratelimit:ingest-unknown:*"):
            rds.delete(key)
        r = c.get(f"{API}/ingest/osmand/guessed-secret", params={"id": "x", "lat": "1"})
        assert r.status_code == 401
    (detail,) = db.execute("SELECT detail FROM dead_letters ORDER BY id DESC LIMIT 1").fetchone()
    assert "2 more request(s)" in detail and "only counted" in detail


def test_owntracks_http_transition_and_waypoint_are_recorded(
        client: TestClient, org: Org, db: psycopg.Connection) -> None:
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    lon, lat = deep_inside(JIANGAN)
    tst = int(time.time()) - 60
    transition = {"_type": "transition", "wtst": tst - 3600, "lat": lat, "lon": lon, "tst": tst,
                  "acc": 25, "tid": "JA", "event": "leave", "desc": "Home", "t": "c"}
    waypoint = {"_type": "waypoint", "desc": "Home", "lat": lat, "lon": lon, "rad": 80,
                "tst": tst - 3600}
    auth = basic(cred["device_id"], cred["secret"])
    for message in (transition, waypoint):
        r = client.post(f"{API}/ingest/owntracks", content=orjson.dumps(message), headers=auth)
        assert (r.status_code, r.json()) == (200, [])
    assert db.execute("SELECT msg_type, source FROM device_messages ORDER BY id").fetchall() == [
        ("transition", "owntracks_http"), ("waypoint", "owntracks_http")]
    assert db.execute("SELECT accuracy, source FROM positions").fetchall() == [
        (25.0, "owntracks_http")]


def test_oversized_bodies_keep_their_full_size_whoever_sends_them(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings) -> None:
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    form = b"id=" + cred["device_id"].encode() + b"&pad=" + b"x" * (80 * 1024)
    r = client.post(f"{API}/ingest/osmand/{cred['secret']}", content=form,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status_code, r.json()["dead_letter"]["reason"]) == (200, "oversized")
    r = client.post(f"{API}/ingest/owntracks", content=form, headers=basic("nobody", "guess"))
    assert r.status_code == 401
    rows = db.execute("SELECT reason, source, raw, raw_size FROM dead_letters ORDER BY id").fetchall()
    limit, sample = settings.max_payload_bytes, settings.ingest_unknown_sample_bytes
    assert [(reason, source, bytes(raw), size) for reason, source, raw, size in rows] == [
        ("oversized", "osmand_query", form[:limit], len(form)),  # the body, not the parameters
        ("unknown_device", "owntracks_http", form[:sample], len(form))]


def test_a_pooled_pipeline_always_works_on_its_own_thread(
        client: TestClient, org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's request threads come and go; a pipeline's work stays on one thread of its
    own, so the zones' map projections (pyproj builds one per thread, ≈ 13 ms each) are built
    once per pipeline, not once per request thread that happens to take it."""
    import threading

    ingest.pool.close()
    seen: list[tuple[int, int]] = []  # (pipeline, thread) of each piece of work
    callers: list[threading.Thread] = []

    def request() -> None:
        with ingest.pool.acquire() as p:
            seen.append((id(p), ingest.pool.run(p, threading.get_ident)))

    try:
        for _ in range(12):  # twelve request threads, one after another: one pipeline
            t = threading.Thread(target=request)
            callers.append(t)
            t.start()
            t.join()
        assert len({p for p, _ in seen}) == 1
        assert len({t for _, t in seen}) == 1  # one thread for all twelve
        assert seen[0][1] not in {t.ident for t in callers}
        # And the real requests go through it: an OsmAnd and an OwnTracks report are stored,
        # each recorded on a pipeline's own thread.
        where: list[str] = []
        record = ingest._record

        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            where.append(threading.current_thread().name)
            return record(*args, **kwargs)

        monkeypatch.setattr(ingest, "_record", spy)
        cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
        r = client.get(f"{API}/ingest/osmand/{cred['secret']}",
                       params=_traccar_client_params(cred["device_id"], deep_inside(JIANGAN)))
        assert (r.status_code, r.json()) == (200, {"accepted": 1, "duplicates": 0})
        r = client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                        json=owntracks(deep_inside(JIANGAN), time.time() - 5))
        assert r.status_code == 200, r.text
        assert len(where) == 2 and all(n.startswith("ingest-pipeline") for n in where), where
    finally:
        ingest.pool.close()
