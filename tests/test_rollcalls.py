"""Roll-calls (随机点名), levels and key periods: planned, sent, answered or missed; time injected."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta

import orjson
import psycopg
import pytest

from alerts import rollcalls
from geofence.profile import DEFAULT_PROFILE
from ingest.pipeline import Channel, Pipeline, RawMessage
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.test_api import API

NOON_LOCAL = datetime.now(rollcalls.LOCAL).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture()
def phone(db: psycopg.Connection, org: Org) -> str:
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('drc', %s, 'h')",
               (org.supervisee_id,))
    db.execute("UPDATE supervisees SET level = 'strict' WHERE id = %s", (org.supervisee_id,))
    return "drc"


def test_each_day_plans_the_levels_number_of_roll_calls_in_waking_hours(db, phone, org: Org):
    n = rollcalls.plan_day(db, DEFAULT_PROFILE, now=NOON_LOCAL.timestamp())
    assert n == 3  # strict: three a day; the other supervisee has no phone
    times = [t for (t,) in db.execute("SELECT scheduled_at FROM roll_calls ORDER BY slot")]
    for t in times:
        local = t.astimezone(rollcalls.LOCAL)
        assert (8, 0) <= (local.hour, local.minute) < (21, 0)
    assert rollcalls.plan_day(db, DEFAULT_PROFILE, now=NOON_LOCAL.timestamp()) == 0  # idempotent


def test_a_key_period_adds_roll_calls(db, phone):
    today = NOON_LOCAL.date()
    db.execute("""INSERT INTO key_periods (name, starts_on, ends_on, extra_rollcalls)
                  VALUES ('National Day', %s, %s, 2)""", (today, today + timedelta(days=6)))
    assert rollcalls.plan_day(db, DEFAULT_PROFILE, now=NOON_LOCAL.timestamp()) == 5


def _fix(device: str, t: float, acc: float = 10.0) -> RawMessage:
    lon, lat = deep_inside(JIANGAN)
    return RawMessage(Channel.NATIVE_MQTT, orjson.dumps(
        {"time": t, "lon": lon, "lat": lat, "accuracy": acc, "crs": "gcj02"}), device, "t")


def test_roll_call_is_sent_to_the_phone_and_answered_by_a_fresh_fix(db, rds, settings, phone,
                                                                    org: Org):
    rid = rollcalls.request_now(db, org.supervisee_id, "officer", "home visit")
    now = time.time()
    assert rollcalls.send_due(db, rds, settings.redis_prefix, DEFAULT_PROFILE, now=now) == 1
    [(payload,)] = db.execute("SELECT payload FROM outbox WHERE topic = 'device.command'")
    assert payload["device_ids"] == [phone] and payload["owntracks"] is True
    assert (payload["command"]["type"], payload["command"]["rollcall_id"]) == ("rollcall", rid)
    p = Pipeline.connect(settings)
    try:
        p.process([_fix(phone, now - 600)])  # an old fix answers nothing
        assert db.execute("SELECT status FROM roll_calls").fetchone() == ("sent",)
        p.process([_fix(phone, now + 5)])
    finally:
        p.close()
    status, answered_by = db.execute("SELECT status, answer_device FROM roll_calls").fetchone()
    assert (status, answered_by) == ("answered", phone)
    assert not rds.sismember(settings.redis_prefix + rollcalls.PENDING, phone)
    assert rollcalls.close_missed(db, now=now + 7200) == 0


def test_unanswered_roll_call_is_missed_once_with_an_alert(db, rds, settings, phone, org: Org):
    rollcalls.request_now(db, org.supervisee_id, "random")
    now = time.time()
    rollcalls.send_due(db, rds, settings.redis_prefix, DEFAULT_PROFILE, now=now)
    assert rollcalls.close_missed(db, now=now + 3500) == 0  # the 60-minute window is still open
    assert rollcalls.close_missed(db, now=now + 3700) == 1
    assert rollcalls.close_missed(db, now=now + 3800) == 0
    assert db.execute("SELECT status FROM roll_calls").fetchone() == ("missed",)
    kind, rule = db.execute("SELECT kind, reason->>'rule' FROM alerts").fetchone()
    assert (kind, rule) == ("missed_roll_call", "missed_roll_call.no_fresh_fix_in_window")


def test_undecidable_streak_makes_the_engine_ask_for_a_roll_call(db, settings, phone):
    p = Pipeline.connect(settings)
    try:
        now = time.time()
        p.process([_fix(phone, now - 600 + k * 60, acc=900) for k in range(6)])
    finally:
        p.close()
    assert db.execute("SELECT origin, reason FROM roll_calls").fetchall() == [
        ("engine", "roll_call.undecidable_streak")]


def test_officer_roll_call_and_level_change_through_the_api(client, org: Org, db):
    h = login(client, "jiangan-officer")
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dlv', %s, 'h2')",
               (org.supervisee_id,))
    rc = client.post(f"{API}/supervisees/{org.supervisee_id}/rollcalls", headers=h,
                     json={"reason": "suspected phone left at home"})
    assert (rc.status_code, rc.json()["origin"], rc.json()["status"]) == (201, "officer",
                                                                          "scheduled")
    other = login(client, "jianghan-officer")
    assert client.post(f"{API}/supervisees/{org.supervisee_id}/rollcalls", headers=other,
                       json={"reason": "x" * 5}).status_code == 404
    lv = client.put(f"{API}/supervisees/{org.supervisee_id}/level", headers=h, json={
        "level": "strict", "key_flags": ["drugs"], "reason": "warning issued 2026-11-20"})
    assert (lv.status_code, lv.json()["level"], lv.json()["key_flags"]) == (200, "strict",
                                                                           ["drugs"])
    changes = client.get(f"{API}/supervisees/{org.supervisee_id}/changes", headers=h).json()
    assert [(c["field"], c["old"], c["new"]) for c in changes] == [
        ("level", "normal", "strict"), ("key_flags", [], ["drugs"])]
    [(payload,)] = db.execute("SELECT payload FROM outbox WHERE topic = 'device.command'")
    # Strict is every 5 minutes; a key person reports twice as often.
    assert payload["command"] == {"type": "config", "report_interval_s": 150.0}


def test_key_periods_are_set_by_the_city_bureau(client, org: Org):
    body = {"name": "Spring Festival", "starts_on": str(date(2027, 2, 5)),
            "ends_on": str(date(2027, 2, 12)), "levels": ["strict"], "interval_factor": 0.5}
    for who in ("jiangan-officer", "jiangan-supervisor"):  # city-wide: not theirs to set
        assert client.post(f"{API}/key-periods", json=body,
                           headers=login(client, who)).status_code == 403
    ok = client.post(f"{API}/key-periods", json=body, headers=login(client, "admin"))
    assert ok.status_code == 201, ok.text
    listed = client.get(f"{API}/key-periods", headers=login(client, "jiangan-officer")).json()
    assert [k["name"] for k in listed] == ["Spring Festival"]


def test_a_recorded_warning_moves_the_person_to_strict_by_profile(client, org: Org, db):
    h = login(client, "jiangan-officer")
    rep = client.post(f"{API}/supervisees/{org.supervisee_id}/sanctions", headers=h,
                      json={"kind": "reprimand", "reason": "out of contact 3 days"})
    assert rep.status_code == 201
    assert client.get(f"{API}/supervisees/{org.supervisee_id}", headers=h).json()["level"] == "normal"
    warn = client.post(f"{API}/supervisees/{org.supervisee_id}/sanctions", headers=h,
                       json={"kind": "warning", "reason": "second reprimand"})
    assert (warn.status_code, warn.json()["decided_by"]) == (201, org.staff["jiangan-officer"])
    assert client.get(f"{API}/supervisees/{org.supervisee_id}", headers=h).json()["level"] == "strict"
    changes = client.get(f"{API}/supervisees/{org.supervisee_id}/changes", headers=h).json()
    assert changes[-1]["reason"].startswith("automatic after a warning (national-2020@4)")


def test_a_mock_location_answers_no_roll_call(db, rds, settings, phone, org: Org):
    rollcalls.request_now(db, org.supervisee_id, "officer", "check")
    now = time.time()
    rollcalls.send_due(db, rds, settings.redis_prefix, DEFAULT_PROFILE, now=now)
    lon, lat = deep_inside(JIANGAN)
    mock = RawMessage(Channel.NATIVE_MQTT, orjson.dumps(
        {"time": now + 5, "lon": lon, "lat": lat, "accuracy": 8, "crs": "gcj02", "mock": True}),
        phone, "t")
    p = Pipeline.connect(settings)
    try:
        p.process([mock])
    finally:
        p.close()
    assert db.execute("SELECT status FROM roll_calls").fetchone() == ("sent",)
