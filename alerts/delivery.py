"""Delivery of alert notifications to durable channels: webhooks and e-mail.

The notifications themselves are written in the alert's own transaction (a trigger on the
outbox row, migration 0010). This worker claims due notifications one channel at a time, sends
them concurrently, and records every attempt and its outcome:

- A claim moves the notification's next attempt one lease ahead and writes an attempt row, in
  one commit, before anything is sent. A worker that dies mid-send leaves the attempt without
  an outcome; when the lease runs out another round (or another worker) sends it again.
- The idempotency key is the same on every attempt (`webhook-id` / `Idempotency-Key` header,
  e-mail `Message-ID`), so a receiver that got the first send drops the repeat.
- A failure is retried with exponential backoff until delivered, or until it expires (kept,
  counted, visible on the alert). Each channel has its own thread and its own pool of sends in
  flight, so a slow SMTP server or a dead webhook holds up nothing else.

Webhooks follow the Standard Webhooks signature scheme (HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}`, base64, header `webhook-signature: v1,<sig>`).
Notifications carry no coordinates: the officer opens the alert in the console, where the read
of location data is audited.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import queue
import random
import secrets
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
from prometheus_client import Counter
from standardwebhooks import Webhook

from alerts.explain import explain
from store.observe import Health, fix_id, setup_logging
from store.settings import Environment, Settings, get_settings

log = logging.getLogger("alerts.delivery")
SENT = Counter("ccs_delivery_sent", "Notifications delivered (2xx, or accepted by SMTP)",
               ["channel"])
FAILED = Counter("ccs_delivery_failed", "Delivery attempts that failed (retried with backoff "
                 "until the notification expires)", ["channel"])

DELIVER_CHANNEL = "ccs_deliver"  # NOTIFY'd by the fan-out trigger
CHANNELS = ("webhook", "email")
POLL_S = 0.2  # retries fall due without a NOTIFY; look at least this often

KIND_ZH = {
    "area_exit": "越界", "exclusion_entry": "进入禁止区域", "exclusion_approach": "接近禁止区域",
    "curfew_breach": "违反宵禁", "overdue_return": "逾期未归", "communication_failure": "通信中断",
    "location_failure": "定位失败", "phone_off": "关机", "missed_roll_call": "未应点名",
    "suspected_spoofing": "疑似虚假定位",
}
LEVEL_NAMES = ("judicial office", "district bureau", "city bureau")


def refuse_webhook_target(url: str, settings: Settings) -> str | None:
    """Why a webhook URL may not be called, or None.

    Alert details must not be sent into the system's own network (SSRF: the database, Redis,
    the broker, a cloud metadata service): every address the host resolves to must be public,
    unless `CCS_WEBHOOK_ALLOW_PRIVATE` says the gateways live on a private network. Checked at
    registration and again before every send (the name may resolve elsewhere later).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an absolute http(s) URL"
    if settings.environment == Environment.PRODUCTION and parts.scheme != "https":
        return "webhooks must use https in production"
    if settings.webhook_allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        return f"host does not resolve ({e})"
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not addr.is_global or addr.is_multicast:
            return f"{parts.hostname} resolves to a non-public address ({addr})"
    return None


def new_webhook_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form `whsec_<base64 key>`."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one message (the spec's reference library)."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())


@dataclass(frozen=True)
class Outgoing:
    """One claimed notification, with what the message needs."""

    notification_id: int
    attempt_id: int
    key: str
    topic: str
    escalation_level: int
    attempts: int
    created_at: datetime
    address: str
    url: str | None
    secret: str | None
    staff_id: int
    staff_name: str
    alert: dict[str, Any]
    fix_id: str | None = None  # the fix that caused the alert step (logs: store/observe.py)

    def document(self, console_url: str) -> dict[str, Any]:
        """The JSON body of a webhook (and the facts of an e-mail)."""
        a = self.alert
        return {
            "type": self.topic,
            "id": self.key,
            "recipient": {"staff_id": self.staff_id, "name": self.staff_name,
                          "address": self.address},
            "escalation_level": self.escalation_level,
            "escalated_to": LEVEL_NAMES[min(self.escalation_level, 2)],
            "alert": {
                "id": a["id"], "kind": a["kind"], "kind_zh": KIND_ZH.get(a["kind"], a["kind"]),
                "severity": a["severity"], "status": a["status"], "count": a["count"],
                "opened_at": a["opened_at"].isoformat(),
                "first_fix_time": a["first_fix_time"].isoformat() if a["first_fix_time"] else None,
                # The zone by its number only: a zone's name ("the victim's home") says where a
                # person is, and positions are read in the console, where the read is audited.
                "explanation": explain(a["reason"] or {}, name_zone=False),
                "supervisee": {"id": a["supervisee_id"], "name": a["supervisee_name"],
                               "case_number": a["case_number"]},
                "office": {"id": a["office_id"], "name": a["office_name"]},
                "url": f"{console_url.rstrip('/')}/#/alerts/{a['id']}",
            },
        }


# Queued before its receiver, channel or recipient was disabled, or its alert resolved: kept
# with the reason, never sent.
_CANCEL = """
UPDATE notifications n
   SET status = 'cancelled', last_error = x.why
  FROM (SELECT n2.id,
               coalesce(notification_block(n2.staff_id, n2.channel_id),
                        CASE WHEN a.status = 'resolved' THEN 'alert resolved before delivery' END)
               AS why
          FROM notifications n2 JOIN alerts a ON a.id = n2.alert_id
         WHERE n2.status = 'pending' AND n2.channel = %(channel)s
           AND n2.next_attempt_at <= now()) x
 WHERE n.id = x.id AND x.why IS NOT NULL
"""

_CLAIM = """
WITH due AS (
    SELECT id FROM notifications
     WHERE status = 'pending' AND channel = %(channel)s AND next_attempt_at <= now()
     ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE notifications n
       SET attempts = n.attempts + 1, next_attempt_at = now() + make_interval(secs => %(lease)s)
      FROM due WHERE n.id = due.id
 RETURNING n.*
), att AS (
    INSERT INTO notification_attempts (notification_id, worker)
    SELECT id, %(worker)s FROM claimed
 RETURNING id, notification_id
)
SELECT c.id, att.id, c.idempotency_key, c.topic, c.escalation_level, c.attempts, c.created_at,
       ch.address, w.url, w.secret, s.id, s.full_name,
       a.id, a.kind, a.severity, a.status, a.count, a.opened_at, a.first_fix_time, a.reason,
       a.supervisee_id, p.full_name, p.case_number, a.office_id, o.name,
       ob.payload->>'device_id', ob.payload->>'fix_time'
  FROM claimed c JOIN att ON att.notification_id = c.id
  LEFT JOIN outbox ob ON ob.id = c.outbox_id
  JOIN staff_channels ch ON ch.id = c.channel_id
  LEFT JOIN webhook_endpoints w ON w.id = ch.webhook_id
  JOIN staff s ON s.id = c.staff_id
  JOIN alerts a ON a.id = c.alert_id
  JOIN supervisees p ON p.id = a.supervisee_id
  JOIN org_units o ON o.id = a.office_id
 ORDER BY c.id
"""

_ALERT_FIELDS = ("id", "kind", "severity", "status", "count", "opened_at", "first_fix_time",
                 "reason", "supervisee_id", "supervisee_name", "case_number", "office_id",
                 "office_name")


def claim(conn: psycopg.Connection, channel: str, limit: int, lease_s: float,
          worker: str) -> list[Outgoing]:
    """Take up to `limit` due notifications of one channel, each with a new attempt row
    (after cancelling those that may no longer be sent)."""
    with conn.transaction():
        conn.execute(_CANCEL, {"channel": channel})
        rows = conn.execute(_CLAIM, {"channel": channel, "limit": limit, "lease": lease_s,
                                     "worker": worker}).fetchall()
    return [Outgoing(notification_id=r[0], attempt_id=r[1], key=r[2], topic=r[3],
                     escalation_level=r[4], attempts=r[5], created_at=r[6], address=r[7],
                     url=r[8], secret=r[9], staff_id=r[10], staff_name=r[11],
                     alert=dict(zip(_ALERT_FIELDS, r[12:25], strict=True)),
                     fix_id=fix_id(r[25], r[26]) if r[25] else None) for r in rows]


def backoff_s(attempts: int, settings: Settings) -> float:
    """Delay before the next attempt: doubling from the base, capped, with jitter."""
    d = min(settings.delivery_backoff_base_s * 2 ** max(attempts - 1, 0),
            settings.delivery_backoff_max_s)
    return d * random.uniform(0.75, 1.0)


def record(conn: psycopg.Connection, results: list[tuple[Outgoing, bool, str]],
           settings: Settings) -> None:
    """Write the outcome of finished sends: delivered, or back in the queue after a backoff."""
    if not results:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """UPDATE notification_attempts SET finished_at = now(), outcome = %s, detail = %s
                WHERE id = %s""",
            [("delivered" if ok else "failed", detail[:1000], o.attempt_id)
             for o, ok, detail in results])
        delivered = [o.notification_id for o, ok, _ in results if ok]
        if delivered:
            cur.execute("""UPDATE notifications SET status = 'delivered', delivered_at = now(),
                                  last_error = NULL
                            WHERE id = ANY(%s) AND status = 'pending'""", (delivered,))
        cur.executemany(
            """UPDATE notifications
                  SET last_error = %s, next_attempt_at = now() + make_interval(secs => %s),
                      status = CASE WHEN created_at < now() - make_interval(secs => %s)
                                    THEN 'expired' ELSE 'pending' END
                WHERE id = %s AND status = 'pending'""",
            [(detail[:1000], backoff_s(o.attempts, settings), settings.delivery_expire_s,
              o.notification_id) for o, ok, detail in results if not ok])


class WebhookSender:
    """Signed JSON POSTs over one pooled HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False,
                                   headers={"user-agent": "ccs-alerts/1"})

    def send(self, o: Outgoing) -> tuple[bool, str]:
        """POST the notification; 2xx is delivered, anything else is retried."""
        assert o.url is not None and o.secret is not None
        refused = refuse_webhook_target(o.url, self.settings)
        if refused:
            return False, f"refused: {refused}"
        body = orjson.dumps(o.document(self.settings.public_base_url))
        ts = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": o.key,
                   "webhook-timestamp": str(ts),
                   "webhook-signature": sign_webhook(o.secret, o.key, ts, body),
                   "idempotency-key": o.key}
        try:
            resp = self.client.post(o.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__}: {e}"
        return 200 <= resp.status_code < 300, f"HTTP {resp.status_code}"

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()


def open_smtp(s: Settings) -> smtplib.SMTP:
    """A connection to the configured SMTP server: STARTTLS (the server's certificate verified)
    and login when the settings say so."""
    smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
    try:
        if s.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())  # verify the server
        if s.smtp_username:
            smtp.login(s.smtp_username, s.smtp_password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


class EmailSender:
    """Plain-text e-mail over SMTP (optionally STARTTLS and login), one connection per sending
    thread, kept open between messages.

    Keeping it open makes each send one MAIL/RCPT/DATA exchange instead of a connection,
    greeting, TLS handshake and login, and the outcome is known (and recorded) the moment the
    server answers the data with 250, not after a QUIT: the window in which a worker killed
    after the server took a message would send it again (under the same Message-ID) shrinks to
    the recording itself."""

    IDLE_S = 30.0  # a connection unused this long is closed (servers drop idle ones)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[smtplib.SMTP] = set()

    def _connection(self) -> smtplib.SMTP:
        s = self.settings
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        if smtp is not None and time.monotonic() - self._local.used > self.IDLE_S:
            self._drop(smtp, quit_=True)
            smtp = None
        if smtp is None:
            smtp = open_smtp(s)
            self._local.smtp = smtp
            with self._lock:
                self._open.add(smtp)
        self._local.used = time.monotonic()
        return smtp

    def _drop(self, smtp: smtplib.SMTP, quit_: bool = False) -> None:
        self._local.smtp = None
        with self._lock:
            self._open.discard(smtp)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if quit_:
                smtp.quit()
        smtp.close()

    def message(self, o: Outgoing) -> EmailMessage:
        """The e-mail for one notification; its Message-ID is the idempotency key."""
        doc = o.document(self.settings.public_base_url)
        a = doc["alert"]
        step = "" if o.topic == "alert.opened" else f" · 升级 escalated to the {doc['escalated_to']}"
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = o.address
        msg["Subject"] = (f"[CCS {a['severity']}] {a['kind_zh']} {a['kind']} · "
                          f"{a['supervisee']['name']} ({a['supervisee']['case_number']}){step}")
        domain = self.settings.smtp_from.rpartition("@")[2] or "ccs"
        msg["Message-ID"] = f"<{o.key}@{domain}>"
        msg["Date"] = format_datetime(datetime.now().astimezone())
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-CCS-Idempotency-Key"] = o.key
        msg.set_content(
            f"{doc['recipient']['name']}:\n\n"
            f"Alert {a['id']} — {a['kind_zh']} ({a['kind']}), severity {a['severity']}, "
            f"status {a['status']}{step}.\n"
            f"Supervisee: {a['supervisee']['name']}, case {a['supervisee']['case_number']}, "
            f"{a['office']['name']}.\n"
            f"Opened {a['opened_at']}; first fix {a['first_fix_time']}; raised {a['count']} "
            f"time(s).\n\n"
            f"{a['explanation']}\n\n"
            f"Open it in the console (the position is shown there, and the read is recorded):\n"
            f"{a['url']}\n")
        return msg

    def send(self, o: Outgoing) -> tuple[bool, str]:
        """Hand the message to the SMTP server; a 250 for every recipient is delivered."""
        msg = self.message(o)
        while True:
            smtp: smtplib.SMTP | None = None
            kept = getattr(self._local, "smtp", None) is not None
            try:
                smtp = self._connection()
                refused = smtp.send_message(msg)
            except smtplib.SMTPServerDisconnected as e:
                if smtp is not None:
                    self._drop(smtp)
                if kept:  # a kept connection the server closed meanwhile: once more, anew
                    continue
                return False, f"{type(e).__name__}: {e}"
            except (smtplib.SMTPException, OSError) as e:
                if smtp is not None:
                    self._drop(smtp)
                return False, f"{type(e).__name__}: {e}"
            if refused:
                return False, f"refused: {refused}"
            return True, "250 accepted"

    def close(self) -> None:
        """QUIT every kept connection."""
        with self._lock:
            conns, self._open = list(self._open), set()
        for smtp in conns:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            smtp.close()


class ChannelRunner(threading.Thread):
    """Claims and sends one channel's notifications, never waiting for a slow send."""

    def __init__(self, channel: str, send: Callable[[Outgoing], tuple[bool, str]],
                 settings: Settings, stop: threading.Event, worker: str) -> None:
        super().__init__(name=f"delivery-{channel}", daemon=True)
        self.channel = channel
        self.send = send
        self.settings = settings
        self.stop_event = stop
        self.worker = worker
        self.last_loop = time.time()  # liveness: the loop turns at least every POLL_S
        self.connected = False  # readiness: holds its database connections

    def run(self) -> None:
        """Reconnect on database failure until stopped."""
        while not self.stop_event.is_set():
            try:
                self._serve()
            except psycopg.Error:
                self.connected = False
                log.exception("%s delivery lost its database connection; reconnecting",
                              self.channel)
                self.last_loop = time.time()
                self.stop_event.wait(1)

    def _serve(self) -> None:
        s = self.settings
        done: queue.Queue[tuple[Outgoing, bool, str]] = queue.Queue()
        in_flight = 0

        def attempt(o: Outgoing) -> None:
            try:
                ok, detail = self.send(o)
            except Exception as e:  # a sender bug must not lose the notification  # noqa: BLE001
                log.exception("sending %s failed unexpectedly", o.key)
                ok, detail = False, f"{type(e).__name__}: {e}"
            (SENT if ok else FAILED).labels(self.channel).inc()
            log.log(logging.INFO if ok else logging.WARNING,
                    "notification %s of alert %s to staff %s by %s: %s", o.notification_id,
                    o.alert["id"], o.staff_id, self.channel, "delivered" if ok else detail[:200],
                    extra={"fix_id": o.fix_id, "alert_id": o.alert["id"],
                           "notification_id": o.notification_id, "channel": self.channel,
                           "attempt": o.attempts})
            done.put((o, ok, detail))

        with psycopg.connect(s.psycopg_dsn, autocommit=True) as listen_conn, \
                psycopg.connect(s.psycopg_dsn) as conn, \
                ThreadPoolExecutor(max_workers=s.delivery_concurrency,
                                   thread_name_prefix=f"send-{self.channel}") as pool:
            listen_conn.execute(f"LISTEN {DELIVER_CHANNEL}")
            self.connected = True
            while not self.stop_event.is_set():
                self.last_loop = time.time()
                finished: list[tuple[Outgoing, bool, str]] = []
                while True:
                    try:
                        finished.append(done.get_nowait())
                    except queue.Empty:
                        break
                if finished:
                    record(conn, finished, s)
                    in_flight -= len(finished)
                claimed: list[Outgoing] = []
                if in_flight < s.delivery_concurrency:
                    claimed = claim(conn, self.channel, s.delivery_concurrency - in_flight,
                                    s.delivery_lease_s, self.worker)
                    for o in claimed:
                        pool.submit(attempt, o)
                    in_flight += len(claimed)
                if claimed or finished:
                    continue
                # Nothing to do this instant: wait for a NOTIFY, a finished send or a retry.
                for _ in listen_conn.notifies(timeout=0.02 if in_flight else POLL_S,
                                              stop_after=1):
                    pass
            # Stopping: let sends in flight finish and record them, so nothing waits a lease.
            pool.shutdown(wait=True)
            rest: list[tuple[Outgoing, bool, str]] = []
            while not done.empty():
                rest.append(done.get_nowait())
            record(conn, rest, s)


class DeliveryWorker:
    """One runner per configured channel."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._stop = threading.Event()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.webhooks = WebhookSender(self.settings)
        self.email = EmailSender(self.settings)
        self.runners = [ChannelRunner("webhook", self.webhooks.send, self.settings, self._stop,
                                      self.name)]
        if self.settings.smtp_host:
            self.runners.append(ChannelRunner("email", self.email.send, self.settings,
                                              self._stop, self.name))
        else:
            log.warning("CCS_SMTP_HOST is not set: e-mail notifications wait until it is")
        self.health = Health("delivery", self._ready)

    def _ready(self) -> tuple[bool, str]:
        down = [r.channel for r in self.runners if not r.connected]
        return (not down, f"no database connection for {', '.join(down)}" if down else
                f"sending {', '.join(r.channel for r in self.runners)}")

    def stop(self) -> None:
        """Finish the sends in flight and stop."""
        self._stop.set()

    def run(self) -> None:
        """Run until stopped; the heartbeat goes on while every channel's loop turns."""
        for r in self.runners:
            r.start()
        try:
            while not self._stop.wait(2.0):
                if all(r.is_alive() and time.time() - r.last_loop < self.health.stale_s
                       for r in self.runners):
                    self.health.beat()
        finally:
            for r in self.runners:
                r.join()
            self.webhooks.close()
            self.email.close()


def main() -> None:
    """Entry point: `python -m alerts.delivery`."""
    settings = get_settings()
    setup_logging("delivery", settings.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    worker = DeliveryWorker(settings)
    if settings.health_port:
        worker.health.start(settings.health_port, settings.health_host)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    log.info("delivery worker started: %s", ", ".join(r.channel for r in worker.runners))
    worker.run()
    log.info("delivery worker stopped")


if __name__ == "__main__":
    main()
