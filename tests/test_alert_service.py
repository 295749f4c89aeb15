"""The alert service: acknowledgement times from the rule profile, for new alerts and escalations."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from alerts import service
from geofence.profile import DEFAULT_PROFILE, AckRules, RuleProfile
from tests.conftest import JIANGAN, Org


def _store_profile(db: psycopg.Connection, profile: RuleProfile) -> None:
    db.execute("UPDATE rule_profiles SET active = false WHERE active")
    db.execute("INSERT INTO rule_profiles (name, version, body, active) VALUES (%s, %s, %s, true)",
               (profile.name, profile.version, orjson.dumps(profile.to_dict()).decode()))


def test_a_profile_stored_before_acknowledgement_times_loads_with_the_defaults() -> None:
    body = DEFAULT_PROFILE.to_dict()
    assert body["ack"] == {"critical_min": 5.0, "high_min": 15.0, "medium_min": 60.0, "low_min": 240.0}
    older = {k: v for k, v in body.items() if k != "ack"}
    assert RuleProfile.from_dict(older).ack == AckRules()
    custom = replace(DEFAULT_PROFILE, ack=AckRules(high_min=2.0))
    assert RuleProfile.from_dict(custom.to_dict()).ack.minutes("high") == 2.0
    with pytest.raises(ValueError, match="unknown acknowledgement rules"):
        RuleProfile.from_dict({**body, "ack": {"urgent_min": 1}})


def test_acknowledgement_times_come_from_the_active_profile(db: psycopg.Connection, org: Org) -> None:
    _store_profile(db, replace(DEFAULT_PROFILE, name="local-ack", version=1,
                               ack=AckRules(high_min=2.0, medium_min=7.0)))
    with db.transaction():
        n = service.open_alerts(db, "overdue_return", "high", [{
            "supervisee_id": org.supervisee_id, "office_id": org.office_ids[JIANGAN],
            "first_fix_time": datetime.now(UTC), "reason": {"rule": "test"}}], "repeat_keep_times")
    assert n == 1
    alert_id, allowed = db.execute("SELECT id, ack_deadline - opened_at FROM alerts").fetchone()
    assert allowed == timedelta(minutes=2)  # the profile's, not the built-in 15
    topics = [t for (t,) in db.execute("SELECT topic FROM outbox ORDER BY id")]
    assert topics == ["alert.opened"]

    now = time.time()
    assert service.escalate_overdue(db, now=now + 60) == 0
    assert service.escalate_overdue(db, now=now + 3 * 60) == 1
    level, deadline = db.execute("SELECT escalation_level, ack_deadline FROM alerts WHERE id = %s",
                                 (alert_id,)).fetchone()
    # The district bureau gets the profile's two minutes again, from the escalation.
    assert level == 1
    assert deadline == datetime.fromtimestamp(now + 3 * 60, UTC) + timedelta(minutes=2)
    assert [t for (t,) in db.execute("SELECT topic FROM outbox ORDER BY id")] == [
        "alert.opened", "alert.escalated"]
