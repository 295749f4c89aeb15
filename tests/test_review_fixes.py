"""Regressions for the independent review's findings (F1–F8): each asserts the fixed behaviour."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import jwt
import psycopg
import pytest

from alerts.delivery import claim, new_webhook_secret, refuse_webhook_target
from alerts.service import _ESCALATE, escalation_params
from api.security import issue_access_token, session_key, staff_sessions_key
from geofence.profile import AckRules
from store.settings import Environment, Settings, set_settings
from tests.conftest import PASSWORD, Org, login
from tests.test_delivery import add_channel, add_webhook, notifications, raise_alert

API = "/api/v1"


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


def sign_in(client) -> dict:  # type: ignore[no-untyped-def]
    return client.post(f"{API}/auth/token", data={"username": "jiangan-officer",
                                                   "password": PASSWORD}).json()


def test_f1_sessions_end_on_password_change_and_disable_even_after_refreshes(
        client, org: Org, settings: Settings, rds):
    # Sign-in times are whole seconds, so a session may be up to a second older than it seems:
    # refresh well inside the shift (a loaded machine may take a while to answer), then wait
    # until it is surely over.
    short = settings.model_copy(update={"refresh_token_ttl_s": 6})
    set_settings(short)
    try:
        began = time.time()
        a = sign_in(client)
        time.sleep(2)
        a = client.post(f"{API}/auth/refresh", data={"refresh_token": a["refresh_token"]}).json()
        time.sleep(max(0.0, began + 7.5 - time.time()))
        # The shift is over: the session does not slide with refreshes.
        sid = jwt.decode(a["access_token"], options={"verify_signature": False})["sid"]
        assert not rds.exists(session_key(short.redis_prefix, sid))
        assert client.post(f"{API}/auth/refresh",
                           data={"refresh_token": a["refresh_token"]}).status_code == 401
    finally:
        set_settings(settings)
    # With the normal shift: password change and disabling end sessions signed in earlier, even
    # if the per-staff set of sessions were lost.
    a, b = sign_in(client), sign_in(client)
    rds.delete(staff_sessions_key(settings.redis_prefix, org.staff["jiangan-officer"]))
    time.sleep(1.1)  # sign-in times are whole seconds
    assert client.post(f"{API}/auth/password", headers=bearer(b["access_token"]), json={
        "current_password": PASSWORD, "new_password": "x" * 16}).status_code == 204
    assert client.get(f"{API}/auth/me", headers=bearer(a["access_token"])).status_code == 401
    c = client.post(f"{API}/auth/token", data={"username": "jiangan-officer",
                                                "password": "x" * 16}).json()
    sid = jwt.decode(c["access_token"], options={"verify_signature": False})["sid"]
    assert client.patch(f"{API}/staff/{org.staff['jiangan-officer']}", headers=login(client, "admin"),
                        json={"active": False}).status_code == 200
    assert not rds.exists(session_key(settings.redis_prefix, sid))  # the live feed's check


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/", "http://169.254.169.254/latest/",
                                 "http://localhost:5432/", "http://[::1]:8000/api/v1/broker/auth",
                                 "http://10.1.2.3/hook", "http://no-such-host.invalid/"])
def test_f2_webhooks_may_not_point_into_private_networks(client, org: Org, settings: Settings,
                                                         monkeypatch, url: str):
    monkeypatch.setattr(settings, "webhook_allow_private", False)
    r = client.post(f"{API}/webhooks", headers=login(client, "admin"),
                    json={"org_unit_id": org.city_id, "name": "x", "url": url})
    assert r.status_code == 400 and r.json()["error"] == "invalid_url", r.text
    assert refuse_webhook_target(url, settings) is not None  # also checked before each send
    prod = settings.model_copy(update={"environment": Environment.PRODUCTION,
                                       "webhook_allow_private": True})
    assert "https" in (refuse_webhook_target("http://8.8.8.8/", prod) or "")


def test_f3_racing_escalations_make_one_step_and_one_notification(client, org: Org, db, settings):
    add_channel(db, org.staff["jiangan-supervisor"], "email", "district@example.org")
    alert = raise_alert(db, org)
    db.execute("UPDATE alerts SET ack_deadline = now() - interval '1 minute' WHERE id = %s",
               (alert,))
    officer = login(client, "jiangan-officer")
    with psycopg.connect(settings.psycopg_dsn) as sched:
        sched.execute(_ESCALATE, escalation_params(AckRules(), datetime.now(UTC)))
        out: dict[str, int] = {}
        t = threading.Thread(target=lambda: out.update(
            code=client.post(f"{API}/alerts/{alert}/escalate", headers=officer).status_code))
        t.start()
        time.sleep(1.0)
        sched.commit()
    t.join(10)
    assert out["code"] == 200
    level, deadline_left = db.execute(
        "SELECT escalation_level, ack_deadline > now() FROM alerts WHERE id = %s",
        (alert,)).fetchone()
    assert (level, deadline_left) == (2, True)  # both steps counted, a fresh deadline
    steps = [n[3] for n in notifications(db, alert) if n[2] == "alert.escalated"]
    assert steps == [1]  # the district once (the city has no channel here)


def test_f3_a_repeated_step_collapses_into_one_notification(db, org: Org):
    add_channel(db, org.staff["jiangan-supervisor"], "email", "district@example.org")
    alert = raise_alert(db, org)
    for _ in range(2):  # two outbox rows for the same step
        db.execute("""INSERT INTO outbox (topic, payload) VALUES ('alert.escalated',
                      jsonb_build_object('alert_id', %s::bigint, 'escalation_level', 1))""", (alert,))
    assert len([n for n in notifications(db, alert) if n[2] == "alert.escalated"]) == 1


def test_f4_queued_notifications_to_disabled_receivers_are_cancelled_not_sent(client, org: Org, db):
    hook = add_webhook(db, org.city_id, "http://127.0.0.1:9/hook", new_webhook_secret())
    add_channel(db, org.staff["jiangan-officer"], "webhook", "+8613800000001", hook)
    alert = raise_alert(db, org)
    assert client.delete(f"{API}/webhooks/{hook}", headers=login(client, "admin")).status_code == 200
    assert claim(db, "webhook", 10, 30, "test") == []
    assert db.execute("SELECT status, last_error FROM notifications WHERE alert_id = %s",
                      (alert,)).fetchall() == [("cancelled", "webhook deactivated")]
    add_channel(db, org.staff["jiangan-officer"], "email", "o@example.org")
    resolved = raise_alert(db, org, kind="curfew_breach")
    db.execute("UPDATE alerts SET status = 'resolved' WHERE id = %s", (resolved,))
    assert claim(db, "email", 10, 30, "test") == []
    assert db.execute("SELECT last_error FROM notifications WHERE alert_id = %s",
                      (resolved,)).fetchall() == [("alert resolved before delivery",)]


def test_f6_a_token_naming_someone_else_is_refused(client, org: Org, settings: Settings):
    sid = jwt.decode(sign_in(client)["access_token"], options={"verify_signature": False})["sid"]
    forged = issue_access_token(settings, org.staff["admin"], "city_admin", sid)
    assert client.get(f"{API}/auth/me", headers=bearer(forged)).status_code == 401


def test_f6_a_public_deployment_with_the_development_key_is_refused(monkeypatch):
    for k in ("CCS_ENVIRONMENT", "CCS_SECRET_KEY"):
        monkeypatch.delenv(k, raising=False)
    assert Settings(_env_file=None).environment == Environment.DEVELOPMENT  # local: fine
    with pytest.raises(ValueError, match="CCS_ENVIRONMENT=production"):
        Settings(_env_file=None, public_base_url="https://ccs.example.gov.cn")


def test_f7_auditors_and_suspended_supervisees_get_no_notification(client, org: Org, db):
    sup = org.staff["jiangan-supervisor"]
    add_channel(db, sup, "email", "district@example.org")
    assert client.patch(f"{API}/staff/{sup}", headers=login(client, "admin"),
                        json={"role": "auditor"}).status_code == 200
    alert = raise_alert(db, org)
    db.execute("""INSERT INTO outbox (topic, payload) VALUES ('alert.escalated',
                  jsonb_build_object('alert_id', %s::bigint, 'escalation_level', 1))""", (alert,))
    assert notifications(db, alert) == []
    # A suspension that starts after the alert opened still silences its escalation steps.
    add_channel(db, org.staff["jiangan-officer"], "email", "o@example.org")
    db.execute("""INSERT INTO alert_suspensions (supervisee_id, starts_at, ends_at, reason, staff_id)
                  VALUES (%s, now(), now() + interval '1 day', 'hospital', %s)""",
               (org.supervisee_id, org.staff["jiangan-officer"]))
    db.execute("""INSERT INTO outbox (topic, payload) VALUES ('alert.escalated',
                  jsonb_build_object('alert_id', %s::bigint, 'escalation_level', 0))""", (alert,))
    assert notifications(db, alert) == []


def test_f8_production_refuses_an_smtp_login_without_starttls():
    key = "k" * 40
    broker = {"mqtt_username": "ccs-ingest", "mqtt_password": "p" * 32, "mqtt_device_tls": True}
    with pytest.raises(ValueError, match="STARTTLS"):
        Settings(environment=Environment.PRODUCTION, secret_key=key, metrics_token="m" * 32,
                 smtp_username="alerts", smtp_password="p", **broker)
    ok = Settings(environment=Environment.PRODUCTION, secret_key=key, metrics_token="m" * 32,
                  smtp_username="alerts", smtp_password="p", smtp_starttls=True, **broker)
    assert ok.smtp_starttls
