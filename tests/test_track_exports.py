"""Track exports (GeoJSON, GPX, CSV) and the enrolment links (OwnTracks QR, Traccar Client URL)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import segno
from fastapi.testclient import TestClient

from api.enrolment import qr_svg
from ingest.mqtt_worker import route
from store.settings import Settings, set_settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.test_api import API, enrol

GPX = "{http://www.topografix.com/GPX/1/1}"
CCS = "{urn:ccs:gpx:1}"


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

