"""Travel permits (外出): validation by profile, tiered approval, allowed area, return (销假)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from alerts.checks import check_overdue_returns
from geofence.profile import TravelRules
from geofence.travel import DAY, PermitRefused, Span, Tier, check_request, required_tier
from ingest.pipeline import Channel, Pipeline, RawMessage
from tests.conftest import JIANGAN, JIANGHAN, Org, login
from tests.geo import deep_inside
from tests.test_api import API, basic, enrol

NOW = time.time()
RULES = TravelRules()


def test_tier_follows_length_seven_thirty_and_the_sixty_day_window():
    assert required_tier(RULES, NOW, NOW + 7 * DAY, []) == Tier.OFFICE
    assert required_tier(RULES, NOW, NOW + 8 * DAY, []) == Tier.DISTRICT
    assert required_tier(RULES, NOW, NOW + 30 * DAY, []) == Tier.DISTRICT
    assert required_tier(RULES, NOW, NOW + 31 * DAY, []) == Tier.CITY
    # Two weeks last month and three weeks now: over 30 days within 60 goes to the city.
    earlier = [Span(NOW - 40 * DAY, NOW - 26 * DAY)]
    assert required_tier(RULES, NOW, NOW + 21 * DAY, earlier) == Tier.CITY
    assert required_tier(RULES, NOW, NOW + 10 * DAY, earlier) == Tier.DISTRICT


@pytest.mark.parametrize(("rules", "start", "end", "others", "code"), [
    (RULES, NOW + DAY, NOW, [], "bad_span"),
    (RULES, NOW - 3 * DAY, NOW - DAY, [], "in_the_past"),
    (RULES, NOW, NOW + 200 * DAY, [], "too_long"),
    (RULES, NOW + DAY, NOW + 3 * DAY, [Span(NOW + 2 * DAY, NOW + 4 * DAY)], "overlap"),
    (TravelRules(notice_working_days=3), NOW + DAY, NOW + 2 * DAY, [], "short_notice"),
    (TravelRules(yearly_cap_days=10), NOW + DAY, NOW + 6 * DAY,
     [Span(NOW - 20 * DAY, NOW - 14 * DAY)], "yearly_cap"),
], ids=["bad_span", "in_the_past", "too_long", "overlap", "short_notice", "yearly_cap"])
def test_requests_are_checked_against_the_profile(rules, start, end, others, code):
    with pytest.raises(PermitRefused) as e:
        check_request(rules, start, end, NOW, others)
    assert e.value.code == code


def test_local_profile_notice_counts_working_days():
    rules = TravelRules(notice_working_days=3)
    assert check_request(rules, NOW + 14 * DAY, NOW + 15 * DAY, NOW, []) == Tier.OFFICE


def _destination(client, org: Org) -> int:
    admin = login(client, "admin")
    r = client.post(f"{API}/zones", headers=admin, json={
        "name": "Hanyang hospital district", "kind": "destination", "crs": "gcj02",
        "owner_unit_id": org.city_id, "geometry": {"type": "Polygon", "coordinates": [[
            [114.20, 30.53], [114.24, 30.53], [114.24, 30.56], [114.20, 30.56], [114.20, 30.53]]]}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _ask(client, h, org: Org, dest: int, start: datetime, days: float, reason="medical"):
    return client.post(f"{API}/supervisees/{org.supervisee_id}/permits", headers=h, json={
        "reason": reason, "destination_zone_id": dest, "start_at": start.isoformat(),
        "end_at": (start + timedelta(days=days)).isoformat(), "details": "knee surgery"})


def test_office_approves_a_short_permit_and_the_phone_is_told(client, org: Org, db):
    dest = _destination(client, org)
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    start = datetime.now(UTC) + timedelta(days=2)
    r = _ask(client, h, org, dest, start, 3)
    assert (r.status_code, r.json()["required_tier"], r.json()["status"]) == (201, "office",
                                                                             "requested")
    pid = r.json()["id"]
    ok = client.post(f"{API}/permits/{pid}/approve", headers=h, json={})
    assert ok.json()["status"] == "approved"
    detail = client.get(f"{API}/permits/{pid}", headers=h).json()
    assert [e["action"] for e in detail["history"]] == ["requested", "approved"]
    assert detail["history"][1]["staff_id"] == org.staff["jiangan-officer"]
    [(payload,)] = db.execute("SELECT payload FROM outbox WHERE topic = 'device.command'")
    assert payload["device_ids"] == [cred["device_id"]]
    assert (payload["command"]["type"], payload["command"]["status"]) == ("permit", "approved")
    bad = _ask(client, h, org, dest, start + timedelta(days=1), 2)  # overlaps the approved one
    assert (bad.status_code, bad.json()["error"]) == (422, "permit.overlap")


def test_only_the_required_tier_approves_after_the_office_opinion(client, org: Org):
    dest = _destination(client, org)
    officer = login(client, "jiangan-officer")
    pid = _ask(client, officer, org, dest, datetime.now(UTC) + timedelta(days=1), 12).json()["id"]
    denied = client.post(f"{API}/permits/{pid}/approve", headers=officer, json={})
    assert (denied.status_code, denied.json()["error"]) == (403, "permit.wrong_tier")
    supervisor = login(client, "jiangan-supervisor")
    early = client.post(f"{API}/permits/{pid}/approve", headers=supervisor, json={})
    assert (early.status_code, early.json()["error"]) == (409, "permit.opinion_missing")
    op = client.post(f"{API}/permits/{pid}/opinion", headers=officer,
                     json={"recommend": True, "note": "family verified"})
    assert op.status_code == 200
    city = login(client, "admin")
    assert client.post(f"{API}/permits/{pid}/approve", headers=city, json={}).status_code == 403
    other_district = login(client, "jianghan-supervisor")  # right tier, wrong jurisdiction
    assert client.post(f"{API}/permits/{pid}/approve", headers=other_district,
                       json={}).status_code == 404
    done = client.post(f"{API}/permits/{pid}/approve", headers=supervisor, json={"note": "ok"})
    assert done.json()["status"] == "approved"
    # Amending to 40 days sends it back, now to the city bureau, after a new office opinion.
    amended = client.post(f"{API}/permits/{pid}/amend", headers=officer, json={
        "end_at": (datetime.now(UTC) + timedelta(days=41)).isoformat(), "note": "longer care"})
    assert (amended.json()["status"], amended.json()["required_tier"]) == ("requested", "city")
    assert client.post(f"{API}/permits/{pid}/approve", headers=supervisor,
                       json={}).status_code == 403


def test_reject_needs_a_reason_and_revoke_the_right_tier(client, org: Org):
    dest = _destination(client, org)
    h = login(client, "jiangan-officer")
    start = datetime.now(UTC) + timedelta(days=1)
    a = _ask(client, h, org, dest, start, 2).json()["id"]
    assert client.post(f"{API}/permits/{a}/reject", headers=h, json={"note": ""}).status_code == 422
    r = client.post(f"{API}/permits/{a}/reject", headers=h, json={"note": "no documents"})
    assert r.json()["status"] == "rejected"
    b = _ask(client, h, org, dest, start, 2).json()["id"]  # the rejected one does not block
    client.post(f"{API}/permits/{b}/approve", headers=h, json={})
    rv = client.post(f"{API}/permits/{b}/revoke", headers=h, json={"note": "court hearing moved"})
    assert rv.json()["status"] == "revoked"
    again = client.post(f"{API}/permits/{b}/revoke", headers=h, json={"note": "twice"})
    assert (again.status_code, again.json()["error"]) == (409, "permit.not_approved")


def test_a_phone_requests_only_for_itself(client, org: Org):
    dest = _destination(client, org)
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    start = datetime.now(UTC) + timedelta(days=1)
    body = {"reason": "family", "destination_zone_id": dest, "start_at": start.isoformat(),
            "end_at": (start + timedelta(days=1)).isoformat()}
    r = client.post(f"{API}/phone/permits", json=body,
                    headers=basic(cred["device_id"], cred["secret"]))
    assert (r.status_code, r.json()["supervisee_id"]) == (201, org.supervisee_id)
    assert client.post(f"{API}/phone/permits", json=body,
                       headers=basic(cred["device_id"], "wrong")).status_code == 401
    mine = client.get(f"{API}/phone/permits", headers=basic(cred["device_id"], cred["secret"]))
    assert [p["id"] for p in mine.json()] == [r.json()["id"]]
    bad = client.post(f"{API}/phone/permits", headers=basic(cred["device_id"], cred["secret"]),
                      json={**body, "reason": "holiday"})
    assert bad.status_code == 422


def _fixes(device: str, lonlat: tuple[float, float], t0: float, n: int = 3) -> RawMessage:
    body = [{"time": t0 + 60 * k, "lon": lonlat[0], "lat": lonlat[1], "accuracy": 15,
             "crs": "gcj02"} for k in range(n)]
    return RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), device, "t")


def test_permit_destination_joins_the_allowed_area_and_overdue_return_alerts(
        client, org: Org, db: psycopg.Connection, settings):
    dest = _destination(client, org)
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    start = datetime.now(UTC) + timedelta(minutes=1)
    pid = _ask(client, h, org, dest, start, 1).json()["id"]
    client.post(f"{API}/permits/{pid}/approve", headers=h, json={})
    # Pretend the trip began six hours ago (requests cannot start in the past): past the
    # outbound transit window (3 h across town), so Jianghan, which lies on the way from Jiang'an
    # to Hanyang and is allowed in transit, is allowed no longer.
    db.execute("UPDATE travel_permits SET start_at = now() - interval '6 hours' WHERE id = %s",
               (pid,))
    client.put(f"{API}/supervisees/{org.supervisee_id}/rules", headers=h,
               json={"overrides": {"exit_fixes": 3}, "reason": "reload"})  # bumps the config
    p = Pipeline.connect(settings)
    try:
        hospital = (114.22, 30.545)
        p.process([_fixes(cred["device_id"], deep_inside(JIANGAN), time.time() - 3000, 1)])
        p.process([_fixes(cred["device_id"], hospital, time.time() - 600)])
        assert db.execute("SELECT count(*) FROM alerts WHERE kind = 'area_exit'").fetchone() == (0,)
        # Elsewhere (Jianghan, not the destination): that is an exit.
        p.process([_fixes(cred["device_id"], deep_inside(JIANGHAN), time.time() - 200)])
        assert db.execute("SELECT count(*) FROM alerts WHERE kind = 'area_exit'").fetchone() == (1,)
    finally:
        p.close()
    # The permit ended two days ago and nobody checked in: overdue.
    db.execute("""UPDATE travel_permits SET start_at = now() - interval '3 days',
                  end_at = now() - interval '2 days', approved_end_at = now() - interval '2 days'
                  WHERE id = %s""", (pid,))
    assert check_overdue_returns(db) == 1
    assert check_overdue_returns(db) == 0  # once per permit
    row = db.execute("SELECT status, reason->>'rule', (reason->>'permit_id')::int FROM alerts "
                     "WHERE kind = 'overdue_return'").fetchone()
    assert row == ("open", "overdue_return.no_check_in", pid)
    # Checking in from a place that is not home is refused; from home it closes the alert.
    away = client.post(f"{API}/phone/permits/{pid}/return",
                       headers=basic(cred["device_id"], cred["secret"]))
    assert (away.status_code, away.json()["error"]) == (400, "permit.not_home")
    p = Pipeline.connect(settings)
    try:
        p.process([_fixes(cred["device_id"], deep_inside(JIANGAN), time.time() - 30, 1)])
    finally:
        p.close()
    back = client.post(f"{API}/phone/permits/{pid}/return",
                       headers=basic(cred["device_id"], cred["secret"]))
    assert back.status_code == 200, back.text
    assert back.json()["status"] == "returned"
    assert db.execute("SELECT status FROM alerts WHERE kind = 'overdue_return'").fetchone() == (
        "resolved",)


def test_sixty_day_window_counts_trips_before_and_after_and_only_within_sixty_days():
    # A 25-day trip on days 20-45 and a request for days 5-15: 35 days within days 5-65.
    after = [Span(NOW + 20 * DAY, NOW + 45 * DAY)]
    assert required_tier(RULES, NOW + 5 * DAY, NOW + 15 * DAY, after) == Tier.CITY
    # Days 0-25 and a request for days 60-70 never share a 60-day window beyond 25 days.
    apart = [Span(NOW, NOW + 25 * DAY)]
    assert required_tier(RULES, NOW + 60 * DAY, NOW + 70 * DAY, apart) == Tier.DISTRICT


def test_amending_a_trip_under_way_keeps_the_approved_span_until_decided(client, org: Org, db):
    dest = _destination(client, org)
    h = login(client, "jiangan-officer")
    pid = _ask(client, h, org, dest, datetime.now(UTC) + timedelta(minutes=5), 3).json()["id"]
    client.post(f"{API}/permits/{pid}/approve", headers=h, json={})
    approved_end = db.execute("SELECT approved_end_at FROM travel_permits").fetchone()[0]
    r = client.post(f"{API}/permits/{pid}/amend", headers=h, json={
        "end_at": (approved_end + timedelta(days=2)).isoformat(), "note": "surgery postponed"})
    assert (r.json()["status"], r.json()["required_tier"]) == ("requested", "office")
    # Still allowed to be at the destination until the old end; the overdue clock keeps it too.
    assert db.execute("SELECT approved_end_at FROM travel_permits").fetchone()[0] == approved_end
    rejected = client.post(f"{API}/permits/{pid}/reject", headers=h, json={"note": "no"})
    assert rejected.json()["status"] == "approved"  # the trip goes on as first approved
    assert rejected.json()["end_at"].startswith(approved_end.astimezone(UTC).isoformat()[:19])
