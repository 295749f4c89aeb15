"""The authorization matrix, generated from the OpenAPI: every endpoint, every role, inside and
outside the caller's jurisdiction.

Every operation must declare `x-access` (api/authz.py). Then, for every staff operation and
every role: a role not declared gets 403, a declared role gets past authorization (anything but
401/403). Every operation that names a resource in its path is called by staff of the other
district with a valid body and must answer 403 or 404 without acting. A new endpoint without a
declaration, or without a sample body here when it writes to a resource, fails this test.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.authz import ROLE_REFUSED
from api.sessions import open_session
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org, login
from tests.geo import deep_inside
from tests.test_api import basic, owntracks

API = "/api/v1"
ROLES = ("officer", "office_head", "district_supervisor", "city_admin", "auditor")
SCOPES = {"jurisdiction", "self", "city", "device", "public", "token"}
# Called for authorization only with a forbidden role: for an allowed one it streams forever
# (its allowed-role path is covered by the end-to-end feed tests).
STREAMS = {("get", "/api/v1/alerts/stream/live")}


def _ops(client) -> list[tuple[str, str, dict[str, Any]]]:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    return [(m, p, o) for p, ops in spec["paths"].items() for m, o in ops.items()]


@pytest.fixture()
def world(client, org: Org, db, session, settings: Settings) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One of each resource in Jiang'an, and staff of every role there and next door."""
    from api.security import hash_password
    from store.demo import create_staff
    from store.enums import Role
    from store.models import OrgUnit

    pw = hash_password(PASSWORD)
    office = session.get(OrgUnit, org.office_ids[JIANGAN])
    city = session.get(OrgUnit, org.city_id)
    head = create_staff(session, office, "jiangan-head", Role.OFFICE_HEAD, PASSWORD, password_hash=pw)
    auditor = create_staff(session, city, "auditor", Role.AUDITOR, PASSWORD, password_hash=pw)
    other_office = session.get(OrgUnit, org.office_ids[JIANGHAN])
    other_head = create_staff(session, other_office, "jianghan-head", Role.OFFICE_HEAD, PASSWORD,
                              password_hash=pw)
    session.commit()
    staff = {**org.staff, "jiangan-head": head.id, "auditor": auditor.id,
             "jianghan-head": other_head.id}
    h = login(client, "jiangan-officer")
    admin = login(client, "admin")
    sup = org.supervisee_id
    cred = client.post(f"{API}/supervisees/{sup}/devices", headers=h, json={}).json()
    device = cred["device_id"]
    fix = client.post(f"{API}/ingest/owntracks", headers=basic(device, cred["secret"]),
                      json=owntracks(deep_inside(JIANGAN), time.time() - 60))
    assert fix.status_code == 200, fix.text
    dest = client.post(f"{API}/zones", headers=admin, json={
        "name": "destination", "kind": "destination", "crs": "gcj02", "owner_unit_id": org.city_id,
        "geometry": {"type": "Polygon", "coordinates": [[
            [114.20, 30.53], [114.24, 30.53], [114.24, 30.56], [114.20, 30.56], [114.20, 30.53]]]},
    }).json()["id"]
    excl = client.post(f"{API}/zones", headers=login(client, "jiangan-supervisor"), json={
        "name": "school", "kind": "exclusion", "crs": "gcj02", "radius_m": 200,
        "owner_unit_id": org.district_ids[JIANGAN],
        "geometry": {"type": "Point", "coordinates": [114.30, 30.62]}})
    assert excl.status_code == 201, excl.text
    start = datetime.now(UTC) + timedelta(days=5)
    permit = client.post(f"{API}/supervisees/{sup}/permits", headers=h, json={
        "reason": "medical", "destination_zone_id": dest, "start_at": start.isoformat(),
        "end_at": (start + timedelta(days=2)).isoformat()})
    assert permit.status_code == 201, permit.text
    assignment = client.post(f"{API}/supervisees/{sup}/zones", headers=h, json={
        "zone_id": excl.json()["id"], "role": "exclusion"}).json()["id"]
    suspension = client.post(f"{API}/supervisees/{sup}/suspensions", headers=h, json={
        "starts_at": datetime.now(UTC).isoformat(),
        "ends_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        "reason": "hospital stay"}).json()["id"]
    alert = db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id)
                          VALUES ('area_exit', 'high', %s, %s) RETURNING id""",
                       (sup, org.office_ids[JIANGAN])).fetchone()[0]
    webhook = db.execute("""INSERT INTO webhook_endpoints (org_unit_id, name, url, secret)
                            VALUES (%s, 'gw', 'https://gw.example/h', 'whsec_AAAA')
                            RETURNING id""", (org.district_ids[JIANGAN],)).fetchone()[0]
    channel = db.execute("""INSERT INTO staff_channels (staff_id, channel, address)
                            VALUES (%s, 'email', 'o@example.org') RETURNING id""",
                         (org.staff["jiangan-officer"],)).fetchone()[0]
    return {
        "ids": {"supervisee_id": sup, "device_id": device, "permit_id": permit.json()["id"],
                "alert_id": alert, "watch": "w" * 43, "zone_id": org.zone_ids[JIANGAN],
                "assignment_id": assignment,
                "suspension_id": suspension, "webhook_id": webhook, "channel_id": channel,
                "unit_id": org.office_ids[JIANGAN], "staff_id": org.staff["jiangan-officer"],
                "secret": "not-a-real-secret"},
        "staff": staff, "dest": dest, "excl": excl.json()["id"],
        "inside": {"officer": "jiangan-officer", "office_head": "jiangan-head",
                   "district_supervisor": "jiangan-supervisor", "city_admin": "admin",
                   "auditor": "auditor"},
        "outside": {"officer": "jianghan-officer", "office_head": "jianghan-head",
                    "district_supervisor": "jianghan-supervisor"},
    }


def _sample_bodies(world: dict[str, Any], org: Org) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body for every operation that writes to a resource named in its path."""
    now = datetime.now(UTC)
    return {
        ("put", "/api/v1/supervisees/{supervisee_id}/home-area"): {"zone_id": org.zone_ids[JIANGAN]},
        ("post", "/api/v1/supervisees/{supervisee_id}/devices"): {},
        ("delete", "/api/v1/devices/{device_id}"): {},
        ("post", "/api/v1/devices/{device_id}/reenrol"): {},
        ("post", "/api/v1/supervisees/{supervisee_id}/zones"): {"zone_id": world["excl"],
                                                               "role": "exclusion"},
        ("delete", "/api/v1/supervisees/{supervisee_id}/zones/{assignment_id}"): {},
        ("put", "/api/v1/zones/{zone_id}"): {"name": "moved", "crs": "gcj02", "radius_m": 300,
                                            "geometry": {"type": "Point",
                                                         "coordinates": [114.30, 30.62]}},
        ("post", "/api/v1/zones/{zone_id}/retire"): {"reason": "no longer needed"},
        ("put", "/api/v1/supervisees/{supervisee_id}/rules"): {"overrides": {"exit_fixes": 4},
                                                              "reason": "court order"},
        ("post", "/api/v1/alerts/{alert_id}/acknowledge"): {},
        ("post", "/api/v1/alerts/{alert_id}/resolve"): {"disposition": "false_alarm",
                                                       "note": "checked"},
        ("post", "/api/v1/alerts/{alert_id}/escalate"): {},
        ("post", "/api/v1/supervisees/{supervisee_id}/permits"): {
            "reason": "medical", "destination_zone_id": world["dest"],
            "start_at": (now + timedelta(days=20)).isoformat(),
            "end_at": (now + timedelta(days=21)).isoformat()},
        ("post", "/api/v1/permits/{permit_id}/opinion"): {"recommend": True, "note": "fine"},
        ("post", "/api/v1/permits/{permit_id}/approve"): {"note": "ok"},
        ("post", "/api/v1/permits/{permit_id}/reject"): {"note": "no"},
        ("post", "/api/v1/permits/{permit_id}/revoke"): {"note": "no"},
        ("post", "/api/v1/permits/{permit_id}/amend"): {
            "end_at": (now + timedelta(days=8)).isoformat(), "note": "longer"},
        ("post", "/api/v1/permits/{permit_id}/return"): {"note": "back"},
        ("put", "/api/v1/supervisees/{supervisee_id}/level"): {"level": "strict",
                                                              "reason": "violation"},
        ("post", "/api/v1/supervisees/{supervisee_id}/rollcalls"): {"reason": "check"},
        ("post", "/api/v1/supervisees/{supervisee_id}/sanctions"): {"kind": "reprimand",
                                                                   "reason": "late"},
        ("post", "/api/v1/supervisees/{supervisee_id}/suspensions"): {
            "starts_at": now.isoformat(), "ends_at": (now + timedelta(hours=2)).isoformat(),
            "reason": "hospital"},
        ("delete", "/api/v1/supervisees/{supervisee_id}/suspensions/{suspension_id}"): {},
        ("post", "/api/v1/supervisees/{supervisee_id}/proximity"): {
            "place": {"lon": 114.30, "lat": 30.62, "crs": "gcj02"}, "radius_m": 200,
            "from": (now - timedelta(hours=2)).isoformat(), "to": now.isoformat(),
            "purpose": "authorization matrix"},
        ("delete", "/api/v1/webhooks/{webhook_id}"): {},
        ("delete", "/api/v1/me/channels/{channel_id}"): {},
        ("patch", "/api/v1/staff/{staff_id}"): {"active": False},
    }


def _path(p: str, ids: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), p)


def _call(client, method: str, url: str, token: str, body: Any) -> int:  # type: ignore[no-untyped-def]
    """The status; a 403 that is not the role layer's (`role_not_allowed`) but a finer rule's
    (a permit's approval tier, rank in staff management) is returned as -403: past the roles."""
    params = {"purpose": "authorization matrix", "from": "2026-01-01T00:00:00Z",
              "to": "2026-01-02T00:00:00Z"}
    kw: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}, "params": params}
    if method in ("post", "put", "patch"):
        kw["json"] = body
    r = client.request(method.upper(), url, **kw)
    if r.status_code == 403 and r.json().get("error") != ROLE_REFUSED:
        return -403
    return r.status_code


def _token(rds, settings: Settings, world: dict[str, Any], username: str, role: str) -> str:  # type: ignore[no-untyped-def]
    # A fresh session per call: an allowed logout must not spoil the next call.
    return open_session(rds, settings, world["staff"][username], role)[1]


def test_every_operation_declares_its_roles_and_scope(client):
    missing, bad = [], []
    for m, p, o in _ops(client):
        acc = o.get("x-access")
        if acc is None:
            missing.append(f"{m.upper()} {p}")
        elif acc.get("scope") not in SCOPES or not acc.get("roles"):
            bad.append(f"{m.upper()} {p}: {acc}")
        elif acc["scope"] not in ("device", "public", "token") \
                and not set(acc["roles"]) <= set(ROLES):
            bad.append(f"{m.upper()} {p}: unknown roles {acc['roles']}")
    assert missing == [], f"endpoints without x-access (use api.authz.access): {missing}"
    assert bad == []


def test_no_credentials_no_entry(client, org: Org, settings: Settings, monkeypatch, world):
    monkeypatch.setattr(settings, "metrics_token", "m" * 32)
    monkeypatch.setattr(settings, "broker_hook_secret", "b" * 32)
    let_in = []
    for m, p, o in _ops(client):
        if o["x-access"]["scope"] == "public":
            continue
        url = _path(p, world["ids"])
        r = client.request(m.upper(), url, params={"purpose": "x"},
                           **({"json": {}} if m in ("post", "put", "patch") else {}))
        if r.status_code != 401:
            let_in.append(f"{m.upper()} {p}: {r.status_code}")
    assert let_in == []


def test_staff_tokens_do_not_open_device_endpoints(client, org: Org, world, rds, settings):
    token = _token(rds, settings, world, "admin", "city_admin")
    for m, p, o in _ops(client):
        if o["x-access"]["scope"] == "device":
            status = _call(client, m, _path(p, world["ids"]), token, {})
            assert status == 401, f"{m.upper()} {p} answered {status} to a staff token"


def test_each_role_gets_exactly_what_its_declaration_says(client, org: Org, world, rds, settings):
    wrong: list[str] = []
    for m, p, o in _ops(client):
        acc = o["x-access"]
        if acc["scope"] in ("device", "public", "token"):
            continue
        url = _path(p, world["ids"])
        for role in ROLES:
            allowed = role in acc["roles"]
            if allowed and (m, p) in STREAMS:
                continue
            status = _call(client, m, url, _token(rds, settings, world, world["inside"][role],
                                                  role), {})
            if allowed and status in (401, 403):
                wrong.append(f"{role} refused {m.upper()} {p} ({status})")
            if not allowed and status != 403:
                wrong.append(f"{role} not refused {m.upper()} {p} ({status})")
    assert wrong == []


def test_reads_inside_the_jurisdiction_succeed(client, org: Org, world, rds, settings):
    failed = []
    for m, p, o in _ops(client):
        acc = o["x-access"]
        if m != "get" or acc["scope"] not in ("jurisdiction", "self", "city") or (m, p) in STREAMS:
            continue
        for role in acc["roles"]:
            status = _call(client, m, _path(p, world["ids"]),
                           _token(rds, settings, world, world["inside"][role], role), None)
            if status != 200:
                failed.append(f"{role} GET {p}: {status}")
    assert failed == []


def test_nothing_outside_the_jurisdiction_is_reached(client, org: Org, world, rds, settings, db):
    bodies = _sample_bodies(world, org)
    before = db.execute("SELECT count(*) FROM audit_log WHERE action NOT LIKE 'auth.%'").fetchone()
    reached, no_sample = [], []
    for m, p, o in _ops(client):
        acc = o["x-access"]
        if acc["scope"] != "jurisdiction" or "{" not in p or (m, p) in STREAMS:
            continue
        if m != "get" and (m, p) not in bodies:
            no_sample.append(f"{m.upper()} {p}")
            continue
        for role, username in world["outside"].items():
            if role not in acc["roles"]:
                continue
            status = _call(client, m, _path(p, world["ids"]),
                           _token(rds, settings, world, username, role), bodies.get((m, p)))
            if status not in (403, 404):
                reached.append(f"{username} {m.upper()} {p}: {status}")
    assert no_sample == [], f"add a valid sample body for these operations: {no_sample}"
    assert reached == []
    # Nothing was done (only refusals): no staff action landed in the audit log.
    after = db.execute("SELECT count(*) FROM audit_log WHERE action NOT LIKE 'auth.%'").fetchone()
    assert after == before


def _body_ids(client) -> dict[tuple[str, str], list[str]]:  # type: ignore[no-untyped-def]
    """Staff operations whose request body names a resource by id."""
    spec = client.get("/openapi.json").json()
    comps = spec["components"]["schemas"]
    out = {}
    for m, p, o in _ops(client):
        if o["x-access"]["scope"] in ("device", "public", "token"):
            continue
        for c in o.get("requestBody", {}).get("content", {}).values():
            props = comps.get(c["schema"].get("$ref", "").split("/")[-1], {}).get("properties", {})
            ids = sorted(k for k in props if k.endswith("_id"))
            if ids:
                out[(m, p)] = ids
    return out


def test_ids_in_request_bodies_cannot_reach_across_the_jurisdiction(client, org: Org, world, rds,
                                                                    settings, db):
    """Staff of Jianghan act on their own supervisee (or on nothing in the path) with a body
    naming a Jiang'an resource: refused, and nothing done."""
    jiangan_dest = client.post(f"{API}/zones", headers=login(client, "jiangan-supervisor"), json={
        "name": "Jiang'an only", "kind": "destination", "crs": "gcj02", "radius_m": 300,
        "owner_unit_id": org.district_ids[JIANGAN],
        "geometry": {"type": "Point", "coordinates": [114.30, 30.60]}}).json()["id"]
    now = datetime.now(UTC)
    ours = {"supervisee_id": org.other_supervisee_id}
    cases: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
        ("post", "/api/v1/staff"): ("jianghan-supervisor", {
            "username": "intruder", "full_name": "x", "role": "officer", "password": "p" * 12,
            "org_unit_id": org.office_ids[JIANGAN]}),
        ("post", "/api/v1/supervisees"): ("jianghan-officer", {
            "office_id": org.office_ids[JIANGAN], "full_name": "x", "case_number": "X-1",
            "supervision_type": "probation"}),
        ("put", "/api/v1/supervisees/{supervisee_id}/home-area"): (
            "jianghan-officer", {"zone_id": org.zone_ids[JIANGAN]}),
        ("post", "/api/v1/supervisees/{supervisee_id}/zones"): (
            "jianghan-officer", {"zone_id": world["excl"], "role": "exclusion"}),
        ("post", "/api/v1/zones"): ("jianghan-supervisor", {
            "name": "x", "kind": "exclusion", "crs": "gcj02", "radius_m": 100,
            "owner_unit_id": org.district_ids[JIANGAN],
            "geometry": {"type": "Point", "coordinates": [114.30, 30.60]}}),
        ("post", "/api/v1/supervisees/{supervisee_id}/permits"): ("jianghan-officer", {
            "reason": "medical", "destination_zone_id": jiangan_dest,
            "start_at": (now + timedelta(days=20)).isoformat(),
            "end_at": (now + timedelta(days=21)).isoformat()}),
        ("post", "/api/v1/supervisees/{supervisee_id}/sanctions"): ("jianghan-officer", {
            "kind": "reprimand", "reason": "late", "alert_id": world["ids"]["alert_id"]}),
        ("post", "/api/v1/webhooks"): ("jianghan-supervisor", {
            "org_unit_id": org.district_ids[JIANGAN], "name": "x", "url": "https://x.example/h"}),
        ("post", "/api/v1/me/channels"): ("jianghan-officer", {
            "channel": "webhook", "address": "+8613800000009",
            "webhook_id": world["ids"]["webhook_id"]}),
    }
    missing = sorted(f"{m.upper()} {p}" for m, p in _body_ids(client) if (m, p) not in cases)
    assert missing == [], f"add a cross-jurisdiction body case for: {missing}"
    before = db.execute("SELECT count(*) FROM audit_log WHERE action NOT LIKE 'auth.%'").fetchone()
    reached = []
    for (m, p), (username, body) in cases.items():
        role = {"jianghan-officer": "officer", "jianghan-supervisor": "district_supervisor"}[username]
        r = client.request(m.upper(), _path(p, {**world["ids"], **ours}), json=body, headers={
            "Authorization": f"Bearer {_token(rds, settings, world, username, role)}"})
        refused = r.status_code in (400, 403, 404) or (r.status_code == 422 and "error" in r.json())
        if not refused:
            reached.append(f"{username} {m.upper()} {p}: {r.status_code} {r.text[:120]}")
    assert reached == []
    after = db.execute("SELECT count(*) FROM audit_log WHERE action NOT LIKE 'auth.%'").fetchone()
    assert after == before
