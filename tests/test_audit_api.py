"""Auditors read and verify the audit log through the API (real database and Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from store.demo import create_staff
from store.enums import Role
from store.models import OrgUnit
from tests.conftest import JIANGAN, PASSWORD, Org, login

API = "/api/v1"


@pytest.fixture()
def auditors(org: Org, session: Session) -> dict[str, int]:
    """A city-level auditor and one at the Jiang'an district bureau."""
    city = session.get(OrgUnit, org.city_id)
    jiangan = session.get(OrgUnit, org.district_ids[JIANGAN])
    assert city is not None and jiangan is not None
    ids = {"city-auditor": create_staff(session, city, "city-auditor", Role.AUDITOR, PASSWORD).id,
           "jiangan-auditor": create_staff(session, jiangan, "jiangan-auditor", Role.AUDITOR,
                                           PASSWORD).id}
    session.commit()
    return ids


def _read_positions(client: TestClient, org: Org, username: str, supervisee_id: int,
                    times: int = 1) -> None:
    """Audited location reads (404: no fix yet, but the read is recorded)."""
    h = login(client, username)
    for i in range(times):
        r = client.get(f"{API}/supervisees/{supervisee_id}/position", headers=h,
                       params={"purpose": f"home visit {i}"})
        assert r.status_code == 404, r.text


def _all(client: TestClient, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"{API}/audit", headers=h, params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_only_auditors_and_city_admins_read_the_audit_log(client: TestClient, org: Org,
                                                          auditors: dict[str, int]) -> None:
    for username in ("jiangan-officer", "jiangan-supervisor"):
        h = login(client, username)
        for path in ("/audit", "/audit/verify"):
            r = client.get(API + path, headers=h)
            assert (r.status_code, r.json()["error"]) == (403, "role_not_allowed"), (username, path)
    assert client.get(f"{API}/audit").status_code == 401
    for username in ("admin", "city-auditor", "jiangan-auditor"):
        h = login(client, username)
        for path in ("/audit", "/audit/verify"):
            assert client.get(API + path, headers=h).status_code == 200, (username, path)


def test_an_auditor_sees_their_subtree_and_the_city_sees_everything(
        client: TestClient, org: Org, auditors: dict[str, int]) -> None:
    _read_positions(client, org, "jiangan-officer", org.supervisee_id)
    _read_positions(client, org, "jianghan-officer", org.other_supervisee_id)
    reads = {(e["staff_username"], e["target"])
             for e in _all(client, login(client, "city-auditor"), action="location.read_latest")}
    assert reads == {("jiangan-officer", f"supervisee:{org.supervisee_id}"),
                     ("jianghan-officer", f"supervisee:{org.other_supervisee_id}")}
    client.post(f"{API}/auth/token", data={"username": "nobody", "password": "x"})
    city_rows = _all(client, login(client, "city-auditor"))
    # A failed sign-in with an unknown name belongs to no one: the city sees it.
    assert any(e["staff_id"] is None and e["action"] == "auth.login_failed" for e in city_rows)

    district = _all(client, login(client, "jiangan-auditor"))
    assert district, "the district auditor sees its own subtree"
    assert {e["staff_username"] for e in district} <= {"jiangan-officer", "jiangan-auditor"}
    assert all(e["staff_id"] is not None for e in district)
    # Sign-ins name the staff member, so the district sees its own staff's.
    assert ("jiangan-officer", "auth.login") in {(e["staff_username"], e["action"])
                                                 for e in district}
    assert ("jiangan-officer", "location.read_latest") in {(e["staff_username"], e["action"])
                                                           for e in district}
    assert not any(e["staff_id"] is None for e in district)  # logins, devices: city level only
    assert _all(client, login(client, "jiangan-auditor"),
                staff_id=org.staff["jianghan-officer"]) == []


def test_filters_and_paging_newest_first(client: TestClient, org: Org,
                                         auditors: dict[str, int]) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    _read_positions(client, org, "jiangan-officer", org.supervisee_id, times=7)
    _read_positions(client, org, "jianghan-officer", org.other_supervisee_id, times=2)
    h = login(client, "city-auditor")
    filters = {"action": "location.read_latest", "staff_id": org.staff["jiangan-officer"],
               "target_prefix": f"supervisee:{org.supervisee_id}"}
    everything = _all(client, h, **filters)
    assert [e["purpose"] for e in everything] == [f"home visit {i}" for i in range(6, -1, -1)]
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs, reverse=True)
    assert all(len(e["hash"]) == 64 for e in everything)

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {**filters, "limit": 3}
        if cursor is not None:
            params["before_seq"] = cursor
        page = client.get(f"{API}/audit", headers=h, params=params).json()
        pages.append([e["seq"] for e in page["items"]])
        cursor = page["next_before_seq"]
        if cursor is None:
            break
    assert [s for p in pages for s in p] == seqs
    assert [len(p) for p in pages] == [3, 3, 1]

    assert len(_all(client, h, action="location.read_latest")) == 9
    assert len(_all(client, h, action="location.read_latest", target_prefix="supervisee:")) == 9
    assert _all(client, h, target_prefix="%") == []  # a prefix, not a pattern
    now = datetime.now(UTC)
    assert len(_all(client, h, action="location.read_latest", since=before.isoformat(),
                    until=(now + timedelta(seconds=5)).isoformat())) == 9
    assert _all(client, h, action="location.read_latest", since=now.isoformat()) == []
    assert _all(client, h, action="location.read_latest", until=before.isoformat()) == []
    r = client.get(f"{API}/audit", headers=h, params={"since": "2026-01-01T00:00:00"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid")


def test_reading_the_audit_log_is_audited(client: TestClient, org: Org, db: psycopg.Connection,
                                          auditors: dict[str, int]) -> None:
    h = login(client, "city-auditor")
    r = client.get(f"{API}/audit", headers=h,
                   params={"purpose": "quarterly review", "action": "auth.login"})
    assert r.status_code == 200
    n = len(r.json()["items"])
    assert n >= 1
    row = db.execute("""SELECT staff_id, target, purpose, detail FROM audit_log
                         WHERE action = 'audit.read'""").fetchall()
    assert row == [(auditors["city-auditor"], "audit_log", "quarterly review",
                    {"filters": {"action": "auth.login"}, "count": n})]
    newest = _all(client, h)[0]
    assert (newest["action"], newest["staff_username"]) == ("audit.read", "city-auditor")


def test_verify_through_the_api_finds_a_tampered_row(client: TestClient, org: Org,
                                                     db: psycopg.Connection,
                                                     auditors: dict[str, int]) -> None:
    _read_positions(client, org, "jiangan-officer", org.supervisee_id, times=3)
    h = login(client, "jiangan-auditor")
    ok = client.get(f"{API}/audit/verify", headers=h, params={"purpose": "monthly check"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    (count,) = db.execute("SELECT count(*) FROM audit_log").fetchone()  # type: ignore[misc]
    assert body["ok"] is True and body["first_problem"] is None
    assert body["rows"] == count - 1  # the verify's own audit row commits after it
    assert len(body["head_hash"]) == 64

    victim = db.execute("""SELECT id, seq FROM audit_log WHERE action = 'location.read_latest'
                            ORDER BY seq LIMIT 1""").fetchone()
    assert victim is not None
    with db.transaction():  # as a superuser would, with the triggers off
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE audit_log SET purpose = 'court order' WHERE id = %s", (victim[0],))
    bad = client.get(f"{API}/audit/verify", headers=h).json()
    assert bad["ok"] is False
    assert bad["first_problem"]["kind"] == "edited"
    assert (bad["first_problem"]["id"], bad["first_problem"]["seq"]) == tuple(victim)
    assert bad["problem_count"] == 1
    checks = db.execute("""SELECT purpose, detail->>'ok' FROM audit_log WHERE action = 'audit.verify'
                            ORDER BY seq""").fetchall()
    assert checks == [("monthly check", "true"), ("audit review", "false")]
