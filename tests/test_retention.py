"""Retention: rows past their table's retention go, newer ones and unfinished ones stay."""

from __future__ import annotations

import psycopg

from alerts.retention import prune
from api.metrics import DatabaseCollector
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, Org
from tests.test_delivery import add_channel, raise_alert

OLD = "now() - interval '{days} days'"


def _ids(db: psycopg.Connection, table: str) -> set[int]:
    return {r[0] for r in db.execute(f"SELECT id FROM {table}")}


def _one(db: psycopg.Connection, sql: str, *args: object) -> int:
    row = db.execute(sql, args).fetchone()
    assert row is not None
    return int(row[0])


def test_rows_older_than_the_retention_go_and_newer_or_unfinished_ones_stay(
        db: psycopg.Connection, org: Org, settings: Settings) -> None:
    s = settings.model_copy(update={"retention_batch": 2, "retention_max_batches": 50})
    keep: dict[str, set[int]] = {}
    go: dict[str, set[int]] = {}

    # Notifications (and their attempts, and their outbox rows) from two alerts' fan-out.
    add_channel(db, org.staff["jiangan-officer"], "email", "officer@example.org")
    old_alert = raise_alert(db, org, code=JIANGAN)
    raise_alert(db, org, code=JIANGHAN)  # no channel in Jianghan yet: no notification
    add_channel(db, org.staff["jianghan-officer"], "email", "other@example.org")
    new_alert = raise_alert(db, org, code=JIANGHAN, kind="curfew_breach")
    db.execute("UPDATE outbox SET published_at = now()")
    old_out = _one(db, "SELECT min(id) FROM outbox")
    db.execute(f"UPDATE outbox SET created_at = {OLD.format(days=8)} WHERE id = %s", (old_out,))
    pending_out = _one(db, f"""INSERT INTO outbox (topic, payload, created_at)
                               VALUES ('device.command', '{{}}', {OLD.format(days=30)}) RETURNING id""")
    go["outbox"] = {old_out}
    keep["outbox"] = _ids(db, "outbox") - go["outbox"]
    assert pending_out in keep["outbox"]

    old_n = _one(db, "SELECT id FROM notifications WHERE alert_id = %s", old_alert)
    new_n = _one(db, "SELECT id FROM notifications WHERE alert_id = %s", new_alert)
    db.execute(f"""UPDATE notifications SET status = 'delivered', created_at = {OLD.format(days=200)}
                    WHERE id = %s""", (old_n,))
    db.execute("UPDATE notifications SET status = 'delivered' WHERE id = %s", (new_n,))
    attempts = {n: _one(db, f"""INSERT INTO notification_attempts (notification_id, worker, started_at,
                                                                  finished_at, outcome)
                               VALUES (%s, 't', {OLD.format(days=age)}, {OLD.format(days=age)},
                                       'delivered') RETURNING id""", n)
                for n, age in ((old_n, 200), (new_n, 1))}
    go["notifications"], keep["notifications"] = {old_n}, _ids(db, "notifications") - {old_n}
    go["notification_attempts"] = {attempts[old_n]}
    keep["notification_attempts"] = {attempts[new_n]}

    for table, age_days in (("device_messages", 31), ("dead_letters", 31)):
        cols = ("device_id, source, msg_type, payload, received_at" if table == "device_messages"
                else "source, reason, raw, raw_size, received_at")
        vals = "'d1', 'mqtt', 'status', '{}'" if table == "device_messages" else "'http', 'bad', '\\x00', 1"
        go[table] = {_one(db, f"INSERT INTO {table} ({cols}) VALUES ({vals}, {OLD.format(days=age_days)}) "
                              "RETURNING id")}
        keep[table] = {_one(db, f"INSERT INTO {table} ({cols}) VALUES ({vals}, now()) RETURNING id")}

    sup, office = org.supervisee_id, org.office_ids[JIANGAN]
    rc = "INSERT INTO roll_calls (supervisee_id, office_id, origin, scheduled_at, status, created_at) " \
         "VALUES (%s, %s, 'officer', now(), %s, {t}) RETURNING id"
    go["roll_calls"] = {_one(db, rc.format(t=OLD.format(days=401)), sup, office, "missed")}
    keep["roll_calls"] = {_one(db, rc.format(t="now()"), sup, office, "missed"),
                          _one(db, rc.format(t=OLD.format(days=401)), sup, office, "sent")}

    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('d1', %s, 'x')", (sup,))
    lr = """INSERT INTO location_requests (device_id, supervisee_id, office_id, requested_at,
                                           evidence_fix_time, rule, status, sent_at, deadline, created_at)
            VALUES ('d1', %s, %s, now(), now(), 'r', %s, now(), now(), {t}) RETURNING id"""
    go["location_requests"] = {_one(db, lr.format(t=OLD.format(days=91)), sup, office, "expired")}
    keep["location_requests"] = {_one(db, lr.format(t="now()"), sup, office, "expired"),
                                 _one(db, lr.format(t=OLD.format(days=91)), sup, office, "sent")}

    # Alert history: an old resolved alert of a person still supervised stays; the same of a
    # person whose supervision ended more than five years ago goes.
    db.execute(f"""UPDATE alerts SET status = 'resolved', updated_at = {OLD.format(days=6 * 366)}""")
    db.execute("UPDATE supervisees SET active = false WHERE id = %s", (org.other_supervisee_id,))
    events = {a: _one(db, "INSERT INTO alert_events (alert_id, action) VALUES (%s, 'resolved') "
                          "RETURNING id", a) for a in (old_alert, new_alert)}
    go["alert_events"], keep["alert_events"] = {events[new_alert]}, {events[old_alert]}

    before = _metrics(settings)
    assert before[("ccs_alerts_opened_total", ("curfew_breach",))] == 1.0
    assert before[("ccs_notifications", ("email", "delivered"))] == 2.0
    deltas = _one(db, "SELECT count(*) FROM metric_counts")

    deleted = prune(db, s)

    for table in go:
        left = _ids(db, table)
        assert not (go[table] & left), f"{table}: old rows stayed"
        assert keep[table] <= left, f"{table}: rows within retention (or unfinished) went"
        assert deleted[table] == len(go[table]), table
    # A later run finds nothing more to do.
    assert not any(prune(db, s).values())
    # The metrics do not count the tables: what retention deleted is still counted, and the
    # triggers' deltas were folded into one row per metric and label.
    assert _metrics(settings) == before
    folded = _one(db, "SELECT count(*) FROM metric_counts")
    assert folded < deltas
    assert folded == _one(db, "SELECT count(DISTINCT (name, label, label2)) FROM metric_counts")


def _metrics(settings: Settings) -> dict[tuple[str, tuple[str, ...]], float]:
    out = {}
    for family in DatabaseCollector(settings.psycopg_dsn).collect():
        if family.name == "ccs_table_rows":  # type: ignore[attr-defined]
            continue
        for sample in family.samples:  # type: ignore[attr-defined]
            out[(sample.name, tuple(sample.labels.values()))] = sample.value
    return out
