"""Architecture: the alert service (alerts/service.py) is the only code that writes alerts, their
workflow events, outbox rows and the outbox NOTIFY. A grep over the project's sources."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("geofence", "ingest", "alerts", "api", "console", "store", "simulators")
SERVICE = Path("alerts/service.py")
# Benches that fabricate a past month of alerts in bulk in their own database, outside any
# workflow (the service stamps alerts with the present): not a path a running system takes.
SEEDERS = {Path("simulators/report_bench.py")}

WRITES = {
    "outbox row": re.compile(r"INSERT\s+INTO\s+outbox\b", re.I),
    "outbox NOTIFY": re.compile(r"NOTIFY\s+(ccs_outbox\b|\{OUTBOX_CHANNEL\})|pg_notify\(\s*'ccs_outbox'",
                                re.I),
    "alert insert": re.compile(r"INSERT\s+INTO\s+alerts\b", re.I),
    "alert update": re.compile(r"UPDATE\s+alerts\b", re.I),
    "alert event": re.compile(r"INSERT\s+INTO\s+alert_events\b|(?<!class )\bAlertEvent\(", re.I),
}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _hits(text: str) -> set[str]:
    return {what for what, rx in WRITES.items() if rx.search(text)}


def test_only_the_alert_service_writes_alerts_and_the_outbox() -> None:
    offenders = {}
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel == SERVICE or rel in SEEDERS:
            continue
        hits = _hits(path.read_text(encoding="utf-8"))
        if hits:
            offenders[str(rel)] = sorted(hits)
    assert offenders == {}, f"write these through alerts/service.py instead: {offenders}"


def test_the_grep_finds_what_it_looks_for() -> None:
    # The service itself holds every kind of write, so the patterns are not dead...
    assert _hits((ROOT / SERVICE).read_text(encoding="utf-8")) == set(WRITES)
    # ...and the forms the code used before the service match them.
    for before in ('conn.execute("INSERT INTO outbox (topic, payload) VALUES (%s, %s)"',
                   'session.execute(text("NOTIFY ccs_outbox"))',
                   'conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")',
                   "session.add(AlertEvent(alert_id=alert.id, action='resolved'))",
                   "UPDATE alerts a SET cleared_at = now()",
                   "INSERT INTO alerts AS a (kind, severity)"):
        assert _hits(before), before
