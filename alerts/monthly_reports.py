"""The monthly compliance reports: generated once, stored, e-mailed once to who chose them.

The scheduler's leader runs `run` every 10 minutes (`alerts/scheduler.py`, job
`monthly_reports`). From `report_monthly_after_h` hours after a local month ends (Beijing time
by default; by then phones that buffered fixes offline have sent them), it:

1. finds the e-mail channels whose owners chose the monthly report (`staff_channels.reports`:
   office heads, district supervisors, city administrators, active);
2. for each of their units without the month's report, computes it (`alerts/reports.py`),
   renders the PDF (`alerts/report_docs.py`) and stores both in `compliance_reports` (one per
   unit and month: a second run, or another leader, finds it there);
3. queues one `report_deliveries` row per report and channel (unique: a month goes to a channel
   once) and sends what is not delivered yet: one e-mail per channel with the PDF attached and
   the main figures in the text, its Message-ID fixed per report and channel (a receiver drops
   a repeat if a crash fell between the server's 250 and the record). A failure is retried at
   the next run, up to `MAX_ATTEMPTS`.

Only the month just ended is handled: a channel that chooses reports later gets the next one
(or asks the API for any period). Each sent report is recorded in the audit log.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg

from alerts.delivery import open_smtp
from alerts.report_docs import to_pdf
from alerts.reports import compliance, previous_month
from store.settings import Settings

log = logging.getLogger("alerts.monthly_reports")

MAX_ATTEMPTS = 50  # every 10 minutes: about eight hours of a failing mail server
READERS = ("office_head", "district_supervisor", "city_admin")

_SUBSCRIBERS = """
SELECT c.id, c.address, s.id, s.org_unit_id
  FROM staff_channels c JOIN staff s ON s.id = c.staff_id
 WHERE c.reports AND c.active AND c.channel = 'email' AND s.active AND s.role = ANY(%s)
 ORDER BY s.org_unit_id, c.id
"""

_DUE = """
SELECT d.id, d.address, d.channel_id, st.full_name, r.id, r.unit_id, u.name, r.figures, r.pdf
  FROM report_deliveries d
  JOIN compliance_reports r ON r.id = d.report_id
  JOIN org_units u ON u.id = r.unit_id
  JOIN staff st ON st.id = d.staff_id
 WHERE d.status <> 'delivered' AND d.attempts < %(max)s
   AND r.period_start = %(t0)s AND r.period_end = %(t1)s AND r.kind = 'monthly'
 ORDER BY d.id
"""


@dataclass
class Outcome:
    """What a run did (for the log and the tests)."""

    period: tuple[datetime, datetime] | None = None
    generated: list[int] = field(default_factory=list)  # units whose report was made
    delivered: list[str] = field(default_factory=list)  # addresses
    failed: list[str] = field(default_factory=list)


def stored_report(conn: psycopg.Connection, unit_id: int, t0: datetime, t1: datetime,
                  tz: ZoneInfo) -> tuple[int, bool]:
    """The unit's stored report of [t0, t1), made now if missing; (id, made now)."""
    row = conn.execute("""SELECT id FROM compliance_reports WHERE unit_id = %s
                            AND period_start = %s AND period_end = %s AND kind = 'monthly'""",
                       (unit_id, t0, t1)).fetchone()
    if row:
        return int(row[0]), False
    figures = compliance(conn, unit_id, t0, t1)
    pdf = to_pdf(figures, tz)
    made = conn.execute(
        """INSERT INTO compliance_reports (unit_id, period_start, period_end, figures, pdf,
                                           pdf_sha256)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (unit_id, period_start, period_end, kind) DO NOTHING RETURNING id""",
        (unit_id, t0, t1, orjson.dumps(figures).decode(), pdf,
         hashlib.sha256(pdf).hexdigest())).fetchone()
    if made is None:  # made meanwhile by someone else
        return stored_report(conn, unit_id, t0, t1, tz)
    return int(made[0]), True


def message(settings: Settings, tz: ZoneInfo, address: str, name: str, report_id: int,
            channel_id: int, unit_name: str, figures: dict[str, Any], pdf: bytes) -> EmailMessage:
    """The e-mail: the main figures in the text, the PDF attached."""
    t = figures["total"]
    start = datetime.fromisoformat(figures["period"]["from"]).astimezone(tz)
    end = datetime.fromisoformat(figures["period"]["to"]).astimezone(tz) - timedelta(days=1)
    month = f"{start:%Y年%m月}"

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v * 100:.1f}%"

    def minutes(v: float | None) -> str:
        return "—" if v is None else f"{v / 60:.1f}"

    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = address
    msg["Subject"] = f"[CCS] {unit_name} {month} 合规统计报表 · compliance report {start:%Y-%m}"
    domain = settings.smtp_from.rpartition("@")[2] or "ccs"
    msg["Message-ID"] = f"<ccs-report-{report_id}-{channel_id}@{domain}>"
    msg["Date"] = format_datetime(datetime.now().astimezone())
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"{name}：\n\n"
        f"{unit_name} {start:%Y-%m-%d} 至 {end:%Y-%m-%d} 的社区矫正定位监管合规统计报表见附件（PDF）。\n"
        f"The compliance report of {unit_name} for {start:%Y-%m} is attached.\n\n"
        f"矫正对象 people: {t['people']}\n"
        f"定位覆盖率 coverage: {pct(t['coverage']['rate'])}\n"
        f"失联时长 silence: {t['silence_hours']} h\n"
        f"告警 alerts: {t['alerts']['total']}\n"
        f"签收用时 P50/P90: {minutes(t['acknowledgement']['p50_s'])} / "
        f"{minutes(t['acknowledgement']['p90_s'])} min\n"
        f"点名应答率 roll-calls answered: {pct(t['rollcalls']['answer_rate'])}\n"
        f"逾期未销假 overdue returns: {t['overdue_returns']}\n\n"
        f"其他期间的报表可在控制台或接口按需生成：\n"
        f"{settings.public_base_url.rstrip('/')}/api/v1/reports/compliance\n")
    msg.add_attachment(pdf, maintype="application", subtype="pdf",
                       filename=f"合规报表-{unit_name}-{start:%Y%m}.pdf")
    return msg


def run(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> Outcome:
    """Generate, store and send the last month's reports that are due (idempotent)."""
    tz = ZoneInfo(settings.report_timezone)
    now = now or datetime.now(UTC)
    t0, t1 = previous_month(now, tz)
    out = Outcome()
    if now < t1 + timedelta(hours=settings.report_monthly_after_h):
        return out
    out.period = (t0, t1)
    subscribers = conn.execute(_SUBSCRIBERS, (list(READERS),)).fetchall()
    by_unit: dict[int, list[tuple[int, str, int]]] = {}
    for channel_id, address, staff_id, unit_id in subscribers:
        by_unit.setdefault(unit_id, []).append((channel_id, address, staff_id))
    for unit_id, channels in by_unit.items():
        with conn.transaction():
            report_id, made = stored_report(conn, unit_id, t0, t1, tz)
            conn.cursor().executemany(
                """INSERT INTO report_deliveries (report_id, staff_id, channel_id, address)
                   VALUES (%s, %s, %s, %s) ON CONFLICT (report_id, channel_id) DO NOTHING""",
                [(report_id, staff_id, channel_id, address)
                 for channel_id, address, staff_id in channels])
        if made:
            out.generated.append(unit_id)
    due = conn.execute(_DUE, {"max": MAX_ATTEMPTS, "t0": t0, "t1": t1}).fetchall()
    if not due:
        return out
    if not settings.smtp_host:
        log.warning("%d monthly report e-mails wait: CCS_SMTP_HOST is not set", len(due))
        return out
    smtp: smtplib.SMTP | None = None
    try:
        for delivery_id, address, channel_id, name, report_id, unit_id, unit_name, figures, pdf \
                in due:
            conn.execute("UPDATE report_deliveries SET attempts = attempts + 1 WHERE id = %s",
                         (delivery_id,))
            msg = message(settings, tz, address, name, report_id, channel_id, unit_name, figures,
                          bytes(pdf))
            try:
                smtp = smtp or open_smtp(settings)
                refused = smtp.send_message(msg)
                error = f"refused: {refused}" if refused else None
            except (smtplib.SMTPException, OSError) as e:
                error = f"{type(e).__name__}: {e}"
                if smtp is not None:
                    smtp.close()
                smtp = None
            with conn.transaction():
                if error is None:
                    conn.execute("""UPDATE report_deliveries SET status = 'delivered',
                                           delivered_at = now(), last_error = NULL
                                     WHERE id = %s""", (delivery_id,))
                    conn.execute(
                        """INSERT INTO audit_log (action, target, purpose, detail)
                           VALUES ('report.monthly_sent', %s, 'monthly compliance report', %s)""",
                        (f"org_unit:{unit_id}", orjson.dumps({
                            "report_id": report_id, "channel_id": channel_id, "to": address,
                            "from": t0.isoformat(), "to_time": t1.isoformat()}).decode()))
                    out.delivered.append(address)
                else:
                    conn.execute("""UPDATE report_deliveries SET status = 'failed',
                                           last_error = %s WHERE id = %s""",
                                 (error[:1000], delivery_id))
                    out.failed.append(address)
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
    if out.generated or out.delivered or out.failed:
        log.info("monthly reports %s..%s: made for units %s, sent to %d, failed %d",
                 t0, t1, out.generated, len(out.delivered), len(out.failed))
    return out
