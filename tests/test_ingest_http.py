"""The phone HTTP endpoints as the real apps use them (OwnTracks HTTP mode, Traccar Client):
what is recorded is answered 200 so the app's queue moves on, only an outage makes it retry;
unknown credentials are rate-limited per source and kept only as short samples."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

import orjson
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from api.errors import DomainError
from api.routes import ingest
from ingest.pipeline import Channel, Pipeline, RawMessage
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
    ingest.batcher.close()  # pipelines connected to the real services are not reused
    set_settings(settings.model_copy(
        update={"database_url" if service == "database" else "redis_url": url}))
    try:
        yield
    finally:
        set_settings(settings)
        ingest.batcher.close()


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


def test_waiting_requests_are_recorded_as_one_batch_each_answered_with_its_own_outcome(
        settings: Settings, org: Org, db: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: while a batch is being recorded, the requests that arrive wait and are then
    authenticated, judged and committed together, in one transaction; each phone still gets
    its own message's answer (stored, duplicate, dead letter, unknown credentials)."""
    import threading

    ingest.batcher.close()
    batches: list[tuple[int, str]] = []  # (requests, thread) of each batch
    hold, held = threading.Event(), threading.Event()
    record = ingest.record_batch

    def spy(p, batch):  # type: ignore[no-untyped-def]
        batches.append((len(batch), threading.current_thread().name))
        if len(batches) == 1:  # the first batch waits until the others are queued
            held.set()
            assert hold.wait(30)
        return record(p, batch)

    monkeypatch.setattr(ingest, "record_batch", spy)
    with app_with(settings, http_ingest_pipelines=1) as c:
        cred = enrol(c, login(c, "jiangan-officer"), org.supervisee_id)
        here = deep_inside(JIANGAN)
        t0 = int(time.time()) - 600
        osmand = f"{API}/ingest/osmand/{cred['secret']}"
        auth = basic(cred["device_id"], cred["secret"])
        answers: dict[str, tuple[int, object]] = {}

        def send(name: str, call) -> None:  # type: ignore[no-untyped-def]
            r = call()
            answers[name] = (r.status_code, r.json())

        first = threading.Thread(target=send, args=("first", lambda: c.get(
            osmand, params=_traccar_client_params(cred["device_id"], here,
                                                  timestamp=str(t0)))))
        first.start()
        assert held.wait(30)
        requests = {
            **{f"fix{k}": lambda k=k: c.get(osmand, params=_traccar_client_params(
                cred["device_id"], here, timestamp=str(t0 + 60 * k))) for k in range(1, 6)},
            "again": lambda: c.get(osmand, params=_traccar_client_params(
                cred["device_id"], here, timestamp=str(t0 + 60))),  # fix1 again
            "owntracks": lambda: c.post(f"{API}/ingest/owntracks", headers=auth,
                                        json=owntracks(here, t0 + 400)),
            "bad": lambda: c.get(osmand, params=_traccar_client_params(
                cred["device_id"], here, timestamp=str(t0 + 500), batt="140")),
            "stranger": lambda: c.get(f"{API}/ingest/osmand/not-a-secret",
                                      params=_traccar_client_params("x", here)),
            "wrong password": lambda: c.post(f"{API}/ingest/owntracks",
                                             headers=basic(cred["device_id"], "guess"),
                                             json=owntracks(here, t0 + 450)),
        }
        others = [threading.Thread(target=send, args=(n, f)) for n, f in requests.items()]
        for t in others:
            t.start()
        deadline = time.monotonic() + 30
        while ingest.batcher._queue.qsize() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        hold.set()
        for t in [first, *others]:
            t.join(30)
    # One thread, two batches: the first request alone, then everything that waited meanwhile.
    assert batches == [(1, "ingest-pipeline-0"), (len(requests), "ingest-pipeline-0")]
    ok = (200, {"accepted": 1, "duplicates": 0})
    assert {n: answers[n] for n in ("first", "fix2", "fix3", "fix4", "fix5")} == {
        n: ok for n in ("first", "fix2", "fix3", "fix4", "fix5")}
    # fix1 and its repeat were in the same batch (in whichever order their threads queued them):
    # one of them is stored, the other answered as a duplicate.
    assert sorted([answers["fix1"], answers["again"]], key=str) == [
        (200, {"accepted": 0, "duplicates": 1}), ok]
    assert answers["owntracks"] == (200, [])
    assert answers["bad"][0] == 200
    assert answers["bad"][1]["dead_letter"]["reason"] == "bad_value"  # type: ignore[index]
    assert answers["stranger"][0] == 401 and answers["wrong password"][0] == 401
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (7,)
    assert db.execute("SELECT reason FROM dead_letters ORDER BY reason").fetchall() == [
        ("bad_value",), ("unknown_device",), ("unknown_device",)]
    # The first fix in a transaction of its own, the batch's six in one: not one each.
    assert db.execute("SELECT count(DISTINCT xmin::text) FROM positions").fetchone() == (2,)


def _pending(secret: str, device_id: str, t: float, **extra: str) -> ingest.Pending:
    """A Traccar Client GET as the endpoint queues it (device not yet known)."""
    params = _traccar_client_params(device_id, deep_inside(JIANGAN), timestamp=str(int(t)),
                                    **extra)
    body = ingest._Body(b"", 0, False, True)
    msg = RawMessage(Channel.OSMAND_QUERY, b"", None, f"{API}/ingest/osmand/***", time.time(),
                     "127.0.0.1", params)
    return ingest.Pending(msg, body, "unknown or revoked device secret", secret=secret)


def test_a_message_that_breaks_its_batch_is_kept_alone_and_the_others_are_stored(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fails for a reason of one message is recorded around it: the message that
    still fails alone is kept as a dead letter with the error (answered 200, so the phone's
    queue moves on) and the rest of the batch is stored."""
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    process = Pipeline.process

    calls: list[int] = []

    def poisoned(self, messages, now=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(messages))
        if any((m.params or {}).get("poison") for m in messages):
            raise RuntimeError("boom")
        return process(self, messages, now, **kw)

    monkeypatch.setattr(Pipeline, "process", poisoned)
    t0 = time.time() - 300
    batch = [_pending(cred["secret"], cred["device_id"], t0),
             _pending(cred["secret"], cred["device_id"], t0 + 60, poison="1"),
             _pending(cred["secret"], cred["device_id"], t0 + 120)]
    p = Pipeline.connect(settings)
    try:
        ingest.record_batch(p, batch)
    finally:
        p.close()
    got = [r.outcome.result(timeout=0) for r in batch]
    assert [(r.ok, r.accepted, r.reason) for r in got] == [
        (True, 1, None), (False, 0, "processing_error"), (True, 1, None)]
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (2,)
    assert db.execute("SELECT reason, detail, device_id FROM dead_letters").fetchall() == [
        ("processing_error", "RuntimeError: boom", cred["device_id"])]
    assert calls == [3, 1, 1, 1]  # the batch, its two ends alone, then the middle


def test_over_the_queue_limit_a_request_is_told_to_come_back(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests wait for a batch only up to `http_ingest_queue_max`; the next is answered 503
    with Retry-After at once (the phone keeps its fix and sends it again); the waiting ones are
    all recorded."""
    import threading

    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    hold, held = threading.Event(), threading.Event()
    record = ingest.record_batch

    def slow(p, batch):  # type: ignore[no-untyped-def]
        held.set()
        assert hold.wait(30)
        return record(p, batch)

    monkeypatch.setattr(ingest, "record_batch", slow)
    set_settings(settings.model_copy(update={"http_ingest_pipelines": 1,
                                             "http_ingest_queue_max": 2}))
    b = ingest._Batcher()
    t0 = time.time() - 600
    try:
        first = b.submit(_pending(cred["secret"], cred["device_id"], t0))
        assert held.wait(30)  # the only thread is busy with the first
        waiting = [b.submit(_pending(cred["secret"], cred["device_id"], t0 + 60 * k))
                   for k in (1, 2)]
        refused = b.submit(_pending(cred["secret"], cred["device_id"], t0 + 180))
        with pytest.raises(ingest.Unavailable) as e:
            refused.result(timeout=0)
        assert e.value.headers == {"Retry-After": str(ingest.RETRY_AFTER_S)}
        hold.set()
        assert [f.result(timeout=30).accepted for f in [first, *waiting]] == [1, 1, 1]
    finally:
        hold.set()
        b.close()
        set_settings(settings)
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (3,)


def test_a_held_device_or_a_broken_header_delays_no_one_else_in_the_batch(
        client: TestClient, org: Org, db: psycopg.Connection, rds: redis.Redis,
        settings: Settings) -> None:
    """A device another writer holds is waited for a quarter of a second (not the MQTT
    worker's 15 s), then only its own request is answered 503; a Basic header that is not even ASCII is
    an unknown credential (401) for its own request; the rest of the batch is stored."""
    from store.state import StateStore

    officer = login(client, "jiangan-officer")
    held = enrol(client, officer, org.supervisee_id)
    free = enrol(client, login(client, "jianghan-officer"), org.other_supervisee_id)
    assert StateStore(rds, settings.redis_prefix, owner_ttl_s=120, token="another-writer").own(
        [held["device_id"]]) == {held["device_id"]}
    t0 = time.time() - 300
    garbled = _pending(free["secret"], free["device_id"], t0)
    garbled = ingest.Pending(replace(garbled.msg, channel=Channel.OWNTRACKS_HTTP,
                                     payload=orjson.dumps(owntracks(deep_inside(JIANGAN), t0)),
                                     params=None),
                             garbled.body, "bad", authorization="Basic \u00e9t\u00e9")
    batch = [_pending(held["secret"], held["device_id"], t0),
             _pending(free["secret"], free["device_id"], t0 + 60), garbled]
    p = Pipeline.connect(settings)
    started = time.monotonic()
    try:
        ingest.record_batch(p, batch)
    finally:
        p.close()
    assert time.monotonic() - started < ingest.DEVICE_WAIT_S + 5
    with pytest.raises(ingest.Unavailable) as busy:
        batch[0].outcome.result(timeout=0)
    assert "other writers hold" in busy.value.detail
    assert batch[1].outcome.result(timeout=0).accepted == 1
    with pytest.raises(ingest.Unauthorized):
        batch[2].outcome.result(timeout=0)
    assert db.execute("SELECT device_id FROM positions").fetchall() == [(free["device_id"],)]
    assert db.execute("SELECT reason FROM dead_letters").fetchall() == [("unknown_device",)]


def test_a_request_that_waited_too_long_is_told_to_come_back_not_recorded(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings) -> None:
    """A phone gives up on an answer after a while and sends the fix again: a request that
    waited longer than QUEUE_WAIT_S for its batch is answered 503 and not recorded."""
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    stale = _pending(cred["secret"], cred["device_id"], time.time() - 120)
    stale.queued -= ingest.QUEUE_WAIT_S + 1
    fresh = _pending(cred["secret"], cred["device_id"], time.time() - 60)
    b = ingest._Batcher()
    try:
        outcomes = [b.submit(stale), b.submit(fresh)]
        with pytest.raises(ingest.Unavailable):
            outcomes[0].result(timeout=30)
        assert outcomes[1].result(timeout=30).accepted == 1
    finally:
        b.close()
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (1,)


def test_a_failure_every_message_meets_records_nothing_and_every_phone_keeps_its_fix(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Code and schema out of step in a deployment, a revoked grant, a defect every fix meets:
    the failure is the server's, not a message's. Nothing is dead-lettered (a dead letter is
    answered 200 and the phone would drop its fix): the error reaches every request (500) and
    the phones send their fixes again once the server is mended."""
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    process = Pipeline.process
    calls: list[int] = []

    def broken(self, messages, now=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(messages))
        raise psycopg.errors.UndefinedColumn('column "late" does not exist')

    monkeypatch.setattr(Pipeline, "process", broken)
    t0 = time.time() - 300
    batch = [_pending(cred["secret"], cred["device_id"], t0 + 60 * k) for k in range(5)]
    p = Pipeline.connect(settings)
    try:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            ingest.record_batch(p, batch)
    finally:
        p.close()
    assert calls == [5, 1, 1]  # the batch and its two ends alone, not each message in turn
    assert not any(r.outcome.done() for r in batch)  # the batch thread answers them 500
    # A lone request meets it too: 500 (the test client raises it), as before batching.
    with pytest.raises(RuntimeError, match="UndefinedColumn"):
        client.get(f"{API}/ingest/osmand/{cred['secret']}",
                   params=_traccar_client_params(cred["device_id"], deep_inside(JIANGAN)))
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    monkeypatch.setattr(Pipeline, "process", process)
    r = client.get(f"{API}/ingest/osmand/{cred['secret']}",
                   params=_traccar_client_params(cred["device_id"], deep_inside(JIANGAN)))
    assert (r.status_code, r.json()) == (200, {"accepted": 1, "duplicates": 0})


def test_unknown_credentials_in_one_batch_are_counted_and_sampled_in_arrival_order(
        client: TestClient, org: Org, db: psycopg.Connection, rds: redis.Redis,
        settings: Settings) -> None:
    """A burst of guessed secrets arriving together is handled as one request after another
    would be (the first within the source's rate kept as samples, the rest answered 429 and
    only counted), in a few round trips and one transaction for the batch's dead letters; the
    phone among them is stored as usual."""
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    set_settings(settings.model_copy(update={"ingest_unknown_rate_per_min": 1,
                                             "ingest_unknown_rate_burst": 2}))
    try:
        guesses = [_pending(f"guess-{k}", "x", time.time() - 60) for k in range(4)]
        for g in guesses:
            g.msg = replace(g.msg, remote="198.51.100.7")
        phone = _pending(cred["secret"], cred["device_id"], time.time() - 30)
        batch = [guesses[0], phone, *guesses[1:]]
        p = Pipeline.connect(settings)
        try:
            ingest.record_batch(p, batch)
            codes = []
            for g in guesses:
                with pytest.raises(DomainError) as e:
                    g.outcome.result(timeout=0)
                codes.append(e.value.status_code)
            assert codes == [401, 401, 429, 429]
            assert phone.outcome.result(timeout=0).accepted == 1
            rows = db.execute("SELECT reason, detail, xmin::text FROM dead_letters").fetchall()
            assert [(r, d) for r, d, _ in rows] == [
                ("unknown_device", "no valid device credentials")] * 2
            assert len({x for _, _, x in rows}) == 1  # one transaction for both
            prefix = settings.redis_prefix
            assert int(rds.get(f"{prefix}ingest:unknown_credentials") or 0) == 4
            # The next sample kept from that address says how many were only counted.
            for key in rds.scan_iter(f"{prefix}ratelimit:ingest-unknown:*"):
                rds.delete(key)
            later = _pending("guess-again", "x", time.time())
            later.msg = replace(later.msg, remote="198.51.100.7")
            ingest.record_batch(p, [later])
        finally:
            p.close()
    finally:
        set_settings(settings)
    (detail,) = db.execute("SELECT detail FROM dead_letters ORDER BY id DESC LIMIT 1").fetchone()
    assert "2 more request(s) from 198.51.100.7" in detail


def test_a_dead_letter_that_cannot_be_kept_fails_only_its_own_request(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's dead letters go in one transaction; if one of them cannot be written, the
    others are kept one by one and only its own request is answered 500 (its phone resends);
    the phone in the same batch is stored as usual."""
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    write = Pipeline._write_dead_letters

    def fussy(self, messages, dead):  # type: ignore[no-untyped-def]
        if any(m.remote == "203.0.113.66" for m in messages):
            raise ValueError("this one cannot be written")
        return write(self, messages, dead)

    monkeypatch.setattr(Pipeline, "_write_dead_letters", fussy)
    batch = [_pending(f"guess-{k}", "x", time.time() - 60) for k in range(3)]
    for g, remote in zip(batch, ("198.51.100.1", "203.0.113.66", "198.51.100.2"), strict=True):
        g.msg = replace(g.msg, remote=remote)
    phone = _pending(cred["secret"], cred["device_id"], time.time() - 30)
    p = Pipeline.connect(settings)
    try:
        ingest.record_batch(p, [*batch, phone])
    finally:
        p.close()
    assert phone.outcome.result(timeout=0).accepted == 1
    assert db.execute("SELECT device_id FROM positions").fetchall() == [(cred["device_id"],)]
    with pytest.raises(ingest.Unauthorized):
        batch[0].outcome.result(timeout=0)
    with pytest.raises(RuntimeError, match="cannot be kept"):
        batch[1].outcome.result(timeout=0)
    with pytest.raises(ingest.Unauthorized):
        batch[2].outcome.result(timeout=0)
    assert db.execute("SELECT remote FROM dead_letters ORDER BY id").fetchall() == [
        ("198.51.100.1",), ("198.51.100.2",)]
