"""Compliance reports: every figure of a seeded month exactly, the hourly position summary, the
API's jurisdiction, CSV and PDF, the audit log, and the monthly e-mail sent once."""

from __future__ import annotations

import csv
import io
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from alerts import monthly_reports, service
from alerts.reports import compliance, period_of, slot_minutes, spells
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org, login
from tests.receivers import SmtpSink

API = "/api/v1"
TZ = ZoneInfo("Asia/Shanghai")
T0, T1 = datetime(2026, 10, 31, 16, tzinfo=UTC), datetime(2026, 11, 30, 16, tzinfo=UTC)  # Nov, Beijing


def z(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def fix(db: psycopg.Connection, person: int, at: datetime, accuracy: float | None = 15.0,
        provider: str = "gps", mock: bool = False, device: str = "dev-a") -> None:
    db.execute("""INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                                         raw_lon, raw_lat, crs, accuracy, provider, source, mock)
                  VALUES (%s, %s, %s, %s, 114.3, 30.6, 114.3, 30.6, 'wgs84', %s, %s, 'native', %s)
                  ON CONFLICT DO NOTHING""", (device, person, at, at, accuracy, provider, mock))


def alert(db: psycopg.Connection, office: int, person: int, kind: str, severity: str,
          opened: datetime, ack_s: float | None = None, level: int = 0, suppressed: bool = False,
          resolved: datetime | None = None, disposition: str | None = None,
          cleared: datetime | None = None) -> int:
    row = db.execute(
        """INSERT INTO alerts (kind, severity, supervisee_id, office_id, opened_at, first_fix_time,
                               acknowledged_at, escalation_level, status, resolved_at, disposition,
                               cleared_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (kind, severity, person, office, opened, opened,
         None if ack_s is None else opened + timedelta(seconds=ack_s), level,
         "resolved" if resolved else "acknowledged" if ack_s is not None else "open",
         resolved, disposition, cleared)).fetchone()
    assert row is not None
    if suppressed:  # the suppression trigger decides at insert; a test sets it afterwards
        db.execute("ALTER TABLE alerts DISABLE TRIGGER alerts_suppressed")
        db.execute("UPDATE alerts SET suppressed = true WHERE id = %s", (row[0],))
        db.execute("ALTER TABLE alerts ENABLE TRIGGER alerts_suppressed")
    return int(row[0])


@pytest.fixture()
def month(db: psycopg.Connection, org: Org) -> dict[str, Any]:
    """November 2026 (Beijing) in two offices: fixes with gaps, alerts with acknowledgement
    times, silences, roll-calls, location requests, permits and sanctions."""
    ja, jh = org.office_ids[JIANGAN], org.office_ids[JIANGHAN]
    a, b = org.supervisee_id, org.other_supervisee_id
    officer = org.staff["jiangan-officer"]
    c = db.execute("""INSERT INTO supervisees (office_id, full_name, case_number, supervision_type,
                                               active, created_at)
                      VALUES (%s, 'Ended', 'T-ended', 'parole', false, '2026-10-01')
                      RETURNING id""", (ja,)).fetchone()[0]
    # A: normal, then strict from 00:20 on 16 Nov Beijing (15 Nov 16:20Z).
    db.execute("UPDATE supervisees SET created_at = '2026-10-01', level = 'strict' WHERE id = %s", (a,))
    db.execute("""INSERT INTO supervisee_changes (supervisee_id, at, field, old_value, new_value, reason)
                  VALUES (%s, '2026-11-15T16:20Z', 'level', '"normal"', '"strict"', 'warning')""", (a,))
    # B: lenient key person (30-minute slots), enrolled 10 Nov 00:30Z.
    db.execute("""UPDATE supervisees SET created_at = '2026-11-10T00:30Z', level = 'lenient',
                         key_flags = '{drugs}' WHERE id = %s""", (b,))
    for d in ("dev-a", "dev-b", "dev-c"):
        db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, %s)",
                   (d, {"dev-a": a, "dev-b": b, "dev-c": c}[d], "h-" + d))
    # A's fixes: 31 Oct 16Z (first hour): minutes 0, 3, 20 usable, 50 too inaccurate (500 m);
    # 17Z: cell-only and mock only; a full day (3 Nov) every 10 minutes; 20 Nov 10Z (strict):
    # minutes 1, 6, 11, 59; one before the period.
    for m, acc in ((0, 15.0), (3, 15.0), (20, 15.0), (50, 500.0)):
        fix(db, a, z("2026-10-31T16:00") + timedelta(minutes=m), acc)
    fix(db, a, z("2026-10-31T17:05"), 30, provider="cell")
    fix(db, a, z("2026-10-31T17:10"), 10, mock=True)
    fix(db, a, z("2026-10-31T17:15"), 0)
    for i in range(144):
        fix(db, a, z("2026-11-03T00:00") + timedelta(minutes=10 * i))
    for m in (1, 6, 11, 59):
        fix(db, a, z("2026-11-20T10:00") + timedelta(minutes=m))
    fix(db, a, z("2026-10-31T15:30"))
    fix(db, b, z("2026-11-12T03:10"), 50, device="dev-b")
    fix(db, b, z("2026-11-12T03:40"), 50, device="dev-b")
    fix(db, c, z("2026-11-05T11:59"), 10, device="dev-c")  # C's last record: the end

    # Silences. A: a communication failure in two spells (6 h, then 3 h; still open), a phone-off
    # spell inside the first (3 h, resolved, no history); C: a false alarm (1 h);
    # B: a location failure from before the period (8 h inside it), a communication failure
    # from 20 Nov 00Z still going (256 h: more than 10 days, a warning).
    a_comm = alert(db, ja, a, "communication_failure", "medium", z("2026-11-02T00:00"), ack_s=1800)
    db.execute("""INSERT INTO alert_events (alert_id, at, action, detail) VALUES
                  (%(i)s, '2026-11-02T06:00Z', 'cleared', '{}'),
                  (%(i)s, '2026-11-08T00:01Z', 'recurred', '{"since": "2026-11-08T00:00:00+00:00"}'),
                  (%(i)s, '2026-11-08T03:00Z', 'cleared', '{}')""", {"i": a_comm})
    alert(db, ja, a, "phone_off", "high", z("2026-11-02T02:00"), resolved=z("2026-11-02T05:00"),
          disposition="confirmed_violation")
    alert(db, ja, c, "communication_failure", "medium", z("2026-11-03T00:00"), ack_s=240,
          resolved=z("2026-11-03T01:00"), disposition="false_alarm")
    alert(db, jh, b, "location_failure", "medium", z("2026-10-30T00:00"),
          cleared=z("2026-11-01T00:00"))
    alert(db, jh, b, "communication_failure", "medium", z("2026-11-20T00:00"))
    # Other alerts: acknowledgement times (s), escalations, one suppressed, one after the period.
    alert(db, ja, a, "area_exit", "high", z("2026-11-05T10:00"), ack_s=120,
          resolved=z("2026-11-05T11:00"))
    alert(db, ja, a, "exclusion_entry", "critical", z("2026-11-06T10:00"), ack_s=600, level=1,
          resolved=z("2026-11-06T11:00"))
    alert(db, ja, a, "curfew_breach", "high", z("2026-11-07T10:00"), ack_s=60,
          resolved=z("2026-11-07T11:00"))
    alert(db, ja, a, "missed_roll_call", "medium", z("2026-11-09T10:00"), level=2)
    alert(db, ja, a, "suspected_spoofing", "medium", z("2026-11-10T10:00"), ack_s=30,
          suppressed=True)
    alert(db, ja, a, "area_exit", "high", z("2026-12-01T10:00"), ack_s=5)
    alert(db, jh, b, "area_exit", "high", z("2026-11-12T10:00"), ack_s=300,
          resolved=z("2026-11-12T11:00"))
    alert(db, jh, b, "overdue_return", "high", z("2026-11-25T10:00"), ack_s=900,
          resolved=z("2026-11-25T11:00"))

    # Roll-calls: Jiang'an 4 sent in the period (2 answered, 1 missed, 1 waiting), one only
    # scheduled, one sent before; Jianghan 1 answered.
    for office, person, sent, status in ((ja, a, "2026-11-04T02:00Z", "answered"),
                                         (ja, a, "2026-11-05T02:00Z", "answered"),
                                         (ja, a, "2026-11-06T02:00Z", "missed"),
                                         (ja, a, "2026-11-30T15:30Z", "sent"),
                                         (ja, a, None, "scheduled"),
                                         (ja, a, "2026-10-30T02:00Z", "answered"),
                                         (jh, b, "2026-11-12T02:00Z", "answered")):
        db.execute("""INSERT INTO roll_calls (supervisee_id, office_id, origin, scheduled_at,
                                              sent_at, deadline, status, answered_at)
                      VALUES (%s, %s, 'officer', coalesce(%s::timestamptz, '2026-11-29T00:00Z'),
                              %s, %s::timestamptz + interval '1 hour', %s,
                              CASE WHEN %s = 'answered' THEN %s::timestamptz + interval '5 minutes' END)""",
                   (person, office, sent, sent, sent, status, status, sent))
    # Active confirmation in Jiang'an: answered, expired, throttled (never sent).
    for status, sent in (("answered", True), ("expired", True), ("throttled", False)):
        db.execute("""INSERT INTO location_requests (device_id, supervisee_id, office_id,
                          requested_at, evidence_fix_time, rule, status, throttle_reason, sent_at,
                          deadline, answered_at)
                      VALUES ('dev-a', %s, %s, '2026-11-04T03:00Z', '2026-11-04T03:00Z',
                              'confirm.area_exit', %s, %s, %s, '2026-11-04T03:04Z', %s)""",
                   (a, ja, status, None if sent else "hourly_limit",
                    z("2026-11-04T03:00") if sent else None,
                    z("2026-11-04T03:01") if status == "answered" else None))
    # Permits by tier and outcome (created in the period), and one from before.
    dest = org.zone_ids[JIANGHAN]
    for office, person, tier, status, created in (
            (ja, a, "office", "returned", "2026-11-02T01:00Z"),
            (ja, a, "office", "rejected", "2026-11-03T01:00Z"),
            (ja, a, "district", "approved", "2026-11-04T01:00Z"),
            (ja, a, "city", "requested", "2026-11-05T01:00Z"),
            (jh, b, "district", "revoked", "2026-11-15T01:00Z"),
            (ja, a, "office", "approved", "2026-10-20T01:00Z")):
        db.execute("""INSERT INTO travel_permits (supervisee_id, office_id, reason,
                          destination_zone_id, start_at, end_at, status, required_tier, profile,
                          created_at)
                      VALUES (%s, %s, 'medical', %s, '2026-12-10T00:00Z', '2026-12-12T00:00Z',
                              %s, %s, 'national-2020@2', %s)""",
                   (person, office, dest, status, tier, created))
    for kind, at in (("reprimand", "2026-11-10T01:00Z"), ("warning", "2026-11-20T01:00Z"),
                     ("reprimand", "2026-10-20T01:00Z")):
        db.execute("""INSERT INTO sanctions (supervisee_id, kind, decided_by, decided_at, reason)
                      VALUES (%s, %s, %s, %s, 'seen')""", (a, kind, officer, at))
    return {"ja": ja, "jh": jh, "a": a, "b": b, "c": c}


def office_row(report: dict[str, Any], office: int) -> dict[str, Any]:
    return next(o for o in report["offices"] if o["unit_id"] == office)


def test_slots_on_the_five_minute_grid():
    assert [slot_minutes(s) for s in (150, 300, 450, 900, 1800, 3600, 7200)] == \
        [5, 5, 5, 15, 30, 60, 60]
    assert period_of(datetime(2026, 11, 1).date(), datetime(2026, 12, 1).date(), TZ) == (T0, T1)


def test_the_hourly_summary_counts_usable_fixes_by_the_persons_rules(db, org: Org):
    a = org.supervisee_id
    db.execute("""UPDATE supervisees SET rule_overrides = '{"max_accuracy_m": 50}' WHERE id = %s""", (a,))
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dev-a', %s, 'h')", (a,))
    h = z("2026-11-20T10:00")
    fix(db, a, h + timedelta(minutes=1), 40)  # usable: slot 0
    fix(db, a, h + timedelta(minutes=2), 100)  # within 200 m but not this person's 50 m
    fix(db, a, h + timedelta(minutes=31), 10, provider="cell")
    fix(db, a, h + timedelta(minutes=32), 10, mock=True)
    fix(db, a, h + timedelta(minutes=33), None)
    fix(db, a, h + timedelta(minutes=58), 12)  # slot 11
    fix(db, a, h + timedelta(minutes=58), 12)  # the same fix again: not stored, not counted
    assert db.execute("SELECT hour, fixes, usable, slots, best_accuracy FROM position_hours"
                      ).fetchall() == [(h, 6, 2, 1 | 1 << 11, 12.0)]


def test_the_hourly_summary_is_the_engines_usable_test_for_every_level_and_profile(db, org: Org):
    """Random fixes of five people (three levels, two overrides), stored in multi-row statements
    that span people and hours, under no profile, then a profile with a limit per level (one level
    stored without one), then a profile that lists only the normal level: every hour's counts,
    slots and best accuracy equal a recomputation with `geofence.engine.is_usable` and the
    rules `RuleProfile.rules_for` gives each person under the profile in force at storage."""
    import random

    import orjson

    from geofence.engine import is_usable
    from geofence.model import Fix
    from geofence.profile import RuleProfile, Rules

    ja = org.office_ids[JIANGAN]
    people: dict[int, tuple[str, dict[str, Any]]] = {
        org.supervisee_id: ("strict", {}), org.other_supervisee_id: ("normal", {})}
    for i, (level, over) in enumerate((("lenient", {}), ("strict", {"max_accuracy_m": 50}),
                                       ("normal", {"max_accuracy_m": 500}))):
        pid = db.execute("""INSERT INTO supervisees (office_id, full_name, case_number,
                                                     supervision_type, level, rule_overrides)
                            VALUES (%s, %s, %s, 'probation', %s, %s) RETURNING id""",
                         (ja, f"P{i}", f"T-hours-{i}", level, orjson.dumps(over).decode())
                         ).fetchone()[0]
        people[pid] = (level, over)
    for pid, (level, over) in people.items():
        db.execute("UPDATE supervisees SET level = %s, rule_overrides = %s WHERE id = %s",
                   (level, orjson.dumps(over).decode(), pid))
    body = {"name": "hours", "version": 1, "levels": {
        "strict": {"max_accuracy_m": 30}, "normal": {"max_accuracy_m": 80}, "lenient": {}}}
    only_normal = {"name": "hours", "version": 2, "levels": {"normal": {"max_accuracy_m": 60}}}
    rnd = random.Random(18)
    expected: dict[tuple[int, datetime], list[Any]] = {}
    t0 = z("2026-11-20T00:00")
    for phase, profile in enumerate((None, body, only_normal)):
        if profile is not None:
            db.execute("UPDATE rule_profiles SET active = false WHERE active")
            db.execute("INSERT INTO rule_profiles (name, version, body, active) VALUES (%s, %s, %s, true)",
                       (profile["name"], profile["version"], orjson.dumps(profile).decode()))
        rules = {pid: (RuleProfile.from_dict(profile).rules_for(level, over) if profile
                       else Rules(**over)) for pid, (level, over) in people.items()}
        for _statement in range(4):
            rows = []
            for _ in range(60):
                pid = rnd.choice(list(people))
                at = t0 + timedelta(hours=3 * phase + rnd.randrange(3), minutes=rnd.randrange(60),
                                    seconds=rnd.randrange(60), microseconds=rnd.randrange(10**6))
                acc = rnd.choice((None, 0.0, 5.0, 25.0, 30.0, 45.0, 60.0, 79.0, 81.0, 150.0,
                                  300.0, 600.0))
                provider = rnd.choice(("gps", "network", "fused", "cell", None))
                mock = rnd.random() < 0.1
                rows.append((f"dev-{pid}", pid, at, at, acc, provider, mock))
                f = Fix(f"dev-{pid}", at.timestamp(), 114.3, 30.6, accuracy=acc, provider=provider)
                real = acc is not None and acc > 0 and not mock and provider != "cell"
                ok = real and is_usable(f, rules[pid])
                e = expected.setdefault((pid, at.replace(minute=0, second=0, microsecond=0)),
                                        [0, 0, 0, None])
                e[0] += 1
                e[1] += ok
                e[2] |= (1 << (at.minute // 5)) if ok else 0
                if real:
                    e[3] = acc if e[3] is None else min(e[3], acc)
            db.execute("""INSERT INTO positions (device_id, supervisee_id, fix_time, received_at,
                              lon, lat, raw_lon, raw_lat, crs, accuracy, provider, source, mock)
                          SELECT d, p, ft, ra, 114.3, 30.6, 114.3, 30.6, 'wgs84', a, pr, 'native', m
                            FROM unnest(%s::text[], %s::int[], %s::timestamptz[], %s::timestamptz[],
                                        %s::real[], %s::text[], %s::bool[])
                                 AS x(d, p, ft, ra, a, pr, m)""",
                       [list(c) for c in zip(*rows, strict=True)])
    got = {(p, h): [f, u, sl, acc] for p, h, f, u, sl, acc in db.execute(
        "SELECT supervisee_id, hour, fixes, usable, slots, best_accuracy FROM position_hours")}
    assert sum(e[0] for e in expected.values()) == 720 and len(expected) > 30
    assert sum(e[1] for e in expected.values()) > 100  # some usable, some not, in every phase
    assert got == expected


def test_a_month_of_figures_exactly(db, org: Org, month):
    report = compliance(db, org.city_id, T0, T1, now=z("2026-12-02T00:00"))
    ja, jh = office_row(report, month["ja"]), office_row(report, month["jh"])
    # People: A and C (ended 5 Nov 11:59Z) in Jiang'an, B from 10 Nov 00:30Z in Jianghan.
    assert (ja["people"], jh["people"], report["total"]["people"]) == (2, 1, 3)
    assert ja["person_days"] == round(30 + (z("2026-11-05T11:59") - T0).total_seconds() / 86400, 2)
    assert jh["person_days"] == round((T1 - z("2026-11-10T00:30")).total_seconds() / 86400, 2)
    # Coverage. A: 361 normal hours (4 slots) then 359 strict (12); C: 115 normal hours.
    assert ja["coverage"]["supervised_hours"] == 720 + 115
    assert ja["coverage"]["expected_slots"] == 361 * 4 + 359 * 12 + 115 * 4
    # 2 slots on 31 Oct 16Z, 96 on 3 Nov (four 15-minute slots an hour), 4 strict on 20 Nov.
    assert ja["coverage"]["covered_slots"] == 2 + 96 + 4
    assert ja["coverage"]["hours_with_fix"] == 2 + 24 + 1
    assert ja["coverage"]["hours_with_usable_fix"] == 1 + 24 + 1
    assert (ja["coverage"]["fixes"], ja["coverage"]["usable_fixes"]) == (7 + 144 + 4, 3 + 144 + 4)
    assert ja["coverage"]["rate"] == round(102 / (361 * 4 + 359 * 12 + 115 * 4), 4)
    assert ja["coverage"]["hour_rate"] == round(26 / 835, 4)
    # B: 495 hours of 30-minute slots (lenient key person), 2 covered on 12 Nov.
    assert (jh["coverage"]["supervised_hours"], jh["coverage"]["expected_slots"],
            jh["coverage"]["covered_slots"]) == (495, 990, 2)
    total = report["total"]["coverage"]
    assert (total["expected_slots"], total["covered_slots"]) == (6212 + 990, 104)
    assert total["rate"] == round(104 / 7202, 4)
    # Silences: spells and hours inside the period.
    assert ja["silences"]["communication_failure"] == {"count": 3, "hours": 10.0}
    assert ja["silences"]["phone_off"] == {"count": 1, "hours": 3.0}
    assert jh["silences"]["location_failure"] == {"count": 0, "hours": 8.0}
    assert jh["silences"]["communication_failure"] == {"count": 1, "hours": 256.0}
    assert (ja["silence_hours"], jh["silence_hours"], report["total"]["silence_hours"]) == \
        (13.0, 264.0, 277.0)
    # Alerts opened in the period.
    assert ja["alerts"]["total"] == 8 and ja["alerts"]["suppressed"] == 1
    assert {k: v for k, v in ja["alerts"]["by_kind"].items() if v} == {
        "communication_failure": 2, "phone_off": 1, "area_exit": 1, "exclusion_entry": 1,
        "curfew_breach": 1, "missed_roll_call": 1, "suspected_spoofing": 1}
    assert ja["alerts"]["by_severity"] == {"critical": 1, "high": 3, "medium": 4, "low": 0}
    assert jh["alerts"]["total"] == 3 and jh["overdue_returns"] == 1
    # Time to acknowledge: Jiang'an 60, 120, 240, 600, 1800 s (the suppressed one left out).
    assert ja["acknowledgement"] == {"acknowledged": 5, "unacknowledged": 2, "p50_s": 240.0,
                                     "p90_s": 1320.0}
    assert jh["acknowledgement"] == {"acknowledged": 2, "unacknowledged": 1, "p50_s": 600.0,
                                     "p90_s": 840.0}
    # The city's percentiles over all seven, not from the offices': 300 and 1260.
    assert report["total"]["acknowledgement"] == {"acknowledged": 7, "unacknowledged": 3,
                                                  "p50_s": 300.0, "p90_s": 1260.0}
    district = next(d for d in report["districts"] if d["unit_id"] == ja["parent_id"])
    assert district["acknowledgement"] == ja["acknowledgement"]
    assert ja["escalations"] == {"to_district": 2, "to_city": 1}
    assert ja["rollcalls"] == {"sent": 4, "answered": 2, "missed": 1, "waiting": 1,
                               "answer_rate": 0.5}
    assert report["total"]["rollcalls"]["answer_rate"] == 0.6
    assert ja["location_requests"] == {"sent": 2, "answered": 1, "expired": 1, "throttled": 1}
    assert ja["permits"]["total"] == 4 and jh["permits"]["total"] == 1
    assert ja["permits"]["by_tier"] == {
        "office": {"approved": 1, "rejected": 1, "revoked": 0, "pending": 0},
        "district": {"approved": 1, "rejected": 0, "revoked": 0, "pending": 0},
        "city": {"approved": 0, "rejected": 0, "revoked": 0, "pending": 1}}
    assert jh["permits"]["by_tier"]["district"]["revoked"] == 1
    # Sanctions: A's two out-of-contact spells (phone off merged into the first) suggest a
    # reprimand each, C's false alarm nothing, B's 10.7 days a warning; decided in November.
    assert ja["sanctions"] == {"suggested": {"reprimand": 2, "warning": 0, "revocation_request": 0},
                               "decided": {"reprimand": 1, "warning": 1, "revocation_request": 0}}
    assert jh["sanctions"]["suggested"] == {"reprimand": 0, "warning": 1, "revocation_request": 0}
    assert [d["name"] for d in report["districts"]] == ["江岸区司法局", "江汉区司法局"]


def test_a_silence_that_comes_back_is_two_spells_in_the_alerts_history(db, org: Org):
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dev-a', %s, 'h')",
               (org.supervisee_id,))
    first, second = z("2026-11-02T00:00"), z("2026-11-02T05:00")
    service.raise_for_devices(db, "communication_failure", "medium",
                              [("dev-a", first, {"rule": "x"})], first)
    service.clear_device_alerts(db, [("dev-a", "communication_failure")])
    service.raise_for_devices(db, "communication_failure", "medium",
                              [("dev-a", second, {"rule": "x"})], second)
    (aid, count), = db.execute("SELECT id, count FROM alerts").fetchall()
    events = db.execute("SELECT action, at, detail ->> 'since' FROM alert_events "
                        "WHERE alert_id = %s ORDER BY id", (aid,)).fetchall()
    assert count == 2 and [e[0] for e in events] == ["cleared", "recurred"]
    got = spells(first, None, None, [e[0] for e in events], [e[1] for e in events],
                 [e[2] for e in events])
    assert got == [(first, events[0][1]), (second, None)]


@pytest.fixture()
def auditor(session, org: Org) -> str:
    from api.security import hash_password
    from store.demo import create_staff
    from store.enums import Role
    from store.models import OrgUnit

    create_staff(session, session.get(OrgUnit, org.city_id), "auditor", Role.AUDITOR, PASSWORD,
                 password_hash=hash_password(PASSWORD))
    session.commit()
    return "auditor"


NOVEMBER = {"from": "2026-11-01", "to": "2026-12-01"}


def test_each_caller_gets_their_jurisdiction_and_nothing_else(client, db, org: Org, month, auditor):
    sup = login(client, "jiangan-supervisor")
    r = client.get(f"{API}/reports/compliance", params=NOVEMBER, headers=sup)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unit"]["id"] == org.district_ids[JIANGAN]
    assert [o["unit_id"] for o in body["offices"]] == [month["ja"]]
    assert body["total"]["people"] == 2 and body["total"]["alerts"]["total"] == 8
    assert body["period"] == {"from": T0.isoformat(), "to": T1.isoformat(), "hours": 720}
    for other in (org.district_ids[JIANGHAN], month["jh"], org.city_id):
        refused = client.get(f"{API}/reports/compliance", headers=sup,
                             params={**NOVEMBER, "unit_id": other})
        assert refused.status_code == 403, refused.text
    officer = client.get(f"{API}/reports/compliance", params=NOVEMBER,
                         headers=login(client, "jiangan-officer")).json()
    assert officer["unit"]["id"] == month["ja"] and officer["districts"] == []
    city = client.get(f"{API}/reports/compliance", params=NOVEMBER,
                      headers=login(client, auditor)).json()
    assert city["total"]["people"] == 3 and len(city["offices"]) == 2
    bad = client.get(f"{API}/reports/compliance", headers=sup,
                     params={"from": "2026-11-01T00:30:00+08:00", "to": "2026-12-01"})
    assert bad.status_code == 422 and "whole hour" in bad.json()["detail"]
    assert client.get(f"{API}/reports/compliance", headers=sup,
                      params={"from": "2025-01-01", "to": "2026-12-01"}).status_code == 422
    audited = db.execute("""SELECT s.username, a.target, a.detail ->> 'format', a.detail ->> 'start'
                              FROM audit_log a JOIN staff s ON s.id = a.staff_id
                             WHERE a.action = 'report.compliance' ORDER BY a.id""").fetchall()
    assert audited == [("jiangan-supervisor", f"org_unit:{org.district_ids[JIANGAN]}", "json",
                        T0.isoformat()),
                       ("jiangan-officer", f"org_unit:{month['ja']}", "json", T0.isoformat()),
                       ("auditor", f"org_unit:{org.city_id}", "json", T0.isoformat())]


def test_csv_has_one_row_per_unit_for_excel(client, db, org: Org, month):
    r = client.get(f"{API}/reports/compliance", headers=login(client, "admin"),
                   params={**NOVEMBER, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "compliance-" in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 only with the mark
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    keys = [h.rsplit(" ", 1)[1] for h in rows[0]]
    assert rows[0][keys.index("coverage_pct")] == "定位覆盖率(%) coverage_pct"
    table = [dict(zip(keys, row, strict=True)) for row in rows[1:]]
    assert [(t["unit"], t["level"]) for t in table] == [
        ("江岸区司法所", "司法所"), ("江汉区司法所", "司法所"), ("江岸区司法局", "区司法局"),
        ("江汉区司法局", "区司法局"), ("武汉市司法局", "市司法局")]
    city = table[-1]
    assert (city["people"], city["alerts_total"], city["ack_p50_min"], city["ack_p90_min"]) == \
        ("3", "11", "5.0", "21.0")
    assert city["coverage_pct"] == str(round(104 / 7202 * 100, 2))
    assert (table[0]["alerts_exclusion_entry"], table[0]["permits_city_pending"],
            table[1]["suggested_warning"], table[0]["from"]) == ("1", "1", "1", "2026-11-01 00:00")
    assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'report.compliance' "
                      "AND detail ->> 'format' = 'csv'").fetchone()[0] == 1


def pdf_text(pdf: bytes, tmp_path) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                          capture_output=True, text=True).stdout


def test_pdf_is_chinese_text_with_its_fonts_embedded(client, org: Org, month, tmp_path):
    r = client.get(f"{API}/reports/compliance", headers=login(client, "admin"),
                   params={**NOVEMBER, "format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    text = pdf_text(r.content, tmp_path)
    for words in ("武汉市司法局", "江岸区司法所", "江汉区司法局", "定位覆盖率", "签收用时",
                  "2026-11-01 00:00", "通信中断"):
        assert words in text, words
    (tmp_path / "f.pdf").write_bytes(r.content)
    fonts = subprocess.run(["pdffonts", str(tmp_path / "f.pdf")], check=True, capture_output=True,
                           text=True).stdout
    cjk = [line for line in fonts.splitlines() if "CJK" in line]
    assert cjk and all(line.split()[-5] == "yes" for line in cjk), fonts  # emb column


def test_channels_choose_alerts_and_reports(client, db, org: Org):
    from tests.test_delivery import notifications, raise_alert

    officer = login(client, "jiangan-officer")
    refused = client.post(f"{API}/me/channels", headers=officer, json={
        "channel": "email", "address": "o@example.org", "reports": True})
    assert refused.status_code == 403
    ok = client.post(f"{API}/me/channels", headers=officer, json={
        "channel": "email", "address": "o@example.org", "alerts": False})
    assert ok.status_code == 422  # neither alerts nor reports
    sup = login(client, "jiangan-supervisor")
    made = client.post(f"{API}/me/channels", headers=sup, json={
        "channel": "email", "address": "s@example.org", "alerts": False, "reports": True})
    assert made.status_code == 201 and made.json()["reports"] is True
    aid = raise_alert(db, org, severity="high")
    db.execute("UPDATE alerts SET escalation_level = 1 WHERE id = %s", (aid,))
    with db.transaction():
        service.emit(db, "alert.escalated", {"alert_id": aid, "escalation_level": 1})
    assert [n for n in notifications(db, aid) if n[0] == org.staff["jiangan-supervisor"]] == []


def test_the_monthly_report_is_e_mailed_once_with_its_pdf(client, db, org: Org, month,
                                                          settings: Settings, tmp_path):
    from api.security import hash_password
    from store.db import session_factory
    from store.demo import create_staff
    from store.enums import Role
    from store.models import OrgUnit

    with session_factory()() as s:
        create_staff(s, s.get(OrgUnit, month["ja"]), "jiangan-head", Role.OFFICE_HEAD, PASSWORD,
                     password_hash=hash_password(PASSWORD))
        s.commit()
    head = login(client, "jiangan-head")
    assert client.post(f"{API}/me/channels", headers=head, json={
        "channel": "email", "address": "head@example.org", "reports": True}).status_code == 201
    # The district supervisor hears of alerts by e-mail but did not choose reports.
    assert client.post(f"{API}/me/channels", headers=login(client, "jiangan-supervisor"), json={
        "channel": "email", "address": "sup@example.org"}).status_code == 201
    sink = SmtpSink()
    try:
        s = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": sink.port,
                                        "smtp_from": "reports@ccs.example"})
        early = monthly_reports.run(db, s, now=datetime(2026, 12, 1, 1, 30, tzinfo=TZ))
        assert early.period is None and sink.messages == []  # before 02:00 Beijing
        out = monthly_reports.run(db, s, now=datetime(2026, 12, 1, 2, 30, tzinfo=TZ))
        assert out.period == (T0, T1) and out.generated == [month["ja"]]
        assert out.delivered == ["head@example.org"]
        again = monthly_reports.run(db, s, now=datetime(2026, 12, 1, 2, 40, tzinfo=TZ))
        assert again.generated == [] and again.delivered == []
        (rcpts, msg), = sink.messages
    finally:
        sink.close()
    assert rcpts == ["head@example.org"]
    assert "江岸区司法所" in msg["Subject"] and "2026-11" in msg["Subject"]
    body = msg.get_body(("plain",)).get_content()
    assert "定位覆盖率 coverage: 1.6%" in body  # 102 / 6212
    (pdf,) = [p for p in msg.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert "江岸区司法所" in pdf_text(pdf.get_content(), tmp_path)
    stored = db.execute("""SELECT unit_id, figures -> 'total' ->> 'people', length(pdf) > 1000
                             FROM compliance_reports""").fetchall()
    assert stored == [(month["ja"], "2", True)]
    assert db.execute("SELECT address, status, attempts FROM report_deliveries").fetchall() == \
        [("head@example.org", "delivered", 1)]
    assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'report.monthly_sent'"
                      ).fetchone()[0] == 1


def test_a_unit_name_excel_would_run_is_written_as_text():
    from alerts.report_docs import to_csv
    from alerts.reports import _blank

    row = {"unit_id": 9, "name": "=HYPERLINK(\"x\")", "kind": "judicial_office", "parent_id": None,
           **_blank()}
    report = {"period": {"from": T0.isoformat(), "to": T1.isoformat()}, "offices": [row],
              "districts": [], "total": row}
    rows = list(csv.reader(io.StringIO(to_csv(report, TZ).decode("utf-8-sig"))))
    assert len(rows) == 2 and rows[1][1] == "'=HYPERLINK(\"x\")"
