"""Notification delivery on the real services: routing, webhooks, e-mail, retries, crashes."""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis
from standardwebhooks import Webhook

from alerts.delivery import DeliveryWorker, new_webhook_secret, sign_webhook
from alerts.service import escalate_overdue, queue_raised
from alerts.worker import AlertWorker
from ingest.mqtt_worker import MqttIngestWorker
from store.observe import json_formatter
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org, login
from tests.geo import deep_inside
from tests.receivers import SmtpSink, WebhookReceiver
from tests.services import Phone, api_server, forget_session, in_thread, worker_env
from tests.test_end_to_end import _read_sse

API = "/api/v1"


def _until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def raise_alert(db: psycopg.Connection, org: Org, severity: str = "high",
                code: str = JIANGAN, kind: str = "area_exit") -> int:
    """An alert and its outbox row committed together, as the ingest path does."""
    sup = org.supervisee_id if code == JIANGAN else org.other_supervisee_id
    office = org.office_ids[code]
    with db.transaction():
        row = db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, reason)
                            VALUES (%s, %s, %s, %s, jsonb_build_object(
                                'rule', 'area_exit.accuracy_circle_wholly_outside', 'zone_id', %s,
                                'zone_name', '受害人住所 victim''s home'))
                            RETURNING id""", (kind, severity, sup, office, org.zone_ids[code])
                         ).fetchone()
        assert row is not None
        queue_raised(db, kind, severity, [(row[0], sup, office, 1, True, {})])
    return int(row[0])


def add_webhook(db: psycopg.Connection, unit_id: int, url: str, secret: str) -> int:
    row = db.execute("""INSERT INTO webhook_endpoints (org_unit_id, name, url, secret)
                        VALUES (%s, 'gateway', %s, %s) RETURNING id""",
                     (unit_id, url, secret)).fetchone()
    assert row is not None
    return int(row[0])


def add_channel(db: psycopg.Connection, staff_id: int, channel: str, address: str,
                webhook_id: int | None = None, min_severity: str = "low") -> int:
    row = db.execute("""INSERT INTO staff_channels (staff_id, channel, address, webhook_id,
                                                    min_severity)
                        VALUES (%s, %s, %s, %s, %s) RETURNING id""",
                     (staff_id, channel, address, webhook_id, min_severity)).fetchone()
    assert row is not None
    return int(row[0])


def notifications(db: psycopg.Connection, alert_id: int | None = None) -> list[tuple]:
    q = "SELECT staff_id, channel, topic, escalation_level, status, attempts FROM notifications"
    if alert_id is None:
        return db.execute(q + " ORDER BY id").fetchall()
    return db.execute(q + " WHERE alert_id = %s ORDER BY id", (alert_id,)).fetchall()


@pytest.fixture()
def fast(settings: Settings) -> Settings:
    """Delivery settings with short backoff and lease, so retries happen within a test."""
    return settings.model_copy(update={"delivery_backoff_base_s": 0.05,
                                       "delivery_backoff_max_s": 0.2,
                                       "delivery_lease_s": 2.0,
                                       "webhook_timeout_s": 10.0})


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture()
def smtp() -> Iterator[SmtpSink]:
    s = SmtpSink()
    yield s
    s.close()


# --- routing: who is told, written in the alert's own transaction ---------------------------

def test_an_opened_alert_is_routed_to_its_office_staff_by_their_channels(db, org: Org):
    secret = new_webhook_secret()
    hook = add_webhook(db, org.city_id, "http://127.0.0.1:9/hook", secret)
    officer, other = org.staff["jiangan-officer"], org.staff["jianghan-officer"]
    add_channel(db, officer, "email", "officer@example.org")
    add_channel(db, officer, "webhook", "+8613800000001", hook)
    add_channel(db, other, "email", "other@example.org")
    add_channel(db, org.staff["jiangan-supervisor"], "email", "district@example.org")
    alert = raise_alert(db, org)
    assert notifications(db, alert) == [
        (officer, "email", "alert.opened", 0, "pending", 0),
        (officer, "webhook", "alert.opened", 0, "pending", 0),
    ]


def test_minimum_severity_inactive_channels_and_suspensions_are_respected(db, org: Org):
    officer = org.staff["jiangan-officer"]
    add_channel(db, officer, "email", "urgent@example.org", min_severity="critical")
    off = add_channel(db, officer, "email", "old@example.org")
    db.execute("UPDATE staff_channels SET active = false WHERE id = %s", (off,))
    assert notifications(db, raise_alert(db, org, severity="high")) == []
    assert [n[1] for n in notifications(db, raise_alert(db, org, severity="critical",
                                                         kind="exclusion_entry"))] == ["email"]
    # A suspended supervisee's alert is recorded, marked suppressed, and nobody is told.
    db.execute("""INSERT INTO alert_suspensions (supervisee_id, starts_at, ends_at, reason, staff_id)
                  VALUES (%s, now() - interval '1 hour', now() + interval '1 day', 'hospital', %s)""",
               (org.supervisee_id, officer))
    muted = raise_alert(db, org, severity="critical", kind="curfew_breach")
    assert db.execute("SELECT suppressed FROM alerts WHERE id = %s", (muted,)).fetchone() == (True,)
    assert notifications(db, muted) == []


def test_escalation_steps_go_to_the_district_then_the_city(db, org: Org):
    add_channel(db, org.staff["jiangan-officer"], "email", "officer@example.org")
    add_channel(db, org.staff["jiangan-supervisor"], "email", "district@example.org")
    add_channel(db, org.staff["jianghan-supervisor"], "email", "elsewhere@example.org")
    add_channel(db, org.staff["admin"], "email", "city@example.org")
    alert = raise_alert(db, org, severity="critical")
    now = time.time()
    assert escalate_overdue(db, now=now + 6 * 60) == 1
    assert escalate_overdue(db, now=now + 12 * 60) == 1
    got = [(staff, topic, level) for staff, _, topic, level, _, _ in notifications(db, alert)]
    assert got == [(org.staff["jiangan-officer"], "alert.opened", 0),
                   (org.staff["jiangan-supervisor"], "alert.escalated", 1),
                   (org.staff["admin"], "alert.escalated", 2)]


# --- delivery -------------------------------------------------------------------------------

def test_a_webhook_failing_five_times_then_succeeding_gets_the_alert_once(
        db, org: Org, fast: Settings, receiver: WebhookReceiver):
    receiver.secret = new_webhook_secret()
    receiver.fail_first = 5
    hook = add_webhook(db, org.city_id, receiver.url, receiver.secret)
    add_channel(db, org.staff["jiangan-officer"], "webhook", "+8613800000001", hook)
    alert = raise_alert(db, org)
    with in_thread(DeliveryWorker(fast)):
        _until(lambda: notifications(db, alert)[0][4] == "delivered", what="delivery")
        time.sleep(0.5)  # nothing more may arrive
    assert [r.status for r in receiver.requests] == [500] * 5 + [200]
    assert all(r.verified for r in receiver.requests)
    assert len({r.key for r in receiver.requests}) == 1  # one idempotency key throughout
    assert len(receiver.accepted) == 1
    body = next(iter(receiver.accepted.values()))
    assert (body["type"], body["alert"]["id"], body["recipient"]["address"]) == (
        "alert.opened", alert, "+8613800000001")
    # The zone by its number only: its name can say where a person is ("the victim's home"),
    # and positions are read in the console, where the read is audited.
    assert f"outside zone {org.zone_ids[JIANGAN]} (" in body["alert"]["explanation"]
    assert "受害人住所" not in orjson.dumps(body).decode()
    assert notifications(db, alert)[0][4:] == ("delivered", 6)
    outcomes = db.execute("""SELECT outcome, detail FROM notification_attempts
                              ORDER BY id""").fetchall()
    assert outcomes == [("failed", "HTTP 500")] * 5 + [("delivered", "HTTP 200")]


def test_an_email_carries_the_alert_and_its_idempotency_key_but_no_position(
        db, org: Org, fast: Settings, smtp: SmtpSink):
    s = fast.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                                "smtp_from": "alerts@ccs.example"})
    add_channel(db, org.staff["jiangan-officer"], "email", "officer@example.org")
    db.execute("UPDATE supervisees SET full_name = '张三' WHERE id = %s", (org.supervisee_id,))
    alert = raise_alert(db, org)
    db.execute("UPDATE alerts SET lon = 114.123456, lat = 30.654321 WHERE id = %s", (alert,))
    with in_thread(DeliveryWorker(s)):
        _until(lambda: notifications(db, alert)[0][4] == "delivered", what="e-mail delivery")
    (rcpts, msg), = smtp.messages
    key = db.execute("SELECT idempotency_key FROM notifications").fetchone()[0]
    assert rcpts == ["officer@example.org"]
    assert msg["Message-ID"] == f"<{key}@ccs.example>"
    assert "张三" in msg["Subject"] and "越界" in msg["Subject"]
    text = msg.get_content()
    assert f"/#/alerts/{alert}" in text and "Left the allowed area" in text
    assert "114.12" not in text and "30.65" not in text


def test_a_failing_channel_never_delays_the_others(db, org: Org, fast: Settings, smtp: SmtpSink):
    slow, good = WebhookReceiver(secret=new_webhook_secret()), WebhookReceiver()
    good.secret = new_webhook_secret()
    slow.hold.clear()  # the slow receiver answers only when told
    try:
        s = fast.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": smtp.port})
        officer = org.staff["jiangan-officer"]
        add_channel(db, officer, "webhook", "+86-slow",
                    add_webhook(db, org.city_id, slow.url, slow.secret or ""))
        add_channel(db, officer, "webhook", "+86-good",
                    add_webhook(db, org.city_id, good.url, good.secret))
        add_channel(db, officer, "email", "officer@example.org")
        alert = raise_alert(db, org)
        with in_thread(DeliveryWorker(s)):
            assert slow.arrived.wait(10)
            _until(lambda: len(good.accepted) == 1 and len(smtp.messages) == 1,
                   what="the other channels")
            # Delivered on both other channels while the slow receiver still holds its request.
            assert not slow.hold.is_set() and slow.requests == []
            slow.hold.set()
            _until(lambda: all(n[4] == "delivered" for n in notifications(db, alert)),
                   what="the slow receiver")
    finally:
        slow.close()
        good.close()


def test_a_delivery_worker_killed_mid_send_resumes_without_loss_or_duplicate(
        db, org: Org, fast: Settings, receiver: WebhookReceiver, tmp_path):
    receiver.secret = new_webhook_secret()
    receiver.hold.clear()  # the first request is held while the worker is killed
    hook = add_webhook(db, org.city_id, receiver.url, receiver.secret)
    add_channel(db, org.staff["jiangan-officer"], "webhook", "+8613800000001", hook)
    env = {**worker_env(fast, "unused"), "CCS_DELIVERY_LEASE_S": "2",
           "CCS_DELIVERY_BACKOFF_BASE_S": "0.05", "CCS_WEBHOOK_TIMEOUT_S": "20"}
    log = open(tmp_path / "delivery.log", "ab")  # noqa: SIM115
    start = lambda: subprocess.Popen([sys.executable, "-m", "alerts.delivery"], env=env,  # noqa: E731
                                     stdout=log, stderr=subprocess.STDOUT)
    first = start()
    try:
        alert = raise_alert(db, org)
        assert receiver.arrived.wait(20), "the worker never sent"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        receiver.hold.set()  # the receiver got it; the worker never heard the answer
        # Committed while no worker runs: waits, then goes out with the rest.
        later = raise_alert(db, org, kind="curfew_breach")
        second = start()
        try:
            _until(lambda: [n[4] for n in notifications(db)] == ["delivered", "delivered"],
                   timeout=20, what="resumed delivery")
            time.sleep(0.5)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    by_alert = {b["alert"]["id"]: k for k, b in receiver.accepted.items()}
    assert set(by_alert) == {alert, later}  # none lost
    sent = [r.key for r in receiver.requests]
    assert sent.count(by_alert[alert]) == 2 and sent.count(by_alert[later]) == 1
    assert len(receiver.accepted) == 2  # the resend carried the same key and was dropped
    attempts = db.execute("""SELECT n.alert_id, a.outcome FROM notification_attempts a
                               JOIN notifications n ON n.id = a.notification_id
                              ORDER BY a.id""").fetchall()
    assert attempts[0] == (alert, None)  # the attempt the killed worker never finished
    assert sorted(attempts[1:]) == sorted([(alert, "delivered"), (later, "delivered")])


def test_an_undeliverable_notification_expires_and_is_counted(db, org: Org, fast: Settings,
                                                              client):
    hook = add_webhook(db, org.city_id, "http://127.0.0.1:9/nothing-listens",
                       new_webhook_secret())
    add_channel(db, org.staff["jiangan-officer"], "webhook", "+8613800000001", hook)
    alert = raise_alert(db, org)
    with in_thread(DeliveryWorker(fast.model_copy(update={"delivery_expire_s": 0.0}))):
        _until(lambda: notifications(db, alert)[0][4] == "expired", what="expiry")
    n = notifications(db, alert)[0]
    assert n[5] == 1
    metrics = client.get(f"{API}/metrics").text
    assert 'ccs_notification_attempts_failed_total{channel="webhook"} 1.0' in metrics
    assert 'ccs_notifications{channel="webhook",status="expired"} 1.0' in metrics


def test_signature_follows_the_standard_webhooks_scheme():
    secret = new_webhook_secret()
    body = b'{"a": 1}'
    ts = int(time.time())
    headers = {"webhook-id": "ccs-1-2", "webhook-timestamp": str(ts),
               "webhook-signature": sign_webhook(secret, "ccs-1-2", ts, body)}
    assert Webhook(secret).verify(body, headers) == {"a": 1}
    with pytest.raises(Exception, match="signature"):
        Webhook(new_webhook_secret()).verify(body, headers)


# --- the API --------------------------------------------------------------------------------

def test_webhooks_are_registered_by_heads_and_chosen_by_staff(client, org: Org, db):
    admin, officer = login(client, "admin"), login(client, "jiangan-officer")
    body = {"org_unit_id": org.city_id, "name": "SMS gateway", "url": "https://sms.example/hook"}
    assert client.post(f"{API}/webhooks", json=body, headers=officer).status_code == 403
    r = client.post(f"{API}/webhooks", json=body, headers=admin)
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["secret"].startswith("whsec_")
    listed = client.get(f"{API}/webhooks", headers=officer).json()  # city-wide: usable below
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    bad = client.post(f"{API}/webhooks", headers=admin,
                      json={**body, "url": "file:///etc/passwd"})
    assert bad.status_code == 400
    # A district's own gateway is not offered to the other district.
    sup = login(client, "jianghan-supervisor")
    local = client.post(f"{API}/webhooks", headers=sup, json={
        "org_unit_id": org.district_ids[JIANGHAN], "name": "district", "url": "https://d.example/h"})
    assert local.status_code == 201
    r = client.post(f"{API}/me/channels", headers=officer, json={
        "channel": "webhook", "address": "+8613800000001", "webhook_id": local.json()["id"]})
    assert r.status_code == 404
    r = client.post(f"{API}/me/channels", headers=officer, json={
        "channel": "webhook", "address": "+8613800000001", "webhook_id": hook["id"],
        "min_severity": "high"})
    assert r.status_code == 201, r.text
    assert client.post(f"{API}/me/channels", headers=officer, json={
        "channel": "email", "address": "not-an-address"}).status_code == 422
    r = client.post(f"{API}/me/channels", headers=officer, json={
        "channel": "email", "address": "officer@example.org"})
    assert r.status_code == 201
    mine = client.get(f"{API}/me/channels", headers=officer).json()
    assert [(c["channel"], c["min_severity"]) for c in mine] == [("webhook", "high"),
                                                                 ("email", "low")]
    assert client.delete(f"{API}/me/channels/{mine[1]['id']}",
                         headers=login(client, "jianghan-officer")).status_code == 404
    assert client.delete(f"{API}/me/channels/{mine[1]['id']}", headers=officer).json()["active"] \
        is False
    actions = [a for (a,) in db.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions.count("webhook.create") == 2 and "channel.remove" in actions


def test_an_alerts_deliveries_are_shown_within_jurisdiction(client, org: Org, db, fast,
                                                             receiver: WebhookReceiver):
    receiver.secret = new_webhook_secret()
    receiver.fail_first = 1
    hook = add_webhook(db, org.city_id, receiver.url, receiver.secret)
    add_channel(db, org.staff["jiangan-officer"], "webhook", "+8613800000001", hook)
    alert = raise_alert(db, org)
    with in_thread(DeliveryWorker(fast)):
        _until(lambda: notifications(db, alert)[0][4] == "delivered", what="delivery")
    r = client.get(f"{API}/alerts/{alert}/notifications", headers=login(client, "jiangan-officer"))
    assert r.status_code == 200
    (n,) = r.json()
    assert (n["channel"], n["status"], n["attempts"]) == ("webhook", "delivered", 2)
    assert [a["outcome"] for a in n["attempt_log"]] == ["failed", "delivered"]
    assert client.get(f"{API}/alerts/{alert}/notifications",
                      headers=login(client, "jianghan-officer")).status_code == 404


# --- end to end -----------------------------------------------------------------------------

class JsonLines(logging.Handler):
    """Every record as the JSON line store/observe.py writes, parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(json_formatter("test"))
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(json.loads(self.format(record)))


def test_a_violating_fix_reaches_the_officer_on_feed_webhook_and_email_once(
        settings: Settings, org: Org, db, fast: Settings, receiver: WebhookReceiver,
        smtp: SmtpSink):
    client_id = f"{settings.mqtt_client_id}-delivery-e2e"
    ingest = MqttIngestWorker(settings, client_id=client_id)
    s = fast.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": smtp.port})
    delivery = DeliveryWorker(s)
    # The logs as a collector gets them with CCS_LOG_FORMAT=json (store/observe.py).
    lines = JsonLines()
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    ports = {"ingest": ingest.health.start(0, "127.0.0.1"),
             "delivery": delivery.health.start(0, "127.0.0.1")}

    def sent(channel: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{ports['delivery']}/metrics").text
        m = re.search(rf'^ccs_delivery_sent_total{{channel="{channel}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    sent_before = sent("webhook")
    try:
        with api_server(settings) as base, in_thread(ingest), in_thread(AlertWorker(settings)), \
                in_thread(delivery):
            assert ingest.connected.wait(10)
            tok = lambda u: {"Authorization": "Bearer " + httpx.post(  # noqa: E731
                f"{base}{API}/auth/token", data={"username": u, "password": PASSWORD}
            ).json()["access_token"]}
            h, admin, other = tok("jiangan-officer"), tok("admin"), tok("jianghan-officer")
            hook = httpx.post(f"{base}{API}/webhooks", headers=admin, json={
                "org_unit_id": org.city_id, "name": "SMS", "url": receiver.url}).json()
            receiver.secret = hook["secret"]
            for hdr, addr in ((h, "officer@example.org"), (other, "other@example.org")):
                assert httpx.post(f"{base}{API}/me/channels", headers=hdr, json={
                    "channel": "email", "address": addr}).status_code == 201
                assert httpx.post(f"{base}{API}/me/channels", headers=hdr, json={
                    "channel": "webhook", "address": addr, "webhook_id": hook["id"]}
                ).status_code == 201
            cred = httpx.post(f"{base}{API}/supervisees/{org.supervisee_id}/devices",
                              json={}, headers=h).json()
            feed: queue.Queue = queue.Queue()
            stop = threading.Event()
            threading.Thread(target=_read_sse, daemon=True, args=(
                f"{base}{API}/alerts/stream/live?purpose=duty+monitoring", h, feed, stop)).start()
            assert feed.get(timeout=10) == ("status", 200)
            phone = Phone(settings, cred["device_id"])
            t0 = time.time() - 900
            phone.report(*deep_inside(JIANGAN), t0).wait_for_publish(5)
            for k in range(4):
                phone.report(*deep_inside(JIANGHAN), t0 + 600 + k * 60).wait_for_publish(5)
            kind, event = feed.get(timeout=20)
            assert (kind, event["event"]) == ("event", "alert.opened")
            alert_id = json.loads(event["data"])["alert_id"]
            _until(lambda: len(receiver.accepted) >= 1 and len(smtp.messages) >= 1,
                   what="webhook and e-mail")
            time.sleep(1.0)  # nothing more may arrive
            stop.set()
            phone.close()
            # The workers' probes and metrics (what systemd and Kubernetes ask).
            for name, port in ports.items():
                for path in ("/livez", "/readyz"):
                    r = httpx.get(f"http://127.0.0.1:{port}{path}")
                    assert r.status_code == 200 and r.text.startswith("ok: "), (name, path, r.text)
            metrics = httpx.get(f"http://127.0.0.1:{ports['ingest']}/metrics").text
            committed = re.search(
                rf'ccs_ingest_committed_total{{worker="{re.escape(client_id)}"}} (\S+)', metrics)
            assert committed is not None and float(committed.group(1)) >= 5, metrics[-2000:]
            assert f'ccs_ingest_backlog{{worker="{client_id}"}} 0.0' in metrics
            # Its load, for the positions archive to give way to (alerts/silences.py): a share
            # measured over at least 2 s, so on a fast machine the run above may end first.
            with redis.Redis.from_url(settings.redis_url) as r:
                load = _until(lambda: r.hget(settings.redis_prefix + "ingest:load", client_id),
                              timeout=10, what="the ingest worker's load")
            assert load is not None and 0.0 <= float(load.split()[0]) <= 1.0, load
            # One webhook delivered by this worker (the registry is the process', so counted
            # from what it held before the run).
            assert sent("webhook") - sent_before == 1
        # Stopped: the ingest worker left the broker, so it is no longer ready.
        r = httpx.get(f"http://127.0.0.1:{ports['ingest']}/readyz")
        assert r.status_code == 503 and "not subscribed" in r.text
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
        ingest.health.close()
        delivery.health.close()
        forget_session(settings, client_id)
    assert len(receiver.requests) == 1 and len(smtp.messages) == 1
    body = receiver.requests[0].body
    assert body is not None and body["alert"]["id"] == alert_id
    assert body["recipient"]["address"] == "officer@example.org"
    assert smtp.messages[0][0] == ["officer@example.org"]
    assert db.execute("SELECT count(*) FROM alerts").fetchone() == (1,)
    # One fix id from the report to both notifications: the phone's id and the fix's time, in
    # the ingest line that opened the alert, the relay's and each delivery's.
    trail = [r for r in lines.records if r.get("alert_id") == alert_id]
    by_logger = {r["logger"]: r for r in trail}
    assert set(by_logger) >= {"ingest.pipeline", "alerts.worker", "alerts.delivery"}, trail
    fix = by_logger["ingest.pipeline"]["fix_id"]
    device, _, when = fix.partition("@")
    assert device == cred["device_id"]
    at = datetime.fromisoformat(when).timestamp()
    assert any(abs(at - (t0 + 600 + k * 60)) < 1e-3 for k in range(4)), (fix, t0)
    sent = [r for r in trail if r["logger"] == "alerts.delivery"]
    assert sorted(r["channel"] for r in sent) == ["email", "webhook"]
    assert {r["fix_id"] for r in trail} == {fix}
    assert all(r["process"] == "test" and r["level"] == "INFO" for r in trail)


def _outgoing(k: int) -> Any:
    from datetime import UTC, datetime

    from alerts.delivery import Outgoing

    now = datetime.now(UTC)
    return Outgoing(notification_id=k, attempt_id=k, key=f"key-{k}", topic="alert.opened",
                    escalation_level=0, attempts=1, created_at=now, address="o@example.org",
                    url=None, secret=None, staff_id=1, staff_name="Officer",
                    alert={"id": k, "kind": "area_exit", "severity": "high", "status": "open",
                           "count": 1, "opened_at": now, "first_fix_time": None, "reason": {},
                           "supervisee_id": 1, "supervisee_name": "Z", "case_number": "C-1",
                           "office_id": 1, "office_name": "Office"})


def test_e_mail_keeps_its_smtp_connection_and_survives_the_server_closing_it(
        settings: Settings):
    """Each sending thread keeps its SMTP connection: the outcome is known at the server's 250,
    not after a QUIT (the window for a repeat after a kill), and a connection the server
    dropped meanwhile is replaced without failing the message."""
    from alerts.delivery import EmailSender

    sink = SmtpSink()
    s = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": sink.port})
    sender = EmailSender(s)
    try:
        assert [sender.send(_outgoing(k)) for k in range(3)] == [(True, "250 accepted")] * 3
        assert len(set(sink.peers)) == 1  # one connection for the three
        sink.close()  # the server goes away, taking the kept connection with it
        sink2 = SmtpSink()
        sender.settings = s.model_copy(update={"smtp_port": sink2.port})
        try:
            assert sender.send(_outgoing(3)) == (True, "250 accepted")
            assert [m["Message-ID"] for _, m in sink2.messages] == ["<key-3@localhost>"]
        finally:
            sink2.close()
    finally:
        sender.close()
